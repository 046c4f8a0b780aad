"""The local runner's settings and the CLI's argument checks (runs are in test_e2e.py)."""

import pytest

from tfx_captioning.cli import pipeline_cli as cli
from tfx_captioning.pipeline import configs


def test_cli_refuses_a_directory_that_is_not_flickr8k(tmp_path, capsys):
    assert cli.main(['--output', str(tmp_path / 'o'), 'run', '--data', str(tmp_path)]) == 2
    assert 'is not a Flickr8k directory' in capsys.readouterr().err


def test_beam_args_for_local_workers():
    assert configs.beam_args_for_local(1) == [
        '--direct_running_mode=in_memory',
        '--direct_num_workers=1',
    ]
    assert '--direct_running_mode=multi_processing' in configs.beam_args_for_local(2)
    with pytest.raises(ValueError):
        configs.beam_args_for_local(0)


def test_cli_refuses_bad_hyperparameters_before_running(tmp_path, capsys):
    from tfx_captioning.cli import sample_data

    sample_data.generate(str(tmp_path / 'data'), 8)
    argv = ['--output', str(tmp_path / 'o'), 'run', '--data', str(tmp_path / 'data')]
    assert cli.main(argv + ['--hparam', 'units=0']) == 2
    assert 'units must be >= 1' in capsys.readouterr().err
    assert cli.main(argv + ['--hparam', 'nope=1']) == 2
    assert 'Unknown hyperparameters' in capsys.readouterr().err
    assert not (tmp_path / 'o' / 'tfx').exists()  # nothing ran


def test_sample_defaults_and_flags():
    args = cli.build_parser().parse_args(['run', '--hparam', 'epochs=3', '--min-bleu-4', '0.2'])
    kwargs = cli.pipeline_args(args)
    assert kwargs['encoder_weights'] == configs.SAMPLE_ENCODER_WEIGHTS
    assert kwargs['hparams'] == dict(configs.SAMPLE_HPARAMS, epochs=3)
    assert kwargs['min_bleu_4'] == 0.2
    real = cli.pipeline_args(cli.build_parser().parse_args(['run', '--data', '/d']))
    assert real['encoder_weights'] == 'imagenet' and real['hparams'] == {}
