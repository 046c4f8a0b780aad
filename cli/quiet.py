"""Keeps TensorFlow, absl and Beam log noise out of a person's terminal by default."""

import logging
import os
import warnings

# TFX 1.16 warnings that say nothing actionable about this pipeline.
_HARMLESS = (
    'ArtifactQuery.property_predicate is not supported',
    'does not have payload_format custom property',
    '`custom_executor_spec` is deprecated',
    'Tables initialized inside a tf.function',
)


# Library loggers that quiet mode limits to ERROR.
NOISY_LOGGERS = ('apache_beam', 'tensorflow', 'h5py', 'urllib3', 'google')


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS)


def configure(verbose: bool) -> None:
    """Sets log levels before TensorFlow is imported; `verbose` shows everything.

    Quiet mode keeps WARNING and above on the terminal; INFO records still flow
    to handlers that ask for them (the component progress lines).
    """
    os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
    if verbose:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
        return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    warnings.filterwarnings('ignore')
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter('%(levelname)s: %(message)s'))
    handler.addFilter(_DropHarmless())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
