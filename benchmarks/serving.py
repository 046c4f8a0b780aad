"""Benchmark: single-image captioning over gRPC (stand-in server) vs the same model in-process.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.serving
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.serving \\
        --model-base-path build/serving/captioner --image some_photo.jpg

Measures p50 / p99 latency and throughput for 1 and 8 concurrent clients in
three modes, in one run:

* in-process: the SavedModel's `serving_default` called directly;
* gRPC: `CaptionClient.caption` against `caption-server` in its own process
  (as TF Serving would be), each request served alone;
* gRPC + batching: the same, with server-side batching configured by
  `serving/deploy/batching_parameters.txt`.

Then prints the ratios the serving issue targets: p50 overhead of gRPC over
in-process at 1 client (target <= 15 %), and batched / unbatched throughput at
8 clients (target > 1). Without `--model-base-path` it builds the TEST FIXTURE
model from `serving/fixture_model.py` (a cheap colour captioner, so fixed gRPC costs
weigh far more than they will on the real InceptionV3 + GRU model); rerun it
on the pushed real model for the numbers that matter.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_BATCHING_FILE = os.path.join(_REPO_ROOT, 'serving', 'deploy', 'batching_parameters.txt')
_P50_OVERHEAD_TARGET = 0.15


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Latencies of one mode at one concurrency."""

    mode: str
    clients: int
    requests: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float


