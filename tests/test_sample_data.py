"""The generated sample dataset: Flickr8k layout, deterministic, captions true to pixels."""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from tfx_captioning.cli import sample_data
from tfx_captioning.components.flickr8k_example_gen import layout


def digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            h.update(name.encode())
            with open(os.path.join(dirpath, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    sample_data.generate(str(tmp_path / 'a'), 12, seed=7)
    sample_data.generate(str(tmp_path / 'b'), 12, seed=7)
    sample_data.generate(str(tmp_path / 'c'), 12, seed=8)
    assert digest(tmp_path / 'a') == digest(tmp_path / 'b')
    assert digest(tmp_path / 'a') != digest(tmp_path / 'c')


def test_layout_and_split_sizes(tmp_path):
    counts = sample_data.generate(str(tmp_path), 40, seed=0)
    layout.check_layout(str(tmp_path))
    plan = layout.load_plan(str(tmp_path))
    assert {s: len(r) for s, r in plan.splits.items()} == {'train': 30, 'eval': 5, 'test': 5}
    assert sum(counts.values()) == 40
    assert all(v == 0 for v in plan.skipped.values())
    for records in plan.splits.values():
        for record in records:
            assert len(record.captions) == 5
            assert len(set(record.captions)) == 5  # five different wordings
            with Image.open(record.path) as image:
                assert image.format == 'JPEG'


def test_the_truth_file_lists_every_image_by_name_with_its_scene(tmp_path):
    sample_data.generate(str(tmp_path), 10, seed=2)
    lines = (tmp_path / sample_data.ATTRIBUTES_FILE).read_text(encoding='utf-8').splitlines()
    assert lines[0].split('\t') == ['image', *sample_data.ATTRIBUTES]
    images = sorted(os.listdir(tmp_path / layout.IMAGES_DIR))
    assert [line.split('\t')[0] for line in lines[1:]] == images
    assert set(sample_data.ATTRIBUTES) == {f.name for f in dataclasses.fields(sample_data.Scene)}
    # Sorted by image id whatever order the scenes come in.
    scenes = {
        'b.jpg': sample_data.Scene('red', 'circle', 'left', 'small', 'white'),
        'a.jpg': sample_data.Scene('blue', 'square', 'middle', 'big', 'grey'),
    }
    assert sample_data.attribute_lines(scenes)[1:] == [
        'a.jpg\tblue\tsquare\tbig\tmiddle\tgrey',
        'b.jpg\tred\tcircle\tsmall\tleft\twhite',
    ]


def test_too_small_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match='at least 8'):
        sample_data.generate(str(tmp_path), 3)


def _shape_pixels(rgb: np.ndarray) -> np.ndarray:
    """Mask of pixels far from the (corner-sampled) background colour."""
    background = np.median(rgb[:8, :8].reshape(-1, 3), axis=0)
    return np.abs(rgb.astype(int) - background).sum(axis=-1) > 120


def test_captions_follow_from_the_pixels(tmp_path):
    """Colour and position words in every caption are visible in the image."""
    sample_data.generate(str(tmp_path), 60, seed=1)
    plan = layout.load_plan(str(tmp_path))
    for records in plan.splits.values():
        for record in records:
            rgb = np.asarray(Image.open(record.path).convert('RGB'))
            mask = _shape_pixels(rgb)
            assert mask.sum() > 200, record.image_id
            mean = rgb[mask].mean(axis=0)
            colour = min(
                sample_data.COLOURS, key=lambda c: np.abs(mean - sample_data.COLOURS[c]).sum()
            )
            x = np.nonzero(mask)[1].mean() / rgb.shape[1]
            position = 'left' if x < 0.35 else 'right' if x > 0.65 else 'middle'
            first = record.captions[0].lower()
            assert f' {colour} ' in f' {first} ', (record.image_id, first, mean)
            assert position in first, (record.image_id, first, x)


def test_flickr8k_split_sizes_leave_the_rest_in_no_split(tmp_path):
    assert sample_data.flickr8k_split_counts(8091) == {
        'Flickr_8k.trainImages.txt': 6000,
        'Flickr_8k.devImages.txt': 1000,
        'Flickr_8k.testImages.txt': 1000,
    }
    assert list(sample_data.flickr8k_split_counts(809).values()) == [600, 100, 100]
    for n in range(8, 200):
        assert sum(sample_data.flickr8k_split_counts(n).values()) <= n

    sample_data.generate(
        str(tmp_path), 20, seed=0, split_sizes=sample_data.flickr8k_split_counts(20)
    )
    plan = layout.load_plan(str(tmp_path))
    assert {s: len(r) for s, r in plan.splits.items()} == {'train': 15, 'eval': 2, 'test': 2}
    assert plan.skipped[layout.REASON_IN_NO_SPLIT] == 1


def test_split_sizes_above_the_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match='do not fit'):
        sample_data.generate(
            str(tmp_path), 10, split_sizes={name: 4 for name in layout.SPLIT_FILES.values()}
        )


def test_photo_like_images_have_flickr8k_dimensions_and_sizes(tmp_path):
    sample_data.generate(str(tmp_path), 12, seed=0, style=sample_data.PHOTO_LIKE)
    images_dir = tmp_path / layout.IMAGES_DIR
    sizes = []
    for name in sorted(os.listdir(images_dir)):
        with Image.open(images_dir / name) as image:
            assert image.format == 'JPEG' and image.size == (500, 375)
        sizes.append(os.path.getsize(images_dir / name))
    # Flickr8k's JPEGs average 136 KB; these are 100-150 KB.
    assert 90_000 < min(sizes) and max(sizes) < 160_000, sizes


def test_parallel_painting_gives_the_same_bytes(tmp_path):
    for processes in (1, 2):
        sample_data.generate(
            str(tmp_path / str(processes)),
            10,
            seed=4,
            style=sample_data.PHOTO_LIKE,
            processes=processes,
        )
    assert digest(tmp_path / '1') == digest(tmp_path / '2')


def test_the_default_style_is_unchanged_by_the_photo_options():
    """Textured styles add random draws; the default draws exactly as before."""
    import random

    scene = sample_data.Scene('red', 'circle', 'left', 'small', 'white')
    default = sample_data.render(scene, random.Random(3))
    explicit = sample_data.render(scene, random.Random(3), sample_data.ImageStyle())
    assert default == explicit
    assert hashlib.sha256(default).hexdigest() == DEFAULT_RENDER_SHA256


# sha256 of render(Scene('red', 'circle', 'left', 'small', 'white'), Random(3)) before the
# photo-like options existed (commit c12a56c): the demo's data, and its cache, are unchanged.
DEFAULT_RENDER_SHA256 = '089c8aa3683faf2efdad190d70d04f818673958c054797d2660c132b9a7f9def'
