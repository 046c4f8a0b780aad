"""Server-side batching for the local stand-in server: merge concurrent Predict calls.

Each Predict call becomes a task on a bounded queue. One batch is open at a
time: it starts with the oldest task and takes compatible tasks (same
servable, signature, outputs and per-row shapes) until it holds
`max_batch_size` rows or `batch_timeout_s` has passed since it opened. Then
it closes, a batch thread concatenates its inputs along dimension 0, runs the
model once and hands each caller its rows back, while the next batch opens.
This is the scheme of TF Serving's `BasicBatchScheduler`, configured by the
same `batching_parameters.txt` fields, and it shares that scheme's trade-off:
at low load a lone request waits up to `batch_timeout_s` for company.

If a merged batch fails with INVALID_ARGUMENT (one caller's image is corrupt
in a way the header check could not see), every task of the batch is rerun
alone, so one bad request never fails its neighbours.

This is part of a development stand-in; production batches inside the real
TF Serving (`--enable_batching --batching_parameters_file`).
"""

import collections
import contextlib
import logging
import queue
import threading
import time
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np

from tfx_captioning.serving import servable as servable_lib
from tfx_captioning.serving.options import BatchingOptions


class _Task:
    """One Predict call waiting for its rows of a batch."""

    def __init__(
        self,
        servable: servable_lib.Servable,
        signature_name: str,
        inputs: servable_lib.PreparedInputs,
        output_keys: Tuple[str, ...],
    ):
        self.servable = servable
        self.signature_name = signature_name
        self.inputs = inputs
        self.output_keys = output_keys
        self.done = threading.Event()
        self.cancelled = False
        self.result: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[servable_lib.ServingError] = None
        # Everything that must match for two tasks to share one model call.
        self.key = (
            id(servable),
            signature_name,
            output_keys,
            tuple(
                sorted(
                    (alias, array.dtype.str, array.shape[1:])
                    for alias, array in inputs.arrays.items()
                )
            ),
        )

    def finish(
        self,
        result: Optional[Dict[str, np.ndarray]] = None,
        error: Optional[servable_lib.ServingError] = None,
    ) -> None:
        self.result = result
        self.error = error
        self.done.set()


