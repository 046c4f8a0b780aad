"""The one image preprocessing function: encoded bytes -> InceptionV3 input.

Used by the ImageFeatureExtractor component **and** inside the exported
serving graph, so training and serving see identical pixels (no skew). Every
function here is pure TensorFlow (no `py_function`), so it traces into a
SavedModel and runs in TF Serving.

What it accepts:

* JPEG (baseline, progressive, grayscale, CMYK), PNG (8/16-bit, grayscale,
  palette, with alpha), GIF (the first frame of an animation) and BMP (24/32
  bit, and 8-bit palette or grayscale, looked up through the colour table).
* Alpha is dropped, grayscale is repeated to RGB, so the result is always RGB.

What it rejects, with `tf.errors.InvalidArgumentError`:

* Empty input or bytes that are none of the four formats.
* Images whose header declares more than `max_pixels` pixels (or zero); by
  default `features.MAX_IMAGE_PIXELS`, the limit every runtime shares. The
  width and height are read from the header with string ops **before** any
  decoding, so a 20000x20000 image (1.2 GB of RGB) never allocates its pixels.
  `models.image_files` reads the same fields without TensorFlow for the
  runtimes that check before calling the graph.
* Anything the decoders refuse: truncated or corrupt files, 1/4-bit BMPs.

Pixels are then resized to `features.IMAGE_SIZE` square (bilinear, with
antialiasing, aspect ratio not kept) and scaled to [-1, 1] as InceptionV3 was
trained (`tf.keras.applications.inception_v3.preprocess_input`), not `x / 255.`.
"""

import tensorflow as tf

from tfx_captioning.models import features, image_files

# Format codes returned by `image_format`.
FORMAT_UNKNOWN = 0
FORMAT_JPEG = 1
FORMAT_PNG = 2
FORMAT_GIF = 3
FORMAT_BMP = 4

# `image_files.MAGIC_BYTES` are the prefixes `tf.io.decode_image` dispatches on,
# so a format recognised here is exactly one that the decoder will try.

# Every header field read below lies in the first 50 bytes. Appending this many
# zero bytes lets `tf.strings.substr` read any field of a short (truncated)
# input without failing: the field reads as 0, which the size check rejects.
_HEADER_PADDING = b'\x00' * 64

_BMP_PALETTE_BITS = 8


def _as_scalar_string(image_bytes: tf.Tensor) -> tf.Tensor:
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    image_bytes.shape.assert_has_rank(0)
    return image_bytes


