"""What the Kubeflow runner needs to know, from a YAML/JSON file and/or flags.

One frozen dataclass, `KubeflowConfig`, is the whole contract. Each field is at
once a key of the config file (`kubeflow/config.example.yaml`), a command-line
flag (`image` -> `--image`) and, when its metadata names a `pipeline_arg`, a
keyword argument of `pipeline.pipeline.create_pipeline`. So when
`create_pipeline` grows an argument, exposing it on Kubeflow is one field line
here; scalar arguments can even be passed without a code change through the
file's `pipeline_args` mapping.

Nothing here imports TFX, so reading and checking a config is instant.
"""

import dataclasses
import inspect
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import yaml

from tfx_captioning.pipeline import configs

PIPELINE_ARG = 'pipeline_arg'
"""Field metadata key: the `create_pipeline` keyword argument the field feeds."""

HELP = 'help'
"""Field metadata key: the one-line help of the field's flag and file key."""

IMAGE_PLACEHOLDER = '{image}'
PIPELINE_ROOT_PLACEHOLDER = '{pipeline_root}'
"""Beam args may name the image and pipeline root instead of repeating them,
e.g. `--sdk_container_image={image}` or `--temp_location={pipeline_root}/tmp`."""

DEFAULT_OUTPUT_FILE = os.path.join(
    configs.DEFAULT_OUTPUT_ROOT, 'kubeflow', f'{configs.PIPELINE_NAME}.yaml'
)

PORTABLE_RUNNERS = frozenset({'PortableRunner', 'FlinkRunner', 'SparkRunner'})


def _field(default: Any, help_text: str, pipeline_arg: Optional[str] = None) -> Any:
    """A config field carrying its help text and, optionally, its create_pipeline argument."""
    metadata = {HELP: help_text}
    if pipeline_arg:
        metadata[PIPELINE_ARG] = pipeline_arg
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Everything needed to compile the pipeline for Kubeflow Pipelines / Vertex AI.

    Fields with a `pipeline_arg` go to `create_pipeline` under that name; the
    others configure the compiler. A field left at None is not passed, so
    `create_pipeline`'s own default applies.
    """

    # --- Runner settings ---------------------------------------------------------
    image: str = _field('', 'pipeline image every step runs in (built from ./Dockerfile)')
    output_file: str = _field(
        DEFAULT_OUTPUT_FILE,
        'where to write the compiled pipeline: .yaml = PipelineSpec (KFP and Vertex), '
        '.json = PipelineJob with the pipeline root (Vertex)',
    )
    display_name: Optional[str] = _field(
        None, 'display name on KFP/Vertex (default: pipeline_name)'
    )
    pipeline_spec_2_1: bool = _field(
        True,
        'emit pipeline spec schema 2.1 (what KFP 2.x backends and Vertex read); '
        'false writes the older 2.0 schema',
    )

    # --- Arguments of create_pipeline (one line each) ----------------------------
    pipeline_name: str = _field(
        configs.PIPELINE_NAME, 'pipeline name in ML Metadata and on KFP', 'pipeline_name'
    )
    pipeline_root: str = _field(
        '', 'root of every artifact, e.g. gs://BUCKET/tfx (the pods must reach it)', 'pipeline_root'
    )
    data_root: str = _field('', 'the Flickr8k directory, e.g. gs://BUCKET/flickr8k', 'data_root')
    beam_pipeline_args: Tuple[str, ...] = _field(
        (),
        'Beam arguments of every Beam-based step (DataflowRunner, FlinkRunner, ...); '
        f'{IMAGE_PLACEHOLDER} and {PIPELINE_ROOT_PLACEHOLDER} are expanded',
        'beam_pipeline_args',
    )
    enable_cache: bool = _field(
        True, 'reuse outputs of steps whose inputs did not change', 'enable_cache'
    )
    serving_root: Optional[str] = _field(
        None,
        'TF Serving model root: versions land in <serving_root>/<model name>/<version>',
        'serving_root',
    )
    tflite_root: Optional[str] = _field(
        None, 'TFLite root: <tflite_root>/<model name>/<version>/model.tflite', 'tflite_root'
    )

    # --- Escape hatch --------------------------------------------------------------
    pipeline_args: Dict[str, Any] = _field(
        {},
        'further create_pipeline keyword arguments, verbatim (file only; scalars such as '
        'train steps)',
    )

    def validate(self, create_pipeline: Optional[Callable[..., Any]] = None) -> None:
        """Checks the config; with `create_pipeline`, also that it takes every argument.

        Raises:
          ValueError: naming every problem found, not only the first.
        """
        problems = []
        for name in ('image', 'pipeline_root', 'data_root', 'output_file', 'pipeline_name'):
            if not getattr(self, name):
                problems.append(f'{name} is required (flag --{_flag(name)} or key {name!r}).')
        if self.output_file and not self.output_file.endswith(('.json', '.yaml', '.yml')):
            problems.append(
                f'output_file must end in .yaml, .yml or .json, got {self.output_file!r}.'
            )
        if isinstance(self.beam_pipeline_args, str):
            problems.append('beam_pipeline_args must be a list of strings, not one string.')
        else:
            problems.extend(check_beam_args(self.beam_pipeline_args))
        clashes = sorted(set(self.pipeline_args) & set(_pipeline_arg_fields().values()))
        if clashes:
            problems.append(
                f'pipeline_args repeats {clashes}: set them with their own keys instead.'
            )
        if 'metadata_connection_config' in self.pipeline_args:
            problems.append('metadata_connection_config: KFP and Vertex supply their own store.')
        if create_pipeline is not None:
            problems.extend(_check_signature(self, create_pipeline))
        if problems:
            raise ValueError('Invalid Kubeflow config:\n  - ' + '\n  - '.join(problems))

    def resolved_beam_args(self) -> List[str]:
        """The Beam args with `{image}` and `{pipeline_root}` replaced."""
        root = self.pipeline_root.rstrip('/')
        return [
            arg.replace(IMAGE_PLACEHOLDER, self.image).replace(PIPELINE_ROOT_PLACEHOLDER, root)
            for arg in self.beam_pipeline_args
        ]

    def pipeline_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments for `create_pipeline`; unset (None) fields are left out.

        No `metadata_connection_config`: on Kubeflow the platform supplies the
        ML Metadata store.
        """
        kwargs = dict(self.pipeline_args)
        for field_name, arg_name in _pipeline_arg_fields().items():
            value = getattr(self, field_name)
            if value is None:
                continue
            if field_name == 'beam_pipeline_args':
                value = self.resolved_beam_args()
            kwargs[arg_name] = value
        return kwargs


