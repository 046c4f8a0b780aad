"""A generated sample dataset in exactly the Flickr8k file layout.

Each image is a real JPEG of one coloured shape (circle, square or triangle) of
some size at some position on a tinted background; its five captions are
worded differently but each states what is visible, so captions follow from
the pixels and a model can learn them from InceptionV3 features. The same seed
always gives the same files, byte for byte.

By default the images are small (320x240) and flat, about 10 KB each: quick
to generate and to train on. `PHOTO_LIKE` makes them cost what Flickr8k's
photos cost to read and decode (500x375, grain and shading, 100-150 KB at JPEG
quality 90), and `flickr8k_split_counts` gives Flickr8k's split sizes with
some images in no split, for benchmarks at the real dataset's scale
(`benchmarks/flickr8k_scale.py`).

Beside the Flickr8k files, `generate` writes the truth the captions come from:
`ATTRIBUTES_FILE` at the data root, one tab-separated line per image with its
colour, shape, size, position and background. Flickr8k has no such file, so
a model trained on the sample data can be checked against what each image
really shows (`cli/attributes.py`), not only against reference wordings. The
layout checks ignore files they do not name, so the extra file changes
nothing for ExampleGen or its cache.

Used by the demo (`make demo`) and the tests; `caption-data sample --help`.
"""

import contextlib
import dataclasses
import functools
import io
import multiprocessing
import os
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from tfx_captioning.components.flickr8k_example_gen import layout

COLOURS: Mapping[str, Sequence[int]] = {
    'red': (220, 30, 30),
    'green': (30, 170, 40),
    'blue': (30, 60, 220),
    'yellow': (240, 220, 20),
}
SHAPES = ('circle', 'square', 'triangle')
POSITIONS = ('left', 'middle', 'right')
SIZES = ('small', 'big')
BACKGROUNDS: Mapping[str, Sequence[int]] = {
    'white': (245, 245, 245),
    'grey': (128, 128, 128),
    'black': (15, 15, 15),
}
ATTRIBUTES = ('colour', 'shape', 'size', 'position', 'background')
"""The truth file's columns after the image id; each is a `Scene` field."""
ATTRIBUTE_VALUES: Mapping[str, Sequence[str]] = {
    'colour': tuple(COLOURS),
    'shape': SHAPES,
    'size': SIZES,
    'position': POSITIONS,
    'background': tuple(BACKGROUNDS),
}
"""Every value each attribute can take, as the captions word it."""
ATTRIBUTES_FILE = 'sample_attributes.tsv'
"""At the data root: `image` and the `ATTRIBUTES`, tab-separated, one line per image."""
WIDTH, HEIGHT = 320, 240
_RADIUS = {'small': 28, 'big': 56}
JPEG_QUALITY = 90

# Flickr8k as released: 8,091 images, of which the split files list
# 6,000 / 1,000 / 1,000; the other 91 are captioned but in no split.
FLICKR8K_IMAGES = 8091
FLICKR8K_SPLITS = {'train': 6000, 'eval': 1000, 'test': 1000}


@dataclasses.dataclass(frozen=True)
class ImageStyle:
    """How the images look: size and how much photographic texture they carry.

    Attributes:
      width: image width in pixels.
      height: image height in pixels.
      grain: standard deviation (grey levels) of per-pixel noise.
      texture: standard deviation (grey levels) of noise at half resolution,
        the mid-frequency detail that makes a photo's JPEG large and slow to
        decode; 0 for flat images.
      shading: amplitude (grey levels) of smooth random shading over the whole
        image, like light falling across a scene; 0 for none.
    """

    width: int = WIDTH
    height: int = HEIGHT
    grain: float = 0.0
    texture: float = 0.0
    shading: float = 0.0

    def validate(self) -> 'ImageStyle':
        """Returns self.

        Raises:
          ValueError: an image below 64x64 or a negative amplitude.
        """
        if self.width < 64 or self.height < 64:
            raise ValueError(f'images must be at least 64x64, got {self.width}x{self.height}.')
        if min(self.grain, self.texture, self.shading) < 0:
            raise ValueError(
                f'grain, texture and shading must be >= 0, got '
                f'{self.grain}, {self.texture}, {self.shading}.'
            )
        return self

    @property
    def textured(self) -> bool:
        return bool(self.grain or self.texture or self.shading)


