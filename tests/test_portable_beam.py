"""Beam's portable runner on this machine: the services, and the Beam steps on them.

`pipeline/portable_beam.py` starts Beam's local job service and SDK worker
pool as separate processes on loopback; `--runner=PortableRunner` with an
EXTERNAL environment then runs each Beam step as Flink, Spark and Dataflow
Runner v2 do: the pipeline is serialized, submitted through the job API and
executed by SDK worker processes the pool starts, which unpickle the DoFns and
load the encoder themselves. The Beam steps (ExampleGen, the feature
extractor, both StatisticsGens and Transform) must give what the DirectRunner
gives.
"""

import functools
import glob
import ipaddress
import json
import os
from pathlib import Path
from typing import Dict, List

import apache_beam as beam
import numpy as np
import psutil
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from tests import mlmd_states
from tfx_captioning.cli import pipeline_cli, sample_data, summary
from tfx_captioning.components.image_feature_extractor import executor as extractor_executor
from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
from tfx_captioning.kubeflow import config as kf_config
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams
from tfx_captioning.pipeline import configs, local_runner, portable_beam

REPO = Path(__file__).resolve().parents[1]

# --- Arguments ---------------------------------------------------------------------------


def test_portable_args_pass_the_kubeflow_check_and_it_refuses_them_incomplete():
    args = configs.beam_args_for_portable('127.0.0.1:8099', '127.0.0.1:50000')
    assert args[0] == '--runner=PortableRunner' and '--environment_type=EXTERNAL' in args
    assert kf_config.check_beam_args(tuple(args)) == []
    incomplete = tuple(a for a in args if not a.startswith('--environment_config='))
    assert kf_config.check_beam_args(incomplete) == [
        'PortableRunner with --environment_type=EXTERNAL needs --environment_config.'
    ]


def test_the_cli_hands_the_runner_to_the_local_runner(tmp_path, monkeypatch):
    handed = {}
    monkeypatch.setattr(local_runner, 'run', lambda *a, **kw: handed.update(kw))
    # Only the hand-over: no logging or progress set-up for this test process.
    monkeypatch.setattr(pipeline_cli, 'print_summary', lambda paths, data_root=None: None)
    monkeypatch.setattr(pipeline_cli.quiet, 'configure', lambda verbose: None)
    sample_data.generate(str(tmp_path / 'data'), 8)
    argv = ['--output', str(tmp_path / 'out'), 'run', '--data', str(tmp_path / 'data')]
    assert pipeline_cli.main(argv + ['--beam-runner', 'portable']) == 0
    assert handed['beam_runner'] == 'portable'
    with pytest.raises(SystemExit):
        pipeline_cli.build_parser().parse_args(['run', '--beam-runner', 'flink'])


def test_unknown_runners_and_several_local_portable_workers_are_refused():
    with pytest.raises(ValueError, match='Unknown Beam runner'):
        with portable_beam.beam_args('flink', 1):
            pass
    with pytest.raises(ValueError, match='one SDK worker process'):
        with portable_beam.beam_args('portable', 2):
            pass


# --- The services ------------------------------------------------------------------------


def _listening(pids: List[int]) -> List[str]:
    """The addresses every process in the trees of `pids` listens on (TCP)."""
    addresses = []
    for pid in pids:
        root = psutil.Process(pid)
        for process in [root] + root.children(recursive=True):
            addresses += [
                c.laddr.ip for c in process.net_connections('inet') if c.status == 'LISTEN'
            ]
    return addresses


