"""On-device captioning with the standalone TFLite runtime (`ai-edge-litert`).

Imports neither TensorFlow nor any project module that does (`features` holds
constants only, `image_files` reads headers in plain Python): this is what a
phone or an edge box runs; `caption-tflite` (`serving/tflite_cli.py`) is its
command line. The model (`model.tflite`) takes one RGB image resized to
299x299 and scaled to [-1, 1] (`load_image` does it with Pillow) and returns
the token ids, greedy (signature `serving_default`) or by beam search
(`caption_beam`, `TFLiteCaptioner(..., beam=True)`); `vocab.txt` beside it
maps ids to words, and `decoding.json` records the beam search's settings.

`load_image` accepts exactly what the SavedModel accepts: the formats of
`features.IMAGE_FORMATS` up to `features.MAX_IMAGE_PIXELS`, checked on the
header by `image_files.check_image` before Pillow decodes anything, so a
decompression bomb is an `ImageError` ("too many pixels: ..."), not a
Pillow `DecompressionBombError` or an out-of-memory.
"""

import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from tfx_captioning.models import features, image_files  # no TensorFlow in either


def load_image(image: Union[str, bytes], max_pixels: int = features.MAX_IMAGE_PIXELS) -> np.ndarray:
    """A path or encoded bytes -> float32 [1, 299, 299, 3] in [-1, 1].

    Pillow's bilinear resize filters over the whole source footprint when
    shrinking, as TensorFlow's `resize(..., antialias=True)` does in the
    exported SavedModel, so both see nearly the same pixels.

    Args:
      image: an image file path or the encoded bytes.
      max_pixels: the largest width x height accepted, checked on the header.

    Raises:
      image_files.ImageError: (a ValueError) with a one-line reason: an
        unreadable file, a format not in `features.IMAGE_FORMATS`, too many
        pixels, or data Pillow cannot decode (a truncated file).
    """
    if isinstance(image, bytes):
        data = image
        image_files.check_image(data, max_pixels)
    else:
        data = image_files.read_image_file(image, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)  # first frame of a GIF
            rgb = img.convert('RGB').resize(
                (features.IMAGE_SIZE, features.IMAGE_SIZE), Image.Resampling.BILINEAR
            )
    except Exception as error:  # Pillow raises many types for bad data.
        raise image_files.ImageError(image_files.NOT_DECODABLE, str(error)) from error
    pixels = np.asarray(rgb, dtype=np.float32)
    return (pixels / 127.5 - 1.0)[None]


def read_vocabulary(path: str) -> List[str]:
    with open(path, encoding='utf-8') as f:
        return [line.rstrip('\n') for line in f]


def read_decoding_settings(directory: str) -> Optional[Dict[str, Any]]:
    """The `decoding.json` beside a model (width, length normalisation), or None without one."""
    path = os.path.join(directory, features.DECODING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


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
    """Captions images with a `model.tflite` and its `vocab.txt`, greedily or by beam search."""

    def __init__(
        self,
        model_path: str,
        vocab_path: Optional[str] = None,
        num_threads: int = 2,
        beam: bool = False,
    ):
        """Args:
        model_path: the `model.tflite` file.
        vocab_path: its vocabulary (default: `vocab.txt` beside it).
        num_threads: interpreter threads.
        beam: decode with the model's beam-search signature (`caption_beam`)
          instead of the greedy `serving_default`.

        Raises:
          FileNotFoundError: no model file.
          ValueError: `beam` asked of a model without a beam-search signature.
        """
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f'No TFLite model at {model_path}.')
        directory = os.path.dirname(model_path)
        self.words = read_vocabulary(
            vocab_path or os.path.join(directory, features.TFLITE_VOCAB_FILE)
        )
        self.interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
        self.signature = features.TFLITE_BEAM_SIGNATURE if beam else features.TFLITE_SIGNATURE
        available = self.interpreter.get_signature_list()
        if self.signature not in available:
            raise ValueError(
                f'{model_path} has no {self.signature!r} signature (it has {sorted(available)}); '
                'export it again to caption with beam search.'
            )
        self._runner = self.interpreter.get_signature_runner(self.signature)
        self.decoding = read_decoding_settings(directory)

    def decode(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """float32 [1, 299, 299, 3] in [-1, 1] -> the signature's outputs, batch dimension dropped.

        Always `features.TFLITE_TOKEN_IDS_OUTPUT` int32 [max_len]; with beam
        search also `features.TFLITE_LOG_PROB_OUTPUT` (a float32 scalar).
        """
        out = self._runner(**{features.TFLITE_IMAGE_INPUT: image.astype(np.float32)})
        return {name: np.asarray(value)[0] for name, value in out.items()}

    def token_ids(self, image: np.ndarray) -> np.ndarray:
        """float32 [1, 299, 299, 3] in [-1, 1] -> int32 [max_len]."""
        return self.decode(image)[features.TFLITE_TOKEN_IDS_OUTPUT]

    def caption(self, image: Union[str, bytes, np.ndarray]) -> str:
        """A path, encoded bytes or a preprocessed array -> the caption."""
        if not isinstance(image, np.ndarray):
            image = load_image(image)
        return ids_to_caption(self.token_ids(image), self.words)
