"""`caption-tflite`: caption images on-device with the standalone TFLite runtime.

    caption-tflite build/tflite/captioner/<version>/model.tflite photo.jpg holiday/
    caption-tflite build/tflite/captioner/<version> photos/ --json
    caption-tflite --beam build/tflite/captioner/<version> photo.jpg

Images are files or directories. Each good image gets a `file<TAB>caption`
line; each bad one a `file<TAB>error: reason` line on stderr (not decodable,
unsupported format, too many pixels, unreadable), and the others are still
captioned. Exit status: 0 when every image got a caption, 1 when any did not,
2 for a usage error or a model that cannot be loaded.

Needs only `ai-edge-litert`, NumPy and Pillow: no TensorFlow is imported.
"""

import argparse
import os
import sys
import traceback
from typing import Iterator, List, Optional

from tfx_captioning.models import features, image_files


def _caption_files(captioner, paths: List[str], verbose: bool) -> Iterator:
    for path in image_files.list_image_files(paths):
        try:
            yield image_files.CaptionResult(path, caption=captioner.caption(path))
        except image_files.ImageError as error:
            if verbose:
                traceback.print_exc()
            yield image_files.CaptionResult(path, error=str(error))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='caption-tflite',
        description=__doc__,
        epilog=image_files.describe_accepted(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        'model', help='model.tflite (vocab.txt beside it), or the directory holding both'
    )
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files or directories')
    parser.add_argument(
        '--json',
        action='store_true',
        help='print one JSON object per file: {"file", "caption"} or {"file", "error"}',
    )
    parser.add_argument('--verbose', action='store_true', help='show the traceback of failures')
    parser.add_argument(
        '--beam', action='store_true', help="decode with the model's beam search (caption_beam)"
    )
    args = parser.parse_args(argv)
    model_path = args.model
    if os.path.isdir(model_path):
        model_path = os.path.join(model_path, features.TFLITE_FILE)
    # Imported after parsing, so that `--help` and usage errors answer at once.
    from tfx_captioning.models.tflite_runtime import TFLiteCaptioner

    try:
        captioner = TFLiteCaptioner(model_path, beam=args.beam)
    except (OSError, ValueError) as error:  # missing files; not a TFLite flatbuffer
        if args.verbose:
            traceback.print_exc()
        print(f'caption-tflite: error: cannot load {model_path}: {error}', file=sys.stderr)
        return 2
    return image_files.write_results(
        _caption_files(captioner, args.images, args.verbose), args.json
    )


if __name__ == '__main__':
    sys.exit(main())
