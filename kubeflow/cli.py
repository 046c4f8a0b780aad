"""`python -m tfx_captioning.kubeflow`: compile the captioning pipeline for Kubeflow Pipelines / Vertex AI.

    python -m tfx_captioning.kubeflow --config kubeflow/config.example.yaml
    python -m tfx_captioning.kubeflow --config my.yaml --image REGISTRY/flickr8k-captioning:TAG
    python -m tfx_captioning.kubeflow --config my.yaml -- --runner=DataflowRunner --project=P ...

Every key of the config file is also a flag (`pipeline_root` -> `--pipeline-root`);
a flag wins over the file. Beam arguments go after `--` and then replace the
file's `beam_pipeline_args`.
"""

import argparse
import sys
from typing import List, Optional, Tuple

from tfx_captioning.cli import quiet
from tfx_captioning.kubeflow import config as kf_config


def _split_beam_args(argv: List[str]) -> Tuple[List[str], Optional[List[str]]]:
    """Splits `argv` at the first `--`: (runner flags, Beam args or None if no `--`)."""
    if '--' not in argv:
        return argv, None
    at = argv.index('--')
    return argv[:at], argv[at + 1 :]


def build_parser() -> argparse.ArgumentParser:
    """One flag per config field, generated so that a new field needs no CLI change."""
    parser = argparse.ArgumentParser(
        prog='caption-kfp',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        '--config', help='YAML or JSON config file (see kubeflow/config.example.yaml)'
    )
    parser.add_argument('--verbose', action='store_true', help='show TFX/TensorFlow logs')
    for field in kf_config.flag_fields():
        if field.name == 'beam_pipeline_args':
            continue  # After `--`: Beam args start with `--` themselves.
        flag = '--' + field.name.replace('_', '-')
        help_text = field.metadata[kf_config.HELP]
        # Defaults stay None so that an absent flag never overrides the file.
        if field.type is bool:
            parser.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            value_type = next((t for t in (int, float) if field.type in (t, Optional[t])), str)
            parser.add_argument(flag, dest=field.name, type=value_type, help=help_text)
    return parser


def config_from_args(argv: List[str]) -> Tuple[kf_config.KubeflowConfig, argparse.Namespace]:
    """Parses `argv` (flags and Beam args after `--`) into a config, file first, flags second."""
    flags, beam_args = _split_beam_args(argv)
    args = build_parser().parse_args(flags)
    file_values = kf_config.load_file(args.config) if args.config else {}
    overrides = {f.name: getattr(args, f.name, None) for f in kf_config.flag_fields()}
    overrides['beam_pipeline_args'] = beam_args
    return kf_config.make_config(file_values, overrides), args


def main(argv: Optional[List[str]] = None) -> int:
    """Compiles the pipeline; returns the process exit status."""
    try:
        config, args = config_from_args(sys.argv[1:] if argv is None else argv)
        config.validate()
    except (OSError, ValueError, TypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    quiet.configure(args.verbose)
    from tfx_captioning.kubeflow import (
        runner,  # TFX loads in seconds; --help and config errors should not wait.
    )

    try:
        path = runner.compile_pipeline(config)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    tasks = sorted(runner.load_pipeline_spec(path).root.dag.tasks)
    print(f'Compiled {len(tasks)} steps ({", ".join(tasks)}) into {path}')
    print(f'Image: {config.image}')
    if config.beam_pipeline_args:
        print('Beam args: ' + ' '.join(config.resolved_beam_args()))
    if not path.endswith('.json'):
        print(f'Submit with pipeline root {config.pipeline_root} (a .yaml spec does not store it).')
    return 0
