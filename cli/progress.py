"""One line per component start/finish with elapsed time, from TFX's own log records.

`LocalDagRunner` logs "Component X is running." and "Component X is finished."
(and the launcher "A cached execution N is used."); this handler turns them into
lines a person can follow, while everything else stays quiet unless --verbose.
"""

import logging
import re
import sys
import time
from typing import Dict, Optional, TextIO

_RUNNING = re.compile(r'^Component (\S+) is running\.$')
_FINISHED = re.compile(r'^Component (\S+) is finished\.$')
_CACHED = re.compile(r'^A cached execution \d+ is used\.$')


class ComponentProgress(logging.Handler):
    """Prints `[  12.3s] Trainer ... done in 80.1s` style lines."""

    def __init__(self, stream: TextIO = sys.stdout):
        super().__init__(level=logging.INFO)
        self.stream = stream
        self.start = time.monotonic()
        self._started: Dict[str, float] = {}
        self._current: Optional[str] = None
        self._cached = set()

    def _stamp(self) -> str:
        return f'[{time.monotonic() - self.start:7.1f}s]'

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := _RUNNING.match(message):
            self._current = match[1]
            self._started[self._current] = time.monotonic()
            self.stream.write(f'{self._stamp()} {self._current} ...\n')
        elif _CACHED.match(message) and self._current:
            self._cached.add(self._current)
        elif match := _FINISHED.match(message):
            name = match[1]
            took = time.monotonic() - self._started.get(name, self.start)
            how = 'cached' if name in self._cached else f'done in {took:.1f}s'
            self.stream.write(f'{self._stamp()} {name} {how}\n')
        self.stream.flush()

    @property
    def cached_components(self) -> set:
        return set(self._cached)


def attach(stream: TextIO = sys.stdout) -> ComponentProgress:
    """Adds the handler to absl's logger (which TFX logs through) at INFO level."""
    handler = ComponentProgress(stream)
    absl_logger = logging.getLogger('absl')
    absl_logger.addHandler(handler)
    # An explicit level, not the root's: Beam and TF reconfigure the root
    # logger while components run.
    absl_logger.setLevel(logging.INFO)
    return handler
