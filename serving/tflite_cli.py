"""`caption-tflite`: caption images on-device with the standalone TFLite runtime.

    caption-tflite build/tflite/captioner/<version>/model.tflite photo.jpg
    caption-tflite --beam build/tflite/captioner/<version>/model.tflite photo.jpg

Needs only `ai-edge-litert`, NumPy and Pillow: no TensorFlow is imported.
"""

import argparse
import sys
from typing import List, Optional

from tfx_captioning.models.tflite_runtime import TFLiteCaptioner


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='caption-tflite',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('model', help='path to model.tflite (vocab.txt beside it)')
    parser.add_argument('images', nargs='+')
    parser.add_argument(
        '--beam', action='store_true', help="decode with the model's beam search (caption_beam)"
    )
    args = parser.parse_args(argv)
    try:
        captioner = TFLiteCaptioner(args.model, beam=args.beam)
    except (OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        try:
            print(f'{path}\t{captioner.caption(path)}')
        except (OSError, ValueError) as e:  # PIL raises OSError subclasses for bad files
            print(f'{path}\terror: {e}', file=sys.stderr)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
