"""Does the TFLite variant caption like the SavedModel? Measured on real eval images.

Both models get the same pixels (the shared `preprocess_image`), so any
disagreement comes from conversion and quantisation alone.
"""

import logging
import os
from typing import List, Optional

import tensorflow as tf
from tfx import types
from tfx.utils import path_utils

from tfx_captioning.components.caption_evaluator import records
from tfx_captioning.models import features, image_preprocessing
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner


def read_images(raw_examples: types.Artifact, split: str, limit: int) -> List[bytes]:
    spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    images = []
    for batch in records.read_examples(raw_examples, split, spec, min(limit, 64)):
        images += list(batch[features.IMAGE_KEY].numpy())
        if len(images) >= limit:
            break
    return images[:limit]


def measure(
    model_uri: str, raw_examples: types.Artifact, split: str, limit: int
) -> Optional[float]:
    """Share of `limit` images of `split` captioned identically; None without a TFLite file."""
    tflite_path = os.path.join(model_uri, features.TFLITE_MODEL_DIR, features.TFLITE_FILE)
    if not tf.io.gfile.exists(tflite_path):
        logging.warning('No TFLite variant at %s: parity not measured.', tflite_path)
        return None
    serving = tf.saved_model.load(path_utils.serving_model_path(model_uri)).signatures[
        features.SERVING_SIGNATURE
    ]
    lite = TFLiteCaptioner(tflite_path)
    images = read_images(raw_examples, split, limit)
    agree = 0
    for image_bytes in images:
        expected = serving(**{features.IMAGE_BYTES_INPUT: tf.constant([image_bytes])})
        pixels = image_preprocessing.preprocess_batch(tf.constant([image_bytes])).numpy()
        got = lite.caption(pixels)
        agree += int(got == expected[features.CAPTION_OUTPUT].numpy()[0].decode('utf-8'))
    rate = agree / len(images) if images else 0.0
    logging.info('TFLite agrees with the SavedModel on %d/%d %s images.', agree, len(images), split)
    return rate
