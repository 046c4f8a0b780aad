"""Tiny, learnable extractor-like data and real TFT runs over it, for the Transform/Trainer tests.

`synthetic_images` imitates the ImageFeatureExtractor's output: raw features
at random-weight InceptionV3 scale (std ~5e-4) in which a few dimensions carry
the colour and the shape (blocks of dimensions), and 3 to 5 captions per image naming both. After
Transform's z-score the signal is strong, so a small decoder learns it in a
few epochs on a CPU.

`run_transform` runs the real `models.preprocessing.preprocessing_fn` with
tf.Transform's Beam implementation and writes what TFX Transform would: the
transform graph directory and GZIP TFRecords of transformed examples under
``Split-<name>/``.
"""

import dataclasses
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
import tf_keras as keras
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from tfx_captioning.models import features, preprocessing

COLOURS = ('red', 'green', 'blue')
SHAPES = ('circle', 'square')
# Each colour and each shape raises its own block of raw feature dimensions
# (blocks, not single dimensions: after the z-score the other ~1800 noise
# dimensions have unit variance too, and 36 images must suffice to learn).
_BLOCK = 64
_SHAPES_START = len(COLOURS) * _BLOCK
_FEATURE_NOISE = 5e-4
_SIGNAL = 5e-3

CAPTION_TEMPLATES = (
    'A {colour} {shape}.',
    'The {colour} {shape}, alone!',
    'a {shape} that is {colour}',
    'One {colour} {shape} in the picture',
    'A {colour}-coloured {shape}',
)


def synthetic_images_with_regions(count: int, seed: int) -> List[Dict[str, Any]]:
    """As `synthetic_images`, with the extractor's region features (float16 bytes).

    The object sits in one region of the 8 x 8 grid (the image index picks
    it); that region carries the colour and shape blocks, every other region
    only noise, and the pooled features are the regions' mean, as
    InceptionV3's are.
    """
    from tfx_captioning.components.image_feature_extractor.executor import (
        decode_regions,
        encode_regions,
    )

    rng = np.random.default_rng(seed + 1000)
    instances = synthetic_images(count, seed)
    for i, instance in enumerate(instances):
        regions = rng.normal(0.0, _FEATURE_NOISE, (features.NUM_REGIONS, features.FEATURE_SIZE))
        place = (7 * i) % features.NUM_REGIONS
        regions[place] += (instance[features.IMAGE_FEATURES_KEY] > _SIGNAL / 2) * _SIGNAL * 8
        stored = encode_regions(regions)
        instance[features.IMAGE_REGIONS_KEY] = stored
        instance[features.IMAGE_FEATURES_KEY] = decode_regions(stored).mean(axis=0)
    return instances


def raw_feature_spec() -> Dict[str, Any]:
    """The extractor's examples as Transform sees them (captions variable in number)."""
    return {
        features.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
        features.IMAGE_FEATURES_KEY: tf.io.FixedLenFeature([features.FEATURE_SIZE], tf.float32),
        features.CAPTIONS_KEY: tf.io.VarLenFeature(tf.string),
    }