def _running(pids):
    """The pids whose process still runs; a zombie has ended (only its entry awaits its parent)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (
        ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback
    )


def _probe(element: int, service_pids: List[int]) -> Dict:
    """Runs inside an SDK worker, while the job runs: who am I, what do the services listen on."""
    return {
        'pid': os.getpid(),
        'parent': os.getppid(),
        'listening': _listening(service_pids),
    }


def test_services_listen_on_loopback_only_and_run_the_code_in_worker_processes(
    tmp_path, monkeypatch
):
    # `_probe` travels by reference: the workers import this module, as they
    # import the project's (installed) modules for the pipeline's DoFns.
    monkeypatch.setenv('PYTHONPATH', str(REPO))
    probe_file = tmp_path / 'probe.json'
    with portable_beam.LocalPortableBeam(log_dir=str(tmp_path)) as services:
        pool_pid, job_pid = services.pids
        with beam.Pipeline(options=PipelineOptions(services.resolved_beam_args)) as pipeline:
            _ = (
                pipeline
                | beam.Create([0])
                | beam.Map(functools.partial(_probe, service_pids=services.pids))
                | beam.Map(json.dumps)
                | beam.io.WriteToText(str(probe_file), shard_name_template='')
            )
        workers = [p.pid for p in psutil.Process(pool_pid).children(recursive=True)]
    (probe,) = [json.loads(line) for line in probe_file.read_text().splitlines()]
    # An SDK worker process the pool started, not this process or a thread of it.
    assert probe['pid'] not in (os.getpid(), pool_pid, job_pid)
    assert probe['parent'] == pool_pid and probe['pid'] in workers
    # Job API, worker pool, and the job's control, data, state and logging servers.
    assert len(probe['listening']) >= 3, probe
    assert all(_is_loopback(address) for address in probe['listening']), probe
    # Stopped: the services and the workers.
    assert not _running([pool_pid, job_pid] + workers)


def test_services_stop_when_the_block_fails():
    with pytest.raises(RuntimeError, match='step failed'):
        with portable_beam.LocalPortableBeam() as services:
            pids = services.pids
            assert os.environ[portable_beam.JOB_ENDPOINT_ENV].startswith('127.0.0.1:')
            raise RuntimeError('step failed')
    assert not _running(pids)
    assert portable_beam.JOB_ENDPOINT_ENV not in os.environ


# --- The Beam steps on the portable runner ---------------------------------------------------

# Several InceptionV3 batches per split, so that the portable runner (which
# reshuffles before batching) encodes images in other batches than the
# DirectRunner does.
EXTRACTOR = ExtractorParameters(weights='random', batch_size=4)
BEAM_NODES = ['Transform', 'StatisticsGen']


def _run_beam_steps(data: str, output: str, runner: str) -> configs.LocalPaths:
    return local_runner.run(
        data,
        output,
        beam_runner=runner,
        extractor=EXTRACTOR,
        hparams=HParams(min_word_count=1),
    )


def _output_uri(paths: configs.LocalPaths, node: str, key: str) -> str:
    (uri,) = glob.glob(os.path.join(paths.pipeline_root, node, key, '*'))
    return uri


def _examples(uri: str, split: str) -> Dict[bytes, Dict[str, np.ndarray]]:
    files = sorted(glob.glob(os.path.join(uri, f'Split-{split}', '*')))
    assert files, f'no records for {split} in {uri}'
    rows = {}
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        row = {k: np.array(getattr(v, v.WhichOneof('kind')).value) for k, v in feature.items()}
        rows[row[features.IMAGE_ID_KEY][0]] = row
    return rows


def _vocabulary(uri: str) -> Dict[str, bytes]:
    assets = Path(uri) / 'transform_fn' / 'assets'
    return {p.name: p.read_bytes() for p in sorted(assets.iterdir())}


def _num_examples(uri: str, split: str) -> int:
    with open(os.path.join(uri, f'Split-{split}', 'FeatureStats.pb'), 'rb') as f:
        return (
            statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
            .datasets[0]
            .num_examples
        )


def _custom_property(paths: configs.LocalPaths, node: str, key: str, name: str) -> str:
    store = summary.open_store(paths.metadata_path)
    uri = _output_uri(paths, node, key)
    (artifact,) = [a for a in store.get_artifacts() if a.uri == uri]
    value: metadata_store_pb2.Value = artifact.custom_properties[name]
    return value.string_value


@pytest.mark.slow
def test_portable_runner_gives_the_direct_runners_features_and_vocabulary(tmp_path, monkeypatch):
    data = str(tmp_path / 'data')
    sample_data.generate(data, 24, seed=5)
    original_run = tfx.orchestration.LocalDagRunner.run

    def run_beam_steps(self, pipeline, run_options=None, **kwargs):
        del run_options  # Only the Beam steps and what they need (SchemaGens).
        options = tfx_pipeline.RunOptions(to_nodes=BEAM_NODES)
        return original_run(self, pipeline, run_options=options, **kwargs)

    monkeypatch.setattr(tfx.orchestration.LocalDagRunner, 'run', run_beam_steps)
    service_logs = tmp_path / 'services'
    monkeypatch.setattr(
        portable_beam,
        'LocalPortableBeam',
        functools.partial(portable_beam.LocalPortableBeam, log_dir=str(service_logs)),
    )
    direct = _run_beam_steps(data, str(tmp_path / 'direct'), 'direct')
    portable = _run_beam_steps(data, str(tmp_path / 'portable'), 'portable')

    # Every Beam step was a job on the job service, run by SDK workers the pool started.
    pool_log = (service_logs / 'worker-pool.log').read_text()
    # One per Beam step (the local job service runs each job on one worker).
    assert pool_log.count('Starting worker with command') >= 5, pool_log[-3000:]
    states = mlmd_states.execution_states(summary.open_store(portable.metadata_path))
    assert {row['component'] for row in states} >= {
        'Flickr8kExampleGen',
        'ImageFeatureExtractor',
        'StatisticsGen',
        'FeatureStatisticsGen',
        'Transform',
    }
    assert {row['state'] for row in states} == {'COMPLETE'}, states

    for node, key in (('Flickr8kExampleGen', 'examples'),):
        for split in features.SPLITS:
            assert (
                _examples(_output_uri(direct, node, key), split).keys()
                == _examples(_output_uri(portable, node, key), split).keys()
            )
    for report in (
        ('Flickr8kExampleGen', 'examples', 'ingestion_report'),
        ('ImageFeatureExtractor', 'feature_examples', extractor_executor.REPORT_PROPERTY),
        ('ImageFeatureExtractor', 'encoder', extractor_executor.ENCODER_FINGERPRINT_PROPERTY),
    ):
        assert _custom_property(direct, *report) == _custom_property(portable, *report), report
    for node in ('StatisticsGen', 'FeatureStatisticsGen'):
        for split in features.SPLITS:
            assert _num_examples(_output_uri(direct, node, 'statistics'), split) == _num_examples(
                _output_uri(portable, node, 'statistics'), split
            )

    assert _vocabulary(_output_uri(direct, 'Transform', 'transform_graph'))
    assert _vocabulary(_output_uri(direct, 'Transform', 'transform_graph')) == _vocabulary(
        _output_uri(portable, 'Transform', 'transform_graph')
    )
    for node, key, tolerance in (
        # InceptionV3 outputs (O(1)). The portable runner reshuffles before
        # batching (the DirectRunner with one worker does not), and oneDNN's
        # result depends on the batch an image is encoded in, at float32
        # rounding: ~1e-7 relative per op, up to a few 1e-6 after ~100 layers
        # (tests/test_image_feature_extractor_runners.py). Beam's local job
        # service runs one worker, which here kept the order: measured 0.
        ('ImageFeatureExtractor', 'feature_examples', {'rtol': 1e-5, 'atol': 1e-5}),
        # The same features z-scored with the train split's statistics (in
        # float64, so Transform's own batching adds at most 1 ulp): dividing by
        # small per-dimension deviations magnifies the features' differences
        # (tests/test_kubeflow.py measured <= 6e-5 between worker counts).
        ('Transform', 'transformed_examples', {'rtol': 1e-4, 'atol': 2e-4}),
    ):
        largest = 0.0
        for split in features.SPLITS:
            expected = _examples(_output_uri(direct, node, key), split)
            found = _examples(_output_uri(portable, node, key), split)
            assert expected.keys() == found.keys() and expected
            for image_id, row in expected.items():
                assert row.keys() == found[image_id].keys()
                for name, values in row.items():
                    if values.dtype.kind == 'f':
                        np.testing.assert_allclose(found[image_id][name], values, **tolerance)
                        largest = max(
                            largest, float(np.max(np.abs(found[image_id][name] - values)))
                        )
                    else:
                        np.testing.assert_array_equal(found[image_id][name], values)
        print(f'{node}: largest difference portable vs direct {largest:.2e}')

    # The ports change from run to run but stay out of TFX's cache key.
    _run_beam_steps(data, str(tmp_path / 'portable'), 'portable')
    again = mlmd_states.execution_states(summary.open_store(portable.metadata_path))[len(states) :]
    assert again and {row['state'] for row in again} == {'CACHED'}, again
