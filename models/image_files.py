"""Which encoded images every runtime accepts, judged from the header, without TensorFlow.

One rule for the SavedModel's graph (`image_preprocessing`), the local gRPC
server, the TFLite runner, the ExampleGen and both caption commands: an image
is one of `features.IMAGE_FORMATS`, recognised by the same magic bytes that
`tf.io.decode_image` dispatches on, and its header declares at most
`features.MAX_IMAGE_PIXELS` pixels. The header fields read here are the ones
the graph reads with string ops, so what this module refuses the graph refuses
too, and a decompression bomb is refused before any decoder allocates its
pixels. Whether the compressed data itself is intact is only found by decoding.

Also what both caption commands (`caption-pipeline caption`, `caption-tflite`)
share: listing the image files of the paths a user names (files, and the
images inside directories), reading them with every failure turned into an
`ImageError` with a one-line reason, and printing one result per file.

Needs neither TensorFlow nor NumPy (Pillow, when installed, only names an
unsupported format), so the on-device runtime can use it.
"""

import dataclasses
import io
import json
import os
import sys
import textwrap
import warnings
from typing import Iterable, List, Optional, Sequence, TextIO, Tuple

from tfx_captioning.models import features

JPEG_MAGIC = b'\xff\xd8\xff'
PNG_MAGIC = b'\x89PN'
GIF_MAGIC = b'GIF'
BMP_MAGIC = b'BM'
MAGIC_BYTES = (('JPEG', JPEG_MAGIC), ('PNG', PNG_MAGIC), ('GIF', GIF_MAGIC), ('BMP', BMP_MAGIC))
"""(format, first bytes) in `features.IMAGE_FORMATS` order: what `tf.io.decode_image` checks."""

BMP_CORE_HEADER_SIZE = 12
"""An OS/2 BITMAPCOREHEADER, with 16-bit sizes; every later BMP header has 32-bit ones."""

# Why an image is refused: the first words of every `ImageError` message.
UNREADABLE = 'unreadable'
EMPTY = 'empty image'
UNSUPPORTED_FORMAT = 'unsupported format'
TOO_MANY_PIXELS = 'too many pixels'
NOT_DECODABLE = 'not decodable'

# JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which carry the size.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_START_OF_SCAN, _JPEG_END_OF_IMAGE = 0xDA, 0xD9
_INT32_LIMIT = 2**31


class ImageError(ValueError):
    """An image no runtime will caption; `str()` is a one-line reason for a person.

    Attributes:
      reason: one of `UNREADABLE`, `EMPTY`, `UNSUPPORTED_FORMAT`,
        `TOO_MANY_PIXELS`, `NOT_DECODABLE`.
    """

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares."""

    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> Optional[str]:
    """The format named by the first bytes ('JPEG', 'PNG', 'GIF', 'BMP'), or None."""
    for name, magic in MAGIC_BYTES:
        if data.startswith(magic):
            return name
    return None


def _uint(data: bytes, offset: int, size: int, byteorder: str) -> Optional[int]:
    if offset + size > len(data):
        return None
    return int.from_bytes(data[offset : offset + size], byteorder)


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of the first frame header, walking the markers as libjpeg does."""
    position = 2
    while position < len(data):
        # libjpeg skips stray bytes before a marker (with a warning), then fill bytes.
        while position < len(data) and data[position] != 0xFF:
            position += 1
        while position < len(data) and data[position] == 0xFF:
            position += 1
        if position >= len(data):
            return None
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (_JPEG_START_OF_SCAN, _JPEG_END_OF_IMAGE):
            return None  # Image data before any frame header.
        length = _uint(data, position, 2, 'big')
        if length is None or length < 2:
            return None
        if marker in _JPEG_FRAME_MARKERS:
            height = _uint(data, position + 3, 2, 'big')
            width = _uint(data, position + 5, 2, 'big')
            return None if width is None or height is None else (width, height)
        position += length
    return None