def synthetic_images(count: int, seed: int) -> List[Dict[str, Any]]:
    """`count` extractor-like instances; image i shows COLOURS[i % 3] and SHAPES[(i // 3) % 2]."""
    rng = np.random.default_rng(seed)
    instances = []
    for i in range(count):
        colour = COLOURS[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        raw = rng.normal(0.0, _FEATURE_NOISE, features.FEATURE_SIZE).astype(np.float32)
        c, s = COLOURS.index(colour), SHAPES.index(shape)
        raw[c * _BLOCK : (c + 1) * _BLOCK] += _SIGNAL
        raw[_SHAPES_START + s * _BLOCK : _SHAPES_START + (s + 1) * _BLOCK] += _SIGNAL
        n_captions = 3 + i % 3  # 3, 4 or 5 captions: the count varies
        captions = [
            t.format(colour=colour, shape=shape).encode() for t in CAPTION_TEMPLATES[:n_captions]
        ]
        instances.append(
            {
                features.IMAGE_ID_KEY: f'{seed}_{i}.jpg'.encode(),
                features.IMAGE_FEATURES_KEY: raw,
                features.CAPTIONS_KEY: captions,
            }
        )
    return instances


@dataclasses.dataclass(frozen=True)
class TransformRun:
    """Where `run_transform` wrote its outputs."""

    transform_dir: str
    examples_dir: str
    splits: Sequence[str]

    def file_pattern(self, split: str) -> str:
        return os.path.join(self.examples_dir, f'Split-{split}', '*')

    @property
    def tft_output(self) -> tft.TFTransformOutput:
        return tft.TFTransformOutput(self.transform_dir)


def run_transform(
    splits: Mapping[str, Sequence[Dict[str, Any]]],
    output_dir: str,
    custom_config: Optional[Dict[str, Any]] = None,
    analyze_split: str = features.TRAIN_SPLIT,
) -> TransformRun:
    """Analyzes `analyze_split`, transforms every split and writes them as TFX Transform does.

    Args:
      splits: split name -> raw instances (see `synthetic_images`).
      output_dir: gets ``transform_graph/`` and ``transformed_examples/Split-*/``.
      custom_config: passed to `preprocessing_fn`.
      analyze_split: the split the vocabulary and statistics come from.
    """
    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(raw_feature_spec())
    )
    transform_dir = os.path.join(output_dir, 'transform_graph')
    examples_dir = os.path.join(output_dir, 'transformed_examples')

    def fn(inputs):
        return preprocessing.preprocessing_fn(inputs, custom_config)

    with tft_beam.Context(temp_dir=tempfile.mkdtemp(dir=output_dir), force_tf_compat_v1=False):
        transform_fn = (list(splits[analyze_split]), metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
        # TFX Transform also keeps the raw schema beside the graph.
        metadata_io.write_metadata(
            metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
        )
        for split, instances in splits.items():
            transformed, transformed_metadata = (
                (list(instances), metadata),
                transform_fn,
            ) | tft_beam.TransformDataset(output_record_batches=False)
            coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
            split_dir = os.path.join(examples_dir, f'Split-{split}')
            tf.io.gfile.makedirs(split_dir)
            path = os.path.join(split_dir, 'transformed_examples-00000-of-00001.gz')
            with tf.io.TFRecordWriter(path, options='GZIP') as writer:
                for instance in transformed:
                    writer.write(coder.encode(instance))
    return TransformRun(transform_dir, examples_dir, tuple(splits))


def write_raw_examples(instances: Sequence[Dict[str, Any]], path: str) -> None:
    """Writes extractor-like instances as a GZIP TFRecord of tf.Examples."""
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        for instance in instances:
            feature = {
                features.IMAGE_ID_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[instance[features.IMAGE_ID_KEY]])
                ),
                features.IMAGE_FEATURES_KEY: tf.train.Feature(
                    float_list=tf.train.FloatList(value=instance[features.IMAGE_FEATURES_KEY])
                ),
                features.CAPTIONS_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=instance[features.CAPTIONS_KEY])
                ),
            }
            if features.IMAGE_REGIONS_KEY in instance:
                feature[features.IMAGE_REGIONS_KEY] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[instance[features.IMAGE_REGIONS_KEY]])
                )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def write_vocabulary(words: Sequence[str], path: str) -> str:
    """A Transform-style vocabulary file: the reserved tokens, then `words`."""
    with open(path, 'w') as f:
        f.write('\n'.join(list(features.RESERVED_TOKENS) + list(words)) + '\n')
    return path


