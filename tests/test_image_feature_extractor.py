"""ImageFeatureExtractor: construction, and the executor on real tiny TFRecords.

The executor runs on a hand-written Examples artifact holding good images in
several formats and one bad image of every kind, and once on the real
Flickr8kExampleGen output. Its features are checked against a direct call of
the shared preprocessing and the saved encoder.
"""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, channel_utils, standard_artifacts

from tests import feature_extractor_fixtures as fx
from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.image_feature_extractor import component, executor, spec
from tfx_captioning.models import encoder, features, image_preprocessing

CAPTIONS = ['A first caption.', 'Une deuxième légende', 'a third']

BAD_IMAGES = {
    'empty.jpg': (lambda jpeg: b'', executor.REASON_EMPTY_IMAGE),
    'text.jpg': (lambda jpeg: b'not an image at all', executor.REASON_UNKNOWN_FORMAT),
    'webp.webp': (
        lambda jpeg: fx.encode(fx.noise_image(), 'WEBP'),
        executor.REASON_UNKNOWN_FORMAT,
    ),
    'truncated.jpg': (lambda jpeg: jpeg[: len(jpeg) * 2 // 3], executor.REASON_UNDECODABLE),
    'huge.png': (
        lambda jpeg: fx.with_dimensions(fx.encode(fx.noise_image(), 'PNG'), 'PNG', 20000, 20000),
        executor.REASON_OVERSIZED,
    ),
}
EXPECTED_SKIPS = {reason: 0 for reason in executor.REASONS}
for _, reason in BAD_IMAGES.values():
    EXPECTED_SKIPS[reason] += 1
EXPECTED_SKIPS[executor.REASON_NO_IMAGE_ID] = 1


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """A train split of 6 good images (JPEG, RGBA PNG, palette BMP) and every bad kind; eval of 2."""
    jpegs = fx.sample_jpegs(str(tmp_path_factory.mktemp('sample')), 6)
    good = {
        'train': dict(jpegs[:4]),
        'eval': dict(jpegs[4:6]),
    }
    good['train']['rgba.png'] = fx.encode(fx.noise_image(seed=1).convert('RGBA'), 'PNG')
    good['train']['palette.bmp'] = fx.encode(fx.noise_image(seed=2).convert('P'), 'BMP')
    records = {
        split: [fx.input_example(i, data, CAPTIONS) for i, data in images.items()]
        for split, images in good.items()
    }
    for image_id, (make, _) in BAD_IMAGES.items():
        records['train'].append(fx.input_example(image_id, make(jpegs[0][1]), CAPTIONS))
    records['train'].append(fx.input_example(None, jpegs[0][1], CAPTIONS))
    examples = fx.write_examples(str(tmp_path_factory.mktemp('examples')), records)
    return examples, good


Extraction = collections.namedtuple('Extraction', 'feature_examples encoder encoder_loads')


@pytest.fixture(scope='module')
def extraction(dataset, tmp_path_factory):
    """One in-memory run, recording every time a worker loads the encoder artifact."""
    examples, _ = dataset
    loads = []
    load = executor.EncoderRunner.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            executor.EncoderRunner,
            'load',
            classmethod(lambda cls, path: loads.append(path) or load(path)),
        )
        # batch_size 4 over 6 train images: one full batch and one partial one.
        feature_examples, encoder_artifact = fx.run_extractor(
            examples, str(tmp_path_factory.mktemp('out')), batch_size=4
        )
    return Extraction(feature_examples, encoder_artifact, loads)


# --- Component construction ------------------------------------------------------------


def _examples_channel():
    return channel_utils.as_channel([standard_artifacts.Examples()])


def test_component_declares_its_channels_and_parameters():
    extractor = component.ImageFeatureExtractor(
        examples=_examples_channel(),
        parameters=spec.ExtractorParameters(weights='random', seed=3, batch_size=8),
    )

    assert extractor.outputs[spec.FEATURE_EXAMPLES_KEY].type == standard_artifacts.Examples
    assert extractor.outputs[spec.ENCODER_KEY].type == standard_artifacts.Model
    assert extractor.inputs[spec.EXAMPLES_KEY].type == standard_artifacts.Examples
    assert extractor.exec_properties == {
        spec.WEIGHTS_KEY: 'random',
        spec.SEED_KEY: 3,
        spec.BATCH_SIZE_KEY: 8,
        spec.KEEP_IMAGE_BYTES_KEY: False,
        spec.MAX_IMAGE_PIXELS_KEY: features.MAX_IMAGE_PIXELS,
        # The executor's code, for TFX's cache key (tests/test_cache_keys.py).
        features.CODE_FINGERPRINT_KEY: code_fingerprint.fingerprint(executor.__name__),
        spec.ENCODER_PRECISION_KEY: encoder.PRECISION_FLOAT32,
        spec.REGION_FEATURES_KEY: True,
    }


def test_component_defaults_to_imagenet():
    extractor = component.ImageFeatureExtractor(examples=_examples_channel())

    assert extractor.exec_properties[spec.WEIGHTS_KEY] == encoder.WEIGHTS_IMAGENET


@pytest.mark.parametrize(
    'arguments,message',
    [
        ({'weights': 'imagnet'}, 'imagenet'),
        ({'weights': '/models/inception.keras'}, '.h5'),
        ({'seed': -1}, 'seed'),
        ({'batch_size': 0}, 'batch_size'),
        ({'batch_size': 4096}, 'batch_size'),
        ({'batch_size': 8.0}, 'batch_size'),
        ({'max_image_pixels': 0}, 'max_image_pixels'),
        ({'keep_image_bytes': 'yes'}, 'keep_image_bytes'),
        ({'encoder_precision': 'float16'}, 'precision'),
        ({'encoder_precision': 'bf16'}, 'precision'),
    ],
)
def test_component_rejects_bad_arguments_when_the_pipeline_is_built(arguments, message):
    with pytest.raises(ValueError, match=message):
        component.ImageFeatureExtractor(
            examples=_examples_channel(), parameters=spec.ExtractorParameters(**arguments)
        )


def test_parameters_read_from_exec_properties_accept_an_int_for_the_bool():
    parameters = spec.ExtractorParameters.from_exec_properties(
        {spec.WEIGHTS_KEY: 'random', spec.KEEP_IMAGE_BYTES_KEY: 1, spec.BATCH_SIZE_KEY: 2}
    )

    assert parameters.keep_image_bytes is True and parameters.batch_size == 2


def test_reshuffle_only_when_the_runner_has_several_workers():
    assert not executor.runner_has_several_workers([])
    assert not executor.runner_has_several_workers(fx.IN_MEMORY_ARGS)
    assert executor.runner_has_several_workers(fx.MULTI_PROCESSING_ARGS)
    assert executor.runner_has_several_workers(['--runner=DataflowRunner'])


# --- Classifying bad images --------------------------------------------------------------


@pytest.mark.parametrize('image_id', sorted(BAD_IMAGES))
def test_bad_images_are_classified_from_their_header(image_id):
    make, reason = BAD_IMAGES[image_id]
    data = make(fx.encode(fx.noise_image(300, 200), 'JPEG'))
    problem = executor.image_problem(data, features.MAX_IMAGE_PIXELS)

    # Truncated pixel data is found only when decoding; everything else from the header.
    assert problem == (None if reason == executor.REASON_UNDECODABLE else reason)


def test_good_images_have_no_problem():
    for image_format in ('JPEG', 'PNG', 'GIF', 'BMP'):
        data = fx.encode(fx.noise_image(), image_format)
        assert executor.image_problem(data, features.MAX_IMAGE_PIXELS) is None
    assert executor.image_problem(data, 100) == executor.REASON_OVERSIZED


# --- The executor on real TFRecords ----------------------------------------------------------


def test_every_good_image_is_written_with_finite_features_and_all_captions(dataset, extraction):
    _, good = dataset
    feature_examples = extraction.feature_examples

    assert artifact_utils.decode_split_names(feature_examples.split_names) == ['train', 'eval']
    for split, images in good.items():
        written = fx.read_examples(feature_examples, split)
        assert sorted(written) == sorted(images)
        for feature in written.values():
            assert set(feature) == {
                features.IMAGE_ID_KEY,
                features.IMAGE_FEATURES_KEY,
                features.CAPTIONS_KEY,
                features.IMAGE_REGIONS_KEY,
            }
            vector = np.asarray(feature[features.IMAGE_FEATURES_KEY].float_list.value)
            assert vector.shape == (features.FEATURE_SIZE,) and np.all(np.isfinite(vector))
            captions = [c.decode('utf-8') for c in feature[features.CAPTIONS_KEY].bytes_list.value]
            assert captions == CAPTIONS


def test_bad_images_are_skipped_and_counted_on_the_artifact(dataset, extraction):
    _, good = dataset
    feature_examples = extraction.feature_examples

    for reason, count in EXPECTED_SKIPS.items():
        assert (
            feature_examples.get_int_custom_property(executor.SKIPPED_PROPERTY_PREFIX + reason)
            == count
        ), reason
    report = json.loads(feature_examples.get_string_custom_property(executor.REPORT_PROPERTY))
    assert report['skipped'] == EXPECTED_SKIPS
    assert report['examples'] == {split: len(images) for split, images in good.items()}
    for split, images in good.items():
        assert feature_examples.get_int_custom_property(
            executor.EXAMPLES_PROPERTY_PREFIX + split
        ) == len(images)


def test_output_is_a_standard_examples_artifact(extraction):
    feature_examples, encoder_artifact, _ = extraction

    assert examples_utils.get_payload_format(feature_examples) == example_gen_pb2.FORMAT_TF_EXAMPLE
    assert examples_utils.get_file_format(feature_examples) == executor.OUTPUT_FILE_FORMAT
    assert encoder_artifact.get_string_custom_property(executor.ENCODER_WEIGHTS_PROPERTY) == (
        encoder.WEIGHTS_RANDOM
    )
    assert encoder_artifact.get_int_custom_property(executor.ENCODER_SEED_PROPERTY) == 0
    assert encoder_artifact.get_string_custom_property(executor.ENCODER_FINGERPRINT_PROPERTY) == (
        encoder.read_encoder_spec(encoder_artifact.uri).weights_fingerprint
    )
    for artifact in (feature_examples, encoder_artifact):
        assert artifact.get_string_custom_property(executor.ENCODER_PRECISION_PROPERTY) == (
            encoder.PRECISION_FLOAT32
        )


def test_features_agree_with_the_shared_preprocessing_and_the_saved_encoder(dataset, extraction):
    _, good = dataset
    feature_examples, encoder_artifact, _ = extraction
    ids = [i for images in good.values() for i in images]
    image_bytes = [good[split][i] for split in good for i in good[split]]

    model = encoder.load_encoder(encoder_artifact.uri)
    direct = model(image_preprocessing.preprocess_batch(tf.constant(image_bytes)), training=False)

    component_features = {}
    for split in good:
        component_features.update(fx.feature_vectors(feature_examples, split))
    stacked = np.stack([component_features[i] for i in ids])
    np.testing.assert_allclose(stacked, direct.numpy(), rtol=0, atol=1e-5)
    # Random-weight features are O(1) here, so 1e-5 is a tight tolerance.
    assert np.abs(stacked).mean() > 0.01


def test_regions_are_kept_as_float16_and_average_to_the_pooled_features(dataset, extraction):
    _, good = dataset
    feature_examples, encoder_artifact, _ = extraction
    split = next(iter(good))
    written = fx.read_examples(feature_examples, split)
    image_id = sorted(written)[0]
    stored = written[image_id][features.IMAGE_REGIONS_KEY].bytes_list.value[0]
    assert len(stored) == features.NUM_REGIONS * features.FEATURE_SIZE * 2  # float16
    regions = executor.decode_regions(stored)
    pooled = np.asarray(written[image_id][features.IMAGE_FEATURES_KEY].float_list.value)
    # InceptionV3's pooled vector is its last map's mean: float16 storage keeps it.
    np.testing.assert_allclose(regions.mean(axis=0), pooled, rtol=2e-3, atol=2e-3)
    model = encoder.load_encoder(encoder_artifact.uri)
    pixels = image_preprocessing.preprocess_batch(tf.constant([good[split][image_id]]))
    _, direct = encoder.make_encode_regions_fn(model)(pixels)
    np.testing.assert_allclose(regions, direct.numpy()[0], rtol=1e-3, atol=1e-3)


def test_without_region_features_no_regions_are_written(sample_examples, tmp_path):
    _, _, examples = sample_examples
    feature_examples, _ = fx.run_extractor(
        examples, str(tmp_path / 'extractor'), region_features=False, batch_size=16
    )
    written = fx.read_examples(feature_examples, features.TRAIN_SPLIT)
    assert written and not any(features.IMAGE_REGIONS_KEY in f for f in written.values())


def test_in_memory_workers_reuse_the_drivers_encoder(extraction):
    # The driver built the encoder and saved it; the in-process workers take
    # that very model instead of loading the artifact a second time.
    assert extraction.encoder_loads == []


def test_on_flickr8k_example_gen_output_keeping_image_bytes(sample_examples, tmp_path):
    _, _, examples = sample_examples
    inputs = {
        split: fx.read_examples(examples, split)
        for split in artifact_utils.decode_split_names(examples.split_names)
    }

    feature_examples, _ = fx.run_extractor(
        examples, str(tmp_path / 'extractor'), keep_image_bytes=True, batch_size=16
    )

    assert feature_examples.split_names == examples.split_names
    for split, records in inputs.items():
        written = fx.read_examples(feature_examples, split)
        assert sorted(written) == sorted(records)
        for image_id, feature in written.items():
            assert feature[features.IMAGE_KEY] == records[image_id][features.IMAGE_KEY]
            assert feature[features.CAPTIONS_KEY] == records[image_id][features.CAPTIONS_KEY]
            assert len(feature[features.IMAGE_FEATURES_KEY].float_list.value) == 2048
