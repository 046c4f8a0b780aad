"""Benchmark: the README's main job, first run and fully cached run, side by side.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.demo [--output /tmp/demo-bench]

Runs `caption-pipeline run` on the sample data into a fresh output directory,
then again with nothing changed, and prints both wall times and their ratio
(target: the cached run takes at most 20 % of the first; the first under 10
minutes on a 2-core machine).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def timed_run(output: str) -> float:
    start = time.monotonic()
    subprocess.run(
        [sys.executable, '-m', 'tfx_captioning.cli.pipeline_cli', '--output', output, 'run'],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--output', help='output root (default: a fresh temporary directory)')
    args = parser.parse_args()
    output = args.output or tempfile.mkdtemp(prefix='demo-bench-')
    if os.path.exists(os.path.join(output, 'tfx')):
        shutil.rmtree(output)
    first = timed_run(output)
    cached = timed_run(output)
    print(f'first run   {first:8.1f} s   (target < 600 s)')
    print(f'cached run  {cached:8.1f} s')
    print(f'cached / first = {cached / first:.3f}   (target <= 0.20)')


if __name__ == '__main__':
    main()
