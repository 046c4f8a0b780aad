"""The Flickr8k download helper, run offline on local zips through file:// URLs."""

import os
import zipfile

import pytest

from tfx_captioning.cli import flickr8k_download, sample_data
from tfx_captioning.components.flickr8k_example_gen import layout


def make_release_zips(tmp_path):
    """Zips a sample dataset the way the public release is packed."""
    src = tmp_path / 'src'
    sample_data.generate(str(src), 8)
    images_zip = tmp_path / 'Flickr8k_Dataset.zip'
    with zipfile.ZipFile(images_zip, 'w') as z:
        for name in os.listdir(src / layout.IMAGES_DIR):
            z.write(src / layout.IMAGES_DIR / name, f'{layout.IMAGES_DIR}/{name}')
        z.writestr('__MACOSX/._junk', b'mac metadata')
    text_zip = tmp_path / 'Flickr8k_text.zip'
    with zipfile.ZipFile(text_zip, 'w') as z:
        for name in (layout.TOKEN_FILE, *layout.SPLIT_FILES.values()):
            z.write(src / name, name)
    return [images_zip.as_uri(), text_zip.as_uri()]


def test_download_and_unpack_gives_a_flickr8k_layout(tmp_path):
    urls = make_release_zips(tmp_path)
    seen = []
    dest = tmp_path / 'flickr8k'
    flickr8k_download.download_flickr8k(str(dest), urls, progress=lambda *a: seen.append(a))
    layout.check_layout(str(dest))
    assert len(layout.load_plan(str(dest)).splits['train']) == 6
    assert not (dest / '__MACOSX').exists()
    assert not list(dest.glob('*.zip')) and not list(dest.glob('*.part'))
    assert seen and seen[-1][1] > 0  # progress was reported


def test_failed_download_leaves_no_partial_file(tmp_path):
    with pytest.raises(OSError):
        flickr8k_download.download_flickr8k(str(tmp_path), [(tmp_path / 'missing.zip').as_uri()])
    assert os.listdir(tmp_path) == []


def test_zip_slip_is_refused(tmp_path):
    evil = tmp_path / 'evil.zip'
    with zipfile.ZipFile(evil, 'w') as z:
        z.writestr('../outside.txt', b'x')
    with pytest.raises(ValueError, match='outside'):
        flickr8k_download.unpack(str(evil), str(tmp_path / 'dest'))
    assert not (tmp_path / 'outside.txt').exists()
