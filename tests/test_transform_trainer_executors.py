"""TFX's own Transform and Trainer executors on tiny real artifacts, with our module functions.

Extractor-like examples and a SchemaGen-style schema (every feature
VarLen, as ``SchemaGen(infer_feature_shape=False)`` writes it) go through
`tfx.components.transform.executor.Executor` with
``preprocessing_fn='tfx_captioning.models.preprocessing.preprocessing_fn'`` (statistics on,
as in the pipeline); its outputs, plus an InceptionV3 encoder artifact, go
through `tfx.components.trainer.executor.GenericExecutor` with
``run_fn='tfx_captioning.models.trainer.run_fn'``. The exported model is then queried.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.transform import executor as transform_executor
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import io_utils, path_utils

from tests import captioning_fixtures
from tests.flickr8k_fixtures import jpeg_bytes
from tfx_captioning.models import encoder, features, image_preprocessing

pytestmark = pytest.mark.slow

SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)


_artifact = captioning_fixtures.artifact


def _varlen_schema() -> schema_pb2.Schema:
    """What SchemaGen(infer_feature_shape=False) infers for the extractor's examples."""
    schema = schema_pb2.Schema()
    for name, feature_type in (
        (features.IMAGE_ID_KEY, schema_pb2.BYTES),
        (features.IMAGE_FEATURES_KEY, schema_pb2.FLOAT),
        (features.CAPTIONS_KEY, schema_pb2.BYTES),
    ):
        feature = schema.feature.add(name=name, type=feature_type)
        feature.presence.min_fraction = 1.0
    return schema


@pytest.fixture(scope='module')
def transform_outputs(tmp_path_factory, caption_hparams):
    """(transformed Examples, TransformGraph, raw eval instances) from TFX's Transform executor."""
    root = str(tmp_path_factory.mktemp('transform_executor'))
    examples = _artifact(standard_artifacts.Examples, os.path.join(root, 'examples'), SPLITS)
    raw = {
        features.TRAIN_SPLIT: captioning_fixtures.synthetic_images(36, seed=1),
        features.EVAL_SPLIT: captioning_fixtures.synthetic_images(12, seed=2),
    }
    for split, instances in raw.items():
        split_dir = os.path.join(examples.uri, f'Split-{split}')
        os.makedirs(split_dir)
        captioning_fixtures.write_raw_examples(instances, os.path.join(split_dir, 'data.gz'))
    schema = _artifact(standard_artifacts.Schema, os.path.join(root, 'schema'))
    io_utils.write_pbtxt_file(os.path.join(schema.uri, 'schema.pbtxt'), _varlen_schema())

    transform_graph = _artifact(standard_artifacts.TransformGraph, os.path.join(root, 'graph'))
    transformed = _artifact(standard_artifacts.Examples, os.path.join(root, 'transformed'))
    outputs = {
        standard_component_specs.TRANSFORM_GRAPH_KEY: [transform_graph],
        standard_component_specs.TRANSFORMED_EXAMPLES_KEY: [transformed],
    }
    for key, artifact_type in (
        (standard_component_specs.PRE_TRANSFORM_STATS_KEY, standard_artifacts.ExampleStatistics),
        (standard_component_specs.PRE_TRANSFORM_SCHEMA_KEY, standard_artifacts.Schema),
        (standard_component_specs.POST_TRANSFORM_STATS_KEY, standard_artifacts.ExampleStatistics),
        (standard_component_specs.POST_TRANSFORM_SCHEMA_KEY, standard_artifacts.Schema),
        (
            standard_component_specs.POST_TRANSFORM_ANOMALIES_KEY,
            standard_artifacts.ExampleAnomalies,
        ),
    ):
        outputs[key] = [_artifact(artifact_type, os.path.join(root, key))]
    transform_executor.Executor().Do(
        {
            standard_component_specs.EXAMPLES_KEY: [examples],
            standard_component_specs.SCHEMA_KEY: [schema],
        },
        outputs,
        {
            standard_component_specs.PREPROCESSING_FN_KEY: 'tfx_captioning.models.preprocessing.preprocessing_fn',
            standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(
                caption_hparams.transform_config()
            ),
            standard_component_specs.FORCE_TF_COMPAT_V1_KEY: 0,
            standard_component_specs.SPLITS_CONFIG_KEY: None,
        },
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