def _timed_round(call: Callable[[], None], clients: int, requests_per_client: int):
    """Runs `call` from `clients` threads started together; returns (latencies s, wall s)."""
    latencies: List[List[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def run(index: int) -> None:
        barrier.wait()
        for _ in range(requests_per_client):
            started = time.perf_counter()
            call()
            latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return [value for client in latencies for value in client], wall


def _measure_interleaved(
    calls: Dict[str, Callable[[], None]], clients: int, requests: int, rounds: int
) -> List[Measurement]:
    """Measures every mode in alternating rounds.

    Interleaving spreads background load (other processes on a shared
    machine) evenly over the modes, so their ratios stay meaningful even
    when absolute numbers drift.
    """
    per_round = max(1, requests // (rounds * clients))
    latencies = {mode: [] for mode in calls}
    walls = {mode: 0.0 for mode in calls}
    modes = list(calls)
    for round_index in range(rounds):
        rotation = modes[round_index % len(modes) :] + modes[: round_index % len(modes)]
        for mode in rotation:
            values, wall = _timed_round(calls[mode], clients, per_round)
            latencies[mode].extend(values)
            walls[mode] += wall
    measurements = []
    for mode in modes:
        flat = np.array(latencies[mode]) * 1000
        measurements.append(
            Measurement(
                mode=mode,
                clients=clients,
                requests=len(flat),
                p50_ms=float(np.percentile(flat, 50)),
                p99_ms=float(np.percentile(flat, 99)),
                throughput_rps=len(flat) / walls[mode],
            )
        )
    return measurements


def _latest_version_dir(base_path: str) -> str:
    versions = [int(name) for name in os.listdir(base_path) if name.isdigit()]
    if not versions:
        raise SystemExit(f'no version directory under {base_path}')
    return os.path.join(base_path, str(max(versions)))


def _start_server(
    base_path: str, model_name: str, batching_file: Optional[str], in_thread: bool
) -> Tuple[Callable[[], None], str]:
    """Starts the stand-in on a free loopback port; returns (stop function, target).

    By default `caption-server` runs as its own process, as TF Serving would.
    `in_thread` runs it inside this process instead, which removes the
    cross-process scheduling cost and isolates what the gRPC stack adds.
    """
    if in_thread:
        from tfx_captioning.serving import batching, server, tf_serving_config

        options = server.ServerOptions(
            port=0,
            batching=batching.BatchingOptions.from_batching_parameters(
                tf_serving_config.read_batching_parameters(batching_file)
            )
            if batching_file
            else None,
        )
        caption_server = server.CaptionServer.for_model(model_name, base_path, options)
        caption_server.start()
        return caption_server.stop, caption_server.target
    command = [
        sys.executable,
        '-m',
        'tfx_captioning.serving.server_cli',
        '--model-base-path',
        base_path,
        '--model-name',
        model_name,
        '--port',
        '0',
    ]
    if batching_file:
        command += ['--batching-parameters-file', batching_file]
    environment = dict(os.environ, PYTHONPATH=_REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='2')
    process = subprocess.Popen(
        command, cwd=_REPO_ROOT, env=environment, stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    match = re.search(r' on (\S+:\d+)', line)
    if not match:
        process.kill()
        raise SystemExit(f'caption-server did not start: {line!r}')

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    return stop, match.group(1)


def _fixture_model(root: str, model_name: str) -> str:
    """Builds the TEST FIXTURE model as version 1 of a fresh base path."""
    sys.path.insert(0, _REPO_ROOT)
    from tfx_captioning.serving import fixture_model

    base_path = os.path.join(root, model_name)
    built = fixture_model.build_fixture_caption_model(os.path.join(root, 'build'))
    fixture_model.publish_fixture_version(built, base_path, 1)
    return base_path


def _benchmark_image() -> bytes:
    """A 500x375 JPEG, Flickr8k's typical size, with photo-like noise (not a flat colour)."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format='JPEG', quality=90)
    return out.getvalue()


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Runs every mode and concurrency; returns measurements and ratios."""
    import tensorflow as tf

    from tfx_captioning.models import features
    from tfx_captioning.serving import client as client_lib

    if args.image:
        with open(args.image, 'rb') as image_file:
            image = image_file.read()
    else:
        image = _benchmark_image()
    with tempfile.TemporaryDirectory() as scratch:
        base_path = args.model_base_path or _fixture_model(scratch, args.model_name)
        signature = tf.saved_model.load(_latest_version_dir(base_path)).signatures[
            features.SERVING_SIGNATURE
        ]

        def in_process() -> None:
            outputs = signature(**{features.IMAGE_BYTES_INPUT: tf.constant([image])})
            # The same output conversion a gRPC response needs.
            {key: value.numpy() for key, value in outputs.items()}

        # Both servers run throughout (idle when not measured) so that modes can alternate.
        servers = [
            _start_server(base_path, args.model_name, None, args.server_in_thread),
            _start_server(base_path, args.model_name, args.batching_file, args.server_in_thread),
        ]
        caption_clients = [
            client_lib.CaptionClient(target, args.model_name, timeout_s=60) for _, target in servers
        ]
        try:
            calls = {
                'in-process': in_process,
                'grpc': lambda: caption_clients[0].caption([image]),
                'grpc+batching': lambda: caption_clients[1].caption([image]),
            }
            for call in calls.values():
                for _ in range(args.warmup):
                    call()
            measurements = []
            for concurrency in args.clients:
                measurements += _measure_interleaved(calls, concurrency, args.requests, args.rounds)
        finally:
            for caption_client in caption_clients:
                caption_client.close()
            for stop, _ in servers:
                stop()

    by_key = {(m.mode, m.clients): m for m in measurements}
    ratios = {}
    for clients in args.clients:
        base = by_key[('in-process', clients)]
        for mode in ('grpc', 'grpc+batching'):
            p50_ms = by_key[(mode, clients)].p50_ms
            ratios[f'{mode} p50 overhead @{clients}'] = p50_ms / base.p50_ms - 1
            ratios[f'{mode} p50 overhead ms @{clients}'] = p50_ms - base.p50_ms
        ratios[f'batching throughput gain @{clients}'] = (
            by_key[('grpc+batching', clients)].throughput_rps
            / by_key[('grpc', clients)].throughput_rps
        )
    return {'measurements': [dataclasses.asdict(m) for m in measurements], 'ratios': ratios}


def _print_report(report: Dict[str, object]) -> None:
    print(f'{"mode":<15}{"clients":>8}{"requests":>10}{"p50 ms":>10}{"p99 ms":>10}{"req/s":>10}')
    for m in report['measurements']:
        print(
            f'{m["mode"]:<15}{m["clients"]:>8}{m["requests"]:>10}{m["p50_ms"]:>10.2f}'
            f'{m["p99_ms"]:>10.2f}{m["throughput_rps"]:>10.1f}'
        )
    print()
    for name, value in report['ratios'].items():
        if 'overhead ms' in name:
            print(f'{name:<36}{value:>+8.2f} ms')
        elif 'overhead' in name:
            verdict = ''
            if name.startswith('grpc p50') and name.endswith('@1'):
                verdict = (
                    '  (target <= 15 %: '
                    + ('met' if value <= _P50_OVERHEAD_TARGET else 'MISSED')
                    + ')'
                )
            print(f'{name:<36}{value * 100:>+8.1f} %{verdict}')
        else:
            verdict = ''
            if name.endswith('@8'):
                verdict = '  (target > 1: ' + ('met' if value > 1 else 'MISSED') + ')'
            print(f'{name:<36}{value:>8.2f} x{verdict}')


def main(argv: Optional[List[str]] = None) -> int:
    """Parses flags, runs the benchmark, prints a table (and JSON with --json)."""
    from tfx_captioning.pipeline import configs

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model-base-path', default=None, help='default: the test fixture model')
    parser.add_argument('--model-name', default=configs.MODEL_NAME)
    parser.add_argument('--image', default=None, help='default: a 500x375 noisy JPEG')
    parser.add_argument('--requests', type=int, default=320, help='per mode and concurrency')
    parser.add_argument('--rounds', type=int, default=4, help='alternations of the modes')
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--clients', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--batching-file', default=_DEFAULT_BATCHING_FILE)
    parser.add_argument(
        '--server-in-thread',
        action='store_true',
        help='run the stand-in inside this process (isolates the gRPC cost from process switches)',
    )
    parser.add_argument('--json', default=None, help='also write the report here')
    args = parser.parse_args(argv)
    report = run(args)
    _print_report(report)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
