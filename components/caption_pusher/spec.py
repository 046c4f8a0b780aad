"""CaptionPusher's one parameter object: where versions go and when TFLite ships.

The component keeps TFX's standard Pusher spec (`push_destination` and
`custom_config`); `PusherParameters` writes both and reads them back in the
executor, so every default is written once, here.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from tfx import v1 as tfx
from tfx.proto import pusher_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.models import features

# Keys of the Pusher's custom_config.
MODEL_NAME_KEY = 'model_name'
TFLITE_BASE_DIRECTORY_KEY = 'tflite_base_directory'
MIN_TFLITE_AGREEMENT_KEY = 'min_tflite_agreement'


@dataclasses.dataclass(frozen=True)
class PusherParameters:
    """Where the Pusher publishes, and the TFLite agreement it requires.

    Attributes:
      serving_root: TF Serving root; versions go to `<serving_root>/<model_name>/<n>/`.
      tflite_root: TFLite root (`<tflite_root>/<model_name>/<n>/`); None skips
        TFLite (and the evaluator's TFLite parity check).
      model_name: the name TF Serving serves the model under.
      min_tflite_agreement: the lowest share of eval images that a TFLite
        variant must caption exactly as the SavedModel does to be published;
        of the variants that pass, the smallest file ships.
    """

    serving_root: str
    tflite_root: Optional[str] = None
    model_name: str = features.MODEL_NAME
    min_tflite_agreement: float = 0.95

    def validate(self) -> 'PusherParameters':
        """Returns self.

        Raises:
          ValueError: an empty destination or name, or an agreement outside [0, 1].
        """
        if not self.serving_root:
            raise ValueError('serving_root must be set.')
        if not self.model_name or '/' in self.model_name:
            raise ValueError(f'model_name must be a non-empty name, got {self.model_name!r}.')
        if not 0.0 <= self.min_tflite_agreement <= 1.0:
            raise ValueError(
                f'min_tflite_agreement must be in [0, 1], got {self.min_tflite_agreement}.'
            )
        return self

    @property
    def serving_base_directory(self) -> str:
        """TF Serving's `--model_base_path`: `<serving_root>/<model_name>`."""
        return os.path.join(self.serving_root, self.model_name)

    @property
    def tflite_base_directory(self) -> Optional[str]:
        return os.path.join(self.tflite_root, self.model_name) if self.tflite_root else None

    def to_component_args(self) -> Dict[str, Any]:
        """`push_destination` and `custom_config` of TFX's Pusher."""
        custom_config = {
            MODEL_NAME_KEY: self.model_name,
            MIN_TFLITE_AGREEMENT_KEY: self.min_tflite_agreement,
        }
        if self.tflite_base_directory:
            custom_config[TFLITE_BASE_DIRECTORY_KEY] = self.tflite_base_directory
        return {
            'push_destination': tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=self.serving_base_directory
                )
            ),
            'custom_config': custom_config,
        }

    @classmethod
    def from_exec_properties(cls, exec_properties: Dict[str, Any]) -> 'PusherParameters':
        """Reads the parameters back from the executor's exec properties.

        Raises:
          NotImplementedError: a push destination that is not a filesystem.
          ValueError: invalid values.
        """
        custom_config = json.loads(exec_properties.get('custom_config') or 'null') or {}
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
        )
        if destination.WhichOneof('destination') != 'filesystem':
            raise NotImplementedError('CaptionPusher pushes to a filesystem destination only.')
        base_directory = destination.filesystem.base_directory.rstrip('/')
        model_name = custom_config.get(MODEL_NAME_KEY) or os.path.basename(base_directory)
        tflite_base = custom_config.get(TFLITE_BASE_DIRECTORY_KEY)
        return cls(
            serving_root=os.path.dirname(base_directory),
            tflite_root=os.path.dirname(tflite_base.rstrip('/')) if tflite_base else None,
            model_name=model_name,
            min_tflite_agreement=float(
                custom_config.get(MIN_TFLITE_AGREEMENT_KEY, cls.min_tflite_agreement)
            ),
        ).validate()
