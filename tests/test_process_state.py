"""conftest's per-test isolation undoes what the CLIs do to logging, warnings and the environment."""

import logging
import os
import warnings

from tests import process_state
from tfx_captioning.cli import quiet


def _state():
    return process_state.snapshot_loggers(), list(warnings.filters), dict(os.environ)


def test_isolated_undoes_quiet_mode_added_handlers_and_basic_config():
    before = _state()
    root_handlers = list(logging.getLogger().handlers)

    with process_state.isolated():
        quiet.configure(verbose=False)
        logging.getLogger('absl').addHandler(logging.StreamHandler())  # a library's handler
        logging.basicConfig(level=logging.INFO, force=True)  # `server_cli.main`, no handlers.
        os.environ['TFX_CAPTIONING_TEST_ONLY'] = '1'
        os.environ.pop('TF_USE_LEGACY_KERAS', None)
        # They did change the process.
        assert logging.getLogger().handlers != root_handlers
        for name in quiet.NOISY_LOGGERS:
            assert logging.getLogger(name).level == logging.ERROR
        assert logging.getLogger('absl').handlers
        assert warnings.filters[0][0] == 'ignore'

    assert _state() == before
    assert logging.getLogger().handlers == root_handlers
    assert 'TFX_CAPTIONING_TEST_ONLY' not in os.environ


def test_isolated_restores_even_when_the_test_fails():
    before = _state()
    try:
        with process_state.isolated():
            quiet.configure(verbose=False)
            raise RuntimeError('the test failed')
    except RuntimeError:
        pass

    assert _state() == before
