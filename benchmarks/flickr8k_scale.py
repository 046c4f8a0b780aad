"""Benchmark: the whole pipeline at Flickr8k's size and at a fraction of it, side by side.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.flickr8k_scale           # 8,091 and 809 images
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.flickr8k_scale --only small
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.flickr8k_scale --images 96 --ratio 4   # smoke

For each size (``--images`` and ``--images / --ratio``, the small one first) it
generates a dataset of Flickr8k's shape (`cli.sample_data`: 500x375 JPEGs of
100-150 KB with grain and texture, five captions each, Flickr8k's split sizes
6,000 / 1,000 / 1,000 scaled, the rest in no split), then runs the whole
pipeline (`pipeline.local_runner.run`, typed parameter objects, random encoder
weights, caching off) in a child process, while this process samples the
resident memory of the child and of every process it starts (the evaluator's
Java scorers) every ``--sample-seconds``.

It then prints, per component, the wall time (ML Metadata's execution
create/last-update times), the time per image of the dataset, the peak
resident memory of the run's process tree during that component, and the
ratio full / small of the per-image times; the marginal cost per image and
the fixed cost that two sizes separate; and for the whole run its wall time
and peak RSS against 4 GB. Ratios are measured in one invocation and printed,
never asserted: the machine may be shared (the load average is printed).

Results go to ``<out>/result-<images>.json``; ``--only small`` / ``--only
full`` run one size and the table uses the other's saved result when there is
one, so the two can be run at different times.

Training runs a fixed ``--epochs`` with early stopping disabled (patience =
epochs), so that its cost per image is comparable between the two sizes.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil

FLICKR8K_IMAGES = 8091
MEMORY_LIMIT_MB = 4096
TARGET_RATIO = 1.2
DEFAULT_OUT = os.path.join('build', 'flickr8k_scale')
# Components whose work grows with the number of images. SchemaGen,
# ExampleValidator, the resolver and the Pusher read summaries or models only.
DATA_PARALLEL = (
    'Flickr8kExampleGen',
    'StatisticsGen',
    'ImageFeatureExtractor',
    'FeatureStatisticsGen',
    'Transform',
    'Trainer',
    'CaptionEvaluator',
)


@dataclasses.dataclass
class MemorySampler:
    """Samples the RSS of a process and all its descendants in a thread."""

    pid: int
    interval: float
    samples: List[Tuple[float, float, float]] = dataclasses.field(default_factory=list)
    loads: List[float] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> 'MemorySampler':
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                main_rss = root.memory_info().rss
                tree_rss = main_rss
                for child in root.children(recursive=True):
                    try:
                        tree_rss += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.time(), tree_rss / 2**20, main_rss / 2**20))
            self.loads.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def peak_between(self, start: float, end: float) -> Optional[float]:
        inside = [tree for t, tree, _ in self.samples if start <= t <= end]
        return max(inside) if inside else None

    def at(self, moment: float) -> Optional[float]:
        before = [tree for t, tree, _ in self.samples if t <= moment]
        return before[-1] if before else None


def generate_data(root: str, num_images: int, processes: int) -> Dict[str, Any]:
    """A Flickr8k-shaped dataset under `root`, reused when already there."""
    from tfx_captioning.cli import sample_data
    from tfx_captioning.components.flickr8k_example_gen import layout

    marker = os.path.join(root, f'.flickr8k-scale-{num_images}')
    seconds = 0.0
    if not os.path.exists(marker):
        shutil.rmtree(root, ignore_errors=True)
        start = time.monotonic()
        sample_data.generate(
            root,
            num_images,
            seed=0,
            style=sample_data.PHOTO_LIKE,
            split_sizes=sample_data.flickr8k_split_counts(num_images),
            processes=processes,
        )
        seconds = time.monotonic() - start
        open(marker, 'w').close()
    images_dir = os.path.join(root, layout.IMAGES_DIR)
    total = sum(entry.stat().st_size for entry in os.scandir(images_dir))
    return {
        'generate_seconds': seconds,
        'data_mb': total / 2**20,
        'mean_jpeg_kb': total / num_images / 1000,
        'split_sizes': sample_data.flickr8k_split_counts(num_images),
    }


def child_main(config: Dict[str, Any]) -> None:
    """In the child: runs the whole pipeline with the typed parameter objects."""
    from tfx_captioning.cli import quiet

    quiet.configure(verbose=False)
    from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
    from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
    from tfx_captioning.models import features
    from tfx_captioning.models.hparams import HParams
    from tfx_captioning.pipeline import configs, local_runner

    epochs = config['epochs']
    hparams = HParams.from_custom_config(
        {
            **configs.SAMPLE_HPARAMS,
            'epochs': epochs,
            'patience': epochs,
            'decoder': config.get('decoder', features.DECODER_INIT_INJECT),
        }
    )
    extractor = ExtractorParameters(
        weights='random', encoder_precision=config['encoder_precision']
    ).validate()
    start = time.monotonic()
    local_runner.run(
        config['data'],
        config['output'],
        beam_workers=config['beam_workers'],
        enable_cache=False,
        hparams=hparams,
        extractor=extractor,
        evaluator=EvaluatorParameters().validate(),
    )
    print(json.dumps({'pipeline_seconds': time.monotonic() - start}), flush=True)


def outcome(metadata_path: str) -> Dict[str, Any]:
    """What the run decided: data-validation anomalies and the blessing, to show it worked."""
    from tfx_captioning.cli import summary

    store = summary.open_store(metadata_path)
    decision = summary.latest_decision(store) or {}
    return {
        'anomalies': summary.anomalies(store),
        'blessed': decision.get('blessed'),
        'blessing_reason': decision.get('reason'),
        'pushed': decision.get('pushed'),
    }


def executions(metadata_path: str) -> List[Dict[str, Any]]:
    """Every execution of the run: component, state, start and end (seconds since the epoch)."""
    from ml_metadata.proto import metadata_store_pb2

    from tfx_captioning.cli import summary

    store = summary.open_store(metadata_path)
    node_type = store.get_context_type('node').id
    rows = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        nodes = [c for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        rows.append(
            {
                'component': nodes[0].name.rsplit('.', 1)[-1] if nodes else execution.type,
                'state': metadata_store_pb2.Execution.State.Name(execution.last_known_state),
                'start': execution.create_time_since_epoch / 1000,
                'end': execution.last_update_time_since_epoch / 1000,
            }
        )
    return rows


def run_size(num_images: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Generates the data, runs the pipeline in a child, returns the measurements."""
    data = os.path.abspath(os.path.join(args.out, f'data-{num_images}'))
    output = os.path.abspath(os.path.join(args.out, f'run-{num_images}'))
    print(f'\n== {num_images} images: data in {data}', flush=True)
    dataset = generate_data(data, num_images, args.generate_processes)
    if dataset['generate_seconds']:
        print(f'   generated in {dataset["generate_seconds"]:.0f} s', flush=True)
    print(
        f'   {dataset["data_mb"]:.0f} MB of JPEGs, {dataset["mean_jpeg_kb"]:.0f} KB each on average; '
        f'splits {list(dataset["split_sizes"].values())}',
        flush=True,
    )
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    log_path = output + '.log'
    config = {
        'data': data,
        'output': output,
        'epochs': args.epochs,
        'encoder_precision': args.encoder_precision,
        'beam_workers': args.beam_workers,
        'decoder': args.decoder,
    }
    load_before = os.getloadavg()[0]
    start = time.time()
    with open(log_path, 'w') as log:
        child = subprocess.Popen(
            [sys.executable, '-m', 'benchmarks.flickr8k_scale', '--child', json.dumps(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        sampler = MemorySampler(child.pid, args.sample_seconds).start()
        print(f'   pipeline running (pid {child.pid}, log {log_path}) ...', flush=True)
        returncode = child.wait()
        sampler.stop()
    wall = time.time() - start
    if returncode != 0:
        raise RuntimeError(f'The pipeline failed (exit {returncode}); see {log_path}.')
    from tfx_captioning.pipeline import configs

    metadata_path = configs.LocalPaths(output).metadata_path
    rows = executions(metadata_path)
    for row in rows:
        row['seconds'] = row['end'] - row['start']
        row['peak_rss_mb'] = sampler.peak_between(row['start'], row['end'])
        row['start_rss_mb'] = sampler.at(row['start'])
    peak_main = max((main for _, _, main in sampler.samples), default=0.0)
    result = {
        'images': num_images,
        **dataset,
        'epochs': args.epochs,
        'encoder_precision': args.encoder_precision,
        'decoder': args.decoder,
        'resolved_precision': _resolved_precision(args.encoder_precision),
        'beam_workers': args.beam_workers,
        'wall_seconds': wall,
        'peak_rss_mb': max((tree for _, tree, _ in sampler.samples), default=0.0),
        'peak_rss_pipeline_process_mb': peak_main,
        'cpu_count': os.cpu_count(),
        'load_before': load_before,
        'load_mean_during': sum(sampler.loads) / len(sampler.loads) if sampler.loads else None,
        'load_max_during': max(sampler.loads, default=None),
        'executions': rows,
        **outcome(metadata_path),
    }
    anomalies = {split: found for split, found in result['anomalies'].items() if found}
    print(
        f'   done in {wall:.0f} s, peak RSS {result["peak_rss_mb"]:.0f} MB, load average '
        f'{load_before:.1f} before, {result["load_mean_during"]:.1f} mean during; anomalies: '
        f'{anomalies or "none"}; model {"BLESSED" if result["blessed"] else "NOT blessed"} '
        f'({result["blessing_reason"]})',
        flush=True,
    )
    return result


def _resolved_precision(requested: str) -> str:
    from tfx_captioning.models import encoder

    return encoder.resolve_precision(requested)


def _per_component(result: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Component -> its execution (the last one, should a component appear twice)."""
    return {row['component']: row for row in result['executions']}


def _fmt(value: Optional[float], spec: str, width: int) -> str:
    return f'{"-":>{width}}' if value is None else f'{value:{width}{spec}}'


def format_table(small: Dict[str, Any], full: Dict[str, Any]) -> str:
    """The side-by-side table, one row per component, then the whole run."""
    n_small, n_full = small['images'], full['images']
    small_rows, full_rows = _per_component(small), _per_component(full)
    names = [row['component'] for row in full['executions']]
    names += [n for n in small_rows if n not in full_rows]
    header = (
        f'{"component":<30}{"s @" + str(n_small):>9}{"s @" + str(n_full):>10}'
        f'{"ms/img @" + str(n_small):>15}{"ms/img @" + str(n_full):>15}{"ratio":>7}'
        f'{"marginal":>10}{"fixed s":>9}{"peak MB @" + str(n_small):>15}'
        f'{"peak MB @" + str(n_full):>15}'
    )
    lines = [header, '-' * len(header)]
    for name in names:
        a, b = small_rows.get(name), full_rows.get(name)
        sa = a['seconds'] if a else None
        sb = b['seconds'] if b else None
        pa = sa / n_small * 1000 if sa is not None else None
        pb = sb / n_full * 1000 if sb is not None else None
        ratio = pb / pa if pa and pb is not None else None
        marginal = fixed = None
        if sa is not None and sb is not None and n_full != n_small:
            marginal = (sb - sa) / (n_full - n_small) * 1000
            fixed = sa - marginal * n_small / 1000
        mark = '*' if name in DATA_PARALLEL else ' '
        lines.append(
            f'{(name + " " + mark):<30}{_fmt(sa, ".1f", 9)}{_fmt(sb, ".1f", 10)}'
            f'{_fmt(pa, ".2f", 15)}{_fmt(pb, ".2f", 15)}{_fmt(ratio, ".2f", 7)}'
            f'{_fmt(marginal, ".2f", 10)}{_fmt(fixed, ".1f", 9)}'
            f'{_fmt(a and a["peak_rss_mb"], ".0f", 15)}{_fmt(b and b["peak_rss_mb"], ".0f", 15)}'
        )
    wa, wb = small['wall_seconds'], full['wall_seconds']
    lines.append('-' * len(header))
    lines.append(
        f'{"whole run":<30}{wa:9.1f}{wb:10.1f}{wa / n_small * 1000:15.2f}'
        f'{wb / n_full * 1000:15.2f}{(wb / n_full) / (wa / n_small):7.2f}'
        f'{(wb - wa) / (n_full - n_small) * 1000 if n_full != n_small else 0:10.2f}'
        f'{"":>9}{small["peak_rss_mb"]:15.0f}{full["peak_rss_mb"]:15.0f}'
    )
    return '\n'.join(lines)


def format_verdicts(small: Dict[str, Any], full: Dict[str, Any]) -> str:
    """What the table says against the targets, in words (observations, not assertions)."""
    small_rows, full_rows = _per_component(small), _per_component(full)
    lines = []
    over = []
    for name in DATA_PARALLEL:
        a, b = small_rows.get(name), full_rows.get(name)
        if a and b and a['seconds'] > 0:
            ratio = (b['seconds'] / full['images']) / (a['seconds'] / small['images'])
            if ratio > TARGET_RATIO:
                over.append(f'{name} {ratio:.2f}x')
    lines.append(
        'Per-image cost, full / small, data-parallel components (*): '
        + (
            f'all within {TARGET_RATIO}x'
            if not over
            else f'above {TARGET_RATIO}x: ' + ', '.join(over)
        )
    )
    for result in (small, full):
        peak = result['peak_rss_mb']
        lines.append(
            f'{result["images"]} images: whole run {result["wall_seconds"] / 60:.1f} min, peak RSS '
            f'{peak:.0f} MB (pipeline process alone {result["peak_rss_pipeline_process_mb"]:.0f} MB) '
            f'{"<=" if peak <= MEMORY_LIMIT_MB else ">"} {MEMORY_LIMIT_MB} MB; load average '
            f'{result["load_before"]:.1f} before, {result["load_mean_during"]:.1f} mean and '
            f'{result["load_max_during"]:.1f} max during, on {result["cpu_count"]} CPUs'
        )
    lines.append(
        f'Encoder precision {full["encoder_precision"]} -> {full["resolved_precision"]}; '
        f'{full["epochs"]} training epochs (no early stopping); {full["beam_workers"]} Beam '
        f'worker(s); {full["mean_jpeg_kb"]:.0f} KB per JPEG on average.'
    )
    lines.append(
        'ms/img: wall time / images in the dataset. marginal: (full - small) / (difference in '
        'images); fixed: the small run minus its marginal cost. peak MB: RSS of the pipeline '
        'process and its children, sampled.'
    )
    return '\n'.join(lines)


def _result_path(out: str, num_images: int) -> str:
    return os.path.join(out, f'result-{num_images}.json')


def sizes(images: int, ratio: int) -> Tuple[int, int]:
    """(small, full) image counts."""
    if ratio < 2:
        raise ValueError(f'--ratio must be >= 2, got {ratio}.')
    small = images // ratio
    if small < 16:
        raise ValueError(f'--images / --ratio must be at least 16 images, got {small}.')
    return small, images


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=FLICKR8K_IMAGES, help='full size')
    parser.add_argument('--ratio', type=int, default=10, help='the small run has images / ratio')
    parser.add_argument('--only', choices=('small', 'full'), help='run one size only')
    parser.add_argument('--out', default=DEFAULT_OUT, help='data, runs and results')
    parser.add_argument('--epochs', type=int, default=2, help='training epochs (fixed)')
    parser.add_argument(
        '--encoder-precision', default='auto', choices=('auto', 'float32', 'bfloat16')
    )
    parser.add_argument('--beam-workers', type=int, default=1)
    parser.add_argument(
        '--decoder',
        default='init_inject',
        choices=('init_inject', 'attention'),
        help='the caption decoder (the measured table in the README is init_inject)',
    )
    parser.add_argument('--generate-processes', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--sample-seconds', type=float, default=0.5)
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return None

    small_n, full_n = sizes(args.images, args.ratio)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for label, n in (('small', small_n), ('full', full_n)):
        if args.only in (None, label):
            results[n] = run_size(n, args)
            with open(_result_path(args.out, n), 'w') as f:
                json.dump(results[n], f, indent=2)
        elif os.path.exists(_result_path(args.out, n)):
            with open(_result_path(args.out, n)) as f:
                results[n] = json.load(f)
            print(f'\n(using the saved {label} result {_result_path(args.out, n)})')
    if small_n in results and full_n in results:
        print('\n' + format_table(results[small_n], results[full_n]))
        print(format_verdicts(results[small_n], results[full_n]))
    else:
        only = results.get(small_n) or results.get(full_n)
        print('\n' + format_table(only, only))
        print(format_verdicts(only, only))
    return results


if __name__ == '__main__':
    main()
