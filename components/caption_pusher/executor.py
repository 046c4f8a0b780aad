"""Executor of CaptionPusher: TFX's Pusher executor, publishing atomically with warmup.

Same contract as the standard Pusher (nothing is pushed unless every blessing
says so; the `PushedModel` artifact records what was pushed), with three
changes that TF Serving and phones need:

- integer versions that always increase (`publish.next_version`), written to a
  hidden temporary directory and renamed, so a watching server never loads a
  half-written version;
- `assets.extra/tf_serving_warmup_requests` in each version;
- the TFLite variant the Trainer wrote (`Format-TFLite/`) published to
  `<tflite_base_directory>/<version>/` under the same version, only when the
  evaluator measured its caption agreement with the SavedModel at or above
  `min_tflite_agreement`.
"""

import json
import logging
import os
from typing import Any, Dict, List

import tensorflow as tf
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from tfx_captioning.components.caption_pusher import publish
from tfx_captioning.models import features

# Keys of the Pusher's custom_config.
MODEL_NAME_KEY = 'model_name'
TFLITE_BASE_DIRECTORY_KEY = 'tflite_base_directory'
MIN_TFLITE_AGREEMENT_KEY = 'min_tflite_agreement'
DEFAULT_MIN_TFLITE_AGREEMENT = 0.95

# Custom properties written on the PushedModel artifact.
TFLITE_PUSHED_KEY = 'tflite_pushed'
TFLITE_DESTINATION_KEY = 'tflite_destination'
NOT_PUSHED_REASON_KEY = 'not_pushed_reason'


def tflite_dir(model_uri: str) -> str:
    """Where the Trainer leaves the TFLite variant inside its Model artifact."""
    return os.path.join(model_uri, features.TFLITE_MODEL_DIR)


class Executor(tfx_pusher_executor.Executor):
    """Pushes a blessed model to TF Serving's layout, and its TFLite variant."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        custom_config = json.loads(exec_properties.get('custom_config') or 'null') or {}
        if not self.CheckBlessing(input_dict):
            reason = _blessing_reason(input_dict)
            logging.warning('Model not pushed: it was not blessed (%s).', reason)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(NOT_PUSHED_REASON_KEY, reason)
            return

        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination
        )
        if destination.WhichOneof('destination') != 'filesystem':
            raise NotImplementedError('CaptionPusher pushes to a filesystem destination only.')
        base_directory = destination.filesystem.base_directory
        model_name = custom_config.get(MODEL_NAME_KEY) or os.path.basename(
            base_directory.rstrip('/')
        )
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        model_path = self.GetModelPath(input_dict)
        already = publish.find_published_version(base_directory, model.uri)
        if already is not None:
            serving_path = os.path.join(base_directory, str(already))
            logging.info(
                'Model %s is already served as version %d: not pushed again.', model.uri, already
            )
            io_utils.copy_dir(model_path, model_push.uri)
            self._MarkPushed(
                model_push, pushed_destination=serving_path, pushed_version=str(already)
            )
            tflite_base = custom_config.get(TFLITE_BASE_DIRECTORY_KEY)
            tflite_path = os.path.join(tflite_base, str(already)) if tflite_base else ''
            pushed_tflite = bool(tflite_path) and tf.io.gfile.exists(tflite_path)
            model_push.set_int_custom_property(TFLITE_PUSHED_KEY, int(pushed_tflite))
            if pushed_tflite:
                model_push.set_string_custom_property(TFLITE_DESTINATION_KEY, tflite_path)
            return
        existing = tf.io.gfile.listdir(base_directory) if tf.io.gfile.isdir(base_directory) else []
        version = publish.next_version(n.rstrip('/') for n in existing)

        def fill(tmp: str) -> None:
            publish.write_warmup(tmp, model_name)
            publish.write_source(tmp, model.uri)

        serving_path = publish.publish_directory(model_path, base_directory, version, fill=fill)
        logging.info('Pushed SavedModel version %d to %s.', version, serving_path)

        tflite_destination = self._push_tflite(input_dict, custom_config, version)
        model_push.set_int_custom_property(TFLITE_PUSHED_KEY, int(bool(tflite_destination)))
        if tflite_destination:
            model_push.set_string_custom_property(TFLITE_DESTINATION_KEY, tflite_destination)

        # Archive the pushed model in the artifact, as the standard Pusher does.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))

    def _push_tflite(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        custom_config: Dict[str, Any],
        version: int,
    ) -> str:
        base = custom_config.get(TFLITE_BASE_DIRECTORY_KEY)
        if not base:
            return ''
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        src = tflite_dir(model.uri)
        if not tf.io.gfile.exists(os.path.join(src, publish.TFLITE_FILE)):
            logging.warning('No TFLite variant in %s: nothing to publish for phones.', src)
            return ''
        threshold = float(custom_config.get(MIN_TFLITE_AGREEMENT_KEY, DEFAULT_MIN_TFLITE_AGREEMENT))
        agreement = _tflite_agreement(input_dict)
        if agreement is None or agreement < threshold:
            logging.warning(
                'TFLite variant not published: caption agreement with the SavedModel %s < %.3f.',
                'unknown' if agreement is None else f'{agreement:.3f}',
                threshold,
            )
            return ''
        path = publish.publish_directory(src, base, version)
        logging.info('Pushed TFLite version %d to %s (agreement %.3f).', version, path, agreement)
        return path


def _blessing(input_dict: Dict[str, List[types.Artifact]]):
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
    return artifact_utils.get_single_instance(blessings) if blessings else None


def _blessing_reason(input_dict: Dict[str, List[types.Artifact]]) -> str:
    blessing = _blessing(input_dict)
    if blessing is None:
        return 'no blessing'
    return blessing.get_string_custom_property(features.BLESSING_REASON_PROPERTY) or 'see evaluator'


def _tflite_agreement(input_dict: Dict[str, List[types.Artifact]]):
    blessing = _blessing(input_dict)
    if blessing is None or not blessing.has_custom_property(features.TFLITE_AGREEMENT_PROPERTY):
        return None
    return float(blessing.get_float_custom_property(features.TFLITE_AGREEMENT_PROPERTY))
