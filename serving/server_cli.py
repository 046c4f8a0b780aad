"""`caption-server`: starts the local TF-Serving-compatible stand-in server.

Development and tests only: production runs the real TF Serving image over
the same pushed directory (`serving/deploy/`). Flags mirror
`tensorflow_model_server`'s where there is one:

    caption-server --model-base-path build/serving/captioner --model-name captioner --port 8500
    caption-server --model-config-file serving/deploy/models.config \\
        --model-base-path build/serving/captioner \\
        --batching-parameters-file serving/deploy/batching_parameters.txt
"""

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from tfx_captioning.models import features
from tfx_captioning.serving import options

_DEFAULT_BASE_PATH = features.DEFAULT_MODEL_BASE_PATH


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='caption-server',
        description=(
            'Local TF-Serving-compatible gRPC server for development and tests. '
            'Production uses the real TF Serving (serving/deploy/).'
        ),
    )
    parser.add_argument('--model-name', default=features.MODEL_NAME)
    parser.add_argument(
        '--model-base-path',
        default=None,
        help=f'directory of integer version directories (default {_DEFAULT_BASE_PATH}); '
        'with --model-config-file, replaces the base path of --model-name.',
    )
    parser.add_argument(
        '--model-config-file',
        default=None,
        help='a TF Serving models.config (version policy, version labels).',
    )
    parser.add_argument('--host', default=options.LOOPBACK_HOST)
    parser.add_argument('--port', type=int, default=options.GRPC_PORT, help='0 picks a free port')
    parser.add_argument('--enable-batching', action='store_true', help='merge concurrent requests')
    parser.add_argument(
        '--batching-parameters-file',
        default=None,
        help='a TF Serving batching_parameters.txt (implies --enable-batching).',
    )
    defaults = options.ServerOptions()
    parser.add_argument('--max-message-bytes', type=int, default=defaults.max_message_bytes)
    parser.add_argument('--request-timeout-s', type=float, default=defaults.request_timeout_s)
    parser.add_argument('--poll-interval-s', type=float, default=defaults.poll_interval_s)
    parser.add_argument('--max-workers', type=int, default=defaults.max_workers)
    parser.add_argument(
        '--max-image-pixels', type=int, default=defaults.image_limits.max_image_pixels
    )
    parser.add_argument('--no-warmup', action='store_true', help='skip warmup request replay')
    parser.add_argument('--verbose', action='store_true')
    return parser.parse_args(argv)


def _build_server(args: argparse.Namespace):
    """Turns the flags into a `server.CaptionServer` (not started).

    Raises ValueError for bad settings. TensorFlow is imported here, not at
    module level, so that `--help` and usage errors answer at once.
    """
    from tfx_captioning.serving import batching, server, tf_serving_config

    batching_options = None
    if args.batching_parameters_file:
        batching_options = batching.BatchingOptions.from_batching_parameters(
            tf_serving_config.read_batching_parameters(args.batching_parameters_file)
        )
    elif args.enable_batching:
        batching_options = batching.BatchingOptions()
    server_options = options.ServerOptions(
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_message_bytes,
        request_timeout_s=args.request_timeout_s,
        poll_interval_s=args.poll_interval_s,
        max_workers=args.max_workers,
        image_limits=options.ImageLimits(max_image_pixels=args.max_image_pixels),
        batching=batching_options,
        warmup=not args.no_warmup,
    )
    if args.model_config_file:
        config = tf_serving_config.read_model_server_config(args.model_config_file)
        tf_serving_config.find_model_config(config, args.model_name)
        overrides = {args.model_name: args.model_base_path} if args.model_base_path else {}
        return server.CaptionServer.for_model_config(
            config, server_options, base_path_overrides=overrides
        )
    return server.CaptionServer.for_model(
        args.model_name, args.model_base_path or _DEFAULT_BASE_PATH, server_options
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the server until SIGINT or SIGTERM. Returns the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format='%(asctime)s %(levelname)s %(message)s',
    )
    if not args.verbose:
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow is imported
    try:
        caption_server = _build_server(args)
        caption_server.start()
    except (ValueError, RuntimeError, OSError) as error:
        print(f'caption-server: error: {error}', file=sys.stderr)
        return 2
    if args.host != options.LOOPBACK_HOST:
        print(
            f'caption-server: warning: listening on {args.host}, not loopback; this '
            'development server has no authentication.',
            file=sys.stderr,
        )
    versions = {name: m.served_versions for name, m in caption_server.managers.items()}
    batching_note = (
        f', batching up to {caption_server.options.batching.max_batch_size}'
        if caption_server.options.batching
        else ''
    )
    # One line a supervisor or a test can wait for; flushed because stdout may be a pipe.
    print(
        f'caption-server: serving {versions} on {caption_server.target}{batching_note} '
        '(development stand-in; production uses TF Serving)',
        flush=True,
    )
    stopped = threading.Event()

    def request_stop(signum, frame):  # noqa: ARG001 - the signal handler signature.
        stopped.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Wait in short slices so the main thread keeps handling signals.
    while not stopped.wait(0.5):
        pass
    caption_server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
