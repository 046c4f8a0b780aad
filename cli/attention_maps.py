"""Heat maps of where an attention decoder looked while it wrote each word.

An attention model's `features.ATTENTION_SIGNATURE` returns, per emitted token
(the words, then `<end>`), its softmax weights over the `REGION_GRID` x
`REGION_GRID` regions of InceptionV3's last map, row-major. The model stretches
every image to 299 x 299 without keeping its aspect ratio, so the grid covers
the whole original image: region r is row r // 8, column r % 8 of the image,
whatever its shape. These functions draw those weights over the image for the
report.

Pure functions over NumPy arrays and encoded images (Pillow); no TensorFlow,
so they are quick to test and the report loads the model elsewhere.
"""

import base64
import html
import io
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tfx_captioning.models import features

TILE = (160, 120)
"""Largest width and height of one overlay; an image keeps its aspect ratio inside it."""
LABEL_HEIGHT = 16
"""Pixels under each overlay for its word."""
COLUMNS = 6
"""Overlays per row of a strip; a longer caption wraps onto more rows."""
MAX_ALPHA = 0.65
"""Opacity of the heat colour where the weight is highest: the image stays visible under it."""


@dataclass(frozen=True)
class AttentionCaption:
    """One image captioned by `ATTENTION_SIGNATURE`, as the report draws it.

    Attributes:
      image_id: the image's name (the Flickr8k file name).
      image_bytes: the encoded image the model was given.
      caption: `CAPTION_OUTPUT`, words joined by spaces.
      attention: `ATTENTION_OUTPUT` of this image, [max_len, NUM_REGIONS].
      length: `LENGTH_OUTPUT`, the number of words.
    """

    image_id: str
    image_bytes: bytes
    caption: str
    attention: np.ndarray
    length: int


def word_maps(
    caption: str, attention: np.ndarray, length: int, include_end: bool = False
) -> List[Tuple[str, np.ndarray]]:
    """Each word of the caption with its attention weights as a `REGION_GRID` square.

    Args:
      caption: the decoded caption, words joined by spaces (no special tokens).
      attention: [max_len, NUM_REGIONS], row i for emitted token i.
      length: number of words (`LENGTH_OUTPUT`).
      include_end: also return `<end>`'s map (row `length`) when the model emitted one
        (a caption of max_len words was cut off before its `<end>`).

    Returns:
      [(word, weights [REGION_GRID, REGION_GRID])], in caption order; region r at
      [r // REGION_GRID, r % REGION_GRID].

    Raises:
      ValueError: `attention` is not [max_len, NUM_REGIONS], or the caption does not have
        `length` words, or `length` does not fit in max_len.
    """
    attention = np.asarray(attention)
    if attention.ndim != 2 or attention.shape[1] != features.NUM_REGIONS:
        raise ValueError(
            f'attention must be [max_len, {features.NUM_REGIONS}], got {list(attention.shape)}'
        )
    words = caption.split()
    if len(words) != length:
        raise ValueError(f'caption {caption!r} has {len(words)} words but length is {length}')
    if length > attention.shape[0]:
        raise ValueError(f'length {length} exceeds the {attention.shape[0]} attention rows')
    grid = (features.REGION_GRID, features.REGION_GRID)
    maps = [(word, attention[i].reshape(grid)) for i, word in enumerate(words)]
    if include_end and length < attention.shape[0]:
        maps.append((features.END_TOKEN, attention[length].reshape(grid)))
    return maps


def _fit_size(image_size: Tuple[int, int], box: Tuple[int, int]) -> Tuple[int, int]:
    """The largest size inside `box` with the image's aspect ratio (at least 1 x 1)."""
    scale = min(box[0] / image_size[0], box[1] / image_size[1])
    return max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))