def _size(image_format: str, data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the header of a known format; None when it is cut short."""
    if image_format == 'JPEG':
        return _jpeg_size(data)
    if image_format == 'PNG':
        # Signature (8 bytes), IHDR length (4), b'IHDR', width, height (big-endian).
        if data[12:16] != b'IHDR':
            return None
        width, height = _uint(data, 16, 4, 'big'), _uint(data, 20, 4, 'big')
    elif image_format == 'GIF':
        # 'GIF8?a', then the logical screen size, at which TensorFlow decodes every frame.
        width, height = _uint(data, 6, 2, 'little'), _uint(data, 8, 2, 'little')
    else:
        header_size = _uint(data, 14, 4, 'little')
        if header_size == BMP_CORE_HEADER_SIZE:
            width, height = _uint(data, 18, 2, 'little'), _uint(data, 20, 2, 'little')
        else:
            # Signed 32-bit; a negative height means rows stored top-down.
            width, height = _uint(data, 18, 4, 'little'), _uint(data, 22, 4, 'little')
            if height is not None and height >= _INT32_LIMIT:
                height = 2**32 - height
    if width is None or height is None:
        return None
    return width, height


def _name_of_unsupported_format(data: bytes) -> Optional[str]:
    """What Pillow calls an image that is none of the accepted formats (TIFF, WEBP...)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.format
        except Exception:  # Pillow raises many types for bytes it cannot read.
            return None


def read_header(data: bytes) -> ImageHeader:
    """The format and declared size of an encoded image, read without decoding it.

    Raises:
      ImageError: empty input, a format that is not accepted, or a header
        cut short or declaring no pixels.
    """
    if not data:
        raise ImageError(EMPTY)
    image_format = sniff_format(data)
    if image_format is None:
        other = _name_of_unsupported_format(data)
        accepted = ', '.join(features.IMAGE_FORMATS)
        either = ', '.join(features.IMAGE_FORMATS[:-1]) + ' or ' + features.IMAGE_FORMATS[-1]
        raise ImageError(
            UNSUPPORTED_FORMAT,
            f'{other} (accepted: {accepted})' if other else f'not a {either} image',
        )
    size = _size(image_format, data)
    if size is None:
        raise ImageError(NOT_DECODABLE, f'{image_format} header is cut short or corrupt')
    width, height = size
    if not (0 < width < _INT32_LIMIT and 0 < height < _INT32_LIMIT):
        raise ImageError(NOT_DECODABLE, f'{image_format} header declares {width}x{height}')
    return ImageHeader(image_format, width, height)


def check_image(data: bytes, max_pixels: int = features.MAX_IMAGE_PIXELS) -> ImageHeader:
    """Refuses, from its header, an image no runtime would caption; returns the header.

    Args:
      data: the encoded image.
      max_pixels: the largest width x height accepted.

    Raises:
      ImageError: see `read_header`, or more than `max_pixels` pixels.
    """
    header = read_header(data)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageError(
            TOO_MANY_PIXELS,
            f'{header.format} of {header.width}x{header.height} = {pixels:,} pixels, '
            f'above the limit of {max_pixels:,}',
        )
    return header


def describe_accepted() -> str:
    """A paragraph for `--help`: the formats, the pixel limit and the directory rule."""
    return textwrap.fill(
        f'Accepted images: {", ".join(features.IMAGE_FORMATS)} (a GIF by its first frame) '
        f'of at most {features.MAX_IMAGE_PIXELS:,} pixels, as in every runtime of the project. '
        f'A directory stands for the files in it ending in '
        f'{", ".join(features.IMAGE_FILE_EXTENSIONS)} (any case), sorted; not its subdirectories.',
        width=79,
    )


def is_image_file_name(name: str) -> bool:
    """Whether a directory entry counts as an image: a visible file with an image extension."""
    return not name.startswith('.') and name.lower().endswith(features.IMAGE_FILE_EXTENSIONS)


def list_image_files(paths: Sequence[str]) -> List[str]:
    """The files to caption: files as given, then the images inside each directory, sorted.

    A directory contributes its visible files ending in one of
    `features.IMAGE_FILE_EXTENSIONS` (any case), not its subdirectories. A
    path that does not exist, or a directory without images, is kept as it
    is, so that `read_image_file` reports it in its turn.
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(
                name
                for name in os.listdir(path)
                if is_image_file_name(name) and os.path.isfile(os.path.join(path, name))
            )
            if names:
                files.extend(os.path.join(path, name) for name in names)
                continue
        files.append(path)
    return files


def read_image_file(path: str, max_pixels: int = features.MAX_IMAGE_PIXELS) -> bytes:
    """The bytes of an image file that passes `check_image`.

    Raises:
      ImageError: the file is missing or unreadable, a directory without
        images, or refused by `check_image`.
    """
    if os.path.isdir(path):
        extensions = ', '.join(features.IMAGE_FILE_EXTENSIONS)
        raise ImageError(UNREADABLE, f'a directory with no image files ({extensions})')
    try:
        with open(path, 'rb') as image_file:
            data = image_file.read()
    except FileNotFoundError:
        raise ImageError(UNREADABLE, 'no such file') from None
    except OSError as error:
        raise ImageError(UNREADABLE, error.strerror or str(error)) from None
    check_image(data, max_pixels)
    return data


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    """What a caption command says about one file: its caption, or why there is none."""

    file: str
    caption: Optional[str] = None
    error: Optional[str] = None


def write_results(
    results: Iterable[CaptionResult],
    as_json: bool = False,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Prints each result as it comes, and returns the command's exit status.

    Text: ``file<TAB>caption`` on `out`, ``file<TAB>error: reason`` on `err`,
    then a count of the failures on `err`. JSON: one object per line on
    `out`, ``{"file", "caption"}`` or ``{"file", "error"}``, for scripts.

    Returns:
      0 when every file got a caption, 1 when any did not.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    total = failed = 0
    for result in results:
        total += 1
        failed += result.error is not None
        if as_json:
            fields = {'file': result.file}
            fields.update(
                {'error': result.error} if result.error is not None else {'caption': result.caption}
            )
            print(json.dumps(fields, ensure_ascii=False), file=out, flush=True)
        elif result.error is not None:
            print(f'{result.file}\terror: {result.error}', file=err, flush=True)
        else:
            print(f'{result.file}\t{result.caption}', file=out, flush=True)
    if failed and not as_json:
        print(f'{failed} of {total} files could not be captioned.', file=err)
    return 1 if failed else 0
