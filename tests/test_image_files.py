"""The shared image rule without TensorFlow: formats, header sizes, the pixel limit, file lists."""

import io
import json
import os
import struct
import subprocess
import sys

import pytest
from PIL import Image

from tests import bad_images
from tfx_captioning.models import features, image_files


def encode(image_format: str, size=(41, 23), **options) -> bytes:
    out = io.BytesIO()
    Image.new('RGB', size, (200, 100, 50)).save(out, format=image_format, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    'image_format,options',
    [('JPEG', {}), ('JPEG', {'progressive': True}), ('PNG', {}), ('GIF', {}), ('BMP', {})],
    ids=['jpeg', 'jpeg_progressive', 'png', 'gif', 'bmp'],
)
def test_every_accepted_format_is_read_from_its_header(image_format, options):
    header = image_files.check_image(encode(image_format, **options))
    assert header == image_files.ImageHeader(image_format, 41, 23)
    assert header.format in features.IMAGE_FORMATS


def test_an_os2_bmp_and_a_top_down_bmp_declare_their_size():
    bmp = bytearray(encode('BMP'))
    bmp[22:26] = struct.pack('<i', -23)  # rows stored top-down
    assert image_files.read_header(bytes(bmp)).height == 23
    core = b'BM' + b'\0' * 12 + struct.pack('<IHH', 12, 41, 23)  # BITMAPCOREHEADER
    assert image_files.read_header(core) == image_files.ImageHeader('BMP', 41, 23)


def test_the_bomb_is_refused_from_its_header_with_its_size():
    with pytest.raises(image_files.ImageError) as caught:
        image_files.check_image(bad_images.png_bomb())
    assert caught.value.reason == image_files.TOO_MANY_PIXELS
    assert str(caught.value) == (
        'too many pixels: PNG of 30000x30000 = 900,000,000 pixels, '
        f'above the limit of {features.MAX_IMAGE_PIXELS:,}'
    )


def test_pillow_agrees_the_bomb_is_30000_square_without_decoding_it(monkeypatch):
    # Pillow's own guard refuses to even open it; lifted, it reads the size lazily.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bad_images.png_bomb()))
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', None)
    with Image.open(io.BytesIO(bad_images.png_bomb())) as image:
        assert image.size == (bad_images.BOMB_SIZE, bad_images.BOMB_SIZE)


def test_the_limit_is_a_parameter():
    data = encode('PNG')  # 41 x 23 = 943 pixels
    assert image_files.check_image(data, max_pixels=943).width == 41
    with pytest.raises(image_files.ImageError, match='943 pixels, above the limit of 942'):
        image_files.check_image(data, max_pixels=942)


@pytest.mark.parametrize(
    'data,reason,message',
    [
        (b'', image_files.EMPTY, 'empty image'),
        (
            b'shopping list',
            image_files.UNSUPPORTED_FORMAT,
            'unsupported format: not a JPEG, PNG, GIF or BMP image',
        ),
        (
            encode('TIFF'),
            image_files.UNSUPPORTED_FORMAT,
            'unsupported format: TIFF (accepted: JPEG, PNG, GIF, BMP)',
        ),
        (encode('PNG')[:20], image_files.NOT_DECODABLE, 'not decodable: PNG header is cut short'),
        (encode('GIF')[:7], image_files.NOT_DECODABLE, 'not decodable: GIF header is cut short'),
        (encode('JPEG')[:40], image_files.NOT_DECODABLE, 'not decodable: JPEG header is cut short'),
    ],
    ids=['empty', 'text', 'tiff', 'png_cut', 'gif_cut', 'jpeg_cut'],
)
def test_each_refusal_has_a_one_line_reason(data, reason, message):
    with pytest.raises(image_files.ImageError) as caught:
        image_files.check_image(data)
    assert caught.value.reason == reason
    assert str(caught.value).startswith(message) and '\n' not in str(caught.value)


def test_a_directory_stands_for_its_images_sorted(tmp_path):
    folder = bad_images.write_image_folder(str(tmp_path / 'photos'))
    (tmp_path / 'empty').mkdir()
    listed = image_files.list_image_files(
        [str(tmp_path / 'one.jpg'), folder, str(tmp_path / 'empty')]
    )
    assert listed == (
        [str(tmp_path / 'one.jpg')]
        + [os.path.join(folder, name) for name in sorted({**bad_images.GOOD, **bad_images.BAD})]
        + [str(tmp_path / 'empty')]
    )


def test_reading_files_names_what_is_wrong(tmp_path):
    (tmp_path / 'empty').mkdir()
    cases = {str(tmp_path / 'missing.jpg'): 'unreadable: no such file'}
    cases[str(tmp_path / 'empty')] = 'unreadable: a directory with no image files'
    for path, message in cases.items():
        with pytest.raises(image_files.ImageError, match=message):
            image_files.read_image_file(path)
    good = tmp_path / 'good.png'
    good.write_bytes(encode('PNG'))
    assert image_files.read_image_file(str(good)) == good.read_bytes()


def test_results_are_written_one_line_per_file_with_the_exit_status():
    results = [
        image_files.CaptionResult('a.jpg', caption='a red picture'),
        image_files.CaptionResult('b.png', error='empty image'),
    ]
    out, err = io.StringIO(), io.StringIO()
    assert image_files.write_results(results, out=out, err=err) == 1
    assert out.getvalue() == 'a.jpg\ta red picture\n'
    assert err.getvalue() == 'b.png\terror: empty image\n1 of 2 files could not be captioned.\n'
    out, err = io.StringIO(), io.StringIO()
    assert image_files.write_results(results, as_json=True, out=out, err=err) == 1
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {'file': 'a.jpg', 'caption': 'a red picture'},
        {'file': 'b.png', 'error': 'empty image'},
    ]
    assert err.getvalue() == ''
    assert image_files.write_results(results[:1], out=io.StringIO()) == 0


def test_the_module_needs_no_tensorflow():
    code = (
        'import sys\n'
        'from tfx_captioning.models import image_files\n'
        "image_files.check_image(open(sys.argv[1], 'rb').read())\n"
        "assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    png = os.path.join(os.path.dirname(__file__), '..', 'docs', 'contact_sheet.png')
    out = subprocess.run([sys.executable, '-c', code, png], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
