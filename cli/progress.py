"""One start line and one done line per component of a run, read from ML Metadata.

TFX registers an execution per component in the run's ML Metadata store,
RUNNING when the component starts and COMPLETE, CACHED, FAILED or CANCELED
when it ends, with both times. A background thread reads those executions
every second, so the lines do not depend on log wording or on what Beam, TFT
or Keras do to logging:

    [   12.3s] Transform ...
    [   80.1s] Transform done in 67.8s
    [   80.2s] Trainer cached

Times are taken from ML Metadata (relative to the start of the run), so they
are exact even though the store is polled. The store is opened read-only and
each poll is one short query: TFX's own writes wait at most milliseconds.
"""

import os
import sys
import threading
import time
from typing import Dict, Optional, TextIO

from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

POLL_INTERVAL_S = 1.0

_State = metadata_store_pb2.Execution.State
_ENDED = {
    _State.COMPLETE: 'done in {took:.1f}s',
    _State.CACHED: 'cached',
    _State.FAILED: 'failed after {took:.1f}s',
    _State.CANCELED: 'cancelled after {took:.1f}s',
}


class RunProgress:
    """Prints component start/done lines of the run that starts after `start()`.

    Use as a context manager around the run; `poll()` may also be called
    directly (tests do, with no thread).
    """

    def __init__(
        self,
        metadata_path: str,
        stream: TextIO = sys.stdout,
        interval_s: float = POLL_INTERVAL_S,
    ):
        self.metadata_path = metadata_path
        self.stream = stream
        self.interval_s = interval_s
        self._store: Optional[metadata_store.MetadataStore] = None
        self._first_id = 0
        self._start_ms = 0.0
        self._names: Dict[int, str] = {}
        self._started: Dict[int, metadata_store_pb2.Execution] = {}
        self._ended: Dict[int, metadata_store_pb2.Execution] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> 'RunProgress':
        """Notes the executions of earlier runs (not reported) and starts polling."""
        self._start_ms = time.time() * 1000
        store = self._open()
        if store is not None:
            self._first_id = max((e.id for e in store.get_executions()), default=0)
        self._thread = threading.Thread(target=self._loop, name='run-progress', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops polling after one last poll, so every ended component has its line."""
        self.pause()
        self.poll()

    def pause(self) -> None:
        """Stops the polling thread (lines are printed again only by `poll()`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 1)

    def __enter__(self) -> 'RunProgress':
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def _open(self) -> Optional[metadata_store.MetadataStore]:
        if self._store is None and os.path.exists(self.metadata_path):
            config = metadata_store_pb2.ConnectionConfig()
            config.sqlite.filename_uri = self.metadata_path
            config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
            try:
                self._store = metadata_store.MetadataStore(config)
            except mlmd_errors.StatusError:
                return None  # TFX is still creating the store: next time
        return self._store

    def poll(self) -> None:
        """Reads this run's executions once and prints the lines due."""
        with self._lock:
            for store, execution in self._read():
                self._report(store, execution)
            self.stream.flush()

    def _read(self):
        """[(store, execution)] of this run, oldest first; [] while the store is not there."""
        store = self._open() if self._start_ms else None  # nothing before start()
        if store is None:
            return []
        try:
            executions = store.get_executions(
                list_options=metadata_store.ListOptions(filter_query=f'id > {self._first_id}')
            )
        except mlmd_errors.StatusError:
            return []  # busy or not yet initialised: next time
        return [(store, e) for e in sorted(executions, key=lambda e: e.id)]

    def _report(self, store, execution: metadata_store_pb2.Execution) -> None:
        if execution.id in self._ended:
            return
        if execution.id not in self._started:
            name = self._node_name(store, execution)
            if name is None:
                return  # contexts not attached yet
            self._started[execution.id] = execution
            self._write(execution.create_time_since_epoch, f'{name} ...')
        template = _ENDED.get(execution.last_known_state)
        if template is not None:
            self._ended[execution.id] = execution
            took = (
                execution.last_update_time_since_epoch - execution.create_time_since_epoch
            ) / 1000
            self._write(
                execution.last_update_time_since_epoch,
                f'{self._names[execution.id]} {template.format(took=took)}',
            )

    def _write(self, time_ms: float, text: str) -> None:
        self.stream.write(f'[{max(0.0, (time_ms - self._start_ms) / 1000):7.1f}s] {text}\n')

    def _node_name(self, store, execution: metadata_store_pb2.Execution) -> Optional[str]:
        """The component id: the last part of the execution's `node` context name."""
        if execution.id not in self._names:
            for context in store.get_contexts_by_execution(execution.id):
                if store.get_context_types_by_id([context.type_id])[0].name == 'node':
                    self._names[execution.id] = context.name.rsplit('.', 1)[-1]
        return self._names.get(execution.id)

    def unsuccessful(self) -> Dict[int, str]:
        """{execution id: component} of this run's executions not COMPLETE or CACHED (yet).

        Reads the store without printing: after an interrupt these are the
        components it stopped (running, or failed by the interrupt).
        """
        with self._lock:
            found = {}
            for store, execution in self._read():
                name = self._node_name(store, execution)
                if name and execution.last_known_state not in (_State.COMPLETE, _State.CACHED):
                    found[execution.id] = name
            return found
