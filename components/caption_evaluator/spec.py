"""CaptionEvaluatorSpec: keys, inputs, outputs and typed parameters."""

from tfx import types
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

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
MIN_BLEU_4_KEY = 'min_bleu_4'
MAX_LOSS_KEY = 'max_loss'
MAX_BLEU_4_DROP_KEY = 'max_bleu_4_drop'
MAX_LOSS_INCREASE_KEY = 'max_loss_increase'
TFLITE_SAMPLE_SIZE_KEY = 'tflite_sample_size'
BATCH_SIZE_KEY = 'batch_size'

METRICS_FILE = 'metrics.json'


class CaptionEvaluatorSpec(types.ComponentSpec):
    """Evaluates a caption model on eval/test and blesses it (or not)."""

    PARAMETERS = {
        MIN_BLEU_4_KEY: ExecutionParameter(type=float),
        MAX_LOSS_KEY: ExecutionParameter(type=float),
        MAX_BLEU_4_DROP_KEY: ExecutionParameter(type=float),
        MAX_LOSS_INCREASE_KEY: ExecutionParameter(type=float),
        TFLITE_SAMPLE_SIZE_KEY: ExecutionParameter(type=int),
        BATCH_SIZE_KEY: ExecutionParameter(type=int),
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
