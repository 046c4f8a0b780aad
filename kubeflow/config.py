"""What the Kubeflow runner needs to know, from a YAML/JSON file and/or flags.

One frozen dataclass, `KubeflowConfig`, is the whole contract. Each field is a
key of the config file (`kubeflow/config.example.yaml`); each scalar field is
also a command-line flag (`image` -> `--image`). `pipeline_kwargs()` maps the
fields onto `create_pipeline`'s typed arguments: the same `HParams`,
`ExtractorParameters`, `EvaluatorParameters` (with its `GateConfig`) and
`PusherParameters` that the local runner builds, so a setting means the same
thing, with the same defaults and the same validation, on both orchestrators.
The mappings `hparams`, `extractor` and `gate` are file-only.

Reading a config imports no TFX; checking it builds those objects (which
imports TFX's component specs, a second or two).
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from tfx_captioning.pipeline import configs

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


def _field(default: Any, help_text: str) -> Any:
    """A config field carrying its help text."""
    metadata = {HELP: help_text}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Everything needed to compile the pipeline for Kubeflow Pipelines / Vertex AI.

    The runner settings configure the compiler; the rest become
    `create_pipeline`'s arguments (`pipeline_kwargs`). Mappings left empty and
    values left at None keep the parameter objects' own defaults.
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

    # --- The pipeline ----------------------------------------------------------------
    pipeline_name: str = _field(configs.PIPELINE_NAME, 'pipeline name in ML Metadata and on KFP')
    pipeline_root: str = _field(
        '', 'root of every artifact, e.g. gs://BUCKET/tfx (the pods must reach it)'
    )
    data_root: str = _field('', 'the Flickr8k directory, e.g. gs://BUCKET/flickr8k')
    beam_pipeline_args: Tuple[str, ...] = _field(
        (),
        'Beam arguments of every Beam-based step (DataflowRunner, FlinkRunner, ...); '
        f'{IMAGE_PLACEHOLDER} and {PIPELINE_ROOT_PLACEHOLDER} are expanded',
    )
    enable_cache: bool = _field(True, 'reuse outputs of steps whose inputs did not change')
    train_steps: Optional[int] = _field(None, 'total training steps (default: hparams epochs)')
    eval_steps: Optional[int] = _field(None, 'eval steps per epoch (default: the whole split)')

    # --- PusherParameters ----------------------------------------------------------
    serving_root: str = _field(
        '', 'TF Serving model root: versions land in <serving_root>/<model name>/<version>'
    )
    tflite_root: Optional[str] = _field(
        None, 'TFLite root: <tflite_root>/<model name>/<version>/model.tflite'
    )
    model_name: Optional[str] = _field(None, 'the name TF Serving serves the model under')
    min_tflite_agreement: Optional[float] = _field(
        None, 'share of eval images a TFLite variant must caption as the SavedModel to ship'
    )

    # --- Parameter objects as mappings (file only) ------------------------------------
    hparams: Dict[str, Any] = _field(
        {}, 'HParams fields (models/hparams.py), e.g. {epochs: 20, min_word_count: 5}'
    )
    extractor: Dict[str, Any] = _field(
        {}, 'ExtractorParameters fields, e.g. {weights: gs://BUCKET/inception_v3_notop.h5}'
    )
    gate: Dict[str, Any] = _field(
        {}, 'GateConfig fields (the blessing gate), e.g. {min_metrics: {BLEU-4: 0.15}}'
    )

    def validate(self) -> None:
        """Checks the config, building every parameter object it maps onto.

        Raises:
          ValueError: naming every problem found, not only the first.
        """
        problems = []
        for name in (
            'image',
            'pipeline_root',
            'data_root',
            'output_file',
            'pipeline_name',
            'serving_root',
        ):
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
        for name in ('train_steps', 'eval_steps'):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f'{name} must be an integer >= 1, got {value!r}.')
        if self.serving_root:
            try:
                self.parameter_objects()
            except (TypeError, ValueError) as e:
                problems.append(str(e))
        if problems:
            raise ValueError('Invalid Kubeflow config:\n  - ' + '\n  - '.join(problems))

    def parameter_objects(self) -> Dict[str, Any]:
        """`create_pipeline`'s parameter objects, built (and validated) from the config.

        Raises:
          ValueError: an unknown key or invalid value in a mapping.
          TypeError: a mapping key that the object has no field for.
        """
        from tfx_captioning.components.caption_evaluator import gate as gate_lib
        from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
        from tfx_captioning.components.caption_pusher.spec import PusherParameters
        from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
        from tfx_captioning.models.hparams import HParams

        pusher = {
            'serving_root': self.serving_root,
            'tflite_root': self.tflite_root,
            'model_name': self.model_name,
            'min_tflite_agreement': self.min_tflite_agreement,
        }
        unknown = sorted(
            set(self.extractor) - {f.name for f in dataclasses.fields(ExtractorParameters)}
        )
        if unknown:
            raise ValueError(f'extractor has unknown keys {unknown}.')
        return {
            'pusher': PusherParameters(
                **{k: v for k, v in pusher.items() if v is not None}
            ).validate(),
            'hparams': HParams.from_custom_config(self.hparams),
            'extractor': ExtractorParameters(**self.extractor).validate(),
            'evaluator': EvaluatorParameters(
                gate=gate_lib.GateConfig.from_dict(self.gate)
            ).validate(),
        }

    def resolved_beam_args(self) -> List[str]:
        """The Beam args with `{image}` and `{pipeline_root}` replaced."""
        root = self.pipeline_root.rstrip('/')
        return [
            arg.replace(IMAGE_PLACEHOLDER, self.image).replace(PIPELINE_ROOT_PLACEHOLDER, root)
            for arg in self.beam_pipeline_args
        ]

    def pipeline_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments for `create_pipeline`.

        No `metadata_connection_config`: on Kubeflow the platform supplies the
        ML Metadata store.
        """
        return {
            'pipeline_name': self.pipeline_name,
            'pipeline_root': self.pipeline_root,
            'data_root': self.data_root,
            'beam_pipeline_args': self.resolved_beam_args(),
            'enable_cache': self.enable_cache,
            'train_steps': self.train_steps,
            'eval_steps': self.eval_steps,
            **self.parameter_objects(),
        }


def _flag(field_name: str) -> str:
    return field_name.replace('_', '-')


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


FILE_ONLY = ('hparams', 'extractor', 'gate')


def flag_fields() -> List[dataclasses.Field]:
    """The fields that have a command-line flag (all but the file-only mappings)."""
    return [f for f in dataclasses.fields(KubeflowConfig) if f.name not in FILE_ONLY]
