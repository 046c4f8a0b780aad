"""Shared pytest fixtures.

Each block is owned by the tests that use it; append new blocks, keep others intact.
"""

import io
import os
import shutil
import uuid

import pytest

from pipeline import configs

# --- Serving: a TEST FIXTURE caption model (not the real captioner) ---------------------
# The real model comes from the Trainer; these fixtures build a small but real
# SavedModel with the exported model's exact contract (signature, input and
# output names, dtypes and shapes, warmup file), so the serving tests and
# benchmarks/serving.py run without training anything.

FIXTURE_MODEL_COLOURS = (
    ('black', (0, 0, 0)),
    ('white', (255, 255, 255)),
    ('red', (220, 30, 30)),
    ('green', (30, 200, 30)),
    ('blue', (30, 30, 220)),
    ('yellow', (230, 220, 40)),
)
"""Colour words of the fixture model and the RGB each stands for."""


def build_fixture_caption_model(export_dir: str, noun: str = 'picture') -> str:
    """Writes a TEST FIXTURE SavedModel captioning an image by its mean colour.

    'a red picture' for a reddish image: serving_default decodes with the real
    `models.image_preprocessing.preprocess_batch` (so decoding errors are the
    real model's), takes the mean pixel, picks the nearest colour word and
    emits caption / token_ids / length exactly shaped like the real model.
    `caption_from_features` reads the colour from the first three features.
    Different `noun`s make distinguishable versions for hot-swap tests.

    Args:
      export_dir: where to write the SavedModel (must not exist).
      noun: the last word of every caption.

    Returns:
      export_dir.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from models import features, image_preprocessing

    reserved = list(features.RESERVED_TOKENS)
    words = reserved + ['a'] + [name for name, _ in FIXTURE_MODEL_COLOURS] + [noun]
    a_id = len(reserved)
    first_colour_id = a_id + 1
    noun_id = first_colour_id + len(FIXTURE_MODEL_COLOURS)
    end_id = reserved.index(features.END_TOKEN)
    # Palette in the preprocessing's [-1, 1] pixel scale.
    palette = [[channel / 127.5 - 1.0 for channel in rgb] for _, rgb in FIXTURE_MODEL_COLOURS]

    class FixtureCaptionModel(tf.Module):
        """TEST FIXTURE: mean-colour captions with the exported model's signatures."""

        def __init__(self):
            super().__init__()
            self.vocabulary = tf.constant(words)
            self.palette = tf.constant(palette, tf.float32)

        def _caption(self, colour):
            distances = tf.reduce_sum(
                tf.square(colour[:, None, :] - self.palette[None, :, :]), axis=-1
            )
            colour_ids = first_colour_id + tf.argmin(distances, axis=1, output_type=tf.int32)
            rows = tf.shape(colour)[0]
            ids = tf.stack(
                [
                    tf.fill([rows], a_id),
                    colour_ids,
                    tf.fill([rows], noun_id),
                    tf.fill([rows], end_id),
                ],
                axis=1,
            )
            token_ids = tf.pad(ids, [[0, 0], [0, features.MAX_LEN - 4]])
            caption = tf.strings.reduce_join(
                tf.gather(self.vocabulary, ids[:, :3]), axis=1, separator=' '
            )
            return {
                features.CAPTION_OUTPUT: caption,
                features.TOKEN_IDS_OUTPUT: token_ids,
                features.LENGTH_OUTPUT: tf.fill([rows], 3),
            }

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_INPUT)]
        )
        def serve(self, encoded_images):
            pixels = image_preprocessing.preprocess_batch(encoded_images)
            return self._caption(tf.reduce_mean(pixels, axis=[1, 2]))

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, features.FEATURE_SIZE], tf.float32, name=features.IMAGE_FEATURES_INPUT
                )
            ]
        )
        def from_features(self, image_features):
            return self._caption(tf.tanh(image_features[:, :3]))

    module = FixtureCaptionModel()
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            features.SERVING_SIGNATURE: module.serve,
            features.FEATURES_SIGNATURE: module.from_features,
        },
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = features.SERVING_SIGNATURE
    request.inputs[features.IMAGE_BYTES_INPUT].CopyFrom(
        tf.make_tensor_proto([fixture_image_bytes('JPEG', (200, 40, 40))], dtype=tf.string)
    )
    warmup_dir = os.path.join(export_dir, features.WARMUP_REQUESTS_DIR)
    os.makedirs(warmup_dir, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(warmup_dir, features.WARMUP_REQUESTS_FILE)) as writer:
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        writer.write(log.SerializeToString())
    return export_dir


def publish_fixture_version(model_dir: str, base_path: str, version: int) -> str:
    """Copies a built model into `base_path/<version>` atomically (temp dir, then rename).

    The way the Pusher publishes: a server polling `base_path` never sees a
    half-written version, because the temporary name is not an integer.
    """
    os.makedirs(base_path, exist_ok=True)
    temporary = os.path.join(base_path, f'.tmp-{version}-{uuid.uuid4().hex[:8]}')
    shutil.copytree(model_dir, temporary)
    final = os.path.join(base_path, str(version))
    os.rename(temporary, final)
    return final