DEFAULT_STYLE = ImageStyle()
PHOTO_LIKE = ImageStyle(width=500, height=375, grain=16.0, texture=55.0, shading=40.0)
"""Flickr8k's typical photo: 500x375, about 100-150 KB at JPEG quality 90 (the
released JPEGs average 1.1 GB / 8,091 = 136 KB)."""


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one sample image shows."""

    colour: str
    shape: str
    position: str
    size: str
    background: str

    def captions(self) -> List[str]:
        """Five differently worded captions, each true of the picture."""
        c, s, p, z, b = self.colour, self.shape, self.position, self.size, self.background
        side = 'in the middle' if p == 'middle' else f'on the {p}'
        return [
            f'A {c} {s} {side}.',
            f'A {z} {c} {s} {side} of the picture.',
            f'There is a {c} {s} {side}',
            f'a {z} {c} {s} on a {b} background',
            f'A picture of a {c} {s} {side}, drawn on {b}.',
        ]


def random_scene(rng: random.Random) -> Scene:
    """Draws a scene uniformly over colours, shapes, positions, sizes, backgrounds."""
    return Scene(
        colour=rng.choice(sorted(COLOURS)),
        shape=rng.choice(SHAPES),
        position=rng.choice(POSITIONS),
        size=rng.choice(SIZES),
        background=rng.choice(sorted(BACKGROUNDS)),
    )


def _centre_x(position: str, width: int) -> int:
    return {'left': width // 5, 'middle': width // 2, 'right': width - width // 5}[position]


def _add_texture(image: Image.Image, style: ImageStyle, seed: int) -> Image.Image:
    """Adds smooth shading, half-resolution texture and grain, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    size = (style.width, style.height)
    pixels = np.asarray(image, np.float32)

    def upsampled(noise: np.ndarray, resample: int) -> np.ndarray:
        # PIL resizes uint8 images: carry the signed noise around 128.
        small = Image.fromarray((noise + 128).clip(0, 255).astype(np.uint8), 'RGB')
        return np.asarray(small.resize(size, resample), np.float32) - 128

    if style.shading:
        coarse = rng.uniform(-style.shading, style.shading, size=(4, 5, 3)).astype(np.float32)
        pixels += upsampled(coarse, Image.BICUBIC)
    if style.texture:
        half = (style.height + 1) // 2, (style.width + 1) // 2, 3
        pixels += upsampled(
            rng.standard_normal(half, dtype=np.float32) * style.texture, Image.BILINEAR
        )
    if style.grain:
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * style.grain
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), 'RGB')


@dataclasses.dataclass(frozen=True)
class _Drawing:
    """Everything random about one image, drawn in the seeded order; painting is pure."""

    tint: Tuple[int, ...]
    shape: str
    colour: Tuple[int, ...]
    centre: Tuple[int, int]
    radius: int
    texture_seed: Optional[int]


def _plan(scene: Scene, rng: random.Random, style: ImageStyle) -> _Drawing:
    scale = style.width / WIDTH
    tint = tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in BACKGROUNDS[scene.background])
    radius = round((_RADIUS[scene.size] + rng.randint(-4, 4)) * scale)
    cx = _centre_x(scene.position, style.width) + round(rng.randint(-10, 10) * scale)
    cy = style.height // 2 + round(rng.randint(-30, 30) * scale)
    colour = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[scene.colour])
    texture_seed = rng.getrandbits(64) if style.textured else None
    return _Drawing(tint, scene.shape, colour, (cx, cy), radius, texture_seed)


def _paint(drawing: _Drawing, style: ImageStyle) -> bytes:
    image = Image.new('RGB', (style.width, style.height), drawing.tint)
    draw = ImageDraw.Draw(image)
    (cx, cy), r = drawing.centre, drawing.radius
    if drawing.shape == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=drawing.colour)
    elif drawing.shape == 'square':
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=drawing.colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=drawing.colour)
    if drawing.texture_seed is not None:
        image = _add_texture(image, style, drawing.texture_seed)
    out = io.BytesIO()
    image.save(out, format='JPEG', quality=JPEG_QUALITY)
    return out.getvalue()


def render(scene: Scene, rng: random.Random, style: ImageStyle = DEFAULT_STYLE) -> bytes:
    """Renders `scene` as JPEG bytes, with small jitter so no two images are equal.

    Sizes and offsets scale with the image width, so the scene reads the same
    at every size; the default style gives the same bytes as ever.
    """
    return _paint(_plan(scene, rng, style), style)


