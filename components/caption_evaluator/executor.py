"""Executor of CaptionEvaluator: metrics with the exported signatures, then the gate.

For each of the eval and test splits:

- captions from the model's `caption_from_features` signature on the
  extractor's raw features, scored with corpus BLEU-1..4 against **all**
  references, normalised exactly as Transform normalises them;
- the masked loss (nats per real token) from the `caption_loss` signature on
  Transform's examples;
- the "most frequent training caption" baseline's BLEU, so a score can be
  read against what a model that ignores the image gets.

The eval split decides the blessing (`gate.decide`); the latest blessed model,
when there is one, is evaluated on the same data for the no-regression rule.
With `raw_examples`, the TFLite variant in the Model artifact is compared with
the SavedModel on a sample of eval images; the agreement rate is recorded on
the blessing, where the Pusher reads it.
"""

import collections
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tfx_captioning.components.caption_evaluator import gate, records, spec, tflite_parity
from tfx_captioning.models import bleu, features
from tfx_captioning.models.preprocessing import normalize_caption

REPORT_SPLITS = (features.EVAL_SPLIT, features.TEST_SPLIT)
SAMPLES_PER_SPLIT = 12


RAW_FEATURE_SPEC = {
    features.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
    features.IMAGE_FEATURES_KEY: tf.io.FixedLenFeature([features.FEATURE_SIZE], tf.float32),
    features.CAPTIONS_KEY: tf.io.VarLenFeature(tf.string),
}


def normalized_references(captions: tf.SparseTensor) -> List[List[List[str]]]:
    """Per image, its reference captions as word lists, normalised like Transform."""
    dense = tf.sparse.to_dense(captions, default_value='')
    normalized = normalize_caption(dense).numpy()
    counts = tf.math.bincount(
        tf.cast(captions.indices[:, 0], tf.int32), minlength=dense.shape[0]
    ).numpy()
    return [
        [c.decode('utf-8').split() for c in row[:count]] for row, count in zip(normalized, counts)
    ]


def generate_split(
    signatures, examples: types.Artifact, split: str, batch_size: int
) -> Tuple[List[str], List[List[str]], List[List[List[str]]]]:
    """(image ids, generated word lists, reference word lists) for one split."""
    caption_fn = signatures[features.FEATURES_SIGNATURE]
    ids, hypotheses, references = [], [], []
    for batch in records.read_examples(examples, split, RAW_FEATURE_SPEC, batch_size):
        out = caption_fn(**{features.IMAGE_FEATURES_INPUT: batch[features.IMAGE_FEATURES_KEY]})
        ids += [i.decode('utf-8') for i in batch[features.IMAGE_ID_KEY].numpy()]
        hypotheses += [c.decode('utf-8').split() for c in out[features.CAPTION_OUTPUT].numpy()]
        references += normalized_references(batch[features.CAPTIONS_KEY])
    return ids, hypotheses, references


def split_loss(
    signatures,
    transformed: types.Artifact,
    split: str,
    feature_spec: Dict[str, Any],
    batch_size: int,
) -> float:
    """Masked mean cross-entropy per real token over every caption of the split."""
    loss_fn = signatures[features.LOSS_SIGNATURE]
    total, tokens = 0.0, 0
    for batch in records.read_examples(transformed, split, feature_spec, batch_size):
        ids = batch[features.CAPTION_IDS_KEY]
        if isinstance(ids, tf.RaggedTensor):
            # [images, (captions), len] -> one row per caption, each image's features repeated.
            rows = ids.row_lengths()
            image_features = tf.repeat(batch[features.NORMALIZED_FEATURES_KEY], rows, axis=0)
            ids = ids.values
        else:
            image_features = batch[features.NORMALIZED_FEATURES_KEY]
        out = loss_fn(
            **{
                features.NORMALIZED_FEATURES_KEY: image_features,
                features.CAPTION_IDS_KEY: tf.cast(ids, tf.int64),
            }
        )
        total += float(tf.reduce_sum(out[features.LOSS_OUTPUT]))
        tokens += int(tf.reduce_sum(out[features.TOKENS_OUTPUT]))
    if tokens == 0:
        raise ValueError(f'Split {split!r} has no caption tokens to score.')
    return total / tokens


def most_frequent_caption(references: List[List[List[str]]]) -> List[str]:
    """The most frequent normalised reference caption (ties: the first seen)."""
    counts = collections.Counter(' '.join(ref) for refs in references for ref in refs)
    return counts.most_common(1)[0][0].split() if counts else []


