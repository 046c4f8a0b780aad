"""Shared pytest fixtures.

Each block is owned by the tests that use it; append new blocks, keep others intact.
"""

import pytest

from tests import process_state
from tfx_captioning.pipeline import configs
from tfx_captioning.serving.fixture_model import (
    build_fixture_caption_model,
    publish_fixture_version,
)

# --- Serving: a TEST FIXTURE caption model (serving/fixture_model.py) --------------------


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
    from tfx_captioning.serving import server

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
    from tfx_captioning.models.hparams import HParams

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
        tflite_quantization='none',  # the TFLite tests convert their own
    )


@pytest.fixture(scope='session')
def caption_transform_run(tmp_path_factory, caption_hparams):
    """`captioning_fixtures.TransformRun` of 36 train and 12 eval synthetic images."""
    from tests import captioning_fixtures
    from tfx_captioning.models import features

    output_dir = str(tmp_path_factory.mktemp('caption_transform'))
    return captioning_fixtures.run_transform(
        {
            features.TRAIN_SPLIT: captioning_fixtures.synthetic_images(36, seed=1),
            features.EVAL_SPLIT: captioning_fixtures.synthetic_images(12, seed=2),
        },
        output_dir,
        custom_config=caption_hparams.transform_config(),
    )


# --- ExampleGen: one real run over the generated sample dataset ---------------------------


@pytest.fixture(scope='session')
def sample_examples(tmp_path_factory):
    """(data root, images per split, Examples) of Flickr8kExampleGen over 16 sample images."""
    from tests import feature_extractor_fixtures
    from tfx_captioning.cli import sample_data

    root = tmp_path_factory.mktemp('sample_examples')
    data_root = str(root / 'data')
    counts = sample_data.generate(data_root, num_images=16, seed=3)
    examples = feature_extractor_fixtures.run_example_gen(data_root, str(root / 'examples'))
    return data_root, counts, examples


# --- Isolation: no test sees what an earlier test's CLI `main` did to the process ----------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Runs each test in `process_state.isolated()`: logging, warnings filters, environment.

    A hook rather than an autouse fixture, so that what a module- or
    session-scoped fixture's setup changes is undone too.
    """
    with process_state.isolated():
        yield


# --- Tiers: `make test-fast` runs the tests this hook marks `fast` -------------------------

EXPENSIVE_FIXTURES = {
    # Fixture: what its setup costs on the 2-core development machine (--durations).
    'caption_transform_run': 'a real tf.Transform run (~9 s); `trained` then trains on it (~40 s)',
    'transformed': 'a real tf.Transform run over the preprocessing examples (~5 s)',
    'extraction': 'ImageFeatureExtractor through Beam with InceptionV3 (~9 s)',
    'defective_run': 'Flickr8kExampleGen through Beam (~5 s)',
    'sample_examples': 'Flickr8kExampleGen through Beam (~5 s)',
    'random_encoder': 'InceptionV3 with random weights (~4 s); its users build more',
    'evaluator_artifacts': 'a tf.Transform run and two Trainer runs (~60 s)',
    'scorer': "the coco-caption toolkit's METEOR JVM (6-20 s to load, 1.3 GB)",
}
"""A test using one of these (directly or through another fixture) is not `fast`."""


def pytest_collection_modifyitems(config, items):
    """Marks `fast` every test that is not `slow` and uses no expensive fixture.

    The tier follows from what a test uses, so a new test lands in the right
    one without a marker of its own. `item.fixturenames` holds the fixtures a
    test uses through other fixtures too.
    """
    del config
    for item in items:
        if item.get_closest_marker('slow') is None and not (
            EXPENSIVE_FIXTURES.keys() & set(item.fixturenames)
        ):
            item.add_marker(pytest.mark.fast)
