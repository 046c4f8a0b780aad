"""The InceptionV3 encoder: weights specs, deterministic random weights, the artifact round trip."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tfx.utils import path_constants, path_utils

from tfx_captioning.components.image_feature_extractor import spec as extractor_spec
from tfx_captioning.models import encoder, features

SEED = 7


@pytest.fixture(scope='module')
def random_encoder():
    return encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM, seed=SEED)


@pytest.fixture(scope='module')
def images():
    return tf.random.stateless_uniform(
        [2, features.IMAGE_SIZE, features.IMAGE_SIZE, 3], seed=[1, 2], minval=-1.0, maxval=1.0
    )


@pytest.fixture(scope='module')
def saved_artifact(random_encoder, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp('encoder_artifact'))
    spec = encoder.save_encoder(random_encoder, uri, encoder.WEIGHTS_RANDOM, SEED)
    return uri, spec


@pytest.mark.parametrize(
    'weights, near_miss',
    [
        ('imagenet', 'imagenet21k'),
        ('random', 'Random'),
        ('/w/notop.h5', '/w/notop.keras'),
        ('gs://b/w.HDF5', 'gs://b/w.HDF5.json'),
    ],
)
def test_valid_weights_specs_are_accepted_and_their_near_misses_refused(weights, near_miss):
    # A spec is checked by its text alone: these paths do not exist.
    assert encoder.validate_weights(weights) is None
    # What the extractor component checks when the pipeline is built.
    assert extractor_spec.ExtractorParameters(weights=weights).validate().weights == weights
    with pytest.raises(ValueError, match=re.escape(repr(near_miss))):
        encoder.validate_weights(near_miss)


@pytest.mark.parametrize('weights', ['', 'imagenet21k', 'Random', '/w/model.keras', None, 3])
def test_invalid_weights_specs_name_the_choices(weights):
    with pytest.raises(ValueError, match='imagenet'):
        encoder.validate_weights(weights)


def test_random_encoder_maps_images_to_finite_2048_features(random_encoder, images):
    encode = encoder.make_encode_fn(random_encoder)

    output = encode(images).numpy()

    assert output.shape == (2, features.FEATURE_SIZE) and output.dtype == np.float32
    assert np.all(np.isfinite(output))
    # He-uniform kernels keep activations at unit scale (Keras' default gives ~1e-4).
    assert 0.05 < output.std() < 20.0
    # Graph function and eager call agree.
    np.testing.assert_allclose(
        output, random_encoder(images, training=False).numpy(), rtol=1e-5, atol=1e-6
    )


def test_random_weights_depend_only_on_the_seed(random_encoder):
    again = encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM, seed=SEED)

    for mine, theirs in zip(random_encoder.weights, again.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # Keras numbers layer names per process; the fingerprint sees only the values.
    assert encoder.weights_fingerprint(again) == encoder.weights_fingerprint(random_encoder)


def test_another_seed_gives_other_weights():
    conv = keras.Sequential([keras.Input([8, 8, 3]), keras.layers.Conv2D(4, 3, use_bias=False)])
    kernels = []
    for seed in (SEED, SEED + 1, SEED):
        encoder._set_random_weights(conv, seed)
        kernels.append(conv.weights[0].numpy())

    assert not np.array_equal(kernels[0], kernels[1])
    np.testing.assert_array_equal(kernels[0], kernels[2])


def test_artifact_layout_and_spec(saved_artifact, random_encoder):
    uri, spec = saved_artifact
    model_dir = os.path.join(uri, path_constants.SERVING_MODEL_DIR)

    assert encoder.MODEL_DIR == path_constants.SERVING_MODEL_DIR
    assert sorted(os.listdir(model_dir)) == [encoder.SPEC_FILE, encoder.WEIGHTS_FILE]
    with open(os.path.join(model_dir, encoder.SPEC_FILE)) as f:
        written = json.load(f)
    assert written['weights'] == 'random' and written['seed'] == SEED
    assert written['weights_fingerprint'] == encoder.weights_fingerprint(random_encoder)
    assert written['feature_size'] == features.FEATURE_SIZE
    assert encoder.read_encoder_spec(uri) == spec


def test_load_encoder_gives_identical_features(saved_artifact, random_encoder, images):
    uri, _ = saved_artifact
    expected = random_encoder(images, training=False).numpy()
    # What the Trainer receives as fn_args.base_model for a Model artifact at `uri`.
    base_model = path_utils.serving_model_path(uri)

    loaded = encoder.load_encoder(base_model)

    np.testing.assert_array_equal(loaded(images, training=False).numpy(), expected)
    # The artifact uri itself names the same files.
    assert encoder.model_dir(uri) == encoder.model_dir(base_model) == base_model


def test_a_weights_file_path_is_a_weights_spec(saved_artifact, random_encoder, images):
    uri, _ = saved_artifact
    path = os.path.join(uri, encoder.MODEL_DIR, encoder.WEIGHTS_FILE)

    from_file = encoder.build_inception_encoder(path)

    np.testing.assert_array_equal(
        from_file(images, training=False).numpy(),
        random_encoder(images, training=False).numpy(),
    )


def test_a_modified_weights_file_is_refused(saved_artifact, tmp_path):
    uri, _ = saved_artifact
    copy = str(tmp_path / 'copy')
    tf.io.gfile.makedirs(os.path.join(copy, encoder.MODEL_DIR))
    for name in (encoder.SPEC_FILE, encoder.WEIGHTS_FILE):
        tf.io.gfile.copy(
            os.path.join(uri, encoder.MODEL_DIR, name), os.path.join(copy, encoder.MODEL_DIR, name)
        )
    with open(os.path.join(copy, encoder.MODEL_DIR, encoder.WEIGHTS_FILE), 'ab') as f:
        f.write(b'tampered')

    with pytest.raises(ValueError, match='SHA-256'):
        encoder.load_encoder(copy)


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='encoder_spec.json'):
        encoder.load_encoder(str(tmp_path))


def test_missing_or_wrong_weights_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        encoder.build_inception_encoder(str(tmp_path / 'absent.h5'))
    not_weights = tmp_path / 'not_weights.h5'
    not_weights.write_bytes(b'this is not HDF5')
    with pytest.raises(ValueError, match='not HDF5'):
        encoder.build_inception_encoder(str(not_weights))
    other_model = tmp_path / 'other_model.h5'
    keras.Sequential([keras.Input([4]), keras.layers.Dense(2)]).save_weights(str(other_model))
    with pytest.raises(ValueError, match='no-top weights'):
        encoder.build_inception_encoder(str(other_model))


def test_unavailable_imagenet_weights_explain_how_to_provide_them(tmp_path, monkeypatch):
    # An empty Keras cache and an unreachable origin: what an offline machine sees.
    monkeypatch.setenv('HOME', str(tmp_path))
    (tmp_path / '.keras').mkdir()  # else Keras falls back to /tmp/.keras
    monkeypatch.setattr(encoder, 'IMAGENET_WEIGHTS_URL', f'file://{tmp_path}/absent.h5')

    with pytest.raises(encoder.WeightsNotAvailableError) as error:
        encoder.build_inception_encoder(encoder.WEIGHTS_IMAGENET)

    message = str(error.value)
    assert os.path.join(str(tmp_path), '.keras', 'models', encoder.IMAGENET_WEIGHTS_FILE) in message
    assert encoder.IMAGENET_WEIGHTS_MD5 in message
    assert "weights='random'" in message and "weights='/path/to/" in message


def test_cached_imagenet_weights_looks_in_the_keras_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    models_dir = tmp_path / '.keras' / 'models'
    models_dir.mkdir(parents=True)
    assert encoder.cached_imagenet_weights() is None

    (models_dir / encoder.IMAGENET_WEIGHTS_FILE).write_bytes(b'weights')

    assert encoder.cached_imagenet_weights() == str(models_dir / encoder.IMAGENET_WEIGHTS_FILE)