class Executor(base_executor.BaseExecutor):
    """Computes BLEU/loss, compares with the baseline, writes evaluation and blessing."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        thresholds = gate.Thresholds(
            min_bleu_4=float(exec_properties.get(spec.MIN_BLEU_4_KEY, 0.0)),
            max_loss=float(exec_properties.get(spec.MAX_LOSS_KEY, 50.0)),
            max_bleu_4_drop=float(exec_properties.get(spec.MAX_BLEU_4_DROP_KEY, 0.01)),
            max_loss_increase=float(exec_properties.get(spec.MAX_LOSS_INCREASE_KEY, 0.05)),
        ).validate()
        batch_size = int(exec_properties.get(spec.BATCH_SIZE_KEY) or 64)
        examples = artifact_utils.get_single_instance(input_dict[spec.EXAMPLES_KEY])
        transformed = artifact_utils.get_single_instance(input_dict[spec.TRANSFORMED_EXAMPLES_KEY])
        tft_output = tft.TFTransformOutput(
            artifact_utils.get_single_instance(input_dict[spec.TRANSFORM_GRAPH_KEY]).uri
        )
        feature_spec = tft_output.transformed_feature_spec()
        model = artifact_utils.get_single_instance(input_dict[spec.MODEL_KEY])
        baselines = input_dict.get(spec.BASELINE_MODEL_KEY) or []
        baseline = baselines[0] if baselines else None
        if baseline is not None and baseline.uri == model.uri:
            baseline = None  # the same model resolved as its own baseline (a cached rerun)

        train_refs = generate_split_references(examples, features.TRAIN_SPLIT, batch_size)
        frequent = most_frequent_caption(train_refs)
        results = evaluate_model(model, examples, transformed, feature_spec, batch_size, frequent)
        baseline_results = None
        if baseline is not None:
            logging.info('Evaluating the latest blessed model %s as the baseline.', baseline.uri)
            baseline_results = evaluate_model(
                baseline, examples, transformed, feature_spec, batch_size, frequent
            )
        eval_metrics = results['splits'][features.EVAL_SPLIT]['metrics']
        blessed, failures = gate.decide(
            eval_metrics,
            baseline_results['splits'][features.EVAL_SPLIT]['metrics']
            if baseline_results
            else None,
            thresholds,
        )
        raw = input_dict.get(spec.RAW_EXAMPLES_KEY) or []
        agreement = None
        if raw:
            agreement = tflite_parity.measure(
                model.uri,
                raw[0],
                features.EVAL_SPLIT,
                int(exec_properties.get(spec.TFLITE_SAMPLE_SIZE_KEY) or 32),
            )
        report = {
            'model': model.uri,
            'baseline_model': baseline.uri if baseline is not None else None,
            'most_frequent_train_caption': ' '.join(frequent),
            'thresholds': vars(thresholds),
            'blessed': blessed,
            'failures': failures,
            'tflite_agreement': agreement,
            **results,
            'baseline': baseline_results,
        }
        evaluation = artifact_utils.get_single_instance(output_dict[spec.EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[spec.BLESSING_KEY])
        write_outputs(evaluation, blessing, report, model, baseline)


def generate_split_references(
    examples: types.Artifact, split: str, batch_size: int
) -> List[List[List[str]]]:
    references = []
    for batch in records.read_examples(examples, split, RAW_FEATURE_SPEC, batch_size):
        references += normalized_references(batch[features.CAPTIONS_KEY])
    return references


def evaluate_model(
    model: types.Artifact,
    examples: types.Artifact,
    transformed: types.Artifact,
    feature_spec: Dict[str, Any],
    batch_size: int,
    frequent: List[str],
) -> Dict[str, Any]:
    """Metrics (and a few sample captions) of one model on the eval and test splits."""
    loaded = tf.saved_model.load(path_utils.serving_model_path(model.uri))
    out = {'splits': {}}
    for split in REPORT_SPLITS:
        ids, hyps, refs = generate_split(loaded.signatures, examples, split, batch_size)
        metrics = bleu.corpus_bleu(refs, hyps)
        metrics['loss'] = split_loss(
            loaded.signatures, transformed, split, feature_spec, batch_size
        )
        metrics['num_images'] = len(ids)
        frequent_bleu = bleu.corpus_bleu(refs, [frequent] * len(refs))
        out['splits'][split] = {
            'metrics': metrics,
            'most_frequent_caption_bleu': frequent_bleu,
            'samples': [
                {'image_id': i, 'caption': ' '.join(h), 'references': [' '.join(r) for r in rs]}
                for i, h, rs in list(zip(ids, hyps, refs))[:SAMPLES_PER_SPLIT]
            ],
        }
        logging.info(
            'Split %s: %s (most frequent caption: bleu_4 %.4f)',
            split,
            {k: round(v, 4) for k, v in metrics.items()},
            frequent_bleu['bleu_4'],
        )
    return out


def write_outputs(
    evaluation: types.Artifact,
    blessing: types.Artifact,
    report: Dict[str, Any],
    model: types.Artifact,
    baseline: Optional[types.Artifact],
) -> None:
    """Writes metrics.json, the BLESSED/NOT_BLESSED marker and the standard properties."""
    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, spec.METRICS_FILE), 'w') as f:
        json.dump(report, f, indent=2, sort_keys=True)
    eval_metrics = report['splits'][features.EVAL_SPLIT]['metrics']
    for name, value in eval_metrics.items():
        evaluation.set_float_custom_property(f'eval_{name}', float(value))
    test_metrics = report['splits'][features.TEST_SPLIT]['metrics']
    for name, value in test_metrics.items():
        evaluation.set_float_custom_property(f'test_{name}', float(value))

    blessed = report['blessed']
    tf.io.gfile.makedirs(blessing.uri)
    marker = constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME
    with tf.io.gfile.GFile(os.path.join(blessing.uri, marker), 'w') as f:
        f.write('\n'.join(report['failures']))
    blessing.set_int_custom_property(
        constants.ARTIFACT_PROPERTY_BLESSED_KEY,
        constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE,
    )
    blessing.set_string_custom_property(
        constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri
    )
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if baseline is not None:
        blessing.set_string_custom_property(
            constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline.uri
        )
        blessing.set_int_custom_property(
            constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id
        )
    reason = '; '.join(report['failures']) or (
        f'bleu_4 {eval_metrics["bleu_4"]:.4f}, loss {eval_metrics["loss"]:.4f} pass the gate'
    )
    blessing.set_string_custom_property(features.BLESSING_REASON_PROPERTY, reason)
    if report['tflite_agreement'] is not None:
        blessing.set_float_custom_property(
            features.TFLITE_AGREEMENT_PROPERTY, float(report['tflite_agreement'])
        )
    logging.log(
        logging.INFO if blessed else logging.WARNING,
        'Model %s: %s.',
        'BLESSED' if blessed else 'NOT blessed',
        reason,
    )
