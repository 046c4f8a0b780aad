"""Interrupting, resuming and re-running the pipeline after edits, end to end (slow).

Real runs on a tiny generated sample with cheap hyperparameters (and a gate no
model passes, so no baseline model is ever evaluated), read back from ML
Metadata. One module-scoped sequence in one output directory:

1. `caption-pipeline run`, started as `cmd &` in a script would start it
   (SIGINT inherited as ignored), gets SIGINT once the Trainer has started:
   it exits 130 within seconds, naming the Trainer; the Trainer's execution
   is CANCELED and none of its partial outputs are left;
2. the same command again resumes: everything before the Trainer is CACHED,
   the Trainer and what follows run; its output has a start line and a done
   or cached line for every component of the pipeline;
3. an edit of `preprocessing_fn` (the code fingerprint reads the edited
   source) re-runs Transform and what follows, not the feature extractor;
4. an edited caption in `Flickr8k.token.txt` re-runs the ExampleGen and
   everything downstream.

Plus a separate run stopped by SIGTERM during the feature extractor.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

import pytest

from tests import mlmd_states
from tfx_captioning.cli import pipeline_cli as cli
from tfx_captioning.cli import summary
from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.pipeline import configs, local_runner
from tfx_captioning.pipeline import pipeline as pipeline_lib

pytestmark = pytest.mark.slow

RUN_FLAGS = [
    'run',
    '--sample-images',
    '24',
    # A gate no model passes: nothing is pushed, so no later run evaluates a baseline.
    '--min-metric',
    'CIDEr-D=100',
] + [
    flag
    for hparam in (
        'epochs=2',
        'units=16',
        'embedding_dim=8',
        'num_layers=1',
        'batch_size=16',
        'max_len=12',
        'tflite_quantization=none',
    )
    for flag in ('--hparam', hparam)
]
INTERRUPT_LATENCY_S = 20
"""Generous for a loaded 2-core machine; measured 0.4-0.6 s."""
BEFORE_TRAINER = (
    'Flickr8kExampleGen',
    'ImageFeatureExtractor',
    'StatisticsGen',
    'SchemaGen',
    'ExampleValidator',
    'FeatureStatisticsGen',
    'FeatureSchemaGen',
    'Transform',
)
FROM_TRAINER = ('Trainer', 'CaptionEvaluator', 'CaptionPusher')


def run_cli(
    output: str, stop_at: Optional[str] = None, sig: int = signal.SIGINT, delay_s: float = 3
) -> Tuple[int, str, Optional[float]]:
    """Runs `caption-pipeline --output OUTPUT run ...` as a person's shell script would.

    SIGINT starts ignored, as `cmd &` in a non-interactive shell leaves it. With
    `stop_at`, `sig` is sent `delay_s` seconds after the first output line
    containing it.

    Returns:
      (exit status, the whole output, seconds from the signal to the exit).
    """
    command = [sys.executable, '-m', 'tfx_captioning.cli.pipeline_cli', '--output', output]
    env = dict(os.environ, TF_USE_LEGACY_KERAS='1', PYTHONUNBUFFERED='1')
    process = subprocess.Popen(
        command + RUN_FLAGS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: List[str] = []
    seen = threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if stop_at and stop_at in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = None
    try:
        if stop_at:
            if not seen.wait(900):
                raise AssertionError(f'no {stop_at!r} line:\n' + ''.join(lines))
            time.sleep(delay_s)
            process.send_signal(sig)
            sent = time.monotonic()
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    latency = time.monotonic() - sent if sent else None
    reader.join(timeout=10)
    return process.returncode, ''.join(lines), latency


def _states(rows) -> dict:
    return {row['component']: row['state'] for row in rows}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    output = str(tmp_path_factory.mktemp('runs') / 'out')
    paths = configs.LocalPaths(output)
    status, interrupted_output, latency = run_cli(output, stop_at='] Trainer ...')
    store = summary.open_store(paths.metadata_path)
    first = mlmd_states.execution_states(store)
    trainer_outputs = os.listdir(os.path.join(paths.pipeline_root, 'Trainer', 'model'))

    resumed_status, resumed_output, _ = run_cli(output)
    resumed = mlmd_states.execution_states(store)[len(first) :]

    # The in-process runs get exactly the parameters the command line gave.
    kwargs = cli.pipeline_args(cli.build_parser().parse_args(RUN_FLAGS))
    real_source = code_fingerprint.module_source

    def edited_source(name):
        read = real_source(name)
        if read is None:
            return None
        source, is_package = read
        if name == 'tfx_captioning.models.preprocessing':
            marker = '    hparams = HParams.from_custom_config(custom_config or {})\n'
            assert marker in source
            source = source.replace(marker, marker + '    edited = True  # an edit\n')
        return source, is_package

    done = len(first) + len(resumed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(code_fingerprint, 'module_source', edited_source)
        local_runner.run(paths.sample_data, output, **kwargs)
    after_code_edit = mlmd_states.execution_states(store)[done:]

    done += len(after_code_edit)
    token_file = os.path.join(paths.sample_data, layout.TOKEN_FILE)
    with open(token_file, encoding='utf-8') as f:
        captions = f.read()
    assert 'circle' in captions
    with open(token_file, 'w', encoding='utf-8') as f:
        f.write(captions.replace('circle', 'disc', 1))
    local_runner.run(paths.sample_data, output, **kwargs)
    after_caption_edit = mlmd_states.execution_states(store)[done:]
    return {
        'paths': paths,
        'status': status,
        'interrupted_output': interrupted_output,
        'latency': latency,
        'first': first,
        'trainer_outputs': trainer_outputs,
        'resumed_status': resumed_status,
        'resumed_output': resumed_output,
        'resumed': resumed,
        'after_code_edit': after_code_edit,
        'after_caption_edit': after_caption_edit,
    }


def test_sigint_during_training_exits_130_promptly_naming_the_trainer(runs):
    assert runs['status'] == 130, runs['interrupted_output']
    assert runs['latency'] < INTERRUPT_LATENCY_S
    assert 'Interrupted by SIGINT during Trainer.' in runs['interrupted_output']
    assert 'Run the same command again to resume' in runs['interrupted_output']
    assert re.search(r'\] Trainer cancelled after \d', runs['interrupted_output'])
    assert 'Traceback' not in runs['interrupted_output']


def test_the_interrupted_execution_is_cancelled_and_leaves_nothing_behind(runs):
    states = _states(runs['first'])
    assert states['Trainer'] == 'CANCELED'
    assert all(states[name] == 'COMPLETE' for name in BEFORE_TRAINER), states
    assert 'CaptionEvaluator' not in states
    assert runs['trainer_outputs'] == []  # its partial model directory was removed


def test_the_same_command_resumes_from_the_cache(runs):
    assert runs['resumed_status'] == 0, runs['resumed_output']
    states = _states(runs['resumed'])
    assert all(states[name] == 'CACHED' for name in BEFORE_TRAINER), states
    assert all(states[name] == 'COMPLETE' for name in FROM_TRAINER), states
    assert 'Pipeline finished' in runs['resumed_output']


def test_every_component_gets_a_start_and_a_done_or_cached_line(runs):
    pipeline = pipeline_lib.create_pipeline(
        'p', '/root', '/data', PusherParameters(serving_root='/srv', tflite_root='/tfl')
    )
    output = runs['resumed_output']
    for component in pipeline.components:
        stamp = r'^\[\s*\d+\.\ds\] '
        assert re.search(stamp + re.escape(component.id) + r' \.\.\.$', output, re.M), component.id
        assert re.search(
            stamp + re.escape(component.id) + r' (done in \d+\.\ds|cached)$', output, re.M
        ), component.id


def test_editing_preprocessing_fn_reruns_transform_and_downstream_only(runs):
    states = _states(runs['after_code_edit'])
    for name in ('Flickr8kExampleGen', 'ImageFeatureExtractor', 'FeatureSchemaGen'):
        assert states[name] == 'CACHED', states
    for name in ('Transform',) + FROM_TRAINER:
        assert states[name] == 'COMPLETE', states


def test_editing_a_caption_reruns_the_example_gen_and_everything_downstream(runs):
    states = _states(runs['after_caption_edit'])
    states.pop('latest_blessed_model_resolver')  # resolves anew every run
    assert set(states.values()) == {'COMPLETE'}, states
    assert set(states) == set(BEFORE_TRAINER + FROM_TRAINER)


def test_sigterm_during_feature_extraction_exits_130_too(tmp_path):
    output = str(tmp_path / 'out')
    status, text, latency = run_cli(
        output, stop_at='] ImageFeatureExtractor ...', sig=signal.SIGTERM, delay_s=2
    )
    assert status == 130, text
    assert latency < INTERRUPT_LATENCY_S
    assert 'Interrupted by SIGTERM during ImageFeatureExtractor.' in text
    store = summary.open_store(configs.LocalPaths(output).metadata_path)
    assert _states(mlmd_states.execution_states(store))['ImageFeatureExtractor'] == 'CANCELED'
