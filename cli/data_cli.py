"""`caption-data`: get a dataset in the Flickr8k layout.

caption-data sample --out build/sample_data --num-images 320
caption-data download --out ~/Flickr8k        # needs the network (~1.1 GB)

`download` checks each zip in full (every member's CRC) before unpacking it
and the unpacked layout after; rerun it after an interruption and it resumes
(unpacked zips are skipped, a partial download continues). Exit status: 0
done, 1 a download, disk, archive or layout failure (one line; `--verbose`
adds the traceback), 2 a usage error.
"""

import argparse
import sys
import traceback
from typing import List, Optional

from tfx_captioning.pipeline import configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='caption-data',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--verbose', action='store_true', help='show progress logs and tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    sample = sub.add_parser('sample', help='generate the synthetic sample dataset')
    sample.add_argument('--out', required=True)
    sample.add_argument('--num-images', type=int, default=configs.DEFAULT_SAMPLE_IMAGES)
    sample.add_argument('--seed', type=int, default=configs.DEFAULT_SAMPLE_SEED)
    download = sub.add_parser('download', help='download and unpack the real Flickr8k')
    download.add_argument('--out', required=True)
    download.add_argument('--keep-zips', action='store_true')
    download.add_argument(
        '--url',
        action='append',
        metavar='URL',
        help='where to fetch a zip (repeat for both), e.g. a mirror; default: the release '
        'on GitHub (jbrownlee/Datasets)',
    )
    return parser


def _error(args: argparse.Namespace, message: str) -> None:
    if args.verbose:
        traceback.print_exc()
    print(f'caption-data: error: {message}', file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    if args.command == 'sample':
        from tfx_captioning.cli import sample_data

        try:
            counts = sample_data.generate(args.out, args.num_images, args.seed)
        except ValueError as e:
            _error(args, str(e))
            return 2
        except OSError as e:
            _error(args, f'cannot write {args.out}: {e}')
            return 1
        print(f'Wrote {sum(counts.values())} images to {args.out}: {counts}')
        return 0
    from tfx_captioning.cli import flickr8k_download
    from tfx_captioning.components.flickr8k_example_gen import layout

    try:
        flickr8k_download.download_flickr8k(
            args.out, args.url or flickr8k_download.DEFAULT_URLS, keep_zips=args.keep_zips
        )
    except flickr8k_download.ArchiveError as e:
        _error(args, str(e))
        return 1
    except layout.Flickr8kLayoutError as e:
        _error(args, f'the downloaded files are not the Flickr8k release: {e}')
        return 1
    except OSError as e:  # the network (urllib.error.URLError), the disk, permissions
        _error(args, f'download failed: {e}')
        return 1
    print(f'Flickr8k is ready in {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
