"""A generated sample dataset in exactly the Flickr8k file layout.

Each image is a real JPEG of one coloured shape (circle, square or triangle) of
some size at some position on a tinted background; its five captions are
worded differently but each states what is visible, so captions follow from
the pixels and a model can learn them from InceptionV3 features. The same seed
always gives the same files, byte for byte.

Used by the demo (`make demo`) and the tests; `caption-data sample --help`.
"""

import dataclasses
import io
import os
import random
from typing import Dict, List, Mapping, Sequence

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
WIDTH, HEIGHT = 320, 240
_RADIUS = {'small': 28, 'big': 56}
_CENTRE_X = {'left': WIDTH // 5, 'middle': WIDTH // 2, 'right': WIDTH - WIDTH // 5}


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


def render(scene: Scene, rng: random.Random) -> bytes:
    """Renders `scene` as JPEG bytes, with small jitter so no two images are equal."""
    tint = [max(0, min(255, v + rng.randint(-12, 12))) for v in BACKGROUNDS[scene.background]]
    image = Image.new('RGB', (WIDTH, HEIGHT), tuple(tint))
    draw = ImageDraw.Draw(image)
    r = _RADIUS[scene.size] + rng.randint(-4, 4)
    cx = _CENTRE_X[scene.position] + rng.randint(-10, 10)
    cy = HEIGHT // 2 + rng.randint(-30, 30)
    colour = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[scene.colour])
    if scene.shape == 'circle':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif scene.shape == 'square':
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    out = io.BytesIO()
    image.save(out, format='JPEG', quality=90)
    return out.getvalue()


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


def generate(root: str, num_images: int = 320, seed: int = 0) -> Dict[str, int]:
    """Writes a Flickr8k-layout dataset of `num_images` images under `root`.

    Args:
      root: output directory; created if needed. Existing sample files are
        overwritten, other files are left alone.
      num_images: total images, split 6:1:1 into train/dev/test like Flickr8k.
      seed: the same seed gives the same bytes.

    Returns:
      The number of images written per split file name.
    """
    rng = random.Random(seed)
    images_dir = os.path.join(root, layout.IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    token_lines = []
    image_ids = []
    for index in range(num_images):
        image_id = f'{seed:04d}{index:06d}_sample.jpg'
        scene = random_scene(rng)
        with open(os.path.join(images_dir, image_id), 'wb') as f:
            f.write(render(scene, rng))
        token_lines.extend(f'{image_id}#{n}\t{text}' for n, text in enumerate(scene.captions()))
        image_ids.append(image_id)
    _write_lines(os.path.join(root, layout.TOKEN_FILE), token_lines)
    counts = split_counts(num_images)
    start = 0
    for name, count in counts.items():
        _write_lines(os.path.join(root, name), image_ids[start : start + count])
        start += count
    return counts


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(lines) + '\n')
