"""The local runner's settings and the CLI's argument checks (runs are in test_e2e.py)."""

import pytest

from tfx_captioning.cli import pipeline_cli as cli
from tfx_captioning.components.caption_evaluator.gate import GateConfig
from tfx_captioning.models.hparams import HParams
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
    args = cli.build_parser().parse_args(
        ['run', '--hparam', 'epochs=3', '--min-bleu-4', '0.2', '--gate', 'max_cider_drop=0.1']
    )
    kwargs = cli.pipeline_args(args)
    assert kwargs['extractor'].weights == configs.SAMPLE_ENCODER_WEIGHTS
    assert kwargs['hparams'] == HParams(**dict(configs.SAMPLE_HPARAMS, epochs=3))
    gate = kwargs['evaluator'].gate
    assert gate.min_metrics == {'BLEU-4': 0.2} and gate.max_cider_drop == 0.1
    assert gate.min_margin_over_baseline == GateConfig().min_margin_over_baseline
    real = cli.pipeline_args(cli.build_parser().parse_args(['run', '--data', '/d']))
    assert real['extractor'].weights == 'imagenet' and real['hparams'] == HParams()
    assert real['evaluator'].gate == GateConfig()


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--gate', 'max_cider_drop=-1'], 'max_cider_drop'),
        (['--gate', 'nope=1'], 'Unknown gate settings'),
        (['--min-metric', 'BLEU-5=0.1'], 'unknown metric'),
        (['--encoder-weights', 'imagnet'], 'imagenet'),
    ],
)
def test_cli_refuses_bad_gate_and_extractor_flags_before_running(tmp_path, capsys, flags, message):
    from tfx_captioning.cli import sample_data

    sample_data.generate(str(tmp_path / 'data'), 8)
    argv = ['--output', str(tmp_path / 'o'), 'run', '--data', str(tmp_path / 'data')]
    assert cli.main(argv + flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'o' / 'tfx').exists()


def test_encoder_precision_flag():
    parse = cli.build_parser().parse_args
    assert cli.pipeline_args(parse(['run']))['extractor'].encoder_precision == 'float32'
    for precision in ('auto', 'float32', 'bfloat16'):
        args = parse(['run', '--encoder-precision', precision])
        assert cli.pipeline_args(args)['extractor'].encoder_precision == precision
    with pytest.raises(SystemExit):  # argparse's choices: exit 2 with the allowed values
        parse(['run', '--encoder-precision', 'float16'])


def test_a_failing_run_ends_in_one_line_naming_the_cause(tmp_path, capsys, monkeypatch):
    """A component failure (here: no space left, raised deep inside) is one line, exit 1."""
    from tfx_captioning.cli import sample_data
    from tfx_captioning.pipeline import local_runner

    def failing_run(*args, **kwargs):
        try:
            raise OSError(28, 'No space left on device')
        except OSError as cause:
            raise RuntimeError('Execution 3 failed.') from cause

    monkeypatch.setattr(local_runner, 'run', failing_run)
    sample_data.generate(str(tmp_path / 'data'), 8)
    argv = ['--output', str(tmp_path / 'o'), 'run', '--data', str(tmp_path / 'data')]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert 'error: the pipeline failed: OSError: [Errno 28] No space left on device' in err
    assert 'Traceback' not in err
    assert cli.main(['--verbose'] + argv) == 1
    assert 'Traceback' in capsys.readouterr().err


def test_failure_cause_is_the_innermost_exception():
    try:
        try:
            raise PermissionError(13, 'Permission denied', '/srv/models')
        except PermissionError as inner:
            raise RuntimeError('component failed\nwith details') from inner
    except RuntimeError as outer:
        assert cli.failure_cause(outer) == (
            "PermissionError: [Errno 13] Permission denied: '/srv/models'"
        )
    assert cli.failure_cause(ValueError('')) == 'ValueError: (no message)'
