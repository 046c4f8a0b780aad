"""The Flickr8k download helper, run offline on local zips through file:// URLs."""

import http.server
import os
import shutil
import threading
import zipfile

import pytest

from tfx_captioning.cli import data_cli, flickr8k_download, sample_data
from tfx_captioning.components.flickr8k_example_gen import layout

DEFAULT_NAMES = [url.rsplit('/', 1)[-1] for url in flickr8k_download.DEFAULT_URLS]


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
    with pytest.raises(flickr8k_download.ArchiveError, match='outside'):
        flickr8k_download.unpack(str(evil), str(tmp_path / 'dest'))
    assert not (tmp_path / 'outside.txt').exists()


# --- Clear errors and restarts, through `caption-data download` ------------------------


def caption_data(dest, urls, *extra):
    argv = ['download', '--out', str(dest)] + [f'--url={url}' for url in urls]
    return data_cli.main([*extra, *argv])


def test_a_damaged_zip_is_refused_before_anything_is_unpacked(tmp_path, capsys):
    urls = make_release_zips(tmp_path)
    images_zip = tmp_path / 'Flickr8k_Dataset.zip'
    with zipfile.ZipFile(images_zip) as archive:
        member = archive.infolist()[0]
    data = bytearray(images_zip.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + 5] ^= 0xFF  # inside its data
    images_zip.write_bytes(bytes(data))
    dest = tmp_path / 'flickr8k'

    assert caption_data(dest, urls) == 1

    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        'caption-data: error: downloaded Flickr8k_Dataset.zip is damaged: member '
        f'{member.filename!r} fails its CRC check; rerun to download Flickr8k_Dataset.zip again'
    )
    assert 'Traceback' not in err
    assert os.listdir(dest) == []  # nothing unpacked, the bad zip not kept


def test_a_partial_zip_is_refused(tmp_path, capsys):
    urls = make_release_zips(tmp_path)
    text_zip = tmp_path / 'Flickr8k_text.zip'
    text_zip.write_bytes(text_zip.read_bytes()[:-100])  # cut: no central directory

    assert caption_data(tmp_path / 'flickr8k', urls) == 1

    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith('caption-data: error: downloaded Flickr8k_text.zip is not a complete zip')


def test_zips_that_are_not_the_flickr8k_release_are_named(tmp_path, capsys):
    urls = make_release_zips(tmp_path)
    with zipfile.ZipFile(tmp_path / 'Flickr8k_text.zip', 'w') as z:
        z.writestr('Flickr8k_text/readme.txt', 'the text files one folder too deep')

    assert caption_data(tmp_path / 'flickr8k', urls) == 1

    err = capsys.readouterr().err.splitlines()[-1]  # after the progress lines
    assert err.startswith('caption-data: error: the downloaded files are not the Flickr8k release')
    assert 'Flickr8k.token.txt' in err


def test_no_space_left_is_found_before_writing(tmp_path, capsys, monkeypatch):
    urls = make_release_zips(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage._replace(free=10 << 20))
    dest = tmp_path / 'flickr8k'

    assert caption_data(dest, urls) == 1

    err = capsys.readouterr().err
    assert 'No space left on device for Flickr8k_Dataset.zip' in err and 'MB are free' in err
    assert os.listdir(dest) == []


def test_a_rerun_skips_what_is_unpacked_and_replaces_a_damaged_zip(tmp_path):
    urls = make_release_zips(tmp_path)
    dest = tmp_path / 'flickr8k'
    # An earlier run left a damaged copy of the text zip, and unpacked nothing.
    dest.mkdir()
    (dest / 'Flickr8k_text.zip').write_bytes(b'PK\x03\x04 half a zip')
    assert caption_data(dest, urls) == 0
    layout.check_layout(str(dest))
    # Everything is unpacked: a rerun downloads nothing (these URLs no longer exist).
    gone = [(tmp_path / 'gone' / url.rsplit('/', 1)[-1]).as_uri() for url in urls]
    assert caption_data(dest, gone) == 0


class _RangeServer(http.server.ThreadingHTTPServer):
    """Serves `files` on loopback with HTTP range requests; can cut the first response short."""

    def __init__(self, files, cut_first_after=None):
        super().__init__(('127.0.0.1', 0), _RangeHandler)
        self.files, self.cut_after, self.ranges = files, cut_first_after, []


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        data = self.server.files[self.path.rsplit('/', 1)[-1]]
        requested = self.headers.get('Range')
        self.server.ranges.append(requested)
        start = int(requested.split('=')[1].rstrip('-')) if requested else 0
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.send_header('Content-Length', str(len(data) - start))
        self.end_headers()
        cut, self.server.cut_after = self.server.cut_after, None
        self.wfile.write(data[start:] if cut is None else data[start : start + cut])

    def log_message(self, *args):
        pass


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, capsys):
    make_release_zips(tmp_path)
    files = {name: (tmp_path / name).read_bytes() for name in DEFAULT_NAMES}
    half = len(files['Flickr8k_Dataset.zip']) // 2
    server = _RangeServer(files, cut_first_after=half)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = [f'http://127.0.0.1:{server.server_port}/{name}' for name in DEFAULT_NAMES]
    dest = tmp_path / 'flickr8k'
    try:
        assert caption_data(dest, urls) == 1  # the connection drops half way
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == (
            'caption-data: error: download failed: download of Flickr8k_Dataset.zip stopped at '
            f'{half} of {2 * half + len(files["Flickr8k_Dataset.zip"]) % 2} bytes; '
            'rerun to resume it'
        )
        assert (dest / 'Flickr8k_Dataset.zip.part').stat().st_size == half

        assert caption_data(dest, urls) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert server.ranges == [None, f'bytes={half}-', None]  # only the rest was fetched again
    layout.check_layout(str(dest))
    assert not list(dest.glob('*.part')) and not list(dest.glob('*.zip'))
