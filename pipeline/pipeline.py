"""The captioning pipeline, defined once for every orchestrator.

`create_pipeline` takes everything as explicit arguments and reads no globals;
the local runner and the Kubeflow runner both call it.

    Flickr8kExampleGen ─► StatisticsGen ─► SchemaGen ─► ExampleValidator
        │
        ├─► ImageFeatureExtractor ─► FeatureStatisticsGen ─► FeatureSchemaGen
        │        │ features                                        │ schema
        │        ├────────────────────────► Transform ◄────────────┘
        │        │ encoder (base_model)        │
        │        └────────────────────────► Trainer ◄── latest blessed model (Resolver)
        │                                       │                │
        └── raw images (TFLite parity) ──► CaptionEvaluator ◄─────┘
                                                │ blessing
                                              Pusher ─► TF Serving layout + TFLite
"""

from typing import List, Optional

import tensorflow_data_validation as tfdv
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.caption_evaluator.component import CaptionEvaluator
from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
from tfx_captioning.components.caption_pusher.component import make_pusher
from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.components.flickr8k_example_gen.component import Flickr8kExampleGen
from tfx_captioning.components.image_feature_extractor import spec as extractor_spec
from tfx_captioning.components.image_feature_extractor.component import ImageFeatureExtractor
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams

PREPROCESSING_FN = 'tfx_captioning.models.preprocessing.preprocessing_fn'
RUN_FN = 'tfx_captioning.models.trainer.run_fn'


def statistics_options() -> tfdv.StatsOptions:
    """TFDV options of both StatisticsGens: top-k and unique counts from sketches.

    TFDV's default top-k generator keys a GroupByKey by every distinct value
    of every string feature, including each image's encoded bytes, so Beam's
    in-memory runner held all images several times over: StatisticsGen alone
    peaked at 5.1 GB on 8,091 photo-like images (903 MB of JPEGs), against
    0.96 GB with sketches (Misra-Gries top-k, KMV uniques, values over 1 KB
    replaced by a placeholder), which also ran in 26 s instead of 46 s.
    """
    return tfdv.StatsOptions(use_sketch_based_topk_uniques=True)


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    pusher: PusherParameters,
    hparams: Optional[HParams] = None,
    extractor: Optional[extractor_spec.ExtractorParameters] = None,
    evaluator: Optional[EvaluatorParameters] = None,
    train_steps: Optional[int] = None,
    eval_steps: Optional[int] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline.

    Args:
      pipeline_name: name of the pipeline in ML Metadata and on Kubeflow.
      pipeline_root: directory (local or gs://) for every artifact.
      data_root: a directory in the Flickr8k layout (real data or the sample).
      pusher: where versions are published (TF Serving and TFLite roots,
        model name) and the TFLite agreement threshold.
      hparams: Transform and Trainer hyperparameters; `HParams()` by default.
      extractor: the feature extractor's parameters (InceptionV3 weights,
        batch size, ...); `ExtractorParameters()` (ImageNet weights) by default.
      evaluator: the blessing gate and evaluation sizes; defaults otherwise.
      train_steps: total training steps; None trains `hparams.epochs` passes.
      eval_steps: eval steps per epoch; None uses the whole eval split.
      beam_pipeline_args: arguments for every Beam-based component.
      metadata_connection_config: the ML Metadata store; None on Kubeflow,
        which supplies its own.
      enable_cache: reuse outputs of components whose inputs did not change.

    Returns:
      The pipeline.

    Raises:
      ValueError: an invalid parameter object or step count.
    """
    hparams = (hparams or HParams()).validate()
    extractor = (extractor or extractor_spec.ExtractorParameters()).validate()
    evaluator = (evaluator or EvaluatorParameters()).validate()
    pusher = pusher.validate()
    check_compatible(hparams, extractor)
    for name, steps in (('train_steps', train_steps), ('eval_steps', eval_steps)):
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f'{name} must be an int >= 1 or None, got {steps!r}.')

    example_gen = Flickr8kExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs['examples'], stats_options=statistics_options()
    )
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs['statistics'], infer_feature_shape=False
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema']
    )

    # Depends on the ExampleGen only: vocabulary or model changes never
    # recompute InceptionV3 features (TFX's cache keeps them).
    feature_extractor = ImageFeatureExtractor(
        examples=example_gen.outputs['examples'], parameters=extractor
    )
    feature_examples = feature_extractor.outputs[extractor_spec.FEATURE_EXAMPLES_KEY]
    # Transform reads the extractor's examples, so it needs their own schema.
    feature_statistics_gen = tfx.components.StatisticsGen(
        examples=feature_examples, stats_options=statistics_options()
    ).with_id('FeatureStatisticsGen')
    feature_schema_gen = tfx.components.SchemaGen(
        statistics=feature_statistics_gen.outputs['statistics'], infer_feature_shape=False
    ).with_id('FeatureSchemaGen')
    transform = tfx.components.Transform(
        examples=feature_examples,
        schema=feature_schema_gen.outputs['schema'],
        preprocessing_fn=PREPROCESSING_FN,
        # Only the fields Transform uses: a training-only change keeps its cache.
        # The code fingerprint: an edit of preprocessing_fn's code invalidates it.
        custom_config=_with_code_fingerprint(hparams.transform_config(), PREPROCESSING_FN),
        splits_config=tfx.proto.SplitsConfig(
            analyze=[features.TRAIN_SPLIT], transform=list(features.SPLITS)
        ),
        # No TFDV statistics of Transform's own: the inputs are already checked
        # (StatisticsGen + ExampleValidator on the raw examples, FeatureStatisticsGen
        # on the extractor's), nothing reads pre/post-transform statistics, and with
        # regions they are histograms over 131,072 values per image.
        disable_statistics=True,
    )
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'],
        base_model=feature_extractor.outputs[extractor_spec.ENCODER_KEY],
        train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT], num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT], num_steps=eval_steps),
        custom_config=_with_code_fingerprint(hparams.to_custom_config(), RUN_FN),
    )
    latest_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id('latest_blessed_model_resolver')
    caption_evaluator = CaptionEvaluator(
        examples=feature_examples,
        transformed_examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'],
        model=trainer.outputs['model'],
        baseline_model=latest_blessed.outputs['model'],
        raw_examples=example_gen.outputs['examples'] if pusher.tflite_root else None,
        parameters=evaluator,
    )
    caption_pusher = make_pusher(
        model=trainer.outputs['model'],
        model_blessing=caption_evaluator.outputs['blessing'],
        parameters=pusher,
    )
    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        feature_extractor,
        feature_statistics_gen,
        feature_schema_gen,
        transform,
        trainer,
        latest_blessed,
        caption_evaluator,
        caption_pusher,
    ]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def check_compatible(hparams: HParams, extractor: extractor_spec.ExtractorParameters) -> None:
    """Raises ValueError when the decoder needs what the extractor does not keep."""
    if hparams.attention and not extractor.region_features:
        raise ValueError(
            f'decoder={hparams.decoder!r} attends over region features: keep the '
            "extractor's region_features on (the default; --no-region-features turns it off)."
        )


def _with_code_fingerprint(custom_config: dict, function_path: str) -> dict:
    """`custom_config` plus the fingerprint of the code behind a dotted function path.

    TFX's cache key covers exec properties but not the code a dotted path
    names (see `components.code_fingerprint`).
    """
    fingerprint = code_fingerprint.fingerprint(code_fingerprint.module_of(function_path))
    return {**custom_config, features.CODE_FINGERPRINT_KEY: fingerprint}