def _flag(field_name: str) -> str:
    return field_name.replace('_', '-')


def _pipeline_arg_fields() -> Dict[str, str]:
    """Field name -> create_pipeline argument name, for the fields that have one."""
    return {
        f.name: f.metadata[PIPELINE_ARG]
        for f in dataclasses.fields(KubeflowConfig)
        if PIPELINE_ARG in f.metadata
    }


def _check_signature(config: KubeflowConfig, create_pipeline: Callable[..., Any]) -> List[str]:
    """Names config values `create_pipeline` cannot take, and arguments it needs but lacks.

    A configured value that the pipeline cannot take (say a serving root
    before the pipeline has a Pusher) is an error, never silently dropped.
    """
    parameters = inspect.signature(create_pipeline).parameters
    kwargs = config.pipeline_kwargs()
    fields = {arg: name for name, arg in _pipeline_arg_fields().items()}
    problems = [
        f'create_pipeline requires {name!r}: set '
        + (
            f'{fields[name]!r} (flag --{_flag(fields[name])})'
            if name in fields
            else 'it in pipeline_args'
        )
        + '.'
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in kwargs
    ]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        problems += [
            f'create_pipeline has no argument {name!r} (configured here as {value!r}); '
            'remove it from the config or add the argument to create_pipeline.'
            for name, value in kwargs.items()
            if name not in parameters
        ]
    return problems


def check_beam_args(beam_args: Tuple[str, ...]) -> List[str]:
    """Names what a remote Beam runner needs but `beam_args` lacks.

    These mistakes otherwise surface only after a pod has started and a Beam
    job has been submitted: the workers need the project's code (the custom
    ExampleGen and extractor DoFns import `components.*` and `models.*`), which
    the pipeline image carries.
    """
    options = {}
    for arg in beam_args:
        if not isinstance(arg, str) or not arg.startswith('--'):
            return [f'every Beam argument must be a string starting with "--", got {arg!r}.']
        name, _, value = arg[2:].partition('=')
        options[name] = value
    runner = options.get('runner', '')
    problems = []
    if runner == 'DataflowRunner':
        missing = [name for name in ('project', 'region', 'temp_location') if not options.get(name)]
        if missing:
            problems.append(
                'DataflowRunner needs ' + ', '.join(f'--{name}' for name in missing) + '.'
            )
        if options.get('temp_location') and not options['temp_location'].startswith(
            ('gs://', PIPELINE_ROOT_PLACEHOLDER)
        ):
            problems.append('DataflowRunner needs a gs:// --temp_location.')
        if not any(options.get(name) for name in ('sdk_container_image', 'setup_file')):
            problems.append(
                'DataflowRunner workers need the project code: add '
                f'--sdk_container_image={IMAGE_PLACEHOLDER} (the pipeline image) or --setup_file.'
            )
    elif runner in PORTABLE_RUNNERS:
        environment = options.get('environment_type', '')
        if not environment:
            problems.append(
                f'{runner} needs --environment_type: DOCKER with '
                f'--environment_config={IMAGE_PLACEHOLDER}, or EXTERNAL with a worker pool '
                'running the pipeline image (the default Beam image lacks TFX and this project).'
            )
        elif environment.upper() in ('DOCKER', 'EXTERNAL') and not options.get(
            'environment_config'
        ):
            problems.append(
                f'{runner} with --environment_type={environment} needs --environment_config.'
            )
    return problems


def load_file(path: str) -> Dict[str, Any]:
    """Reads a config file (YAML, or JSON, which YAML also reads) into a dict.

    Raises:
      ValueError: the file is not a mapping or has keys no field knows.
    """
    with open(path, encoding='utf-8') as f:
        data = json.load(f) if path.endswith('.json') else yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f'{path}: the config must be a mapping of keys to values.')
    known = {f.name for f in dataclasses.fields(KubeflowConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'{path}: unknown keys {unknown}; known keys: {sorted(known)}.')
    return data


def make_config(
    file_values: Optional[Mapping[str, Any]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> KubeflowConfig:
    """The config from file values, then overrides (flags); None overrides are ignored.

    A list given as an override (such as Beam args on the command line)
    replaces the file's list: the flag wins, as for every other key.
    """
    values = dict(file_values or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if isinstance(values.get('beam_pipeline_args'), list):
        values['beam_pipeline_args'] = tuple(values['beam_pipeline_args'])
    return KubeflowConfig(**values)


def flag_fields() -> List[dataclasses.Field]:
    """The fields that have a command-line flag (all but the file-only mapping)."""
    return [f for f in dataclasses.fields(KubeflowConfig) if f.name != 'pipeline_args']
