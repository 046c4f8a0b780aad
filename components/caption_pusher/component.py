"""CaptionPusher: the standard TFX Pusher component with the captioning executor.

The standard component keeps its spec, inputs (model, model_blessing) and the
blessing check; only the executor changes (see `executor`).
"""

from typing import Optional

from tfx import v1 as tfx
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.types import Channel

from tfx_captioning.components.caption_pusher import executor


class CaptionPusher(Pusher):
    """TFX's Pusher (same spec, inputs and blessing check) with the captioning executor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)


def make_pusher(
    model: Channel,
    model_blessing: Channel,
    serving_base_directory: str,
    model_name: str,
    tflite_base_directory: Optional[str] = None,
    min_tflite_agreement: float = executor.DEFAULT_MIN_TFLITE_AGREEMENT,
) -> CaptionPusher:
    """A Pusher that publishes `<serving_base_directory>/<version>/` (+ TFLite).

    Args:
      model: the Trainer's model.
      model_blessing: the evaluator's blessing; nothing unblessed is pushed.
      serving_base_directory: TF Serving's model base path, `<root>/<model_name>`.
      model_name: the name clients ask TF Serving for (used in warmup requests).
      tflite_base_directory: `<tflite_root>/<model_name>`; None skips TFLite.
      min_tflite_agreement: lowest share of identical captions (TFLite vs
        SavedModel on eval images) at which the TFLite file is published.

    Raises:
      ValueError: on an empty destination or an agreement outside [0, 1].
    """
    if not serving_base_directory:
        raise ValueError('serving_base_directory must be set.')
    if not model_name:
        raise ValueError('model_name must be set.')
    if not 0.0 <= min_tflite_agreement <= 1.0:
        raise ValueError(f'min_tflite_agreement must be in [0, 1], got {min_tflite_agreement}.')
    custom_config = {
        executor.MODEL_NAME_KEY: model_name,
        executor.MIN_TFLITE_AGREEMENT_KEY: min_tflite_agreement,
    }
    if tflite_base_directory:
        custom_config[executor.TFLITE_BASE_DIRECTORY_KEY] = tflite_base_directory
    return CaptionPusher(
        model=model,
        model_blessing=model_blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_base_directory)
        ),
        custom_config=custom_config,
    )
