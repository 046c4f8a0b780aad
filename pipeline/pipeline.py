"""The captioning pipeline, defined once for every orchestrator.

`create_pipeline` takes everything as explicit arguments and reads no globals;
the local runner and the Kubeflow runner both call it.
"""

from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.flickr8k_example_gen.component import Flickr8kExampleGen


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    beam_pipeline_args: Optional[List[str]] = None,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline.

    Args:
      pipeline_name: name of the pipeline in ML Metadata and on Kubeflow.
      pipeline_root: directory (local or gs://) for every artifact.
      data_root: a directory in the Flickr8k layout (real data or the sample).
      beam_pipeline_args: arguments for every Beam-based component.
      metadata_connection_config: the ML Metadata store; None on Kubeflow,
        which supplies its own.
      enable_cache: reuse outputs of components whose inputs did not change.

    Returns:
      The pipeline: Flickr8kExampleGen -> StatisticsGen -> SchemaGen ->
      ExampleValidator.
    """
    example_gen = Flickr8kExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs['examples'])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs['statistics'], infer_feature_shape=False
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema']
    )
    components = [example_gen, statistics_gen, schema_gen, example_validator]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
