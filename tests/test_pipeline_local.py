"""The pipeline with TFX's LocalDagRunner on generated data: artifacts, metadata, caching."""

import pytest

from pipeline import cli, configs, local_runner, sample_data, summary


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('run')
    data = root / 'data'
    sample_data.generate(str(data), 24, seed=5)
    paths = local_runner.run(str(data), str(root / 'out'))
    store = summary.open_store(paths.metadata_path)
    first = summary.execution_states(store)
    local_runner.run(str(data), str(root / 'out'))
    second = summary.execution_states(store)[len(first) :]
    return paths, store, first, second


def test_ingestion_report_and_validation(two_runs):
    paths, store, _, _ = two_runs
    report = summary.ingestion_report(store)
    assert report['examples'] == {'train': 18, 'eval': 3, 'test': 3}
    assert set(report['skipped'].values()) == {0}
    assert summary.latest_artifact(store, 'Schema') is not None
    anomalies = summary.anomalies(store)
    assert set(anomalies) == {'train', 'eval', 'test'}
    assert all(items == [] for items in anomalies.values()), anomalies


def test_second_run_is_fully_cached(two_runs):
    _, _, first, second = two_runs
    assert {row['state'] for row in first} == {'COMPLETE'}
    assert len(second) == len(first)
    assert {row['state'] for row in second} == {'CACHED'}


def test_cli_refuses_a_directory_that_is_not_flickr8k(tmp_path, capsys):
    assert cli.main(['run', '--data', str(tmp_path), '--output', str(tmp_path / 'o')]) == 2
    assert 'is not a Flickr8k directory' in capsys.readouterr().err


def test_beam_args_for_local_workers():
    assert configs.beam_args_for_local(1) == [
        '--direct_running_mode=in_memory',
        '--direct_num_workers=1',
    ]
    assert '--direct_running_mode=multi_processing' in configs.beam_args_for_local(2)
    with pytest.raises(ValueError):
        configs.beam_args_for_local(0)
