"""Side effects of pushing, as plain functions: versions, atomic copies, warmup records.

A TF Serving model base path holds one integer-named directory per version
and the server loads the highest complete one. A version must therefore
appear whole: it is written under a hidden temporary name in the same parent
(TF Serving ignores names that are not integers) and renamed into place.
"""

import os
import shutil
import time
import uuid
from typing import Iterable, Optional

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tfx_captioning.models import features

WARMUP_FILE = os.path.join(features.WARMUP_REQUESTS_DIR, features.WARMUP_REQUESTS_FILE)
TFLITE_FILE = features.TFLITE_FILE


def integer_versions(names: Iterable[str]) -> list:
    """The names that are TF Serving versions (non-negative integers), as ints."""
    return sorted(int(n) for n in names if n.isdigit())


def next_version(existing: Iterable[str], now: Optional[float] = None) -> int:
    """A version above every existing one: the Unix time, or last + 1 if that is not higher.

    Unix seconds keep versions readable and increasing across machines; the
    `last + 1` rule keeps two pushes within one second distinct.
    """
    now = time.time() if now is None else now
    versions = integer_versions(existing)
    return max(int(now), versions[-1] + 1 if versions else 0)


def warmup_request_bytes(model_name: str, image_bytes: bytes) -> bytes:
    """One serialized PredictionLog asking `serving_default` to caption `image_bytes`."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=features.SERVING_SIGNATURE)
    )
    request.inputs[features.IMAGE_BYTES_INPUT].CopyFrom(
        tf.make_tensor_proto([image_bytes], dtype=tf.string, shape=[1])
    )
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def sample_image_bytes() -> bytes:
    """A small JPEG for warmup: TF Serving runs it once before serving traffic."""
    gradient = tf.cast(tf.linspace(0.0, 255.0, 64), tf.uint8)
    image = tf.stack(
        [tf.tile(gradient[None, :], [48, 1])] * 3, axis=-1
    )  # [48, 64, 3] horizontal grey ramp
    return tf.io.encode_jpeg(image).numpy()


def write_warmup(version_dir: str, model_name: str) -> str:
    """Writes assets.extra/tf_serving_warmup_requests into `version_dir`; returns its path."""
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(warmup_request_bytes(model_name, sample_image_bytes()))
    return path


SOURCE_FILE = os.path.join(features.WARMUP_REQUESTS_DIR, 'source_model.txt')
"""Written into each pushed version: the URI of the Model artifact it came from."""


def write_source(version_dir: str, model_uri: str) -> None:
    """Records which Model artifact a version was published from."""
    path = os.path.join(version_dir, SOURCE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, 'w') as f:
        f.write(model_uri)


def find_published_version(base_directory: str, model_uri: str) -> Optional[int]:
    """The version already published from `model_uri`, or None.

    A rerun re-evaluates a cached model against itself (the resolver now finds
    it blessed) and blesses it again; this keeps that from pushing a copy.
    """
    if not tf.io.gfile.isdir(base_directory):
        return None
    for version in reversed(
        integer_versions(n.rstrip('/') for n in tf.io.gfile.listdir(base_directory))
    ):
        path = os.path.join(base_directory, str(version), SOURCE_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                if f.read().strip() == model_uri:
                    return version
    return None


def publish_directory(src_dir: str, base_directory: str, version: int, fill=None) -> str:
    """Copies `src_dir` to `<base_directory>/<version>` atomically.

    Args:
      src_dir: the directory to publish (a SavedModel, a TFLite folder).
      base_directory: the model base path a server watches.
      version: the integer version; must not exist yet.
      fill: optional `fill(tmp_dir)` that adds files before the rename.

    Returns:
      The published version directory.

    Raises:
      FileExistsError: the version already exists (nothing is overwritten).
    """
    final = os.path.join(base_directory, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f'Version directory {final} already exists.')
    tf.io.gfile.makedirs(base_directory)
    tmp = os.path.join(base_directory, f'.tmp-{version}-{uuid.uuid4().hex[:8]}')
    try:
        if '://' in tmp:
            _copy_tree_gfile(src_dir, tmp)
        else:
            shutil.copytree(src_dir, tmp)
        if fill is not None:
            fill(tmp)
        # A rename within one directory is atomic on POSIX filesystems; on
        # object stores (gs://) TF Serving's loader retries half-copied versions.
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    return final


def _copy_tree_gfile(src: str, dst: str) -> None:
    for dirpath, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = os.path.normpath(os.path.join(dst, rel))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(target, name))
