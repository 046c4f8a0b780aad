"""Runs the pipeline locally with Beam's DirectRunner and an SQLite ML Metadata store.

Thin by design: resolve paths, the metadata store and Beam arguments (for
the portable runner, with its local services), then hand
`create_pipeline(...)` to TFX's `LocalDagRunner`.
"""

import dataclasses
import os
from typing import Any, Optional

from tfx import v1 as tfx

from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.pipeline import configs, portable_beam
from tfx_captioning.pipeline.pipeline import create_pipeline


def run(
    data_root: str,
    output_root: str = configs.DEFAULT_OUTPUT_ROOT,
    beam_workers: int = 1,
    enable_cache: bool = True,
    min_tflite_agreement: Optional[float] = None,
    beam_runner: str = 'direct',
    **pipeline_args: Any,
) -> configs.LocalPaths:
    """Runs the whole pipeline on `data_root`; returns where it wrote things.

    Args:
      data_root: a Flickr8k-layout directory.
      output_root: artifacts, metadata, pushed models and reports go under it.
      beam_workers: DirectRunner processes (see `configs.beam_args_for_local`);
        must be 1 with the portable runner, whose local job service runs each
        job on one SDK worker process.
      enable_cache: reuse unchanged components' outputs.
      min_tflite_agreement: the Pusher's TFLite threshold; None keeps
        `PusherParameters`' default.
      beam_runner: 'direct' (Beam's DirectRunner) or 'portable' (Beam's
        PortableRunner against a local job service and SDK worker pool,
        started for this run and stopped after it; `pipeline/portable_beam.py`).
      **pipeline_args: further `create_pipeline` arguments (hparams,
        extractor, evaluator, train_steps, ...).
    """
    paths = configs.LocalPaths(os.path.abspath(output_root))
    os.makedirs(os.path.dirname(paths.metadata_path), exist_ok=True)
    pusher = PusherParameters(
        serving_root=paths.serving_root,
        tflite_root=paths.tflite_root,
        model_name=configs.MODEL_NAME,
    )
    if min_tflite_agreement is not None:
        pusher = dataclasses.replace(pusher, min_tflite_agreement=min_tflite_agreement)
    with portable_beam.beam_args(beam_runner, beam_workers) as beam_pipeline_args:
        pipeline = create_pipeline(
            pipeline_name=configs.PIPELINE_NAME,
            pipeline_root=paths.pipeline_root,
            data_root=os.path.abspath(data_root),
            pusher=pusher,
            beam_pipeline_args=beam_pipeline_args,
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                paths.metadata_path
            ),
            enable_cache=enable_cache,
            **pipeline_args,
        )
        tfx.orchestration.LocalDagRunner().run(pipeline)
    return paths