def fixture_image_bytes(image_format: str, colour, size=(64, 48), mode: str = 'RGB') -> bytes:
    """A solid-colour image encoded as `image_format` (JPEG, PNG, GIF, BMP)."""
    from PIL import Image

    image = Image.new('RGB', size, tuple(colour)).convert(mode)
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


def fixture_serving_images():
    """Mixed valid images: four formats, grayscale, RGBA, palette, a noisy photo-sized JPEG."""
    import numpy as np
    from PIL import Image

    noisy = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    noisy[..., 2] //= 4  # Tilt it away from grey so its caption is not a tie.
    photo = io.BytesIO()
    Image.fromarray(noisy).save(photo, format='JPEG', quality=90)
    return {
        'red.jpg': fixture_image_bytes('JPEG', (220, 30, 30)),
        'blue.png': fixture_image_bytes('PNG', (30, 30, 220), size=(40, 30)),
        'green.gif': fixture_image_bytes('GIF', (30, 200, 30), size=(32, 32)),
        'yellow.bmp': fixture_image_bytes('BMP', (230, 220, 40), size=(20, 24)),
        'grey.jpg': fixture_image_bytes('JPEG', (200, 200, 200), mode='L'),
        'rgba.png': fixture_image_bytes('PNG', (20, 20, 20), size=(33, 17), mode='RGBA'),
        'palette.png': fixture_image_bytes('PNG', (220, 30, 30), mode='P'),
        'photo.jpg': photo.getvalue(),
    }


def fixture_in_process_captions(version_dir: str, images):
    """caption texts the SavedModel gives in-process, one request per image."""
    import tensorflow as tf

    from models import features

    signature = tf.saved_model.load(version_dir).signatures[features.SERVING_SIGNATURE]
    return [
        signature(**{features.IMAGE_BYTES_INPUT: tf.constant([image])})[features.CAPTION_OUTPUT]
        .numpy()[0]
        .decode('utf-8')
        for image in images
    ]


@pytest.fixture(scope='session')
def fixture_caption_models(tmp_path_factory):
    """Two built TEST FIXTURE models: {'picture': dir, 'photo': dir} (two 'versions')."""
    root = tmp_path_factory.mktemp('fixture_caption_models')
    return {
        noun: build_fixture_caption_model(str(root / noun), noun=noun)
        for noun in ('picture', 'photo')
    }


@pytest.fixture
def fixture_model_base_path(tmp_path, fixture_caption_models):
    """A fresh TF Serving base path holding version 1 of the fixture model ('... picture')."""
    base_path = str(tmp_path / 'serving' / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    return base_path


def loopback_free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound and released on loopback only)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_caption_server():
    """A factory `start(base_path, **ServerOptions fields)` for stand-in servers on loopback.

    Defaults for tests: a free port, a 0.1 s poll interval. `version_policy`
    and `version_labels` pass through to the model manager. Every server
    started is stopped at teardown.
    """
    from serving import server

    servers = []

    def start(base_path, *, version_policy=None, version_labels=None, **overrides):
        options = server.ServerOptions(**{'port': 0, 'poll_interval_s': 0.1, **overrides})
        caption_server = server.CaptionServer.for_model(
            configs.MODEL_NAME,
            base_path,
            options,
            version_policy=version_policy,
            version_labels=version_labels,
        )
        caption_server.start()
        servers.append(caption_server)
        return caption_server

    yield start
    for caption_server in servers:
        caption_server.stop(grace_s=0.5)


# --- Transform / Trainer: tiny learnable data through a real tf.Transform run ------------


@pytest.fixture(scope='session')
def caption_hparams():
    """Small decoder sizes for CPU tests; max_len / min_word_count as the Transform run."""
    from models.hparams import HParams

    return HParams(
        embedding_dim=16,
        units=32,
        num_layers=2,
        batch_size=16,
        epochs=3,
        patience=2,
        max_len=8,
        min_word_count=1,
        learning_rate=3e-3,
        shuffle_buffer=256,
    )


@pytest.fixture(scope='session')
def caption_transform_run(tmp_path_factory, caption_hparams):
    """`captioning_fixtures.TransformRun` of 36 train and 12 eval synthetic images."""
    from models import features
    from tests import captioning_fixtures

    output_dir = str(tmp_path_factory.mktemp('caption_transform'))
    return captioning_fixtures.run_transform(
        {
            features.TRAIN_SPLIT: captioning_fixtures.synthetic_images(36, seed=1),
            features.EVAL_SPLIT: captioning_fixtures.synthetic_images(12, seed=2),
        },
        output_dir,
        custom_config=caption_hparams.transform_config(),
    )