def tiny_encoder(seed: int = 0) -> keras.Model:
    """A fast stand-in for InceptionV3 with its contract: [N, 299, 299, 3] -> [N, FEATURE_SIZE].

    Pools the image to a few colour statistics, so different colours give
    different features; the export plumbing under test is the same as with
    the real encoder.
    """
    keras.utils.set_random_seed(seed)
    image = keras.Input([features.IMAGE_SIZE, features.IMAGE_SIZE, 3])
    x = keras.layers.AveragePooling2D(pool_size=23)(image)  # 13 x 13 x 3
    x = keras.layers.Conv2D(4, 3, activation='relu')(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(features.FEATURE_SIZE, activation='relu')(x)
    return keras.Model(image, x, name='tiny_encoder')


def artifact(artifact_type, uri: str, splits: Optional[Sequence[str]] = None):
    """A TFX artifact of `artifact_type` at `uri`, with split names for Examples."""
    from tfx.types import artifact_utils

    result = artifact_type()
    result.uri = uri
    if splits:
        result.split_names = artifact_utils.encode_split_names(list(splits))
    return result


def train_model(transformed, transform_graph, hparams, root: str, num_steps: int):
    """Trains with TFX's Trainer GenericExecutor and our `run_fn`; returns (model, model_run, encoder).

    The encoder (the Trainer's ``base_model``) is a random-weight InceptionV3,
    as the offline pipeline uses.
    """
    import json

    from tfx.components.trainer import executor as trainer_executor
    from tfx.proto import trainer_pb2
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from tfx_captioning.models import encoder

    base_model = artifact(standard_artifacts.Model, os.path.join(root, 'encoder'))
    encoder.save_encoder(
        encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM, seed=0),
        base_model.uri,
        weights=encoder.WEIGHTS_RANDOM,
        seed=0,
    )
    model = artifact(standard_artifacts.Model, os.path.join(root, 'model'))
    model_run = artifact(standard_artifacts.ModelRun, os.path.join(root, 'model_run'))
    trainer_executor.GenericExecutor().Do(
        {
            standard_component_specs.EXAMPLES_KEY: [transformed],
            standard_component_specs.TRANSFORM_GRAPH_KEY: [transform_graph],
            standard_component_specs.BASE_MODEL_KEY: [base_model],
        },
        {
            standard_component_specs.MODEL_KEY: [model],
            standard_component_specs.MODEL_RUN_KEY: [model_run],
        },
        {
            standard_component_specs.RUN_FN_KEY: 'tfx_captioning.models.trainer.run_fn',
            standard_component_specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(
                trainer_pb2.TrainArgs(num_steps=num_steps)
            ),
            standard_component_specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(
                trainer_pb2.EvalArgs(num_steps=3)
            ),
            standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(hparams.to_custom_config()),
        },
    )
    return model, model_run, base_model


def varlen_schema(regions: bool = False):
    """What SchemaGen(infer_feature_shape=False) infers for the extractor's examples."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    columns = [
        (features.IMAGE_ID_KEY, schema_pb2.BYTES),
        (features.IMAGE_FEATURES_KEY, schema_pb2.FLOAT),
        (features.CAPTIONS_KEY, schema_pb2.BYTES),
    ]
    if regions:
        columns.append((features.IMAGE_REGIONS_KEY, schema_pb2.BYTES))
    for name, feature_type in columns:
        feature = schema.feature.add(name=name, type=feature_type)
        feature.presence.min_fraction = 1.0
    return schema


def run_transform_executor(
    raw: Mapping[str, Sequence[Dict[str, Any]]], root: str, custom_config: Dict[str, Any]
):
    """TFX's own Transform executor (statistics on, as in the pipeline) over extractor-like splits.

    Returns:
      (transformed Examples, TransformGraph) artifacts.
    """
    import json

    from tfx.components.transform import executor as transform_executor
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import io_utils

    examples = artifact(standard_artifacts.Examples, os.path.join(root, 'examples'), list(raw))
    for split, instances in raw.items():
        split_dir = os.path.join(examples.uri, f'Split-{split}')
        os.makedirs(split_dir)
        write_raw_examples(instances, os.path.join(split_dir, 'data.gz'))
    schema = artifact(standard_artifacts.Schema, os.path.join(root, 'schema'))
    regions = any(features.IMAGE_REGIONS_KEY in i for s in raw.values() for i in s)
    io_utils.write_pbtxt_file(os.path.join(schema.uri, 'schema.pbtxt'), varlen_schema(regions))

    transform_graph = artifact(standard_artifacts.TransformGraph, os.path.join(root, 'graph'))
    transformed = artifact(standard_artifacts.Examples, os.path.join(root, 'transformed'))
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
        outputs[key] = [artifact(artifact_type, os.path.join(root, key))]
    transform_executor.Executor().Do(
        {
            standard_component_specs.EXAMPLES_KEY: [examples],
            standard_component_specs.SCHEMA_KEY: [schema],
        },
        outputs,
        {
            standard_component_specs.PREPROCESSING_FN_KEY: (
                'tfx_captioning.models.preprocessing.preprocessing_fn'
            ),
            standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(custom_config),
            standard_component_specs.FORCE_TF_COMPAT_V1_KEY: 0,
            standard_component_specs.SPLITS_CONFIG_KEY: None,
        },
    )
    return transformed, transform_graph
