"""Keeps TensorFlow, absl and Beam log noise out of a person's terminal by default."""

import logging
import os
import warnings


def configure(verbose: bool) -> None:
    """Sets log levels before TensorFlow is imported; `verbose` shows everything."""
    os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
    if verbose:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
        return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    warnings.filterwarnings('ignore')
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ('apache_beam', 'tensorflow', 'absl'):
        logging.getLogger(name).setLevel(logging.ERROR)