def attribute_lines(scenes: Mapping[str, Scene]) -> List[str]:
    """The truth file's lines: a header, then each image's attributes, sorted by image id.

    Sorted so the file is the same bytes however the images were drawn.
    """
    header = '\t'.join(('image', *ATTRIBUTES))
    return [header] + [
        '\t'.join((image_id, *(getattr(scenes[image_id], name) for name in ATTRIBUTES)))
        for image_id in sorted(scenes)
    ]


def split_counts(num_images: int) -> Dict[str, int]:
    """Train/eval/test sizes in Flickr8k's proportions (6000/1000/1000)."""
    if num_images < 8:
        raise ValueError(f'num_images must be at least 8, got {num_images}.')
    held_out = max(1, num_images // 8)
    return {
        layout.SPLIT_FILES['train']: num_images - 2 * held_out,
        layout.SPLIT_FILES['eval']: held_out,
        layout.SPLIT_FILES['test']: held_out,
    }


def flickr8k_split_counts(num_images: int) -> Dict[str, int]:
    """Flickr8k's split sizes scaled to `num_images`; the remainder goes in no split.

    8,091 images give exactly 6,000 / 1,000 / 1,000 and 91 in no split, as
    released; 809 give 600 / 100 / 100 and 9.
    """
    if num_images < 8:
        raise ValueError(f'num_images must be at least 8, got {num_images}.')
    held_out = max(1, round(num_images * FLICKR8K_SPLITS['eval'] / FLICKR8K_IMAGES))
    train = round(num_images * FLICKR8K_SPLITS['train'] / FLICKR8K_IMAGES)
    return {
        layout.SPLIT_FILES['train']: min(train, num_images - 2 * held_out),
        layout.SPLIT_FILES['eval']: held_out,
        layout.SPLIT_FILES['test']: held_out,
    }


def generate(
    root: str,
    num_images: int = 320,
    seed: int = 0,
    style: ImageStyle = DEFAULT_STYLE,
    split_sizes: Optional[Mapping[str, int]] = None,
    processes: int = 1,
) -> Dict[str, int]:
    """Writes a Flickr8k-layout dataset of `num_images` images under `root`.

    Also writes `ATTRIBUTES_FILE`, every image's true attributes.

    Args:
      root: output directory; created if needed. Existing sample files are
        overwritten, other files are left alone.
      num_images: total images.
      seed: the same seed gives the same bytes.
      style: image size and texture (`DEFAULT_STYLE`: small, flat images).
      split_sizes: images per split file name, taken in order; images left
        over are captioned but listed in no split (as in Flickr8k). Default:
        all images, split 6:1:1 into train/dev/test (`split_counts`).
      processes: processes that paint and encode images (photo-like images
        take about 0.1 s each); the bytes do not depend on it, because every
        random draw is made in order in this process.

    Returns:
      The number of images written per split file name.

    Raises:
      ValueError: too few images, a bad style, or split sizes above `num_images`.
    """
    style.validate()
    counts = dict(split_sizes) if split_sizes is not None else split_counts(num_images)
    if sum(counts.values()) > num_images or min(counts.values(), default=0) < 0:
        raise ValueError(f'split sizes {counts} do not fit in {num_images} images.')
    rng = random.Random(seed)
    images_dir = os.path.join(root, layout.IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    token_lines = []
    image_ids = []
    drawings = []
    scenes = {}
    for index in range(num_images):
        image_id = f'{seed:04d}{index:06d}_sample.jpg'
        scene = random_scene(rng)
        drawings.append(_plan(scene, rng, style))
        token_lines.extend(f'{image_id}#{n}\t{text}' for n, text in enumerate(scene.captions()))
        image_ids.append(image_id)
        scenes[image_id] = scene
    paint = functools.partial(_paint, style=style)
    with contextlib.ExitStack() as stack:
        if processes > 1:
            # fork: workers need only this module's functions, and spawn would
            # re-run a caller's script that lacks a __main__ guard.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
            pool = stack.enter_context(context.Pool(processes))
            encoded = pool.imap(paint, drawings, chunksize=16)
        else:
            encoded = map(paint, drawings)
        for image_id, data in zip(image_ids, encoded):
            with open(os.path.join(images_dir, image_id), 'wb') as f:
                f.write(data)
    _write_lines(os.path.join(root, layout.TOKEN_FILE), token_lines)
    _write_lines(os.path.join(root, ATTRIBUTES_FILE), attribute_lines(scenes))
    start = 0
    for name, count in counts.items():
        _write_lines(os.path.join(root, name), image_ids[start : start + count])
        start += count
    return counts


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(lines) + '\n')
