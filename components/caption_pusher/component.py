"""CaptionPusher: the standard TFX Pusher component with the captioning executor.

The standard component keeps its spec, inputs (model, model_blessing) and the
blessing check; only the executor changes (see `executor`).
"""

from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.types import Channel

from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.caption_pusher import executor, spec
from tfx_captioning.models import features


class CaptionPusher(Pusher):
    """TFX's Pusher (same spec, inputs and blessing check) with the captioning executor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)


def make_pusher(
    model: Channel, model_blessing: Channel, parameters: spec.PusherParameters
) -> CaptionPusher:
    """A Pusher that publishes `<serving_root>/<model_name>/<version>/` (+ TFLite).

    Args:
      model: the Trainer's model.
      model_blessing: the evaluator's blessing; nothing unblessed is pushed.
      parameters: destinations and the TFLite agreement threshold.

    Raises:
      ValueError: invalid parameters.
    """
    args = parameters.validate().to_component_args()
    # TFX's cache key does not cover the executor's code: its fingerprint does.
    args['custom_config'] = {
        **args['custom_config'],
        features.CODE_FINGERPRINT_KEY: code_fingerprint.fingerprint(executor.__name__),
    }
    return CaptionPusher(model=model, model_blessing=model_blessing, **args)
