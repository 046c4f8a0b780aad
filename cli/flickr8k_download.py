"""Downloads and unpacks the real Flickr8k dataset into the layout ExampleGen reads.

The two zips of the public release unpack to ``Flicker8k_Dataset/`` and the
text files; this module fetches them (with a progress line), checks each zip
in full before unpacking it, unpacks it safely into one directory and checks
the result. It needs the network; the tests run it offline on local zips
through ``file://`` URLs and a loopback HTTP server.

Rerunning after an interruption picks up where it stopped: a zip already
unpacked (a ``.<zip>.unpacked`` marker beside it) is skipped, a complete zip
is reused, and a partial download (``<zip>.part``) is resumed with an HTTP
range request when the server allows it.

Integrity: the release publishes no checksum (the GitHub release page lists
none, and no SHA-256 from its publisher was found), so each zip is verified
with `zipfile.ZipFile.testzip`, which reads every member and checks its
CRC-32: a truncated or corrupted download is refused before anything is
unpacked.
"""

import errno
import http.client
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import Callable, Optional, Sequence

from tfx_captioning.components.flickr8k_example_gen import layout

RELEASE_URL = 'https://github.com/jbrownlee/Datasets/releases/download/Flickr8k'
DEFAULT_URLS = (
    f'{RELEASE_URL}/Flickr8k_Dataset.zip',
    f'{RELEASE_URL}/Flickr8k_text.zip',
)
PARTIAL_SUFFIX = '.part'
UNPACKED_MARKER_SUFFIX = '.unpacked'
_CHUNK = 1 << 20
_SPACE_MARGIN_BYTES = 64 << 20
"""Kept free beyond what a download or an unpack needs: the file system needs room too."""


class ArchiveError(ValueError):
    """A zip that must not be unpacked: damaged, truncated, or with unsafe paths."""


def _print_progress(name: str, done: int, total: Optional[int]) -> None:
    if total:
        sys.stderr.write(
            f'\r{name}: {done / 1e6:.1f} / {total / 1e6:.1f} MB ({100 * done // total}%)'
        )
    else:
        sys.stderr.write(f'\r{name}: {done / 1e6:.1f} MB')
    sys.stderr.flush()


def check_free_space(directory: str, needed_bytes: int, what: str) -> None:
    """Fails before writing when `directory` cannot hold `needed_bytes` more.

    Raises:
      OSError: ENOSPC, saying how much is needed and how much is free.
    """
    free = shutil.disk_usage(directory).free
    if free < needed_bytes + _SPACE_MARGIN_BYTES:
        raise OSError(
            errno.ENOSPC,
            f'No space left on device for {what}: it needs {needed_bytes / 1e6:.0f} MB in '
            f'{directory}, {free / 1e6:.0f} MB are free. Free some space and rerun: '
            'what is already downloaded is kept',
        )


def fetch(url: str, dest_path: str, progress: Callable = _print_progress) -> str:
    """Downloads `url` to `dest_path`, resuming `dest_path + '.part'` when it exists.

    The bytes go to the ``.part`` file, renamed to `dest_path` only once
    complete, so a partial download is never taken for a zip. An interrupted
    download keeps its ``.part`` file; the next call asks the server for the
    rest (an HTTP range request) and starts over when the server ignores it.

    Raises:
      OSError: the network failed (`urllib.error.URLError`), the download
        ended early, or the disk is full (checked before writing when the
        server announces the size).
    """
    name = url.rsplit('/', 1)[-1]
    partial = dest_path + PARTIAL_SUFFIX
    reported = []

    def report(done: int, total: Optional[int]) -> None:
        reported.append(done)
        progress(name, done, total)

    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={have}-'} if have else {})
    try:
        with urllib.request.urlopen(request) as response:
            resumed = have and getattr(response, 'status', None) == 206
            if have and not resumed:
                logging.info('%s: the server cannot resume; downloading it again.', name)
                have = 0
            length = response.headers.get('Content-Length')
            total = have + int(length) if length else None
            if length:
                check_free_space(os.path.dirname(dest_path) or '.', int(length), name)
            done = have
            with open(partial, 'ab' if resumed else 'wb') as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    report(done, total)
    except urllib.error.HTTPError as error:
        if have and error.code == 416:  # The range starts at the end: restart cleanly.
            os.remove(partial)
            return fetch(url, dest_path, progress)
        raise
    except http.client.HTTPException as error:  # e.g. IncompleteRead: the connection dropped
        raise ConnectionError(
            f'download of {name} was cut off ({type(error).__name__}); rerun to resume it'
        ) from error
    finally:
        if os.path.exists(partial) and os.path.getsize(partial) == 0:
            os.remove(partial)  # Nothing to resume.
        if reported:
            sys.stderr.write('\n')  # End the progress line, before any error message.
    if total is not None and done < total:
        raise ConnectionError(
            f'download of {name} stopped at {done} of {total} bytes; rerun to resume it'
        )
    os.replace(partial, dest_path)
    return dest_path


