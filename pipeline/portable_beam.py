"""Beam's portable runner on this machine: a local job service and an SDK worker pool.

`LocalPortableBeam` starts, as two separate processes, Beam's own local job
service (`apache_beam.runners.portability.local_job_service_main`) and its
SDK worker pool (`apache_beam.runners.worker.worker_pool_main`), on free
loopback ports, and stops both (and the SDK worker processes the pool
started) when the `with` block ends, also on errors. Its `beam_args` point
`--runner=PortableRunner` at them with an EXTERNAL environment
(`configs.beam_args_for_portable`): every Beam step then runs as Flink, Spark
and Dataflow Runner v2 run it, with the pipeline serialized, shipped through
the job API and executed by SDK workers in other processes. The arguments
name the two endpoints through TFX environment placeholders, so the ports,
new on every run, do not change TFX's cache key.

Both mains are Beam's, unchanged, started through this module
(`python -m tfx_captioning.pipeline.portable_beam job-service|worker-pool ...`)
only to keep every port they open on 127.0.0.1: Beam binds the worker pool
and the job service's data, control, state and logging servers to all
interfaces (`[::]`), with no option to change it.
"""

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import psutil

from tfx_captioning.pipeline import configs

LOOPBACK = '127.0.0.1'
_WILDCARD_HOSTS = ('[::]', '0.0.0.0', '', 'localhost', '[::1]')
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
JOB_ENDPOINT_ENV = 'CAPTIONING_BEAM_JOB_ENDPOINT'
WORKER_POOL_ENV = 'CAPTIONING_BEAM_WORKER_POOL'


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound and released on loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class LocalPortableBeam:
    """A local Beam job service and SDK worker pool, for `with` blocks.

        with LocalPortableBeam() as services:
            pipeline = create_pipeline(..., beam_pipeline_args=services.beam_args)
            tfx.orchestration.LocalDagRunner().run(pipeline)

    The SDK workers are started by the pool with the `python` first on its
    PATH, which is this interpreter's: they import the project and TFX as
    installed, never the caller's `__main__`.
    """

    def __init__(self, log_dir: Optional[str] = None):
        """Args:
        log_dir: where the services write their logs (and the job service
          its staged artifacts); a temporary directory, removed on stop, by
          default.
        """
        self._log_dir = log_dir
        self._stack = contextlib.ExitStack()
        self._processes: List[subprocess.Popen] = []
        self.job_port = 0
        self.worker_pool_port = 0

    @property
    def endpoints(self) -> Dict[str, str]:
        """Environment variable -> HOST:PORT of the job service and the worker pool."""
        if not self.job_port:
            raise RuntimeError('The services are not running: use LocalPortableBeam in `with`.')
        return {
            JOB_ENDPOINT_ENV: f'{LOOPBACK}:{self.job_port}',
            WORKER_POOL_ENV: f'{LOOPBACK}:{self.worker_pool_port}',
        }

    @property
    def resolved_beam_args(self) -> List[str]:
        """Beam arguments naming these services' ports, for a Beam pipeline outside TFX."""
        endpoints = self.endpoints
        return configs.beam_args_for_portable(
            endpoints[JOB_ENDPOINT_ENV], endpoints[WORKER_POOL_ENV]
        )

    @property
    def beam_args(self) -> List[Any]:
        """Beam arguments for TFX that name the services through environment placeholders.

        TFX resolves them when each Beam step starts, from the variables this
        object sets while the `with` block runs. The ports, which change from
        run to run, thus stay out of the arguments, which are part of TFX's
        cache key: a second run with unchanged inputs is served from the cache.
        """
        from tfx.dsl.placeholder import placeholder as ph

        self.endpoints  # noqa: B018 (raises when not running)
        return configs.beam_args_for_portable(
            ph.environment_variable(JOB_ENDPOINT_ENV),
            ph.environment_variable(WORKER_POOL_ENV),
        )

    @property
    def pids(self) -> List[int]:
        """Process ids of the job service and the worker pool."""
        return [process.pid for process in self._processes]

    def __enter__(self) -> 'LocalPortableBeam':
        try:
            log_dir = self._log_dir or self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix='portable-beam-')
            )
            os.makedirs(log_dir, exist_ok=True)
            self._stack.callback(self._stop)
            staging = os.path.join(log_dir, 'staging')
            # Both start at once (each takes seconds to import Beam).
            pool = self._start('worker-pool', log_dir, ['--service_port={port}'])
            job = self._start('job-service', log_dir, ['--port={port}', f'--staging_dir={staging}'])
            self.worker_pool_port = _wait_for_port(*pool)
            self.job_port = _wait_for_port(*job)
            self._stack.enter_context(_environment(self.endpoints))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _start(
        self, service: str, log_dir: str, args: List[str]
    ) -> Tuple[int, subprocess.Popen, str]:
        """Starts `service` on a free loopback port; returns (port, process, log path)."""
        port = free_loopback_port()
        env = dict(os.environ)
        # The worker pool starts SDK workers as `python ...`: this interpreter.
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        log_path = os.path.join(log_dir, f'{service}.log')
        with open(log_path, 'ab') as log:
            process = subprocess.Popen(
                [sys.executable, '-m', __name__, service] + [arg.format(port=port) for arg in args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: stopping it also reaches the SDK
                # workers it started, and a Ctrl-C in the terminal reaches only
                # the pipeline, which then stops the services in order.
                start_new_session=True,
            )
        self._processes.append(process)
        return port, process, log_path

    def _stop(self) -> None:
        # The job service first (it stops the workers it asked for), then the pool.
        for process in reversed(self._processes):
            _stop_process(process)
        self._processes.clear()


@contextlib.contextmanager
def _environment(values: Dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the block; restores what was there after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _log_tail(path: str, size: int = 4000) -> str:
    with open(path, 'rb') as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode('utf-8', 'replace')


def _wait_for_port(port: int, process: subprocess.Popen, log_path: str) -> int:
    """Returns `port` once `process` accepts connections on it; raises if it exits or hangs."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f'{process.args[3]} exited with {process.returncode} before listening on '
                f'{LOOPBACK}:{port}:\n{_log_tail(log_path)}'
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            if probe.connect_ex((LOOPBACK, port)) == 0:
                return port
        time.sleep(0.2)
    raise RuntimeError(
        f'{process.args[3]} did not listen on {LOOPBACK}:{port} within {STARTUP_TIMEOUT_S:.0f} s:'
        f'\n{_log_tail(log_path)}'
    )


def _stop_process(process: subprocess.Popen) -> None:
    """Ctrl-C first (Beam's mains then stop their servers and workers), then its group.

    Returns once the service and every process it started have ended (or
    after `STOP_TIMEOUT_S`): SIGKILL is asynchronous, and an SDK worker that
    holds gigabytes takes a moment to go.
    """
    started = _descendants(process.pid)  # before Ctrl-C, while they are still its children
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    # What is left of the group it leads: SDK workers, or the service itself.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_runs(p) for p in started):
        time.sleep(0.05)


def _descendants(pid: int) -> List[psutil.Process]:
    """psutil processes started by `pid`, at any depth (none once it has gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _runs(process: psutil.Process) -> bool:
    """Whether a psutil process still runs: a zombie has ended, only its entry waits for reaping."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _bind_loopback_only() -> None:
    """Makes every gRPC server of this process listen on 127.0.0.1, whatever address it asks for."""
    import grpc

    make_server: Callable = grpc.server

    def loopback_server(*args, **kwargs):
        server = make_server(*args, **kwargs)
        add_insecure_port = server.add_insecure_port

        def add_loopback_port(address: str) -> int:
            host, _, port = address.rpartition(':')
            if host not in _WILDCARD_HOSTS and host != LOOPBACK:
                raise ValueError(f'Refusing to bind {address!r}: loopback only.')
            return add_insecure_port(f'{LOOPBACK}:{port}')

        server.add_insecure_port = add_loopback_port
        return server

    grpc.server = loopback_server


def main(argv: Optional[List[str]] = None) -> None:
    """`job-service ARGS` or `worker-pool ARGS`: Beam's main with ARGS, bound to loopback."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('service', choices=('job-service', 'worker-pool'))
    args, beam_argv = parser.parse_known_args(argv)
    _bind_loopback_only()
    if args.service == 'job-service':
        from apache_beam.runners.portability import local_job_service_main

        local_job_service_main.run(beam_argv)
    else:
        from apache_beam.runners.worker import worker_pool_main

        worker_pool_main.main(beam_argv)


@contextlib.contextmanager
def beam_args(runner: str, num_workers: int) -> Iterator[List[Any]]:
    """The Beam arguments of `runner` ('direct' or 'portable'), with its services while needed."""
    if runner == 'direct':
        yield configs.beam_args_for_local(num_workers)
    elif runner == 'portable':
        if num_workers != 1:
            # FnApiRunner.run_via_runner_api, which the job service calls,
            # never reads --direct_num_workers.
            raise ValueError(
                "Beam's local job service runs each job on one SDK worker process: use 1 Beam "
                f'worker with the portable runner, got {num_workers}.'
            )
        with LocalPortableBeam() as services:
            yield services.beam_args
    else:
        raise ValueError(f'Unknown Beam runner {runner!r}; known: {list(configs.BEAM_RUNNERS)}.')


if __name__ == '__main__':
    main()
