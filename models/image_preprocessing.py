"""The one image preprocessing function, and the InceptionV3 encoder.

Used by the ImageFeatureExtractor component **and** inside the exported
serving graph, so training and serving see identical pixels (no skew).

Pixels are scaled to [-1, 1] as InceptionV3 was trained
(`tf.keras.applications.inception_v3.preprocess_input`), not `x / 255.`.
"""

import tensorflow as tf

from models import features


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image (JPEG, PNG, GIF first frame, BMP) to RGB uint8 [H, W, 3].

    Grayscale is expanded and alpha dropped (`channels=3`).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
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
    image = tf.clip_by_value(image, 0.0, 255.0)
    return image / 127.5 - 1.0


def preprocess_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded image (scalar string) -> float32 [IMAGE_SIZE, IMAGE_SIZE, 3] in [-1, 1]."""
    return resize_and_scale(decode_image(image_bytes))


def preprocess_batch(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded images string [N] -> float32 [N, IMAGE_SIZE, IMAGE_SIZE, 3] in [-1, 1]."""
    return tf.map_fn(
        preprocess_image,
        image_bytes,
        fn_output_signature=tf.TensorSpec(
            [features.IMAGE_SIZE, features.IMAGE_SIZE, 3], tf.float32
        ),
    )