class Batcher:
    """Merges concurrent Predict calls into batched model calls (see module docstring)."""

    def __init__(self, options: BatchingOptions):
        """Starts `options.num_batch_threads` daemon batch threads."""
        options.validate()
        self.options = options
        # Bounded in tasks: a task holds >= 1 row, so this bounds queued rows loosely.
        # None is the stop sentinel.
        self._queue: queue.Queue[Optional[_Task]] = queue.Queue(
            maxsize=options.max_enqueued_batches * options.max_batch_size
        )
        self._stop = threading.Event()
        self._forming = threading.Lock()
        # A task that did not fit the batch being formed; it opens the next one.
        self._carried: Deque[_Task] = collections.deque()
        self._threads = [
            threading.Thread(target=self._loop, name=f'batch-{index}', daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self,
        servable: servable_lib.Servable,
        signature_name: str,
        inputs: servable_lib.PreparedInputs,
        output_keys: Sequence[str],
        timeout_s: Optional[float],
        on_cancel=None,
    ) -> Dict[str, np.ndarray]:
        """Runs one request through a batch and returns its outputs.

        Args:
          servable: the version to run.
          signature_name: the signature.
          inputs: validated inputs.
          output_keys: outputs to return.
          timeout_s: the request's remaining deadline (None: none).
          on_cancel: called with a callback that cancels the task, so that
            the gRPC layer can drop a task whose client went away.

        Returns:
          output alias -> array, this request's rows only.

        Raises:
          ServingError: UNAVAILABLE when the queue is full, DEADLINE_EXCEEDED
            when the deadline passes first, or the model's own error.
        """
        task = _Task(servable, signature_name, inputs, tuple(output_keys))
        if on_cancel is not None:
            on_cancel(lambda: setattr(task, 'cancelled', True))
        try:
            self._queue.put_nowait(task)
        except queue.Full as error:
            raise servable_lib.ServingError(
                grpc.StatusCode.UNAVAILABLE,
                'The batch scheduling queue to which this task was submitted is full.',
            ) from error
        if not task.done.wait(timeout_s):
            # The batch thread skips cancelled tasks it has not started yet.
            task.cancelled = True
            raise servable_lib.ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f'request deadline passed after {timeout_s:.3f} s waiting for its batch.',
            )
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the batch threads after the batches in progress."""
        self._stop.set()
        for _ in self._threads:
            # Wakes a thread waiting for a batch's company, so stopping is prompt.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout_s)

    # --- Batch threads -------------------------------------------------------------

    def _loop(self) -> None:
        """Forms and runs batches until stopped."""
        while not self._stop.is_set():
            # One batch is open at a time (as in TF Serving's scheduler): the
            # other threads run closed batches meanwhile instead of each
            # waiting for company and splitting the traffic into small batches.
            with self._forming:
                batch = self._form_batch()
            if batch:
                self._run_batch(batch)

    def _form_batch(self) -> List[_Task]:
        """Takes the oldest task, then compatible ones until full or timed out."""
        if self._carried:
            first = self._carried.popleft()
        else:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                return []
            if first is None:  # Stop sentinel.
                return []
        batch = [first]
        rows = first.inputs.rows or 0
        batchable = first.inputs.rows is not None
        deadline = time.monotonic() + self.options.batch_timeout_s
        while batchable and rows < self.options.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                task = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if task is None:  # Stop sentinel: run what we have.
                break
            fits = (
                task.key == first.key
                and task.inputs.rows is not None
                and rows + task.inputs.rows <= self.options.max_batch_size
            )
            if not fits:
                # It opens the next batch; order is kept.
                self._carried.append(task)
                break
            batch.append(task)
            rows += task.inputs.rows
        return batch

    def _run_batch(self, batch: List[_Task]) -> None:
        """Runs a batch; on INVALID_ARGUMENT reruns each task alone to isolate the bad one."""
        # A caller may have given up (deadline, cancel) while its batch was forming.
        for task in batch:
            if task.cancelled:
                task.finish(error=_cancelled())
        batch = [task for task in batch if not task.cancelled]
        if not batch:
            return
        try:
            results = _run_merged(batch)
        except servable_lib.ServingError as error:
            if len(batch) > 1 and error.code == grpc.StatusCode.INVALID_ARGUMENT:
                for task in batch:
                    self._run_batch([task])
                return
            for task in batch:
                task.finish(error=error)
            return
        except Exception as error:  # noqa: BLE001 - a batch thread must never die.
            logging.exception('batch of %d tasks failed.', len(batch))
            failure = servable_lib.ServingError(grpc.StatusCode.INTERNAL, str(error))
            for task in batch:
                task.finish(error=failure)
            return
        for task, result in zip(batch, results):
            task.finish(result=result)


def _cancelled() -> servable_lib.ServingError:
    return servable_lib.ServingError(grpc.StatusCode.CANCELLED, 'request cancelled before it ran.')


def _run_merged(batch: Sequence[_Task]) -> List[Dict[str, np.ndarray]]:
    """Concatenates the tasks' inputs, runs the model once, splits the outputs by rows."""
    first = batch[0]
    if len(batch) == 1:
        return [first.servable.run(first.signature_name, first.inputs.arrays, first.output_keys)]
    merged: Mapping[str, np.ndarray] = {
        alias: np.concatenate([task.inputs.arrays[alias] for task in batch], axis=0)
        for alias in first.inputs.arrays
    }
    outputs = first.servable.run(first.signature_name, merged, first.output_keys)
    total_rows = sum(task.inputs.rows for task in batch)
    for alias, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total_rows:
            # A model whose output is not per-row cannot be split back to callers.
            raise servable_lib.ServingError(
                grpc.StatusCode.INTERNAL,
                f'output {alias!r} has shape {array.shape}, not one row per input row '
                f'({total_rows}); disable batching for this model.',
            )
    results = []
    start = 0
    for task in batch:
        stop = start + task.inputs.rows
        results.append({alias: array[start:stop] for alias, array in outputs.items()})
        start = stop
    return results
