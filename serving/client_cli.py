"""`caption-client`: captions images through TF Serving (or the local stand-in) over gRPC.

    caption-client --server localhost:8500 --model captioner photo1.jpg photo2.png
    caption-client --server localhost:8500 --beam photo.jpg   # = --signature caption_beam
    caption-client --server localhost:8500 --metadata
    caption-client --server localhost:8500 --status

All images go in one Predict request. Output is one `path<TAB>caption` line
per image (or JSON with `--json`). Any failure prints one line on stderr and
exits non-zero: 1 for a server or network error (with the gRPC code), 2 for a
usage or local file error. No traceback.
"""

import argparse
import dataclasses
import json
import sys
from typing import List, Optional

from tfx_captioning.models import features
from tfx_captioning.serving import options


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='caption-client', description='Caption images with the served captioning model.'
    )
    parser.add_argument(
        'images', nargs='*', help=f'image files ({", ".join(features.IMAGE_FORMATS)})'
    )
    parser.add_argument('--server', default=options.DEFAULT_TARGET, help='host:port')
    parser.add_argument('--model', default=features.MODEL_NAME, help='served model name')
    versions = parser.add_mutually_exclusive_group()
    versions.add_argument('--version', type=int, default=None, help='a specific model version')
    versions.add_argument('--version-label', default=None, help='a version label, e.g. stable')
    parser.add_argument('--timeout', type=float, default=10.0, help='seconds per attempt')
    parser.add_argument(
        '--retries', type=int, default=4, help='retries on UNAVAILABLE, with backoff'
    )
    parser.add_argument('--json', action='store_true', help='print JSON')
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument(
        '--signature',
        default=features.SERVING_SIGNATURE,
        help='the signature that captions (default: %(default)s, greedy)',
    )
    decoding.add_argument(
        '--beam',
        action='store_true',
        help=f'beam-search captions: short for --signature {features.BEAM_SIGNATURE}',
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument('--metadata', action='store_true', help='print the model signatures')
    actions.add_argument('--status', action='store_true', help='print the version states')
    args = parser.parse_args(argv)
    if not (args.metadata or args.status or args.images):
        parser.error('give image files, --metadata or --status.')
    if args.timeout <= 0 or args.retries < 0:
        parser.error('--timeout must be > 0 and --retries >= 0.')
    return args


def _read_images(paths: List[str]) -> List[bytes]:
    images = []
    for path in paths:
        with open(path, 'rb') as image_file:
            images.append(image_file.read())
    return images


def _run(args: argparse.Namespace) -> None:
    """Performs the requested call and prints the result."""
    from tfx_captioning.serving import client as client_lib

    retry = client_lib.RetryPolicy(max_attempts=args.retries + 1)
    version_choice = {'version': args.version, 'version_label': args.version_label}
    with client_lib.CaptionClient(
        args.server, args.model, timeout_s=args.timeout, retry=retry
    ) as client:
        if args.metadata:
            metadata = client.metadata(**version_choice)
            if args.json:
                print(json.dumps(dataclasses.asdict(metadata), indent=2))
                return
            print(f'model {metadata.model_name} version {metadata.version}')
            for name, signature in sorted(metadata.signatures.items()):
                print(f'signature {name}')
                for kind, tensors in (('input', signature.inputs), ('output', signature.outputs)):
                    for alias, tensor in sorted(tensors.items()):
                        shape = 'unknown' if tensor.shape is None else list(tensor.shape)
                        print(f'  {kind} {alias}: {tensor.dtype} {shape}')
            return
        if args.status:
            states = client.status(**version_choice)
            if args.json:
                print(json.dumps([dataclasses.asdict(state) for state in states], indent=2))
                return
            for state in states:
                error = f' {state.error_code}: {state.error_message}' if state.error_message else ''
                print(f'version {state.version}: {state.state}{error}')
            return
        signature = features.BEAM_SIGNATURE if args.beam else args.signature
        result = client.caption(_read_images(args.images), signature=signature, **version_choice)
        if args.json:
            print(
                json.dumps(
                    {
                        'model': result.model_name,
                        'version': result.version,
                        'captions': [
                            {'image': path, **dataclasses.asdict(caption)}
                            for path, caption in zip(args.images, result.captions)
                        ],
                    },
                    indent=2,
                )
            )
            return
        for path, caption in zip(args.images, result.captions):
            print(f'{path}\t{caption.text}')


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the CLI. Returns the process exit status (0 ok, 1 server error, 2 local error)."""
    args = _parse_args(argv)
    # Imported after parsing: TensorFlow (behind the gRPC protos) would make
    # `--help` and usage errors slow.
    from tfx_captioning.serving import client as client_lib

    try:
        _run(args)
    except client_lib.CaptionClientError as error:
        print(f'caption-client: error: {error}', file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f'caption-client: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
