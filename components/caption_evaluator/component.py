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

from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.caption_evaluator import executor, spec
from tfx_captioning.models import features


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
        parameters: Optional[spec.EvaluatorParameters] = None,
    ):
        """Args:
        examples: ImageFeatureExtractor examples (raw features, captions).
        transformed_examples: Transform's examples (for the masked loss).
        transform_graph: Transform's graph (its transformed feature spec).
        model: the Trainer's model.
        baseline_model: the latest blessed model, for the no-regression rule.
        raw_examples: ExampleGen examples; with them each TFLite variant's
          captions are compared with the SavedModel's on eval images.
        parameters: the gate and sizes; `spec.EvaluatorParameters()` by default.

        Raises:
          ValueError: on invalid parameters.
        """
        parameters = (parameters or spec.EvaluatorParameters()).validate()
        super().__init__(
            spec=spec.CaptionEvaluatorSpec(
                examples=examples,
                transformed_examples=transformed_examples,
                transform_graph=transform_graph,
                model=model,
                baseline_model=baseline_model,
                raw_examples=raw_examples,
                evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
                blessing=types.Channel(type=standard_artifacts.ModelBlessing),
                **parameters.to_exec_properties(),
                **{features.CODE_FINGERPRINT_KEY: code_fingerprint.fingerprint(executor.__name__)},
            )
        )
