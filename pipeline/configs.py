"""Shared settings of the captioning pipeline: names, default paths, Beam arguments.

Runners (local, Kubeflow) read these defaults and pass everything to
`pipeline.pipeline.create_pipeline` as explicit arguments.
"""

import dataclasses
import os
from typing import Any, List

from tfx_captioning.models import features

PIPELINE_NAME = 'flickr8k-captioning'
MODEL_NAME = features.MODEL_NAME
DEFAULT_OUTPUT_ROOT = features.DEFAULT_OUTPUT_ROOT

SAMPLE_DATA_SUBDIR = 'sample_data'
DEFAULT_SAMPLE_IMAGES = 1000
"""The demo's sample size: the attention decoder's shape accuracy grows with the data
(measured on the sample: 42.5 % of test captions at 320 images, 60.8 % at 1,000, 73.2 %
at 2,000 with one GRU layer), and 1,000 keeps `make demo` under 10 minutes on 2 cores
(570 s measured, against 603 s for 2,000 images with a lighter model)."""
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


BEAM_RUNNERS = ('direct', 'portable')
"""Beam runners a local run can use: the DirectRunner, or Beam's portable runner
against a local job service with SDK workers in separate processes
(`pipeline/portable_beam.py` starts and stops them)."""


def beam_args_for_portable(job_endpoint: Any, worker_pool: Any) -> List[Any]:
    """Beam arguments for the PortableRunner with an EXTERNAL SDK worker pool.

    This is how Flink and Spark run Beam Python: the pipeline goes to a job
    service as a portable proto, and SDK workers in other processes, started
    by the worker pool, run its Python code.

    Args:
      job_endpoint: the job service, HOST:PORT, or a TFX placeholder that
        gives it when a step runs (see `portable_beam.LocalPortableBeam`).
      worker_pool: the worker pool service, HOST:PORT, or a placeholder.

    Returns:
      Strings, or TFX placeholders where an endpoint was one.
    """
    return [
        '--runner=PortableRunner',
        # `+`, not an f-string: a placeholder concatenates into a placeholder.
        '--job_endpoint=' + job_endpoint,
        '--environment_type=EXTERNAL',
        '--environment_config=' + worker_pool,
    ]


SAMPLE_ENCODER_WEIGHTS = 'random'
"""The sample data runs offline: seeded random InceptionV3 weights (features
still separate colour, shape and position; Transform z-scores them)."""

SAMPLE_HPARAMS = {'min_word_count': 1, 'decoder': features.DECODER_ATTENTION}
"""Hyperparameters for the sample data: every word kept (its vocabulary is tiny), and
the attention decoder, chosen by measurement (README, "Choosing the decoder"): on the
same 1,000 images it names shape, colour and position right more often than the
init-inject decoder and scores a higher CIDEr-D."""