def verify_zip(zip_path: str) -> None:
    """Reads every member of a zip and checks its CRC-32 (`ZipFile.testzip`).

    Raises:
      ArchiveError: the file is not a zip, is truncated, or a member is damaged.
    """
    name = os.path.basename(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise ArchiveError(f'{name} is not a complete zip archive ({error})') from error
    if damaged is not None:
        raise ArchiveError(f'{name} is damaged: member {damaged!r} fails its CRC check')


def unpack(zip_path: str, dest: str) -> None:
    """Extracts `zip_path` into `dest`, skipping macOS metadata and unsafe paths.

    Checks every entry's path and the free space before writing anything.

    Raises:
      ArchiveError: an entry would land outside `dest` (a "zip slip" archive),
        or the file is not a zip.
      OSError: not enough space for the unpacked files.
    """
    dest_real = os.path.realpath(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise ArchiveError(
            f'{os.path.basename(zip_path)} is not a zip archive ({error})'
        ) from error
    with archive:
        members = []
        for member in archive.infolist():
            name = member.filename
            if name.startswith('__MACOSX/') or os.path.basename(name).startswith('._'):
                continue
            target = os.path.realpath(os.path.join(dest, name))
            if not target.startswith(dest_real + os.sep) and target != dest_real:
                raise ArchiveError(f'{zip_path}: entry {name!r} would be written outside {dest}.')
            members.append(member)
        check_free_space(
            dest, sum(m.file_size for m in members), f'unpacking {os.path.basename(zip_path)}'
        )
        for member in members:
            archive.extract(member, dest)


def _zip_to_unpack(url: str, zip_path: str, progress: Callable) -> None:
    """Makes `zip_path` a complete, verified zip: the one there if it is sound, else a download."""
    name = os.path.basename(zip_path)
    if os.path.exists(zip_path):
        try:
            verify_zip(zip_path)
            logging.info('Reusing %s', zip_path)
            return
        except ArchiveError as error:
            logging.warning('%s; downloading it again.', error)
            os.remove(zip_path)
    logging.info('Downloading %s', url)
    fetch(url, zip_path, progress)
    try:
        verify_zip(zip_path)
    except ArchiveError as error:
        os.remove(zip_path)  # A rerun downloads it afresh instead of resuming bad bytes.
        raise ArchiveError(f'downloaded {error}; rerun to download {name} again') from error


def download_flickr8k(
    dest: str,
    urls: Sequence[str] = DEFAULT_URLS,
    keep_zips: bool = False,
    progress: Callable = _print_progress,
) -> str:
    """Downloads, verifies and unpacks Flickr8k into `dest`, and checks the layout.

    Restartable: a zip unpacked by an earlier call is skipped, a sound zip
    already in `dest` is reused, a partial download is resumed. Returns `dest`.

    Raises:
      OSError: a network failure, or no space left (with what is needed).
      ArchiveError: a zip is damaged or unsafe even after a fresh download.
      layout.Flickr8kLayoutError: the unpacked files are not a Flickr8k layout.
    """
    os.makedirs(dest, exist_ok=True)
    markers = []
    for url in urls:
        zip_name = url.rsplit('/', 1)[-1]
        zip_path = os.path.join(dest, zip_name)
        marker = os.path.join(dest, f'.{zip_name}{UNPACKED_MARKER_SUFFIX}')
        if os.path.exists(marker):
            logging.info('%s was unpacked by an earlier run.', zip_name)
            markers.append(marker)
            continue
        _zip_to_unpack(url, zip_path, progress)
        logging.info('Unpacking %s', zip_path)
        unpack(zip_path, dest)
        open(marker, 'w').close()
        if not keep_zips:
            os.remove(zip_path)
    macosx = os.path.join(dest, '__MACOSX')
    if os.path.isdir(macosx):
        shutil.rmtree(macosx)
    try:
        layout.check_layout(dest)
    except layout.Flickr8kLayoutError as error:
        if not markers:
            raise
        hint = ', '.join(os.path.basename(m) for m in markers)
        raise layout.Flickr8kLayoutError(
            f'{error} Files unpacked by an earlier run are gone: delete {hint} to unpack again.'
        ) from error
    return dest
