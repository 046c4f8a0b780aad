"""Progress output: the in-step reporter (injected clock, no sleeps) and the per-component
lines read from a real ML Metadata store.

A whole run's output (a start and a done/cached line for every component) is
checked in test_runs.py.
"""

import io
import os
import re

import pytest
from ml_metadata.proto import metadata_store_pb2

from tests.mlmd_fixtures import Store
from tfx_captioning.cli import progress as run_progress
from tfx_captioning.components import progress

State = metadata_store_pb2.Execution.State

# --- ProgressReporter -------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def reporter(total=1000, **kwargs):
    clock, lines = FakeClock(), []
    return (
        progress.ProgressReporter(
            'Extractor train', total, clock=clock, write=lines.append, **kwargs
        ),
        clock,
        lines,
    )


@pytest.mark.parametrize(
    'seconds, text',
    [(0, '0s'), (44.6, '45s'), (59.4, '59s'), (60, '1m00s'), (125, '2m05s'), (3725, '1h02m')],
)
def test_durations_are_short(seconds, text):
    assert progress.format_duration(seconds) == text


def test_a_line_has_done_total_rate_and_eta():
    report, clock, lines = reporter()
    clock.now += 10
    report.update(250)
    assert lines == ['  Extractor train: 250/1000 images (25%), 25.0 images/s, ETA 30s']


def test_lines_are_throttled_to_one_per_interval():
    report, clock, lines = reporter()
    for _ in range(79):  # an image every 0.125 s for 9.875 s: nothing yet
        clock.now += 0.125
        report.update()
    assert lines == []
    clock.now += 0.125
    report.update()
    assert lines == ['  Extractor train: 80/1000 images (8%), 8.0 images/s, ETA 1m55s']
    for _ in range(79):  # silent again until 10 s after that line
        clock.now += 0.125
        report.update()
    assert len(lines) == 1
    clock.now += 0.125
    report.update()
    assert lines[1] == '  Extractor train: 160/1000 images (16%), 8.0 images/s, ETA 1m45s'


def test_unknown_total_gives_count_and_rate_only():
    report, clock, lines = reporter(total=None)
    clock.now += 20
    report.update(50)
    assert lines == ['  Extractor train: 50 images, 2.5 images/s']


def test_finish_prints_the_final_count_only_after_earlier_lines():
    short, clock, lines = reporter()
    clock.now += 5
    short.update(1000)
    short.finish()
    assert lines == []  # a step under 10 s stays silent
    long, clock, lines = reporter()
    clock.now += 10
    long.update(500)
    clock.now += 5
    long.update(500)
    long.finish()
    assert lines[-1] == '  Extractor train: 1000/1000 images (100%), 66.7 images/s'


def test_shared_reporters_count_per_key_and_name_the_worker():
    one = progress.shared('uri-1', 'Extractor train', 100)
    assert progress.shared('uri-1', 'Extractor train', 100) is one
    assert progress.shared('uri-2', 'Extractor train', 100) is not one
    several = progress.shared('uri-3', 'Extractor train', 100, num_workers=3)
    assert several.total == 34 and f'worker pid {os.getpid()}, ~1/3' in several.label
    remote = progress.shared('uri-4', 'Extractor train', 100, num_workers=None)
    assert remote.total is None and f'worker pid {os.getpid()})' in remote.label


# --- RunProgress on a real ML Metadata store ---------------------------------------------


def _components(text):
    """The lines without their time stamps, durations as 'T'."""
    return [re.sub(r'\d+\.\ds$', 'T', line.split('] ', 1)[1]) for line in text.splitlines()]


def test_each_component_gets_a_start_and_an_end_line_from_the_store(tmp_path):
    path = str(tmp_path / 'metadata.sqlite')
    store = Store(path)
    store.end(store.start('EarlierRun'), State.COMPLETE)
    out = io.StringIO()
    tracker = run_progress.RunProgress(path, stream=out).start()
    tracker.pause()  # polled by hand below
    gen = store.start('ExampleGen')
    tracker.poll()
    assert _components(out.getvalue()) == ['ExampleGen ...']
    store.end(gen, State.CACHED)
    trainer = store.start('Trainer')
    store.end(trainer, State.COMPLETE)
    evaluator = store.start('Evaluator')
    tracker.poll()
    tracker.poll()  # nothing new: nothing printed twice
    assert _components(out.getvalue()) == [
        'ExampleGen ...',
        'ExampleGen cached',
        'Trainer ...',
        'Trainer done in T',
        'Evaluator ...',
    ]
    assert tracker.unsuccessful() == {evaluator: 'Evaluator'}
    store.end(evaluator, State.FAILED)
    tracker.poll()
    assert _components(out.getvalue())[-1] == 'Evaluator failed after T'


def test_the_polling_thread_reports_while_the_run_goes_on(tmp_path):
    path = str(tmp_path / 'metadata.sqlite')
    store = Store(path)
    out = io.StringIO()
    with run_progress.RunProgress(path, stream=out, interval_s=0.05):
        store.end(store.start('Transform'), State.COMPLETE)
    assert _components(out.getvalue()) == ['Transform ...', 'Transform done in T']
