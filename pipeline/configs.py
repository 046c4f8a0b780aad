"""Shared settings of the captioning pipeline: names, default paths, Beam arguments.

Runners (local, Kubeflow) read these defaults and pass everything to
`pipeline.pipeline.create_pipeline` as explicit arguments.
"""

import dataclasses
import os
from typing import List

from tfx_captioning.models import features

PIPELINE_NAME = 'flickr8k-captioning'
MODEL_NAME = features.MODEL_NAME
DEFAULT_OUTPUT_ROOT = features.DEFAULT_OUTPUT_ROOT

SAMPLE_DATA_SUBDIR = 'sample_data'
DEFAULT_SAMPLE_IMAGES = 320
DEFAULT_SAMPLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class LocalPaths:
    """Where a local run keeps its artifacts, metadata and pushed models."""

    output_root: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_root, 'tfx', PIPELINE_NAME)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_root, 'tfx', 'metadata.sqlite')

    @property
    def sample_data(self) -> str:
        return os.path.join(self.output_root, SAMPLE_DATA_SUBDIR)

    @property
    def serving_root(self) -> str:
        return os.path.join(self.output_root, features.SERVING_SUBDIR)

    @property
    def tflite_root(self) -> str:
        return os.path.join(self.output_root, features.TFLITE_SUBDIR)


def beam_args_for_local(num_workers: int) -> List[str]:
    """Beam arguments for the DirectRunner on this machine.

    One worker runs in memory (fastest for small data, easy to debug); more
    than one uses `multi_processing` so CPU-heavy components use several cores.
    """
    if num_workers < 1:
        raise ValueError(f'beam workers must be >= 1, got {num_workers}.')
    if num_workers == 1:
        return ['--direct_running_mode=in_memory', '--direct_num_workers=1']
    return ['--direct_running_mode=multi_processing', f'--direct_num_workers={num_workers}']


SAMPLE_ENCODER_WEIGHTS = 'random'
"""The sample data runs offline: seeded random InceptionV3 weights (features
still separate colour, shape and position; Transform z-scores them)."""

SAMPLE_HPARAMS = {'min_word_count': 1}
"""Hyperparameters for the sample data: every word kept (its vocabulary is tiny)."""
