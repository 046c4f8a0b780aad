"""Ctrl-C and SIGTERM handling (real signals to this process) and the bookkeeping of an
interrupted execution on a real ML Metadata store.

A pipeline subprocess interrupted during training and then resumed is in test_runs.py.
"""

import signal
import sys
import threading

import pytest
from ml_metadata.proto import metadata_store_pb2

from tests.mlmd_fixtures import Store
from tfx_captioning.cli import interrupt

State = metadata_store_pb2.Execution.State


def test_an_interrupted_execution_is_cancelled_and_its_partial_outputs_removed(tmp_path):
    path = str(tmp_path / 'metadata.sqlite')
    store = Store(path)
    trainer = store.start('Trainer')
    root = tmp_path / 'root'
    partial = [
        root / 'Trainer' / 'model' / str(trainer),
        root / 'Trainer' / '.system' / 'executor_execution' / str(trainer),
    ]
    kept = root / 'Trainer' / 'model' / str(trainer + 1)
    for directory in partial + [kept]:
        directory.mkdir(parents=True)
        (directory / 'half-written').write_text('x')
    interrupt.cancel_executions(path, str(root), {trainer: 'Trainer'})
    (execution,) = store.store.get_executions_by_id([trainer])
    assert execution.last_known_state == State.CANCELED
    assert not any(p.exists() for p in partial) and kept.exists()


# --- RunInterrupts ------------------------------------------------------------------------


def test_a_signal_raises_keyboard_interrupt_even_when_inherited_as_ignored():
    calls = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` in a script leaves it
    try:
        with interrupt.RunInterrupts(
            calls.append,
            grace_s=2,
            exit_fn=calls.append,
            kill_children=lambda: calls.append('kill'),
        ) as stop:
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            assert stop.requested and stop.signal_name == 'SIGTERM'
            signal.raise_signal(signal.SIGINT)  # a second signal while stopping: ignored
            stop.stop()
        assert calls[:3] == ['SIGTERM', 'kill', interrupt.EXIT_STATUS]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_watchdog_stops_a_run_whose_main_thread_does_not_get_there():
    calls, exited = [], threading.Event()

    def exit_fn(status):
        calls.append(status)
        exited.set()

    with interrupt.RunInterrupts(
        calls.append, grace_s=0.05, exit_fn=exit_fn, kill_children=lambda: calls.append('kill')
    ):
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert exited.wait(10)  # the main thread never called stop()
    assert calls == ['SIGINT', 'kill', interrupt.EXIT_STATUS]


def test_a_signal_inside_a_finalizer_stops_the_run_without_a_traceback(capsys):
    calls, hook = [], sys.unraisablehook

    class Finalized:  # as TensorFlow's functions, which have a __del__
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with interrupt.RunInterrupts(
        calls.append, grace_s=30, exit_fn=calls.append, kill_children=lambda: calls.append('kill')
    ):
        Finalized()  # Python swallows what __del__ raises; the run must stop all the same
        assert calls == ['SIGINT', 'kill', interrupt.EXIT_STATUS]
    assert 'Traceback' not in capsys.readouterr().err
    assert sys.unraisablehook is hook  # restored
