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

import os
from typing import Any, List, Mapping, Optional

from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from tfx_captioning.components.caption_evaluator import gate
from tfx_captioning.components.caption_evaluator.component import CaptionEvaluator
from tfx_captioning.components.caption_pusher.component import make_pusher
from tfx_captioning.components.flickr8k_example_gen.component import Flickr8kExampleGen
from tfx_captioning.components.image_feature_extractor import spec as extractor_spec
from tfx_captioning.components.image_feature_extractor.component import ImageFeatureExtractor
from tfx_captioning.models.hparams import HParams

PREPROCESSING_FN = 'tfx_captioning.models.preprocessing.preprocessing_fn'
RUN_FN = 'tfx_captioning.models.trainer.run_fn'


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_root: str,
    tflite_root: Optional[str] = None,
    model_name: str = 'captioner',
    encoder_weights: str = 'imagenet',
    hparams: Optional[Mapping[str, Any]] = None,
    train_steps: Optional[int] = None,
    eval_steps: Optional[int] = None,
    min_bleu_4: float = 0.0,
    max_loss: float = 50.0,
    max_bleu_4_drop: float = 0.01,
    max_loss_increase: float = 0.05,
    min_tflite_agreement: float = 0.95,
    beam_pipeline_args: Optional[List[str]] = None,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline.

    Args:
      pipeline_name: name of the pipeline in ML Metadata and on Kubeflow.
      pipeline_root: directory (local or gs://) for every artifact.
      data_root: a directory in the Flickr8k layout (real data or the sample).
      serving_root: TF Serving root; versions go to `<serving_root>/<model_name>/<n>/`.
      tflite_root: TFLite root (`<tflite_root>/<model_name>/<n>/`); None skips it.
      model_name: the name TF Serving serves the model under.
      encoder_weights: InceptionV3 weights: 'imagenet', 'random' (offline
        demos and tests) or the path of a weights file.
      hparams: `models.hparams.HParams` fields for Transform and Trainer
        (e.g. {'min_word_count': 1, 'epochs': 20}); defaults otherwise.
      train_steps: total training steps; None trains `epochs` passes.
      eval_steps: eval steps per epoch; None uses the whole eval split.
      min_bleu_4: the lowest eval BLEU-4 a model may be blessed with.
      max_loss: the highest masked eval loss a model may be blessed with.
      max_bleu_4_drop: tolerated BLEU-4 drop against the latest blessed model.
      max_loss_increase: tolerated loss increase against the latest blessed model.
      min_tflite_agreement: lowest TFLite/SavedModel caption agreement on eval
        images at which the TFLite file is published.
      beam_pipeline_args: arguments for every Beam-based component.
      metadata_connection_config: the ML Metadata store; None on Kubeflow,
        which supplies its own.
      enable_cache: reuse outputs of components whose inputs did not change.

    Returns:
      The pipeline.

    Raises:
      ValueError: an invalid hyperparameter or threshold.
    """
    model_hparams = HParams.from_custom_config(dict(hparams or {}))
    thresholds = gate.Thresholds(
        min_bleu_4=min_bleu_4,
        max_loss=max_loss,
        max_bleu_4_drop=max_bleu_4_drop,
        max_loss_increase=max_loss_increase,
    ).validate()

    example_gen = Flickr8kExampleGen(input_base=data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs['examples'])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs['statistics'], infer_feature_shape=False
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema']
    )

    # Depends on the ExampleGen only: vocabulary or model changes never
    # recompute InceptionV3 features (TFX's cache keeps them).
    extractor = ImageFeatureExtractor(
        examples=example_gen.outputs['examples'], weights=encoder_weights
    )
    feature_examples = extractor.outputs[extractor_spec.FEATURE_EXAMPLES_KEY]
    # Transform reads the extractor's examples, so it needs their own schema.
    feature_statistics_gen = tfx.components.StatisticsGen(examples=feature_examples).with_id(
        'FeatureStatisticsGen'
    )
    feature_schema_gen = tfx.components.SchemaGen(
        statistics=feature_statistics_gen.outputs['statistics'], infer_feature_shape=False
    ).with_id('FeatureSchemaGen')
    transform = tfx.components.Transform(
        examples=feature_examples,
        schema=feature_schema_gen.outputs['schema'],
        preprocessing_fn=PREPROCESSING_FN,
        # Only the fields Transform uses: a training-only change keeps its cache.
        custom_config=model_hparams.transform_config(),
        splits_config=tfx.proto.SplitsConfig(
            analyze=['train'], transform=['train', 'eval', 'test']
        ),
    )
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'],
        base_model=extractor.outputs[extractor_spec.ENCODER_KEY],
        train_args=tfx.proto.TrainArgs(splits=['train'], num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(splits=['eval'], num_steps=eval_steps),
        custom_config=model_hparams.to_custom_config(),
    )
    latest_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id('latest_blessed_model_resolver')
    evaluator = CaptionEvaluator(
        examples=feature_examples,
        transformed_examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'],
        model=trainer.outputs['model'],
        baseline_model=latest_blessed.outputs['model'],
        raw_examples=example_gen.outputs['examples'] if tflite_root else None,
        thresholds=thresholds,
    )
    pusher = make_pusher(
        model=trainer.outputs['model'],
        model_blessing=evaluator.outputs['blessing'],
        serving_base_directory=os.path.join(serving_root, model_name),
        model_name=model_name,
        tflite_base_directory=os.path.join(tflite_root, model_name) if tflite_root else None,
        min_tflite_agreement=min_tflite_agreement,
    )
    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        extractor,
        feature_statistics_gen,
        feature_schema_gen,
        transform,
        trainer,
        latest_blessed,
        evaluator,
        pusher,
    ]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
