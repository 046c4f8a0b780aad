"""Restores the process-wide state a CLI `main` changes: logging, warnings filters, environment.

Every CLI `main` calls `cli.quiet.configure`, which replaces the root logger's
handlers, sets the root and library loggers' levels, silences warnings and
sets environment variables; `cli.progress.attach` adds a handler to absl's
logger and `serving.server_cli.main` calls `logging.basicConfig`. Left in
place, these change what every later test logs and warns, so a result could
depend on which tests ran before. conftest runs each test, its fixtures'
setup and teardown included, inside `isolated()`.
"""

import contextlib
import logging
import os
import warnings
from typing import Dict, Iterator, List, Tuple

from tfx_captioning.cli import quiet

# Loggers the CLIs configure. They are created (at their defaults) before the
# snapshot, so that one first created by a test is restored too.
CONFIGURED_LOGGERS = quiet.NOISY_LOGGERS + ('absl',)

_LoggerState = Tuple[int, List[logging.Handler], List[logging.Filter], bool, bool]


def _loggers() -> List[logging.Logger]:
    for name in CONFIGURED_LOGGERS:
        logging.getLogger(name)
    return [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]


def snapshot_loggers() -> Dict[logging.Logger, _LoggerState]:
    """Each existing logger's level, handlers, filters, propagate and disabled flags."""
    return {
        logger: (
            logger.level,
            list(logger.handlers),
            list(logger.filters),
            logger.propagate,
            logger.disabled,
        )
        for logger in _loggers()
    }


def _restore_loggers(saved: Dict[logging.Logger, _LoggerState]) -> None:
    for logger, (level, handlers, filters, propagate, disabled) in saved.items():
        # setLevel clears every logger's level cache: call it only on a change.
        if logger.level != level:
            logger.setLevel(level)
        if logger.handlers != handlers:
            logger.handlers[:] = handlers
        if logger.filters != filters:
            logger.filters[:] = filters
        logger.propagate = propagate
        logger.disabled = disabled


def _restore_environ(saved: Dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Puts logging, `warnings` filters and `os.environ` back as they were on exit."""
    loggers = snapshot_loggers()
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        _restore_loggers(loggers)
        _restore_environ(environ)