def _read_uint(padded_bytes: tf.Tensor, offset, size: int, little_endian: bool) -> tf.Tensor:
    """Reads an unsigned integer of `size` bytes at `offset` as int64.

    Args:
      padded_bytes: scalar string, already padded with `_HEADER_PADDING`.
      offset: byte offset (Python int or int scalar tensor).
      size: 1, 2 or 4 bytes.
      little_endian: byte order of the field.
    """
    raw = tf.io.decode_raw(tf.strings.substr(padded_bytes, offset, size), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    weights = tf.constant([256**i for i in range(size)], dtype=tf.int64)
    if not little_endian:
        weights = tf.reverse(weights, axis=[0])
    return tf.reduce_sum(raw * weights)


def _to_signed_int32(value: tf.Tensor) -> tf.Tensor:
    """An int64 holding an unsigned 32-bit field, reinterpreted as signed."""
    return tf.where(value >= 2**31, value - 2**32, value)


def image_format(image_bytes: tf.Tensor) -> tf.Tensor:
    """The format of one encoded image, from its first bytes.

    Args:
      image_bytes: scalar string.

    Returns:
      int32 scalar: one of `FORMAT_JPEG`, `FORMAT_PNG`, `FORMAT_GIF`,
      `FORMAT_BMP`, or `FORMAT_UNKNOWN` (also for empty input).
    """
    image_bytes = _as_scalar_string(image_bytes)
    head3 = tf.strings.substr(image_bytes, 0, 3)
    head2 = tf.strings.substr(image_bytes, 0, 2)
    code = tf.constant(FORMAT_UNKNOWN)
    # Checked in the reverse of decode_image's order so that its first match wins.
    code = tf.where(tf.equal(head2, image_files.BMP_MAGIC), FORMAT_BMP, code)
    code = tf.where(tf.equal(head3, image_files.GIF_MAGIC), FORMAT_GIF, code)
    code = tf.where(tf.equal(head3, image_files.PNG_MAGIC), FORMAT_PNG, code)
    code = tf.where(tf.equal(head3, image_files.JPEG_MAGIC), FORMAT_JPEG, code)
    return code


def image_dimensions(image_bytes: tf.Tensor) -> tf.Tensor:
    """Height and width declared by an image's header, without decoding it.

    Reads the JPEG frame header (`tf.image.extract_jpeg_shape`, which stops
    before the compressed data), the PNG IHDR chunk, the GIF logical screen
    descriptor or the BMP info header.

    Args:
      image_bytes: scalar string.

    Returns:
      int64 [2]: (height, width). (-1, -1) when the format is unknown; zeros
      when a PNG, GIF or BMP header is cut short or malformed.

    Raises:
      tf.errors.InvalidArgumentError: (when run) a JPEG whose header is corrupt.
    """
    image_bytes = _as_scalar_string(image_bytes)
    padded = tf.strings.join([image_bytes, _HEADER_PADDING])

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int64)
        return shape[:2]

    def png():
        # Signature (8 bytes), IHDR length (4), b'IHDR' (4), width, height (big-endian).
        is_ihdr = tf.equal(tf.strings.substr(padded, 12, 4), b'IHDR')
        height = _to_signed_int32(_read_uint(padded, 20, 4, little_endian=False))
        width = _to_signed_int32(_read_uint(padded, 16, 4, little_endian=False))
        dims = tf.stack([height, width])
        return tf.where(is_ihdr, dims, tf.zeros_like(dims))

    def gif():
        # 'GIF8?a', then the logical screen width and height (little-endian).
        # TensorFlow decodes every frame at this screen size.
        return tf.stack(
            [
                _read_uint(padded, 8, 2, little_endian=True),
                _read_uint(padded, 6, 2, little_endian=True),
            ]
        )

    def bmp():
        header_size = _read_uint(padded, 14, 4, little_endian=True)
        # OS/2 BITMAPCOREHEADER has 16-bit sizes; every later header 32-bit signed
        # ones, where a negative height means rows are stored top-down.
        core = tf.stack(
            [
                _read_uint(padded, 20, 2, little_endian=True),
                _read_uint(padded, 18, 2, little_endian=True),
            ]
        )
        info = tf.stack(
            [
                tf.abs(_to_signed_int32(_read_uint(padded, 22, 4, little_endian=True))),
                _to_signed_int32(_read_uint(padded, 18, 4, little_endian=True)),
            ]
        )
        return tf.where(tf.equal(header_size, image_files.BMP_CORE_HEADER_SIZE), core, info)

    def unknown():
        return tf.constant([-1, -1], dtype=tf.int64)

    return tf.switch_case(
        image_format(image_bytes),
        branch_fns={
            FORMAT_UNKNOWN: unknown,
            FORMAT_JPEG: jpeg,
            FORMAT_PNG: png,
            FORMAT_GIF: gif,
            FORMAT_BMP: bmp,
        },
    )


def _assert_acceptable(image_bytes: tf.Tensor, max_pixels: int) -> tf.Operation:
    """An op that fails unless the image is a known format of sane declared size."""
    dims = image_dimensions(image_bytes)
    known = tf.not_equal(image_format(image_bytes), FORMAT_UNKNOWN)
    pixels = dims[0] * dims[1]
    sane = tf.logical_and(tf.reduce_all(dims > 0), pixels <= max_pixels)
    return tf.group(
        tf.debugging.Assert(
            known,
            [f'Unknown image format: expected {", ".join(features.IMAGE_FORMATS)} bytes.'],
        ),
        tf.debugging.Assert(
            sane,
            [
                'Image header declares height x width',
                dims,
                f'which is empty or above the limit of {max_pixels} pixels.',
            ],
        ),
    )


