"""Compiles the captioning pipeline for Kubeflow Pipelines v2 and Vertex AI Pipelines.

Thin by design, like `pipeline/local_runner.py`: take a checked
`KubeflowConfig`, call the same `create_pipeline(...)` with keyword arguments
only, and hand it to TFX's `KubeflowV2DagRunner`, which writes the pipeline
spec. No ML Metadata connection is configured: KFP and Vertex supply their own.
Every step runs `python -m tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor` in the configured image (see ./Dockerfile).
"""

import json
import os

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from tfx_captioning.kubeflow.config import KubeflowConfig
from tfx_captioning.pipeline.pipeline import create_pipeline


def build_pipeline(config: KubeflowConfig) -> tfx.dsl.Pipeline:
    """The pipeline object `create_pipeline` builds from `config`.

    Raises:
      ValueError: the config is invalid or names an argument that
        `create_pipeline` does not take.
    """
    config.validate()
    return create_pipeline(**config.pipeline_kwargs())


def compile_pipeline(config: KubeflowConfig) -> str:
    """Compiles the pipeline into `config.output_file`; returns that path.

    A `.yaml` file holds the PipelineSpec, which both the KFP client and
    Vertex AI accept; the pipeline root is then given when a run is submitted.
    A `.json` file holds a Vertex PipelineJob that also records the pipeline
    root (as `runtimeConfig.gcsOutputDirectory`).
    """
    pipeline = build_pipeline(config)
    output_file = config.output_file
    if '://' not in output_file:
        output_file = os.path.abspath(output_file)
    output_dir, output_filename = os.path.split(output_file)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            display_name=config.display_name,
            default_image=config.image,
            use_pipeline_spec_2_1=config.pipeline_spec_2_1,
        ),
        output_dir=output_dir,
        output_filename=output_filename,
    )
    runner.run(pipeline)
    return output_file


def load_pipeline_spec(path: str) -> pipeline_spec_pb2.PipelineSpec:
    """Reads a compiled file back as KFP's PipelineSpec proto (strictly: unknown fields fail).

    Args:
      path: a `.yaml` PipelineSpec or a `.json` PipelineJob written by
        `compile_pipeline`.
    """
    with tfx.dsl.io.fileio.open(path, 'r') as f:
        text = f.read()
    if path.endswith('.json'):
        spec_dict = json.loads(text)['pipelineSpec']
    else:
        # KFP's own loader takes the first YAML document as the PipelineSpec.
        spec_dict = next(iter(yaml.safe_load_all(text)))
    return json_format.ParseDict(spec_dict, pipeline_spec_pb2.PipelineSpec())
