"""Executor of CaptionEvaluator: the coco-caption metrics with the exported signatures, then the gate.

For each of the eval and test splits:

- captions from the model's `caption_from_features` signature on the
  extractor's raw features, scored by the coco-caption toolkit
  (`models.caption_metrics`: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L,
  CIDEr-D) against **all** reference captions of each image;
- the masked loss (nats per real token) from the `caption_loss` signature on
  Transform's examples;
- the same metrics for the "most frequent training caption" baseline, which
  emits one caption for every image: what a model that ignores the image gets.

The eval split decides the blessing (`gate.decide`); the latest blessed model,
when there is one, is evaluated on the same data in the same run for the
no-regression rules. With `raw_examples`, every TFLite variant in the Model
artifact is compared with the SavedModel on eval images (`tflite_parity`); the
measurements are recorded on the blessing, where the Pusher picks the variant.
"""

import collections
import dataclasses
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

from tfx_captioning.components import progress
from tfx_captioning.components.caption_evaluator import gate, records, spec, tflite_parity
from tfx_captioning.models import caption_metrics, features
from tfx_captioning.models.preprocessing import decode_regions, normalize_caption

REPORT_SPLITS = (features.EVAL_SPLIT, features.TEST_SPLIT)
SAMPLES_PER_SPLIT = 12

RAW_FEATURE_SPEC = {
    features.IMAGE_ID_KEY: tf.io.FixedLenFeature([], tf.string),
    features.IMAGE_FEATURES_KEY: tf.io.FixedLenFeature([features.FEATURE_SIZE], tf.float32),
    features.CAPTIONS_KEY: tf.io.VarLenFeature(tf.string),
    # Empty when the extractor kept no regions; kept as float16 bytes (half of
    # float32) until an attention model asks for them.
    features.IMAGE_REGIONS_KEY: tf.io.FixedLenFeature([], tf.string, default_value=''),
}


def input_names(function) -> set:
    """The input names of a loaded signature function."""
    return set(function.structured_input_signature[1])


