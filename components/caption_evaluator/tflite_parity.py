"""Do the TFLite variants caption like the SavedModel? Measured on real eval images.

Each variant gets exactly what `caption-tflite` feeds it on a device: the
encoded file loaded and resized by Pillow (`models.tflite_runtime.load_image`),
while the SavedModel gets the same bytes through its own in-graph decoding.
So the agreement covers conversion, quantisation and the device's image path.
"""

import logging
import os
import time
from typing import Any, Dict, List

import tensorflow as tf
from tfx import types
from tfx.utils import path_utils

from tfx_captioning.components import progress
from tfx_captioning.components.caption_evaluator import records
from tfx_captioning.models import features
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner, load_image

LATENCY_RUNS = 3
"""Single-image TFLite calls timed per variant (the median is reported)."""


def read_images(raw_examples: types.Artifact, split: str, limit: int) -> List[bytes]:
    """The first `limit` encoded images of `split` of ExampleGen's output."""
    spec = {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    images = []
    for batch in records.read_examples(raw_examples, split, spec, min(limit, 64)):
        images += list(batch[features.IMAGE_KEY].numpy())
        if len(images) >= limit:
            break
    return images[:limit]


def variant_dirs(model_uri: str) -> Dict[str, str]:
    """{quantization: directory} of the TFLite variants the Trainer wrote."""
    root = os.path.join(model_uri, features.TFLITE_MODEL_DIR)
    if not tf.io.gfile.isdir(root):
        return {}
    found = {}
    for name in sorted(tf.io.gfile.listdir(root)):
        directory = os.path.join(root, name.rstrip('/'))
        if tf.io.gfile.exists(os.path.join(directory, features.TFLITE_FILE)):
            found[name.rstrip('/')] = directory
    return found


def measure_variants(
    model_uri: str, raw_examples: types.Artifact, split: str, limit: int
) -> List[Dict[str, Any]]:
    """Per TFLite variant: size, single-image latency and caption agreement.

    Args:
      model_uri: the Trainer's Model artifact (Format-Serving and Format-TFLite).
      raw_examples: ExampleGen's Examples (encoded images).
      split: the split whose first `limit` images are compared.
      limit: how many images.

    Returns:
      [{'variant', 'size_bytes', 'latency_ms', 'agreement', 'images'}], smallest
      file first; empty when the Trainer wrote no TFLite variant.
    """
    variants = variant_dirs(model_uri)
    if not variants:
        logging.warning('No TFLite variant in %s: parity not measured.', model_uri)
        return []
    serving = tf.saved_model.load(path_utils.serving_model_path(model_uri)).signatures[
        features.SERVING_SIGNATURE
    ]
    images = read_images(raw_examples, split, limit)
    # One image at a time through the SavedModel, then through each variant.
    reporter = progress.ProgressReporter(
        'CaptionEvaluator TFLite parity', len(images) * (1 + len(variants))
    )

    def counted(items):
        for item in items:
            yield item
            reporter.update()

    expected = [
        serving(**{features.IMAGE_BYTES_INPUT: tf.constant([image])})[features.CAPTION_OUTPUT]
        .numpy()[0]
        .decode('utf-8')
        for image in counted(images)
    ]
    pixels = [load_image(image) for image in images]
    results = []
    for variant, directory in variants.items():
        path = os.path.join(directory, features.TFLITE_FILE)
        lite = TFLiteCaptioner(path)
        agree = sum(lite.caption(p) == e for p, e in zip(counted(pixels), expected))
        timings = []
        for _ in range(LATENCY_RUNS if pixels else 0):
            start = time.perf_counter()
            lite.caption(pixels[0])
            timings.append((time.perf_counter() - start) * 1000)
        results.append(
            {
                'variant': variant,
                'size_bytes': tf.io.gfile.stat(path).length,
                'latency_ms': sorted(timings)[len(timings) // 2] if timings else None,
                'agreement': agree / len(images) if images else 0.0,
                'images': len(images),
            }
        )
        logging.info(
            'TFLite %s agrees with the SavedModel on %d/%d %s images.',
            variant,
            agree,
            len(images),
            split,
        )
    reporter.finish()
    return sorted(results, key=lambda r: r['size_bytes'])
