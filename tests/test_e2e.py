"""The whole pipeline end to end on a tiny generated dataset, with LocalDagRunner.

One module-scoped sequence of real runs (no stubs):

1. a good model is trained, evaluated, blessed and pushed (SavedModel with
   warmup + TFLite); the same test images get identical captions from the
   pushed SavedModel in-process, from the local gRPC server through the
   client, and from the TFLite file in `ai-edge-litert` in a process that
   never imports TensorFlow;
2. the same run again is served from TFX's cache (read from ML Metadata):
   only the evaluator re-runs (its baseline is now the blessed first model) and
   the Pusher does not publish the same model twice;
3. a deliberately worse model (one training step) re-runs only Trainer and
   what follows, is not blessed against the blessed baseline, and is not pushed;
4. on a copy of that store, switching to the attention decoder re-runs only
   the Trainer and what follows (features and vocabulary come from the
   cache), its export gives identical captions in the three runtimes, and
   the report shows its attention maps.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any, Dict, List

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.utils import path_utils

from tests import mlmd_states
from tfx_captioning.cli import pipeline_cli as cli
from tfx_captioning.cli import report, sample_data, summary
from tfx_captioning.components.caption_evaluator.gate import GateConfig
from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
from tfx_captioning.components.caption_pusher import publish
from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams
from tfx_captioning.pipeline import configs, local_runner

pytestmark = pytest.mark.slow

# Small enough to train in about a minute on 2 cores, big enough to learn
# colour and shape from random-weight InceptionV3 features.
HPARAMS = {
    'min_word_count': 1,
    'embedding_dim': 32,
    'units': 96,
    'num_layers': 2,
    'epochs': 30,
    'patience': 4,
    'batch_size': 32,
    'max_len': 12,
    'tflite_quantization': 'float32',
}
RESOLVER = 'latest_blessed_model_resolver'
GATE = GateConfig(max_loss_increase=0.05, max_cider_drop=0.02)


def executions(store) -> List[Dict[str, Any]]:
    return mlmd_states.execution_states(store)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    data = root / 'data'
    sample_data.generate(str(data), 96, seed=11)
    out = str(root / 'out')
    kwargs = dict(
        extractor=ExtractorParameters(weights='random'),
        hparams=HParams.from_custom_config(HPARAMS),
        evaluator=EvaluatorParameters(gate=GATE),
        # Agreement is measured through the device's Pillow image path, whose
        # resize differs slightly from the graph's: on 12 eval images of this
        # small model one or two captions differ (measured 10/12), which a 0.95
        # threshold would (rightly) refuse. The three-runtime check below is
        # exact on its images.
        min_tflite_agreement=0.75,
    )
    paths = local_runner.run(str(data), out, **kwargs)
    store = summary.open_store(paths.metadata_path)
    first = executions(store)
    first_push = summary.latest_pushed(store)
    first_decision = summary.latest_decision(store)
    first_metrics = summary.evaluation_metrics(store)

    local_runner.run(str(data), out, **kwargs)
    second = executions(store)[len(first) :]
    versions_after_second = publish.integer_versions(
        os.listdir(os.path.join(paths.serving_root, configs.MODEL_NAME))
    )

    local_runner.run(str(data), out, train_steps=1, **kwargs)
    third = executions(store)[len(first) + len(second) :]
    return {
        'root': root,
        'paths': paths,
        'store': store,
        'first': first,
        'second': second,
        'versions_after_second': versions_after_second,
        'third': third,
        'first_push': first_push,
        'first_decision': first_decision,
        'first_metrics': first_metrics,
        'third_decision': summary.latest_decision(store),
        'third_metrics': summary.evaluation_metrics(store),
    }


def test_good_model_is_blessed_and_pushed_complete(runs):
    assert {row['state'] for row in runs['first']} == {'COMPLETE'}
    assert runs['first_decision']['blessed'], runs['first_decision']
    assert runs['first_decision']['pushed']
    version_dir = runs['first_push']['saved_model']
    assert os.path.basename(version_dir).isdigit()
    assert os.path.dirname(version_dir) == os.path.join(
        runs['paths'].serving_root, configs.MODEL_NAME
    )
    for name in ('saved_model.pb', 'variables', publish.WARMUP_FILE):
        assert os.path.exists(os.path.join(version_dir, name)), name
    records = list(tf.data.TFRecordDataset(os.path.join(version_dir, publish.WARMUP_FILE)))
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    assert log.predict_log.request.model_spec.name == configs.MODEL_NAME
    tflite = runs['first_push']['tflite']
    assert tflite and os.path.exists(tflite)
    assert os.path.exists(os.path.join(os.path.dirname(tflite), features.TFLITE_VOCAB_FILE))


def test_ingestion_report_and_data_validation(runs):
    store = runs['store']
    report_ = summary.ingestion_report(store)
    assert report_['examples'] == {'train': 72, 'eval': 12, 'test': 12}
    assert set(report_['skipped'].values()) == {0}
    anomalies = summary.anomalies(store)
    assert set(anomalies) == {'train', 'eval', 'test'}
    assert all(items == [] for items in anomalies.values()), anomalies


def test_metrics_beat_the_most_frequent_caption(runs):
    metrics = runs['first_metrics']
    test = metrics['splits'][features.TEST_SPLIT]
    for name in features.METRIC_NAMES:
        assert test['metrics'][name] >= 0, name
    assert test['metrics']['CIDEr-D'] > test['most_frequent_caption']['CIDEr-D'] + 0.1
    (tflite,) = metrics['tflite']
    assert tflite['variant'] == 'float32' and tflite['agreement'] >= 0.75
    assert tflite['images'] == metrics['splits'][features.EVAL_SPLIT]['metrics']['num_images']
    assert metrics['baseline'] is None  # the first model has no baseline


def three_runtime_captions(store, version_dir, tflite_path, start_caption_server, tmp_path):
    """The first 3 test images captioned in-process, over gRPC and by TFLite without TensorFlow."""
    from tfx_captioning.serving.client import CaptionClient

    raw = summary.raw_examples(store)
    images = report.first_images(raw.uri, features.TEST_SPLIT, 3)
    image_bytes = [data for _, data in images]

    in_process = cli.caption_bytes(version_dir, image_bytes)

    server = start_caption_server(os.path.dirname(version_dir))
    with CaptionClient(server.target, configs.MODEL_NAME) as client:
        result = client.caption(image_bytes)
    over_grpc = [c.text for c in result.captions]
    assert result.version == int(os.path.basename(version_dir))

    paths = []
    for i, data in enumerate(image_bytes):
        paths.append(str(tmp_path / f'{i}.jpg'))
        with open(paths[-1], 'wb') as f:
            f.write(data)
    script = textwrap.dedent(
        f"""
        import json, sys
        from tfx_captioning.models.tflite_runtime import TFLiteCaptioner
        captioner = TFLiteCaptioner({tflite_path!r})
        captions = [captioner.caption(p) for p in {paths!r}]
        assert 'tensorflow' not in sys.modules
        print(json.dumps(captions))
        """
    )
    done = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, check=True
    )
    on_device = json.loads(done.stdout.strip().splitlines()[-1])
    return in_process, over_grpc, on_device


def test_three_runtimes_give_identical_captions(runs, start_caption_server, tmp_path):
    in_process, over_grpc, on_device = three_runtime_captions(
        runs['store'],
        runs['first_push']['saved_model'],
        runs['first_push']['tflite'],
        start_caption_server,
        tmp_path,
    )
    assert all(in_process), in_process
    assert in_process == over_grpc == on_device


def test_second_run_is_fully_cached(runs):
    assert len(runs['second']) == len(runs['first'])
    states = {row['component']: row['state'] for row in runs['second']}
    # The Resolver re-resolves the latest blessed model each run; it now finds
    # the first run's model, so the evaluator's baseline input is new and it
    # (cheaply) re-evaluates, and the Pusher sees the model is already served.
    for reruns in (RESOLVER, 'CaptionEvaluator', 'CaptionPusher'):
        states.pop(reruns)
    assert set(states.values()) == {'CACHED'}, states
    assert runs['versions_after_second'] == [int(runs['first_push']['version'])]


def test_worse_model_is_not_blessed_nor_pushed(runs):
    states = {row['component']: row['state'] for row in runs['third']}
    # Only training and what follows it re-run; features and vocabulary are reused.
    for cached in ('ImageFeatureExtractor', 'Transform', 'Flickr8kExampleGen'):
        assert states[cached] == 'CACHED', states
    assert states['Trainer'] == 'COMPLETE'
    decision = runs['third_decision']
    assert not decision['blessed']
    assert 'regressed' in decision['reason'] or 'baseline' in decision['reason']
    assert not decision['pushed']
    assert runs['third_metrics']['baseline'] is not None  # compared with the blessed model
    versions = publish.integer_versions(
        os.listdir(os.path.join(runs['paths'].serving_root, configs.MODEL_NAME))
    )
    assert len(versions) == 1


def test_report_is_built(runs):
    built = report.build_report(runs['paths'])
    html = open(built['html'], encoding='utf-8').read()
    assert 'BLEU-4' in html and 'NOT BLESSED' in html  # the latest run's decision
    assert os.path.getsize(built['contact_sheet']) > 1000


# --- Switching to the attention decoder ----------------------------------------------------


@pytest.fixture(scope='module')
def attention_run(runs):
    """The same data and settings with decoder='attention', on a copy of the first runs' store.

    A copy (ML Metadata and artifacts), so this run's decision leaves the
    other tests' store as they expect it; the copied store still points at
    the first runs' artifacts, which TFX's cache then reuses.
    """
    root = runs['root']
    out = str(root / 'out_attention')
    shutil.copytree(runs['paths'].output_root, out)
    hparams = HParams.from_custom_config({**HPARAMS, 'decoder': features.DECODER_ATTENTION})
    paths = local_runner.run(
        str(root / 'data'),
        out,
        extractor=ExtractorParameters(weights='random'),
        hparams=hparams,
        evaluator=EvaluatorParameters(gate=GATE),
        min_tflite_agreement=0.75,
    )
    store = summary.open_store(paths.metadata_path)
    states = executions(store)[len(executions(runs['store'])) :]
    model = summary.latest_artifact(store, 'Model')
    return {'paths': paths, 'store': store, 'states': states, 'model': model}


def test_switching_decoders_reuses_features_and_vocabulary(attention_run):
    states = {row['component']: row['state'] for row in attention_run['states']}
    for cached in ('Flickr8kExampleGen', 'ImageFeatureExtractor', 'Transform'):
        assert states[cached] == 'CACHED', states
    assert states['Trainer'] == 'COMPLETE' and states['CaptionEvaluator'] == 'COMPLETE'


def test_the_attention_model_gives_identical_captions_in_three_runtimes(
    attention_run, start_caption_server, tmp_path
):
    """Blessed or not, the Trainer's attention export is what would be pushed: serve it."""
    model_uri = attention_run['model'].uri
    base_path = tmp_path / 'serving' / configs.MODEL_NAME
    version_dir = str(base_path / '1')
    shutil.copytree(path_utils.serving_model_dir(model_uri), version_dir)
    loaded = tf.saved_model.load(version_dir)
    assert features.ATTENTION_SIGNATURE in loaded.signatures
    tflite = os.path.join(model_uri, features.TFLITE_MODEL_DIR, 'float32', features.TFLITE_FILE)
    in_process, over_grpc, on_device = three_runtime_captions(
        attention_run['store'], version_dir, tflite, start_caption_server, tmp_path
    )
    assert all(in_process), in_process
    assert in_process == over_grpc == on_device


def test_the_attention_runs_report_shows_where_the_model_looked(attention_run, tmp_path):
    built = report.build_report(attention_run['paths'], output_dir=str(tmp_path / 'report'))
    html = open(built['html'], encoding='utf-8').read()
    assert 'Where the model looked' in html and 'Attention maps missing' not in html