def _decode_palette_bmp(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes an 8-bit BMP through its colour table (`decode_bmp` reads indices as gray)."""
    padded = tf.strings.join([image_bytes, _HEADER_PADDING])
    indices = tf.io.decode_bmp(image_bytes, channels=0)
    header_size = _read_uint(padded, 14, 4, little_endian=True)
    colours = _read_uint(padded, 46, 4, little_endian=True)
    max_colours = tf.constant(2**_BMP_PALETTE_BITS, dtype=tf.int64)
    colours = tf.where(tf.equal(colours, 0), max_colours, tf.minimum(colours, max_colours))
    # Each entry is blue, green, red, reserved. A table cut short fails in
    # substr/reshape, an index past its end in gather: both reject the image.
    table = tf.io.decode_raw(
        tf.strings.substr(image_bytes, 14 + header_size, 4 * colours), tf.uint8
    )
    rgb_table = tf.reverse(tf.reshape(table, [-1, 4])[:, :3], axis=[1])
    return tf.gather(rgb_table, tf.cast(indices[:, :, 0], tf.int32))


def decode_image(image_bytes: tf.Tensor, max_pixels: int = features.MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Decodes one encoded image (JPEG, PNG, GIF first frame, BMP) to RGB.

    Args:
      image_bytes: scalar string.
      max_pixels: largest height x width accepted, checked on the header
        before decoding.

    Returns:
      uint8 [height, width, 3]. Grayscale is repeated, alpha dropped.

    Raises:
      tf.errors.InvalidArgumentError: (when run) unknown format, declared size
        empty or above `max_pixels`, or data the decoder refuses.
    """
    image_bytes = _as_scalar_string(image_bytes)
    padded = tf.strings.join([image_bytes, _HEADER_PADDING])
    is_palette_bmp = tf.logical_and(
        tf.equal(image_format(image_bytes), FORMAT_BMP),
        tf.equal(_read_uint(padded, 28, 2, little_endian=True), _BMP_PALETTE_BITS),
    )
    # The control dependency makes the size check run, and fail, before any
    # decoder allocates the pixels.
    with tf.control_dependencies([_assert_acceptable(image_bytes, max_pixels)]):
        image = tf.cond(
            is_palette_bmp,
            lambda: _decode_palette_bmp(image_bytes),
            lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
        )
    image.set_shape([None, None, 3])
    return image


def resize_and_scale(image: tf.Tensor) -> tf.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [IMAGE_SIZE, IMAGE_SIZE, 3] in [-1, 1]."""
    image = tf.image.resize(
        tf.cast(image, tf.float32),
        [features.IMAGE_SIZE, features.IMAGE_SIZE],
        method='bilinear',
        antialias=True,
    )
    # Antialiased bilinear resizing can overshoot slightly at sharp edges.
    image = tf.clip_by_value(image, 0.0, 255.0)
    return image / 127.5 - 1.0


def preprocess_image(
    image_bytes: tf.Tensor, max_pixels: int = features.MAX_IMAGE_PIXELS
) -> tf.Tensor:
    """One encoded image (scalar string) -> float32 [IMAGE_SIZE, IMAGE_SIZE, 3] in [-1, 1].

    Args:
      image_bytes: scalar string, any format `decode_image` accepts.
      max_pixels: largest declared height x width accepted.

    Raises:
      tf.errors.InvalidArgumentError: (when run) see `decode_image`.
    """
    return resize_and_scale(decode_image(image_bytes, max_pixels))


def preprocess_batch(
    image_bytes: tf.Tensor, max_pixels: int = features.MAX_IMAGE_PIXELS
) -> tf.Tensor:
    """Encoded images string [N] -> float32 [N, IMAGE_SIZE, IMAGE_SIZE, 3] in [-1, 1].

    Each image goes through `preprocess_image`, so a batch gives exactly the
    pixels of one-by-one calls. One bad image fails the whole batch (serving
    answers INVALID_ARGUMENT); the Beam extractor checks images one by one
    first, so it skips and counts them instead.
    """
    return tf.map_fn(
        lambda one: preprocess_image(one, max_pixels),
        image_bytes,
        fn_output_signature=tf.TensorSpec(
            [features.IMAGE_SIZE, features.IMAGE_SIZE, 3], tf.float32
        ),
    )