def model_inputs(function, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """A features signature's inputs for a batch of `read_references`: the regions only if it reads them.

    Raises:
      ValueError: the model attends over regions and the extractor kept none.
    """
    inputs = {features.IMAGE_FEATURES_INPUT: batch[features.IMAGE_FEATURES_KEY]}
    if features.IMAGE_REGIONS_INPUT in input_names(function):
        region_bytes = batch[features.IMAGE_REGIONS_KEY]
        if not bool(tf.reduce_all(tf.strings.length(region_bytes) > 0)):
            raise ValueError(
                'The model attends over region features, and the extractor kept none: '
                'run the ImageFeatureExtractor with region_features=True.'
            )
        inputs[features.IMAGE_REGIONS_INPUT] = decode_regions(region_bytes)
    return inputs


def split_references(captions: tf.SparseTensor) -> List[List[str]]:
    """Per image of a batch, its reference captions as they are in the data (UTF-8)."""
    rows: List[List[str]] = [[] for _ in range(int(captions.dense_shape[0]))]
    for (row, _), value in zip(captions.indices.numpy(), captions.values.numpy()):
        rows[row].append(value.decode('utf-8'))
    return rows


def read_references(
    examples: types.Artifact, split: str, batch_size: int
) -> Tuple[List[str], List[List[str]], List[Dict[str, tf.Tensor]]]:
    """(image ids, reference captions, feature batches) of one split, in file order.

    A feature batch holds `IMAGE_FEATURES_KEY` and `IMAGE_REGIONS_KEY` (the
    stored bytes, decoded by `model_inputs` for a model that reads them).
    """
    ids, references, feature_batches = [], [], []
    for batch in records.read_examples(examples, split, RAW_FEATURE_SPEC, batch_size):
        ids += [i.decode('utf-8') for i in batch[features.IMAGE_ID_KEY].numpy()]
        references += split_references(batch[features.CAPTIONS_KEY])
        feature_batches.append(
            {key: batch[key] for key in (features.IMAGE_FEATURES_KEY, features.IMAGE_REGIONS_KEY)}
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f'Split {split!r} of {examples.uri} repeats an image id.')
    return ids, references, feature_batches


def generate_captions(
    signatures,
    feature_batches: List[Dict[str, tf.Tensor]],
    signature: str = features.FEATURES_SIGNATURE,
    label: str = 'CaptionEvaluator captions',
) -> List[str]:
    """The model's captions for batches of raw image features (greedy unless `signature` says)."""
    caption_fn = signatures[signature]
    captions = []
    reporter = progress.ProgressReporter(
        label, sum(len(b[features.IMAGE_FEATURES_KEY]) for b in feature_batches)
    )
    for batch in feature_batches:
        out = caption_fn(**model_inputs(caption_fn, batch))
        captions += [c.decode('utf-8') for c in out[features.CAPTION_OUTPUT].numpy()]
        reporter.update(len(batch[features.IMAGE_FEATURES_KEY]))
    reporter.finish()
    return captions


def split_loss(
    signatures,
    transformed: types.Artifact,
    split: str,
    feature_spec: Dict[str, Any],
    batch_size: int,
) -> float:
    """Masked mean cross-entropy per real token over every caption of the split."""
    loss_fn = signatures[features.LOSS_SIGNATURE]
    image_keys = [
        key
        for key in (features.NORMALIZED_FEATURES_KEY, features.NORMALIZED_REGIONS_KEY)
        if key in input_names(loss_fn)
    ]
    feature_spec = {key: feature_spec[key] for key in image_keys + [features.CAPTION_IDS_KEY]}
    total, tokens = 0.0, 0
    for batch in records.read_examples(transformed, split, feature_spec, batch_size):
        ids = batch[features.CAPTION_IDS_KEY]
        inputs = {key: batch[key] for key in image_keys}
        if isinstance(ids, tf.RaggedTensor):
            # [images, (captions), len] -> one row per caption, each image's inputs repeated.
            rows = ids.row_lengths()
            inputs = {key: tf.repeat(value, rows, axis=0) for key, value in inputs.items()}
            ids = ids.values
        out = loss_fn(**inputs, **{features.CAPTION_IDS_KEY: tf.cast(ids, tf.int64)})
        total += float(tf.reduce_sum(out[features.LOSS_OUTPUT]))
        tokens += int(tf.reduce_sum(out[features.TOKENS_OUTPUT]))
    if tokens == 0:
        raise ValueError(f'Split {split!r} has no caption tokens to score.')
    return total / tokens


def most_frequent_caption(references: List[List[str]]) -> str:
    """The most frequent training caption, normalised as Transform normalises captions.

    Ties go to the caption seen first. Normalising first counts "A dog runs."
    and "a dog runs" as one caption.
    """
    flat = [caption for captions in references for caption in captions]
    if not flat:
        return ''
    normalized = [c.decode('utf-8') for c in normalize_caption(tf.constant(flat)).numpy()]
    return collections.Counter(' '.join(c.split()) for c in normalized).most_common(1)[0][0]


@dataclasses.dataclass
class SplitData:
    """What every model is scored on for one split."""

    ids: List[str]
    references: Dict[str, List[str]]
    feature_batches: List[tf.Tensor]


class Executor(base_executor.BaseExecutor):
    """Scores the model (and the latest blessed one), applies the gate, writes the artifacts."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        parameters = spec.EvaluatorParameters.from_exec_properties(exec_properties)
        batch_size = parameters.batch_size
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

        _, train_references, _ = read_references(examples, features.TRAIN_SPLIT, batch_size)
        frequent = most_frequent_caption(train_references)
        data = {}
        for split in REPORT_SPLITS:
            ids, references, feature_batches = read_references(examples, split, batch_size)
            data[split] = SplitData(ids, dict(zip(ids, references)), feature_batches)

        def evaluate(candidate: types.Artifact) -> Dict[str, Any]:
            return evaluate_model(candidate, data, transformed, feature_spec, batch_size, scorer)

        with caption_metrics.CaptionScorer() as scorer:
            constant = {
                split: scorer.score(d.references, {i: frequent for i in d.ids})
                for split, d in data.items()
            }
            results = evaluate(model)
            captions = results.pop('captions')
            baseline_results = None
            if baseline is not None:
                logging.info(
                    'Evaluating the latest blessed model %s as the baseline.', baseline.uri
                )
                baseline_results = evaluate(baseline)
                baseline_results.pop('captions')
        for split, metrics in constant.items():
            results['splits'][split]['most_frequent_caption'] = metrics
        decoding = parameters.gate.decoding
        if decoding == gate.BEAM and results['splits'][features.EVAL_SPLIT]['beam'] is None:
            raise ValueError(
                f'The gate judges beam search, but {model.uri} has no '
                f'{features.BEAM_FEATURES_SIGNATURE!r} signature.'
            )
        eval_metrics = judged_metrics(results['splits'][features.EVAL_SPLIT], decoding)
        blessed, failures = gate.decide(
            eval_metrics,
            constant[features.EVAL_SPLIT],
            judged_metrics(baseline_results['splits'][features.EVAL_SPLIT], decoding)
            if baseline_results
            else None,
            parameters.gate,
        )
        raw = input_dict.get(spec.RAW_EXAMPLES_KEY) or []
        tflite = (
            tflite_parity.measure_variants(
                model.uri, raw[0], features.EVAL_SPLIT, parameters.tflite_sample_size
            )
            if raw
            else []
        )
        report = {
            'decoding': decoding,
            'model': model.uri,
            'baseline_model': baseline.uri if baseline is not None else None,
            'most_frequent_train_caption': frequent,
            'gate': parameters.gate.to_dict(),
            'blessed': blessed,
            'failures': failures,
            'reason': '; '.join(failures)
            or gate.passing_summary(eval_metrics, constant[features.EVAL_SPLIT], decoding),
            'tflite': tflite,
            **results,
            'baseline': baseline_results,
        }
        evaluation = artifact_utils.get_single_instance(output_dict[spec.EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[spec.BLESSING_KEY])
        write_outputs(evaluation, blessing, report, model, baseline, captions)


def evaluate_model(
    model: types.Artifact,
    data: Dict[str, SplitData],
    transformed: types.Artifact,
    feature_spec: Dict[str, Any],
    batch_size: int,
    scorer: caption_metrics.CaptionScorer,
) -> Dict[str, Any]:
    """Metrics (and a few sample captions) of one model on the eval and test splits.

    Per split: `metrics` (greedy decoding, plus the loss and the image count)
    and, when the model has the beam-search signature, `beam` (the same metrics
    for its beam-search captions); under `captions`, every image's captions
    (greedy, and beam when there is one), per split.
    """
    loaded = tf.saved_model.load(path_utils.serving_model_path(model.uri))
    has_beam = features.BEAM_FEATURES_SIGNATURE in loaded.signatures
    out: Dict[str, Any] = {'splits': {}, 'captions': {}}
    for split, split_data in data.items():
        greedy = dict(
            zip(
                split_data.ids,
                generate_captions(
                    loaded.signatures,
                    split_data.feature_batches,
                    label=f'CaptionEvaluator {split} greedy',
                ),
            )
        )
        metrics = scorer.score(split_data.references, greedy)
        metrics['loss'] = split_loss(
            loaded.signatures, transformed, split, feature_spec, batch_size
        )
        metrics['num_images'] = len(split_data.ids)
        beam = {}
        if has_beam:
            captions = generate_captions(
                loaded.signatures,
                split_data.feature_batches,
                features.BEAM_FEATURES_SIGNATURE,
                label=f'CaptionEvaluator {split} beam',
            )
            beam = dict(zip(split_data.ids, captions))
        out['splits'][split] = {
            'metrics': metrics,
            'beam': scorer.score(split_data.references, beam) if beam else None,
            'samples': [
                {
                    'image_id': image_id,
                    'caption': greedy[image_id],
                    **({'beam_caption': beam[image_id]} if beam else {}),
                    'references': split_data.references[image_id],
                }
                for image_id in split_data.ids[:SAMPLES_PER_SPLIT]
            ],
        }
        out['captions'][split] = {
            image_id: {'greedy': greedy[image_id], **({'beam': beam[image_id]} if beam else {})}
            for image_id in split_data.ids
        }
        logging.info('Split %s: %s', split, {k: round(v, 4) for k, v in metrics.items()})
    return out


def judged_metrics(split_result: Dict[str, Any], decoding: str) -> Dict[str, float]:
    """The metrics the gate judges: greedy's, or beam search's with the (shared) loss.

    A model exported without beam search (an older blessed baseline) is judged
    on its greedy captions.
    """
    beam = split_result.get('beam')
    if decoding == gate.BEAM and beam is not None:
        return {**beam, gate.LOSS_METRIC: split_result['metrics'][gate.LOSS_METRIC]}
    return split_result['metrics']


def write_outputs(
    evaluation: types.Artifact,
    blessing: types.Artifact,
    report: Dict[str, Any],
    model: types.Artifact,
    baseline: Optional[types.Artifact],
    captions: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None,
) -> None:
    """Writes metrics.json, captions.json, the BLESSED/NOT_BLESSED marker and the properties."""
    tf.io.gfile.makedirs(evaluation.uri)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, spec.METRICS_FILE), 'w') as f:
        json.dump(report, f, indent=2, sort_keys=True)
    if captions is not None:
        with tf.io.gfile.GFile(os.path.join(evaluation.uri, spec.CAPTIONS_FILE), 'w') as f:
            json.dump(captions, f, indent=1, sort_keys=True)
    for split in REPORT_SPLITS:
        for name, value in report['splits'][split]['metrics'].items():
            evaluation.set_float_custom_property(f'{split}_{name}', float(value))
        for name, value in (report['splits'][split]['beam'] or {}).items():
            evaluation.set_float_custom_property(f'{split}_beam_{name}', float(value))

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
    blessing.set_string_custom_property(features.BLESSING_REASON_PROPERTY, report['reason'])
    blessing.set_string_custom_property(
        features.TFLITE_CANDIDATES_PROPERTY, json.dumps(report['tflite'])
    )
    logging.log(
        logging.INFO if blessed else logging.WARNING,
        'Model %s: %s.',
        'BLESSED' if blessed else 'NOT blessed',
        report['reason'],
    )
