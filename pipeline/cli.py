"""`caption-pipeline`: run the captioning pipeline and read its results.

caption-pipeline run                      # the generated sample data
caption-pipeline run --data ~/Flickr8k    # the real dataset
"""

import argparse
import os
import sys
import time
from typing import List, Optional

from pipeline import configs, quiet


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='caption-pipeline',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--verbose', action='store_true', help='show TensorFlow/Beam logs')
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='run the pipeline locally (Beam DirectRunner)')
    run.add_argument('--data', help='Flickr8k directory; default: generate the sample data')
    run.add_argument(
        '--output',
        default=configs.DEFAULT_OUTPUT_ROOT,
        help='output root for artifacts, metadata and models (default: %(default)s)',
    )
    run.add_argument(
        '--beam-workers',
        type=_positive_int,
        default=1,
        help='Beam worker processes; >1 uses multi_processing (default: %(default)s)',
    )
    run.add_argument(
        '--sample-images',
        type=_positive_int,
        default=configs.DEFAULT_SAMPLE_IMAGES,
        help='size of the generated sample data (default: %(default)s)',
    )
    run.add_argument('--no-cache', action='store_true', help='re-run every component')
    return parser


def _prepare_sample(paths: configs.LocalPaths, num_images: int) -> str:
    from pipeline import sample_data

    marker = os.path.join(
        paths.sample_data, f'.generated-{num_images}-{configs.DEFAULT_SAMPLE_SEED}'
    )
    if not os.path.exists(marker):
        print(f'Generating {num_images} sample images in {paths.sample_data} ...')
        sample_data.generate(paths.sample_data, num_images, configs.DEFAULT_SAMPLE_SEED)
        open(marker, 'w').close()
    return paths.sample_data


def cmd_run(args: argparse.Namespace) -> int:
    from components.flickr8k_example_gen import layout
    from pipeline import local_runner

    paths = configs.LocalPaths(os.path.abspath(args.output))
    data = args.data or _prepare_sample(paths, args.sample_images)
    try:
        layout.check_layout(data)
    except layout.Flickr8kLayoutError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'Running {configs.PIPELINE_NAME} on {data} -> {paths.output_root}')
    start = time.monotonic()
    local_runner.run(data, args.output, args.beam_workers, enable_cache=not args.no_cache)
    print(f'Pipeline finished in {time.monotonic() - start:.1f} s')
    print_summary(paths)
    return 0


def print_summary(paths: configs.LocalPaths) -> None:
    """Prints examples per split, skipped inputs and data anomalies of the latest run."""
    from pipeline import summary

    store = summary.open_store(paths.metadata_path)
    report = summary.ingestion_report(store)
    if report:
        print('\nExamples per split:')
        for split, count in report['examples'].items():
            print(f'  {split:<6} {count:>6}')
        print('Skipped inputs:')
        for reason, count in report['skipped'].items():
            print(f'  {reason:<24} {count:>6}')
    found = summary.anomalies(store)
    if found:
        print('Data validation (ExampleValidator):')
        for split, items in found.items():
            print(f'  {split:<6} ' + ('; '.join(items) if items else 'no anomalies'))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.configure(args.verbose)
    return {'run': cmd_run}[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
