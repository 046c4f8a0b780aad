"""On-device captioning with the standalone TFLite runtime (`ai-edge-litert`).

Imports neither TensorFlow nor any project module that does: this is what a
phone or an edge box runs. The model (`model.tflite`) takes one RGB image
resized to 299x299 and scaled to [-1, 1] (`load_image` does it with Pillow)
and returns the greedy token ids; `vocab.txt` beside it maps ids to words.

    caption-tflite build/tflite/captioner/<version>/model.tflite photo.jpg
"""

import argparse
import io
import os
import sys
from typing import List, Optional, Sequence, Union

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from models import features  # constants only: no TensorFlow


def load_image(image: Union[str, bytes]) -> np.ndarray:
    """A path or encoded bytes -> float32 [1, 299, 299, 3] in [-1, 1].

    Pillow's bilinear resize filters over the whole source footprint when
    shrinking, as TensorFlow's `resize(..., antialias=True)` does in the
    exported SavedModel, so both see nearly the same pixels.
    """
    data = image if isinstance(image, bytes) else open(image, 'rb').read()
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)  # first frame of a GIF
        rgb = img.convert('RGB').resize(
            (features.IMAGE_SIZE, features.IMAGE_SIZE), Image.Resampling.BILINEAR
        )
    pixels = np.asarray(rgb, dtype=np.float32)
    return (pixels / 127.5 - 1.0)[None]


def read_vocabulary(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n') for line in f]


def ids_to_caption(token_ids: Sequence[int], words: Sequence[str]) -> str:
    """Words up to (not including) `<end>`, skipping `<pad>`/`<start>`."""
    out = []
    for token in token_ids:
        word = words[int(token)] if 0 <= int(token) < len(words) else features.UNK_TOKEN
        if word == features.END_TOKEN:
            break
        if word not in (features.PAD_TOKEN, features.START_TOKEN):
            out.append(word)
    return ' '.join(out)


class TFLiteCaptioner:
    """Captions images with a `model.tflite` and its `vocab.txt`."""

    def __init__(self, model_path: str, vocab_path: Optional[str] = None, num_threads: int = 2):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f'No TFLite model at {model_path}.')
        vocab_path = vocab_path or os.path.join(
            os.path.dirname(model_path), features.TFLITE_VOCAB_FILE
        )
        self.words = read_vocabulary(vocab_path)
        self.interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
        self._runner = self.interpreter.get_signature_runner(features.TFLITE_SIGNATURE)

    def token_ids(self, image: np.ndarray) -> np.ndarray:
        """float32 [1, 299, 299, 3] in [-1, 1] -> int32 [max_len]."""
        out = self._runner(**{features.TFLITE_IMAGE_INPUT: image.astype(np.float32)})
        return np.asarray(out[features.TFLITE_TOKEN_IDS_OUTPUT])[0]

    def caption(self, image: Union[str, bytes, np.ndarray]) -> str:
        """A path, encoded bytes or a preprocessed array -> the caption."""
        if not isinstance(image, np.ndarray):
            image = load_image(image)
        return ids_to_caption(self.token_ids(image), self.words)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='caption-tflite',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('model', help='path to model.tflite (vocab.txt beside it)')
    parser.add_argument('images', nargs='+')
    args = parser.parse_args(argv)
    try:
        captioner = TFLiteCaptioner(args.model)
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
