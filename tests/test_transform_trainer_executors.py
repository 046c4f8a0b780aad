"""TFX's own Transform and Trainer executors on tiny real artifacts, with our module functions.

Extractor-like examples and a SchemaGen-style schema (every feature
VarLen, as ``SchemaGen(infer_feature_shape=False)`` writes it) go through
`tfx.components.transform.executor.Executor` with
``preprocessing_fn='tfx_captioning.models.preprocessing.preprocessing_fn'`` (statistics on,
as in the pipeline); its outputs, plus an InceptionV3 encoder artifact, go
through `tfx.components.trainer.executor.GenericExecutor` with
``run_fn='tfx_captioning.models.trainer.run_fn'``. The exported model is then queried.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tests import captioning_fixtures
from tests.flickr8k_fixtures import jpeg_bytes
from tfx_captioning.models import encoder, features, image_preprocessing

pytestmark = pytest.mark.slow

SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)


_artifact = captioning_fixtures.artifact


@pytest.fixture(scope='module')
def transform_outputs(tmp_path_factory, caption_hparams):
    """(transformed Examples, TransformGraph, raw eval instances) from TFX's Transform executor."""
    root = str(tmp_path_factory.mktemp('transform_executor'))
    raw = {
        features.TRAIN_SPLIT: captioning_fixtures.synthetic_images(36, seed=1),
        features.EVAL_SPLIT: captioning_fixtures.synthetic_images(12, seed=2),
    }
    transformed, transform_graph = captioning_fixtures.run_transform_executor(
        raw, root, caption_hparams.transform_config()
    )
    return transformed, transform_graph, raw[features.EVAL_SPLIT]


def test_transform_executor_writes_vocabulary_and_caption_ids(transform_outputs, caption_hparams):
    transformed, transform_graph, _ = transform_outputs
    tft_output = tft.TFTransformOutput(transform_graph.uri)
    vocabulary = [w.decode() for w in tft_output.vocabulary_by_name(features.VOCAB_NAME)]
    assert vocabulary[: len(features.RESERVED_TOKENS)] == list(features.RESERVED_TOKENS)
    assert set(captioning_fixtures.COLOURS + captioning_fixtures.SHAPES) <= set(vocabulary)
    assert artifact_utils.decode_split_names(transformed.split_names) == list(SPLITS)
    files = tf.io.gfile.glob(os.path.join(transformed.uri, f'Split-{features.EVAL_SPLIT}', '*'))
    spec = tft_output.transformed_feature_spec()
    parsed = [
        tf.io.parse_single_example(r, spec)
        for r in tf.data.TFRecordDataset(files, compression_type='GZIP')
    ]
    assert len(parsed) == 12
    assert sum(p[features.CAPTION_IDS_KEY].shape[0] for p in parsed) == 48
    assert all(p[features.CAPTION_IDS_KEY].shape[1] == caption_hparams.max_len + 1 for p in parsed)


@pytest.fixture(scope='module')
def trained_model(transform_outputs, caption_hparams, tmp_path_factory):
    """The Model artifact written by TFX's Trainer GenericExecutor with our run_fn."""
    transformed, transform_graph, _ = transform_outputs
    root = str(tmp_path_factory.mktemp('trainer_executor'))
    return captioning_fixtures.train_model(
        transformed, transform_graph, caption_hparams, root, num_steps=30
    )


def test_trainer_executor_exports_the_combined_model(
    trained_model, transform_outputs, caption_hparams
):
    model, model_run, base_model = trained_model
    _, _, raw_eval = transform_outputs
    assert tf.io.gfile.glob(os.path.join(model_run.uri, 'train', 'events.out.tfevents.*'))
    loaded = tf.saved_model.load(path_utils.serving_model_dir(model.uri))

    image_bytes = [jpeg_bytes((220, 30, 30), (120, 90)), jpeg_bytes((30, 30, 220), (90, 120))]
    from_images = loaded.signatures[features.SERVING_SIGNATURE](
        **{features.IMAGE_BYTES_INPUT: tf.constant(image_bytes)}
    )
    assert from_images[features.TOKEN_IDS_OUTPUT].shape == (2, caption_hparams.max_len)
    assert from_images[features.CAPTION_OUTPUT].dtype == tf.string

    # Raw extractor features in, captions out; the same ids as serving_default
    # gives for the features the extractor's encoder computes.
    raw = np.stack([i[features.IMAGE_FEATURES_KEY] for i in raw_eval])
    from_features = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: tf.constant(raw)}
    )
    assert from_features[features.TOKEN_IDS_OUTPUT].shape == (len(raw), caption_hparams.max_len)
    extractor_encoder = encoder.load_encoder(base_model.uri)
    encoded = extractor_encoder(image_preprocessing.preprocess_batch(tf.constant(image_bytes)))
    again = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: encoded}
    )
    np.testing.assert_array_equal(
        again[features.TOKEN_IDS_OUTPUT].numpy(), from_images[features.TOKEN_IDS_OUTPUT].numpy()
    )
