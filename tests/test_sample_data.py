"""The generated sample dataset: Flickr8k layout, deterministic, captions true to pixels."""

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
