"""CaptionEvaluatorSpec: keys, inputs, outputs and the one parameter object."""

import dataclasses
import json
from typing import Any, Dict

from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from tfx_captioning.components.caption_evaluator import gate as gate_lib
from tfx_captioning.models import features

# Input keys.
EXAMPLES_KEY = 'examples'
TRANSFORMED_EXAMPLES_KEY = 'transformed_examples'
TRANSFORM_GRAPH_KEY = 'transform_graph'
MODEL_KEY = 'model'
BASELINE_MODEL_KEY = 'baseline_model'
RAW_EXAMPLES_KEY = 'raw_examples'
# Output keys: the names TFX's own Evaluator uses, so Pusher wiring reads the same.
EVALUATION_KEY = 'evaluation'
BLESSING_KEY = 'blessing'
# Parameters.
GATE_KEY = 'gate'
TFLITE_SAMPLE_SIZE_KEY = 'tflite_sample_size'
BATCH_SIZE_KEY = 'batch_size'

METRICS_FILE = 'metrics.json'
CAPTIONS_FILE = 'captions.json'
"""Every caption of the evaluated model: ``{split: {image_id: {'greedy': .., 'beam': ..}}}``."""


@dataclasses.dataclass(frozen=True)
class EvaluatorParameters:
    """The evaluator's execution parameters, checked in one place.

    Attributes:
      gate: when a model is blessed (`gate_lib.GateConfig`).
      tflite_sample_size: eval images on which each TFLite variant's captions
        are compared with the SavedModel's.
      batch_size: images per signature call.
    """

    gate: gate_lib.GateConfig = dataclasses.field(default_factory=gate_lib.GateConfig)
    tflite_sample_size: int = 32
    batch_size: int = 64

    def validate(self) -> 'EvaluatorParameters':
        """Returns self.

        Raises:
          ValueError: a parameter is out of range.
        """
        self.gate.validate()
        for name in ('tflite_sample_size', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, got {value!r}.')
        return self

    def to_exec_properties(self) -> Dict[str, Any]:
        return {
            GATE_KEY: json.dumps(self.gate.to_dict(), sort_keys=True),
            TFLITE_SAMPLE_SIZE_KEY: self.tflite_sample_size,
            BATCH_SIZE_KEY: self.batch_size,
        }

    @classmethod
    def from_exec_properties(cls, exec_properties: Dict[str, Any]) -> 'EvaluatorParameters':
        """Reads and validates the parameters an executor receives."""
        defaults = cls()
        gate_json = exec_properties.get(GATE_KEY)
        return cls(
            gate=gate_lib.GateConfig.from_dict(json.loads(gate_json))
            if gate_json
            else defaults.gate,
            tflite_sample_size=int(
                exec_properties.get(TFLITE_SAMPLE_SIZE_KEY) or defaults.tflite_sample_size
            ),
            batch_size=int(exec_properties.get(BATCH_SIZE_KEY) or defaults.batch_size),
        ).validate()


class CaptionEvaluatorSpec(types.ComponentSpec):
    """Evaluates a caption model on eval/test and blesses it (or not)."""

    PARAMETERS = {
        GATE_KEY: ExecutionParameter(type=str),
        TFLITE_SAMPLE_SIZE_KEY: ExecutionParameter(type=int),
        BATCH_SIZE_KEY: ExecutionParameter(type=int),
        # Set by the component: its executor's code, for TFX's cache key.
        features.CODE_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        # ImageFeatureExtractor output: raw features and the reference captions.
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        # Transform output: caption ids and normalised features, for the loss.
        TRANSFORMED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        # The latest blessed model (Resolver + LatestBlessedModelStrategy).
        BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        # ExampleGen output: image bytes, for the TFLite-vs-SavedModel parity check.
        RAW_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