def heat(weights: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The grid's weights upsampled bilinearly to `size` (width, height), scaled to max 1.

    Scaling each map to its own maximum shows where a word looked even when its
    attention is spread thin; an all-zero map stays zero.

    Returns:
      float32 [height, width] in [0, 1].
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (features.REGION_GRID, features.REGION_GRID):
        raise ValueError(
            f'weights must be [{features.REGION_GRID}, {features.REGION_GRID}], '
            f'got {list(weights.shape)}'
        )
    upsampled = np.asarray(Image.fromarray(weights, mode='F').resize(size, Image.BILINEAR))
    peak = float(upsampled.max())
    return np.clip(upsampled / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(upsampled)


def overlay(image_bytes: bytes, weights: np.ndarray, size: Tuple[int, int] = TILE) -> Image.Image:
    """The image fitted into `size` with its attention drawn over it as a heat map.

    The colour runs from red (little weight) to yellow (the most) and its
    opacity grows with the weight up to `MAX_ALPHA`, so unattended parts of the
    image show unchanged and the hottest region is the brightest.

    Args:
      image_bytes: an encoded image (any format Pillow reads).
      weights: [REGION_GRID, REGION_GRID] attention weights of one word.
      size: the largest (width, height) of the result.

    Returns:
      An RGB image of the fitted size.

    Raises:
      ValueError: `weights` is not [REGION_GRID, REGION_GRID].
    """
    with Image.open(io.BytesIO(image_bytes)) as img:
        rgb = img.convert('RGB')
    fitted = _fit_size(rgb.size, size)
    hot = heat(weights, fitted)
    pixels = np.asarray(rgb.resize(fitted, Image.BILINEAR), dtype=np.float32)
    colour = np.stack([np.full_like(hot, 255.0), 255.0 * hot, np.zeros_like(hot)], axis=-1)
    alpha = (MAX_ALPHA * hot)[..., None]
    blended = pixels * (1.0 - alpha) + colour * alpha
    return Image.fromarray(np.round(blended).astype(np.uint8), mode='RGB')


def _fit_text(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """`text`, cut with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + '…', font=font) > width:
        text = text[:-1]
    return text + '…'


def attention_strip(
    image_bytes: bytes,
    caption: str,
    attention: np.ndarray,
    length: int,
    include_end: bool = True,
    columns: int = COLUMNS,
    tile: Tuple[int, int] = TILE,
) -> Image.Image:
    """One overlay per word with the word under it, left to right, wrapping after `columns`.

    Args:
      image_bytes: the encoded image the model captioned.
      caption, attention, length: as `word_maps`.
      include_end: add `<end>`'s map, labelled `<end>`: where the model looked when it
        decided the caption was complete.
      columns: overlays per row.
      tile: the largest (width, height) of one overlay.

    Returns:
      An RGB image of ceil(tokens / columns) rows of `columns` cells (fewer for one row).

    Raises:
      ValueError: as `word_maps`, or `columns` < 1.
    """
    if columns < 1:
        raise ValueError(f'columns must be at least 1, got {columns}')
    maps = word_maps(caption, attention, length, include_end=include_end)
    cells = max(1, len(maps))
    per_row = min(columns, cells)
    rows = (cells + columns - 1) // columns
    cell_w, cell_h = tile[0] + 8, tile[1] + LABEL_HEIGHT + 8
    strip = Image.new('RGB', (per_row * cell_w, rows * cell_h), 'white')
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for i, (word, weights) in enumerate(maps):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 4
        picture = overlay(image_bytes, weights, tile)
        strip.paste(picture, (x + (tile[0] - picture.width) // 2, y))
        label = _fit_text(word, draw, font, tile[0])
        label_x = x + (tile[0] - draw.textlength(label, font=font)) / 2
        draw.text((label_x, y + tile[1] + 2), label, fill='black', font=font)
    return strip


def png_base64(image: Image.Image) -> str:
    """The image as a base64 PNG, for a `data:` URI in a self-contained HTML page."""
    out = io.BytesIO()
    image.save(out, format='PNG')
    return base64.b64encode(out.getvalue()).decode('ascii')


def attention_section(captions: Sequence[AttentionCaption], problem: str = '') -> str:
    """The report's "Where the model looked" section; '' when there is nothing to say.

    Args:
      captions: the images captioned by the attention signature; empty for a model
        without one (the report then shows nothing).
      problem: why the maps could not be drawn, shown as one line instead.
    """
    e = html.escape
    title = '<section><h2>Where the model looked</h2>'
    if problem:
        return f'{title}<p>Attention maps missing: {e(problem)}</p></section>'
    if not captions:
        return ''
    parts = [
        title,
        f"<p>Greedy captions of {len(captions)} test images. Under each word, the decoder's "
        f'attention over the {features.REGION_GRID}&times;{features.REGION_GRID} grid of image '
        'regions when it wrote that word (yellow: most weight, scaled per word), then where it '
        'looked when it ended the caption.</p>',
    ]
    for item in captions:
        strip = attention_strip(item.image_bytes, item.caption, item.attention, item.length)
        parts.append(
            f'<h3>{e(item.image_id)}</h3><p><b>{e(item.caption)}</b></p>'
            f'<img src="data:image/png;base64,{png_base64(strip)}" '
            f'alt="{e("attention maps: " + item.caption)}">'
        )
    parts.append('</section>')
    return ''.join(parts)
