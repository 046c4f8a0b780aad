"""Executor of CaptionPusher: TFX's Pusher executor, publishing atomically with warmup.

Same contract as the standard Pusher (nothing is pushed unless every blessing
says so; the `PushedModel` artifact records what was pushed), with three
changes that TF Serving and phones need:

- integer versions that always increase (`publish.next_version`), written to a
  hidden temporary directory and renamed, so a watching server never loads a
  half-written version;
- `assets.extra/tf_serving_warmup_requests` in each version;
- of the TFLite variants the Trainer wrote (`Format-TFLite/<variant>/`), the
  smallest whose caption agreement with the SavedModel (measured by the
  evaluator on eval images, through the on-device image loading) is at or
  above `min_tflite_agreement` is published to
  `<tflite_base_directory>/<version>/` under the same version; none when
  none passes.
"""

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

from tfx_captioning.components.caption_pusher import publish, spec
from tfx_captioning.models import features

# Custom properties written on the PushedModel artifact.
TFLITE_PUSHED_KEY = 'tflite_pushed'
TFLITE_DESTINATION_KEY = 'tflite_destination'
TFLITE_VARIANT_KEY = 'tflite_variant'
TFLITE_CHOICE_KEY = 'tflite_choice'
"""Why this TFLite variant (or none) was published, for the summary and report."""
NOT_PUSHED_REASON_KEY = 'not_pushed_reason'


def choose_tflite(
    candidates: List[Dict[str, Any]], min_agreement: float
) -> Tuple[Optional[Dict[str, Any]], str]:
    """The smallest candidate whose agreement is >= `min_agreement`, and why.

    Args:
      candidates: the evaluator's measurements, dicts with 'variant',
        'size_bytes' and 'agreement'.
      min_agreement: the threshold.

    Returns:
      (the chosen candidate or None, a one-line explanation).
    """
    passing = [c for c in candidates if c['agreement'] >= min_agreement]
    measured = ', '.join(f'{c["variant"]} {c["agreement"]:.1%}' for c in candidates) or 'none'
    if not passing:
        return (
            None,
            f'no TFLite variant agrees on >= {min_agreement:.0%} of eval images ({measured})',
        )
    chosen = min(passing, key=lambda c: (c['size_bytes'], c['variant']))
    return chosen, (
        f'{chosen["variant"]}: the smallest variant agreeing on >= {min_agreement:.0%} ({measured})'
    )


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
        parameters = spec.PusherParameters.from_exec_properties(exec_properties)
        if not self.CheckBlessing(input_dict):
            reason = _blessing_reason(input_dict)
            logging.warning('Model not pushed: it was not blessed (%s).', reason)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(NOT_PUSHED_REASON_KEY, reason)
            return

        base_directory = parameters.serving_base_directory
        model_name = parameters.model_name
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
            tflite_base = parameters.tflite_base_directory
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

        tflite_destination = self._push_tflite(input_dict, parameters, version, model_push)
        model_push.set_int_custom_property(TFLITE_PUSHED_KEY, int(bool(tflite_destination)))
        if tflite_destination:
            model_push.set_string_custom_property(TFLITE_DESTINATION_KEY, tflite_destination)

        # Archive the pushed model in the artifact, as the standard Pusher does.
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))

    def _push_tflite(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        parameters: spec.PusherParameters,
        version: int,
        model_push: types.Artifact,
    ) -> str:
        base = parameters.tflite_base_directory
        if not base:
            return ''
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        chosen, why = choose_tflite(_tflite_candidates(input_dict), parameters.min_tflite_agreement)
        model_push.set_string_custom_property(TFLITE_CHOICE_KEY, why)
        if chosen is None:
            logging.warning('TFLite not published: %s.', why)
            return ''
        src = os.path.join(model.uri, features.TFLITE_MODEL_DIR, chosen['variant'])
        if not tf.io.gfile.exists(os.path.join(src, features.TFLITE_FILE)):
            logging.warning('No TFLite file in %s: nothing to publish for phones.', src)
            return ''
        path = publish.publish_directory(src, base, version)
        model_push.set_string_custom_property(TFLITE_VARIANT_KEY, chosen['variant'])
        logging.info('Pushed TFLite version %d to %s: %s.', version, path, why)
        return path


def _blessing(input_dict: Dict[str, List[types.Artifact]]):
    blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY)
    return artifact_utils.get_single_instance(blessings) if blessings else None


def _blessing_reason(input_dict: Dict[str, List[types.Artifact]]) -> str:
    blessing = _blessing(input_dict)
    if blessing is None:
        return 'no blessing'
    return blessing.get_string_custom_property(features.BLESSING_REASON_PROPERTY) or 'see evaluator'


def _tflite_candidates(input_dict: Dict[str, List[types.Artifact]]) -> List[Dict[str, Any]]:
    """The evaluator's per-variant TFLite measurements recorded on the blessing."""
    blessing = _blessing(input_dict)
    if blessing is None or not blessing.has_custom_property(features.TFLITE_CANDIDATES_PROPERTY):
        return []
    return json.loads(blessing.get_string_custom_property(features.TFLITE_CANDIDATES_PROPERTY))
