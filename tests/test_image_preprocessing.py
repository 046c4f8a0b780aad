"""The one image preprocessing function: every format, the size guard, SavedModel use."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import feature_extractor_fixtures as fx
from tfx_captioning.models import features, image_files
from tfx_captioning.models import image_preprocessing as ip

BASE = fx.noise_image()

# (name, PIL image, format, save options, exact): every mode a user may upload.
# Lossless formats must match PIL exactly; JPEG decoders may differ by rounding.
CASES = [
    ('jpeg_rgb', BASE, 'JPEG', {}, False),
    ('jpeg_progressive', BASE, 'JPEG', {'progressive': True}, False),
    ('jpeg_grayscale', BASE.convert('L'), 'JPEG', {}, False),
    ('jpeg_cmyk', BASE.convert('CMYK'), 'JPEG', {}, False),
    ('png_rgb', BASE, 'PNG', {}, True),
    ('png_rgba', BASE.convert('RGBA'), 'PNG', {}, True),
    ('png_grayscale', BASE.convert('L'), 'PNG', {}, True),
    ('png_grayscale_alpha', BASE.convert('LA'), 'PNG', {}, True),
    ('png_palette', BASE.convert('P'), 'PNG', {}, True),
    ('gif', BASE, 'GIF', {}, True),
    ('bmp_rgb', BASE, 'BMP', {}, True),
    ('bmp_rgba', BASE.convert('RGBA'), 'BMP', {}, True),
    ('bmp_grayscale', BASE.convert('L'), 'BMP', {}, True),
    ('bmp_palette', BASE.convert('P'), 'BMP', {}, True),
]
FORMAT_CODES = {
    'JPEG': ip.FORMAT_JPEG,
    'PNG': ip.FORMAT_PNG,
    'GIF': ip.FORMAT_GIF,
    'BMP': ip.FORMAT_BMP,
}


@pytest.mark.parametrize(
    'image,image_format,options,exact', [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_format_and_mode_decodes_to_the_rgb_pil_sees(image, image_format, options, exact):
    data = fx.encode(image, image_format, **options)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'), dtype=np.int32)

    decoded = ip.decode_image(tf.constant(data)).numpy()

    assert decoded.dtype == np.uint8 and decoded.shape == (23, 41, 3)
    difference = np.abs(decoded.astype(np.int32) - expected).max()
    assert difference == 0 if exact else difference <= 8
    assert ip.image_format(data).numpy() == FORMAT_CODES[image_format]
    np.testing.assert_array_equal(ip.image_dimensions(data).numpy(), [23, 41])


@pytest.mark.parametrize(
    'image,image_format,options', [c[1:4] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_plain_python_header_check_reads_what_the_graph_reads(image, image_format, options):
    """`image_files` (server, TFLite runner, ExampleGen, CLIs) and the graph agree."""
    data = fx.encode(image, image_format, **options)
    for candidate in (data, fx.with_dimensions(data, image_format, HUGE, HUGE + 1)):
        header = image_files.read_header(candidate)
        assert ip.image_format(candidate).numpy() == FORMAT_CODES[header.format]
        np.testing.assert_array_equal(
            ip.image_dimensions(candidate).numpy(), [header.height, header.width]
        )


def test_the_graph_refuses_with_the_shared_limit_and_formats():
    too_big = fx.with_dimensions(fx.encode(BASE, 'PNG'), 'PNG', 5000, 8001)  # 40,005,000 pixels
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f'above the limit of {features.MAX_IMAGE_PIXELS} '
    ):
        ip.preprocess_image(tf.constant(too_big))
    with pytest.raises(tf.errors.InvalidArgumentError, match='expected JPEG, PNG, GIF, BMP'):
        ip.preprocess_image(tf.constant(b'not an image'))


def test_animated_gif_gives_its_first_frame():
    red = Image.new('RGB', (20, 10), (255, 0, 0))
    blue = Image.new('RGB', (20, 10), (0, 0, 255))
    data = fx.encode(red, 'GIF', save_all=True, append_images=[blue, blue])

    decoded = ip.decode_image(tf.constant(data)).numpy()

    assert decoded.shape == (10, 20, 3)
    np.testing.assert_array_equal(decoded[5, 5], [255, 0, 0])


def test_preprocess_image_scales_to_minus_one_one_at_299():
    black_and_white = np.zeros((30, 40, 3), np.uint8)
    black_and_white[:, 20:] = 255
    data = fx.encode(Image.fromarray(black_and_white), 'PNG')

    pixels = ip.preprocess_image(tf.constant(data)).numpy()

    assert pixels.shape == (features.IMAGE_SIZE, features.IMAGE_SIZE, 3)
    assert pixels.dtype == np.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    # Far from the edge, black and white map to -1 and 1 (InceptionV3 scaling, not x/255),
    # up to the float rounding of the resize weights.
    np.testing.assert_allclose(pixels[:, :100], -1.0, atol=1e-6)
    np.testing.assert_allclose(pixels[:, -100:], 1.0, atol=1e-6)


def test_batch_gives_exactly_the_pixels_of_single_calls():
    images = [fx.encode(fx.noise_image(seed=s), f) for s, f in enumerate(['JPEG', 'PNG', 'BMP'])]

    batch = ip.preprocess_batch(tf.constant(images)).numpy()

    assert batch.shape == (3, features.IMAGE_SIZE, features.IMAGE_SIZE, 3)
    for row, data in zip(batch, images):
        np.testing.assert_array_equal(row, ip.preprocess_image(tf.constant(data)).numpy())


# --- The size guard --------------------------------------------------------------------

HUGE = 20000


@pytest.mark.parametrize('image_format', ['JPEG', 'PNG', 'GIF', 'BMP'])
def test_dimensions_are_read_from_the_header_of_every_format(image_format):
    data = fx.with_dimensions(fx.encode(BASE, image_format), image_format, HUGE, HUGE + 1)

    np.testing.assert_array_equal(ip.image_dimensions(data).numpy(), [HUGE, HUGE + 1])


@pytest.mark.parametrize('image_format', ['JPEG', 'PNG', 'GIF', 'BMP'])
def test_a_20000_square_header_is_rejected_before_decoding(image_format):
    data = fx.with_dimensions(fx.encode(BASE, image_format), image_format, HUGE, HUGE)

    with pytest.raises(tf.errors.InvalidArgumentError, match='above the limit'):
        ip.preprocess_image(tf.constant(data))


def test_a_real_decodable_huge_png_is_rejected_without_allocating_it(monkeypatch):
    data = fx.huge_png(HUGE, HUGE)  # 1.2 GB of RGB once decoded
    decoder_inputs = []
    decode_image = tf.io.decode_image

    def counted_decode_image(image_bytes, *args, **kwargs):
        # The decoder's input passes through this op first, so the decoder can
        # run only after it has counted.
        def count(value):
            decoder_inputs.append(len(value.numpy()))
            return value

        counted = tf.py_function(count, [image_bytes], tf.string)
        counted.set_shape(image_bytes.shape)
        return decode_image(counted, *args, **kwargs)

    monkeypatch.setattr(tf.io, 'decode_image', counted_decode_image)
    preprocess = tf.function(
        ip.preprocess_image, input_signature=[tf.TensorSpec([], tf.string)], autograph=False
    )
    small = fx.encode(BASE, 'PNG')
    assert preprocess(small).shape[0] == features.IMAGE_SIZE
    assert decoder_inputs == [len(small)]  # The count sees a decode.

    with pytest.raises(tf.errors.InvalidArgumentError, match='above the limit'):
        preprocess(data)
    # Refused from its header: the decoder, which would allocate 1.2 GB, never ran.
    assert decoder_inputs == [len(small)]
    np.testing.assert_array_equal(ip.image_dimensions(data).numpy(), [HUGE, HUGE])


def test_the_limit_is_a_parameter():
    data = fx.encode(BASE, 'PNG')  # 23 x 41 = 943 pixels

    assert ip.preprocess_image(tf.constant(data), max_pixels=943).shape[0] == features.IMAGE_SIZE
    with pytest.raises(tf.errors.InvalidArgumentError, match='limit of 942 pixels'):
        ip.preprocess_image(tf.constant(data), max_pixels=942)


@pytest.mark.parametrize(
    'data,expected_format',
    [
        (b'', ip.FORMAT_UNKNOWN),
        (b'plain text, not an image', ip.FORMAT_UNKNOWN),
        (fx.encode(BASE, 'WEBP'), ip.FORMAT_UNKNOWN),
        (fx.encode(BASE, 'PNG')[:20], ip.FORMAT_PNG),  # header cut inside IHDR
        (fx.encode(BASE, 'GIF')[:5], ip.FORMAT_GIF),
    ],
    ids=['empty', 'text', 'webp', 'png_short_header', 'gif_short_header'],
)
def test_unknown_or_headerless_bytes_are_rejected(data, expected_format):
    assert ip.image_format(data).numpy() == expected_format
    with pytest.raises(tf.errors.InvalidArgumentError):
        ip.preprocess_image(tf.constant(data))


@pytest.mark.parametrize('image_format', ['JPEG', 'PNG', 'GIF', 'BMP'])
def test_truncated_files_are_rejected(image_format):
    data = fx.encode(fx.noise_image(200, 150), image_format)

    with pytest.raises(tf.errors.InvalidArgumentError):
        ip.preprocess_image(tf.constant(data[: len(data) // 2]))


def test_works_inside_a_saved_model(tmp_path):
    """Serving runs the same function from a SavedModel: no py_function, guard included."""

    class Preprocessor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, image_bytes):
            return ip.preprocess_batch(image_bytes, max_pixels=10_000)

    tf.saved_model.save(Preprocessor(), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    images = [fx.encode(BASE, 'JPEG'), fx.encode(BASE.convert('P'), 'BMP')]

    # Graph and eager kernels may round the resize differently in the last bit.
    np.testing.assert_allclose(
        loaded(tf.constant(images)).numpy(),
        ip.preprocess_batch(tf.constant(images)).numpy(),
        atol=1e-6,
    )
    too_big = fx.encode(fx.noise_image(200, 100), 'PNG')
    with pytest.raises(tf.errors.InvalidArgumentError, match='above the limit'):
        loaded(tf.constant([images[0], too_big]))
