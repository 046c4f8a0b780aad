"""Downloads and unpacks the real Flickr8k dataset into the layout ExampleGen reads.

The two zips of the public release unpack to ``Flicker8k_Dataset/`` and the
text files; this module fetches them (with a progress line), unpacks them
safely into one directory and checks the result. It needs the network; the
tests run it offline on local zips through ``file://`` URLs.
"""

import logging
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from typing import Callable, Optional, Sequence

from tfx_captioning.components.flickr8k_example_gen import layout

RELEASE_URL = 'https://github.com/jbrownlee/Datasets/releases/download/Flickr8k'
DEFAULT_URLS = (
    f'{RELEASE_URL}/Flickr8k_Dataset.zip',
    f'{RELEASE_URL}/Flickr8k_text.zip',
)
_CHUNK = 1 << 20


def _print_progress(name: str, done: int, total: Optional[int]) -> None:
    if total:
        sys.stderr.write(
            f'\r{name}: {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done // total}%)'
        )
    else:
        sys.stderr.write(f'\r{name}: {done / 1e6:.1f} MB')
    sys.stderr.flush()


def fetch(url: str, dest_path: str, progress: Callable = _print_progress) -> str:
    """Downloads `url` to `dest_path` through a temporary file, so no partial file remains."""
    name = url.rsplit('/', 1)[-1]
    tmp_fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(dest_path) or '.', suffix='.part')
    try:
        with urllib.request.urlopen(url) as response, os.fdopen(tmp_fd, 'wb') as out:
            total = response.headers.get('Content-Length')
            total = int(total) if total else None
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                progress(name, done, total)
        os.replace(tmp_path, dest_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    sys.stderr.write('\n')
    return dest_path


def unpack(zip_path: str, dest: str) -> None:
    """Extracts `zip_path` into `dest`, skipping macOS metadata and unsafe paths.

    Raises:
      ValueError: an entry would land outside `dest` (a "zip slip" archive).
    """
    dest_real = os.path.realpath(dest)
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.infolist():
            name = member.filename
            if name.startswith('__MACOSX/') or os.path.basename(name).startswith('._'):
                continue
            target = os.path.realpath(os.path.join(dest, name))
            if not target.startswith(dest_real + os.sep) and target != dest_real:
                raise ValueError(f'{zip_path}: entry {name!r} would be written outside {dest}.')
            archive.extract(member, dest)


def download_flickr8k(
    dest: str,
    urls: Sequence[str] = DEFAULT_URLS,
    keep_zips: bool = False,
    progress: Callable = _print_progress,
) -> str:
    """Downloads and unpacks Flickr8k into `dest`, and checks the layout.

    Zips already present in `dest` are reused, so an interrupted download can be
    restarted. Returns `dest`.

    Raises:
      layout.Flickr8kLayoutError: the unpacked files are not a Flickr8k layout.
    """
    os.makedirs(dest, exist_ok=True)
    for url in urls:
        zip_path = os.path.join(dest, url.rsplit('/', 1)[-1])
        if not os.path.exists(zip_path):
            logging.info('Downloading %s', url)
            fetch(url, zip_path, progress)
        logging.info('Unpacking %s', zip_path)
        unpack(zip_path, dest)
        if not keep_zips:
            os.remove(zip_path)
    macosx = os.path.join(dest, '__MACOSX')
    if os.path.isdir(macosx):
        shutil.rmtree(macosx)
    layout.check_layout(dest)
    return dest
