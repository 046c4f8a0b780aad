"""Progress of long steps: images done / total, images per second and an ETA, every ~10 s.

Used by the feature extractor (per split, in every Beam worker), the
evaluator (captioning each split) and the TFLite parity check, so that a long
step never looks like a hang.

Lines go straight to the process's standard output, not through `logging`:
Beam, TFT and Keras reconfigure logging while they run, and a Beam
`multi_processing` worker is a subprocess whose log records are forwarded to
the runner (which quiet mode drops) while its standard output is inherited
from the command. Each worker reports its own share of the images; one write
per line keeps lines of several workers whole.
"""

import math
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional

INTERVAL_S = 10.0
"""At most one line per reporter this often."""


def format_duration(seconds: float) -> str:
    """'45s', '2m05s', '1h02m': short, and precise enough for an ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def _write_stdout(line: str) -> None:
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


class ProgressReporter:
    """Counts finished items and prints a progress line at most every `interval_s` seconds.

    Example::

        progress = ProgressReporter('CaptionEvaluator eval captions', total=len(ids))
        for batch in batches:
            ...
            progress.update(len(batch))
        progress.finish()

    Thread-safe: DoFn instances of one process may share a reporter (`shared`).
    """

    def __init__(
        self,
        label: str,
        total: Optional[int] = None,
        unit: str = 'images',
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        write: Optional[Callable[[str], None]] = None,
    ):
        """Args:
        label: what is counted, e.g. 'ImageFeatureExtractor train'.
        total: how many items there will be; None when unknown (no ETA).
        unit: the items' name in the line.
        interval_s: the least time between two lines.
        clock: seconds, monotonic (injectable for tests).
        write: prints one line; standard output by default.
        """
        self.label = label
        self.total = total
        self.unit = unit
        self.interval_s = interval_s
        self._clock = clock
        self._write = write or _write_stdout
        self._lock = threading.Lock()
        self._start = self._last_line = clock()
        self._reported = None
        self.done = 0

    def update(self, count: int = 1) -> None:
        """Adds `count` finished items; prints a line if `interval_s` has passed since the last."""
        with self._lock:
            self.done += count
            now = self._clock()
            if now - self._last_line >= self.interval_s:
                self._report(now)

    def finish(self) -> None:
        """Prints the final count, if a line was printed before (short steps stay silent)."""
        with self._lock:
            if self._reported is not None and self._reported != self.done:
                self._report(self._clock())

    def _report(self, now: float) -> None:
        self._last_line = now
        self._reported = self.done
        self._write(self.line(now))

    def line(self, now: float) -> str:
        """`  label: 120/6000 images (2%), 28.1 images/s, ETA 3m29s`."""
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            count = f'{self.done}/{self.total} {self.unit} ({self.done / self.total:.0%})'
        else:
            count = f'{self.done} {self.unit}'
        parts = [count, f'{rate:.1f} {self.unit}/s']
        if self.total and self.done < self.total and rate > 0:
            parts.append(f'ETA {format_duration((self.total - self.done) / rate)}')
        return f'  {self.label}: ' + ', '.join(parts)


_SHARED: Dict[str, ProgressReporter] = {}
_SHARED_LOCK = threading.Lock()


def shared(
    key: str, label: str, total: Optional[int] = None, num_workers: Optional[int] = 1
) -> ProgressReporter:
    """The process's one reporter for `key`, so every DoFn instance counts into it.

    Args:
      key: unique to the execution (e.g. its output URI), so a later run in
        the same process starts from zero.
      label: what is counted.
      total: items in all workers together; None when unknown.
      num_workers: Beam workers sharing the items; None when unknown (a
        remote runner). With several, each process reports its own share:
        the label names the process and the total is about
        `total / num_workers` (unknown when the worker count is).
    """
    if num_workers != 1:
        share = f', ~1/{num_workers} of them' if num_workers else ''
        label = f'{label} (worker pid {os.getpid()}{share})'
        total = math.ceil(total / num_workers) if total and num_workers else None
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = ProgressReporter(label, total)
        return _SHARED[key]
