"""`caption-data`: get a dataset in the Flickr8k layout.

caption-data sample --out build/sample_data --num-images 320
caption-data download --out ~/Flickr8k        # needs the network (~1.1 GB)
"""

import argparse
import sys
from typing import List, Optional

from tfx_captioning.pipeline import configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='caption-data',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', required=True)
    sample = sub.add_parser('sample', help='generate the synthetic sample dataset')
    sample.add_argument('--out', required=True)
    sample.add_argument('--num-images', type=int, default=configs.DEFAULT_SAMPLE_IMAGES)
    sample.add_argument('--seed', type=int, default=configs.DEFAULT_SAMPLE_SEED)
    download = sub.add_parser('download', help='download and unpack the real Flickr8k')
    download.add_argument('--out', required=True)
    download.add_argument('--keep-zips', action='store_true')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == 'sample':
        from tfx_captioning.cli import sample_data

        try:
            counts = sample_data.generate(args.out, args.num_images, args.seed)
        except ValueError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        print(f'Wrote {sum(counts.values())} images to {args.out}: {counts}')
        return 0
    from tfx_captioning.cli import flickr8k_download

    try:
        flickr8k_download.download_flickr8k(args.out, keep_zips=args.keep_zips)
    except OSError as e:
        print(f'error: download failed: {e}', file=sys.stderr)
        return 1
    print(f'Flickr8k is ready in {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
