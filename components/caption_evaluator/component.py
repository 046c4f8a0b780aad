"""CaptionEvaluator: a custom component instead of TFX's Evaluator, and why.

TFMA evaluates per-example metrics of a model fed serialized tf.Examples; BLEU
is a corpus-level metric over generated sequences against several references,
and our model generates captions from image features with an in-graph decoding
loop. A TFMA custom metric would need a second, TFMA-shaped export and would
still hide the decoding behind TFMA's slicing machinery. This component writes
the same standard artifacts (`ModelEvaluation`, `ModelBlessing` with
`blessed` / `current_model_id` / `baseline_model_id` properties and the
BLESSED / NOT_BLESSED marker files), so TFX's Pusher and
`LatestBlessedModelStrategy` work with it unchanged.
"""

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts

from tfx_captioning.components.caption_evaluator import executor, gate, spec


class CaptionEvaluator(base_component.BaseComponent):
    """BLEU-1..4 and masked loss on eval/test; blesses the model through a gate."""

    SPEC_CLASS = spec.CaptionEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(
        self,
        examples: types.BaseChannel,
        transformed_examples: types.BaseChannel,
        transform_graph: types.BaseChannel,
        model: types.BaseChannel,
        baseline_model: Optional[types.BaseChannel] = None,
        raw_examples: Optional[types.BaseChannel] = None,
        thresholds: Optional[gate.Thresholds] = None,
        tflite_sample_size: int = 32,
        batch_size: int = 64,
    ):
        """Args:
        examples: ImageFeatureExtractor examples (raw features, captions).
        transformed_examples: Transform's examples (for the masked loss).
        transform_graph: Transform's graph (its transformed feature spec).
        model: the Trainer's model.
        baseline_model: the latest blessed model, for the no-regression rule.
        raw_examples: ExampleGen examples; with them the TFLite variant's
          captions are compared with the SavedModel's on eval images.
        thresholds: the blessing gate; `gate.Thresholds()` by default.
        tflite_sample_size: eval images used for the TFLite parity check.
        batch_size: images per signature call.

        Raises:
          ValueError: on invalid thresholds or sizes.
        """
        thresholds = (thresholds or gate.Thresholds()).validate()
        if tflite_sample_size < 1 or batch_size < 1:
            raise ValueError('tflite_sample_size and batch_size must be >= 1.')
        super().__init__(
            spec=spec.CaptionEvaluatorSpec(
                examples=examples,
                transformed_examples=transformed_examples,
                transform_graph=transform_graph,
                model=model,
                baseline_model=baseline_model,
                raw_examples=raw_examples,
                min_bleu_4=thresholds.min_bleu_4,
                max_loss=thresholds.max_loss,
                max_bleu_4_drop=thresholds.max_bleu_4_drop,
                max_loss_increase=thresholds.max_loss_increase,
                tflite_sample_size=tflite_sample_size,
                batch_size=batch_size,
                evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
                blessing=types.Channel(type=standard_artifacts.ModelBlessing),
            )
        )
