"""Kubeflow: the compiled KFP v2 spec, running it through the container entrypoint, the image.

Expectations are derived from the pipeline object `create_pipeline` builds
(its components, their upstream nodes, executors and exec properties), so
these tests keep working, and keep checking, as components are added. The
spec is read with KFP's pipeline-spec protos, strictly.

Also here: the local runner's Beam scale-out (N > 1 workers = multi_processing)
and that 2 workers give Transform exactly what 1 gives.
"""

import dataclasses
import glob
import importlib
import json
import os
import re
import runpy
import shlex
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import setuptools
import tensorflow as tf
from google.protobuf import json_format, message
from kfp.pipeline_spec import pipeline_spec_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import v1 as tfx
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.types import standard_component_specs

from tests import kfp_local
from tfx_captioning.cli import sample_data
from tfx_captioning.components.caption_evaluator.gate import GateConfig
from tfx_captioning.components.caption_evaluator.spec import EvaluatorParameters
from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.components.image_feature_extractor.spec import ExtractorParameters
from tfx_captioning.kubeflow import cli, runner
from tfx_captioning.kubeflow import config as kf_config
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams
from tfx_captioning.pipeline import configs, local_runner
from tfx_captioning.pipeline.pipeline import create_pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / 'kubeflow' / 'config.example.yaml'
IMAGE = 'registry.example.com/team/flickr8k-captioning:test'
EXECUTOR_COMMAND = [
    'python',
    '-m',
    'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor',
]
EXAMPLE_GEN_DRIVER_COMMAND = [
    'python',
    '-m',
    'tfx.orchestration.kubeflow.v2.file_based_example_gen.driver',
]
SERVING_ROOT = 'gs://bucket/serving'
TFLITE_ROOT = 'gs://bucket/tflite'
# Exec properties naming code by dotted path: the image must import them.
CODE_PATH_KEYS = (
    'preprocessing_fn',
    'stats_options_updater_fn',
    'run_fn',
    'trainer_fn',
    'tuner_fn',
)


def _destination_flags() -> List[str]:
    return ['--serving-root', SERVING_ROOT, '--tflite-root', TFLITE_ROOT]


def _executable_components(pipeline) -> List[base_component.BaseComponent]:
    return [
        c
        for c in pipeline.components
        if isinstance(c, base_component.BaseComponent)
        and isinstance(c.executor_spec, executor_spec.ExecutorClassSpec)
    ]


def _class_path(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _is_task_of(task_name: str, node_id: str) -> bool:
    # A latest-blessed-model Resolver compiles to tasks `<id>-model-resolver`
    # and `<id>-model-blessing-resolver`; every other node to the task `<id>`.
    return task_name == node_id or task_name.startswith(node_id + '-')


@dataclasses.dataclass
class Compiled:
    config: kf_config.KubeflowConfig
    pipeline: Any
    spec: pipeline_spec_pb2.PipelineSpec
    deployment: pipeline_spec_pb2.PipelineDeploymentConfig

    def container(self, task_name: str):
        component = self.spec.components[self.spec.root.dag.tasks[task_name].component_ref.name]
        return self.deployment.executors[component.executor_label].container


def _deployment(spec: pipeline_spec_pb2.PipelineSpec) -> pipeline_spec_pb2.PipelineDeploymentConfig:
    return json_format.ParseDict(
        json_format.MessageToDict(spec.deployment_spec),
        pipeline_spec_pb2.PipelineDeploymentConfig(),
    )


def _compile_with_cli(argv: List[str]) -> None:
    """Runs `python -m tfx_captioning.kubeflow argv` in-process, leaving the test process's logging alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.quiet, 'configure', lambda verbose: None)
        assert cli.main(argv) == 0


@pytest.fixture(scope='module')
def compiled(tmp_path_factory) -> Compiled:
    """The example config (Dataflow Beam args) compiled through the CLI, as a person would."""
    output = tmp_path_factory.mktemp('kfp') / 'pipeline.yaml'
    argv = ['--config', str(EXAMPLE_CONFIG), '--image', IMAGE, '--output-file', str(output)]
    argv += _destination_flags()
    _compile_with_cli(argv)
    config, _ = cli.config_from_args(argv)
    spec = runner.load_pipeline_spec(str(output))
    return Compiled(config, runner.build_pipeline(config), spec, _deployment(spec))


# --- The compiled spec ------------------------------------------------------------


def test_every_component_is_a_task_with_its_upstream_dependencies(compiled):
    tasks = compiled.spec.root.dag.tasks
    assert compiled.spec.pipeline_info.name == configs.PIPELINE_NAME
    assert compiled.spec.schema_version == '2.1.0'
    for node in compiled.pipeline.components:
        assert any(_is_task_of(name, node.id) for name in tasks), f'{node.id} is not in the spec'
    for component in _executable_components(compiled.pipeline):
        task = tasks[component.id]
        upstream = [node.id for node in component.upstream_nodes]
        assert len(task.dependent_tasks) == len(upstream), component.id
        for node_id in upstream:
            assert any(_is_task_of(name, node_id) for name in task.dependent_tasks), (
                f'{component.id} does not wait for {node_id}: {list(task.dependent_tasks)}'
            )
        assert set(task.inputs.artifacts) == set(component.inputs), component.id
        for key, channel in component.inputs.items():
            source = task.inputs.artifacts[key].task_output_artifact
            assert _is_task_of(source.producer_task, channel.producer_component_id)
            if source.producer_task == channel.producer_component_id:
                assert source.output_artifact_key == channel.output_key
        component_spec = compiled.spec.components[task.component_ref.name]
        assert set(component_spec.output_definitions.artifacts) == set(component.outputs)
        assert task.caching_options.enable_cache


def test_every_step_runs_the_tfx_entrypoint_in_the_image_with_the_beam_args(compiled):
    beam_args = compiled.config.resolved_beam_args()
    assert '--runner=DataflowRunner' in beam_args
    # The example config's placeholders were expanded before compiling.
    assert f'--sdk_container_image={IMAGE}' in beam_args
    assert not [arg for arg in beam_args if '{' in arg]
    for component in _executable_components(compiled.pipeline):
        container = compiled.container(component.id)
        assert container.image == IMAGE
        assert list(container.command) == EXECUTOR_COMMAND
        args = list(container.args)
        assert args[args.index('--executor_class_path') + 1] == _class_path(
            component.executor_spec.executor_class
        )
        assert args[args.index('--json_serialized_invocation_args') + 1] == '{{$}}'
        inputs_spec = args[args.index('--json_serialized_inputs_spec_args') + 1]
        component_spec = compiled.spec.components[
            compiled.spec.root.dag.tasks[component.id].component_ref.name
        ]
        assert (
            json_format.Parse(inputs_spec, pipeline_spec_pb2.ComponentInputsSpec())
            == component_spec.input_definitions
        )
        # Beam steps may add their own args after the pipeline's.
        expected = beam_args
        if isinstance(component.executor_spec, executor_spec.BeamExecutorSpec):
            expected = list(component.executor_spec.beam_pipeline_args)
            assert expected[: len(beam_args)] == beam_args, component.id
        assert args[len(args) - len(expected) :] == expected, component.id
        if isinstance(component, FileBasedExampleGen):
            # Vertex runs this driver before the cache check (span, fingerprint).
            hook = container.lifecycle.pre_cache_check
            assert list(hook.command) == EXAMPLE_GEN_DRIVER_COMMAND
            assert list(hook.args)[len(hook.args) - len(expected) :] == expected


def _parameter_matches(value: Any, constant) -> bool:
    kind = constant.WhichOneof('kind')
    if isinstance(value, message.Message):
        return json_format.Parse(constant.string_value, type(value)()) == value
    if isinstance(value, (dict, list)):
        return json.loads(constant.string_value) == value
    if isinstance(value, str):
        return kind == 'string_value' and constant.string_value == value
    if isinstance(value, (bool, int, float)):
        return kind == 'number_value' and constant.number_value == value
    return True  # Placeholders and runtime parameters are resolved by the platform.


def test_every_exec_property_reaches_its_task(compiled):
    for component in _executable_components(compiled.pipeline):
        parameters = compiled.spec.root.dag.tasks[component.id].inputs.parameters
        for name, value in component.exec_properties.items():
            if value is None:
                assert name not in parameters, f'{component.id}.{name}'
                continue
            constant = parameters[name].runtime_value.constant
            assert _parameter_matches(value, constant), f'{component.id}.{name}: {constant}'
    example_gen = compiled.spec.root.dag.tasks['Flickr8kExampleGen']
    input_base = example_gen.inputs.parameters[standard_component_specs.INPUT_BASE_KEY]
    assert input_base.runtime_value.constant.string_value == compiled.config.data_root


def test_transform_and_trainer_use_code_baked_into_the_image(compiled):
    users = [
        c
        for c in compiled.pipeline.components
        if isinstance(c, (tfx.components.Transform, tfx.components.Trainer))
    ]
    for kind in (tfx.components.Transform, tfx.components.Trainer):
        assert any(isinstance(c, kind) for c in users), f'create_pipeline has no {kind.__name__}'
    for component in users:
        parameters = compiled.spec.root.dag.tasks[component.id].inputs.parameters
        # module_file would build a wheel and upload it under the pipeline root
        # at compile time; the image already has the code.
        assert component.exec_properties.get(standard_component_specs.MODULE_FILE_KEY) is None, (
            f'{component.id} uses module_file: reference the function by dotted path.'
        )
        paths = {
            k: parameters[k].runtime_value.constant.string_value
            for k in CODE_PATH_KEYS
            if k in parameters
        }
        module_path = parameters.get(standard_component_specs.MODULE_PATH_KEY)
        if module_path is not None:
            importlib.import_module(module_path.runtime_value.constant.string_value)
        assert paths or module_path is not None, f'{component.id} names no code by dotted path'
        for key, dotted in paths.items():
            assert dotted == component.exec_properties[key]
            module_name, _, attribute = dotted.rpartition('.')
            assert callable(getattr(importlib.import_module(module_name), attribute)), dotted
        custom_config = component.exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
        if custom_config is not None:
            constant = parameters[standard_component_specs.CUSTOM_CONFIG_KEY].runtime_value.constant
            assert _parameter_matches(custom_config, constant), component.id


def test_pusher_pushes_to_the_configured_destination(compiled):
    pushers = [c for c in compiled.pipeline.components if isinstance(c, tfx.components.Pusher)]
    assert pushers, 'create_pipeline has no Pusher'
    assert compiled.config.serving_root, (
        'The pipeline has a Pusher but the Kubeflow config cannot set its destination: '
        "map create_pipeline's serving argument in kubeflow/config.py."
    )
    destinations = []
    for pusher in pushers:
        parameter = compiled.spec.root.dag.tasks[pusher.id].inputs.parameters.get(
            standard_component_specs.PUSH_DESTINATION_KEY
        )
        if parameter is not None:
            destination = json_format.Parse(
                parameter.runtime_value.constant.string_value, tfx.proto.PushDestination()
            )
            destinations.append(destination.filesystem.base_directory)
    assert any(d.startswith(SERVING_ROOT) for d in destinations), destinations
    if compiled.config.tflite_root:
        assert TFLITE_ROOT in json_format.MessageToJson(compiled.spec.root)


def test_json_output_is_a_pipeline_job_that_records_the_pipeline_root(tmp_path):
    output = tmp_path / 'pipeline.json'
    argv = ['--config', str(EXAMPLE_CONFIG), '--image', IMAGE, '--output-file', str(output)]
    argv += ['--no-pipeline-spec-2-1', '--pipeline-root', 'gs://other-bucket/root']
    _compile_with_cli(argv + _destination_flags())
    job = json_format.Parse(output.read_text(), pipeline_spec_pb2.PipelineJob())
    assert job.runtime_config.gcs_output_directory == 'gs://other-bucket/root'
    spec = runner.load_pipeline_spec(str(output))
    assert spec.schema_version == '2.0.0'
    assert {t for t in spec.root.dag.tasks} >= {'Flickr8kExampleGen', 'StatisticsGen'}


# --- The spec runs: each step through the command the spec writes -------------------


@pytest.fixture(scope='module')
def executed(tmp_path_factory) -> Tuple[kfp_local.LocalSpecRunner, str]:
    """ExampleGen (driver, then executor) and StatisticsGen run from a compiled spec."""
    root = tmp_path_factory.mktemp('kfp_run')
    data = str(root / 'data')
    sample_data.generate(data, 16)
    output = root / 'pipeline.yaml'
    config = kf_config.make_config(
        {
            'image': IMAGE,
            'pipeline_root': str(root / 'pipeline_root'),
            'data_root': data,
            'serving_root': str(root / 'serving'),
            'output_file': str(output),
            'beam_pipeline_args': configs.beam_args_for_local(1),
        }
    )
    runner.compile_pipeline(config)
    spec_runner = kfp_local.LocalSpecRunner(
        runner.load_pipeline_spec(str(output)),
        str(root / 'pipeline_root'),
        env={'TF_USE_LEGACY_KERAS': '1'},  # As the Dockerfile's ENV.
    )
    spec_runner.run_task('Flickr8kExampleGen')
    spec_runner.run_task('StatisticsGen')
    return spec_runner, data


def _read_examples(uri: str, split: str) -> List[tf.train.Example]:
    files = sorted(glob.glob(os.path.join(uri, f'Split-{split}', '*')))
    assert files, f'no TFRecords for split {split} under {uri}'
    dataset = tf.data.TFRecordDataset(files, compression_type='GZIP')
    return [tf.train.Example.FromString(record) for record in dataset.as_numpy_iterator()]


@pytest.mark.slow
def test_example_gen_runs_through_the_container_entrypoint_of_the_spec(executed):
    spec_runner, data = executed
    commands = spec_runner.command_lines('Flickr8kExampleGen')
    assert [line[:3] for line in commands] == [EXAMPLE_GEN_DRIVER_COMMAND, EXECUTOR_COMMAND]
    driver = spec_runner.driver_outputs['Flickr8kExampleGen']
    assert driver.parameter_values['span'].number_value == 0
    assert 'split:train' in driver.parameter_values['input_fingerprint'].string_value

    output = spec_runner.outputs['Flickr8kExampleGen']
    (artifact,) = output.artifacts[standard_component_specs.EXAMPLES_KEY].artifacts
    metadata = kfp_local.artifact_metadata(output, standard_component_specs.EXAMPLES_KEY)
    assert json.loads(metadata['split_names']) == list(features.SPLITS)
    expected_counts = {'train': 12, 'eval': 2, 'test': 2}
    assert json.loads(metadata['ingestion_report'])['examples'] == expected_counts
    for split, split_file in layout.SPLIT_FILES.items():
        examples = _read_examples(artifact.uri, split)
        by_id = {
            e.features.feature[features.IMAGE_ID_KEY].bytes_list.value[0].decode(): e
            for e in examples
        }
        assert sorted(by_id) == sorted(layout.read_lines(os.path.join(data, split_file)))
        for image_id, example in by_id.items():
            feature = example.features.feature
            assert len(feature[features.CAPTIONS_KEY].bytes_list.value) == 5
            with open(os.path.join(data, layout.IMAGES_DIR, image_id), 'rb') as f:
                assert feature[features.IMAGE_KEY].bytes_list.value[0] == f.read()


@pytest.mark.slow
def test_statistics_gen_reads_the_example_gen_output_passed_by_the_spec(executed):
    spec_runner, _ = executed
    output = spec_runner.outputs['StatisticsGen']
    (artifact,) = output.artifacts[standard_component_specs.STATISTICS_KEY].artifacts
    path = os.path.join(artifact.uri, 'Split-train', 'FeatureStats.pb')
    with open(path, 'rb') as f:
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    assert stats.datasets[0].num_examples == 12


# --- The config -----------------------------------------------------------------------


def _valid(**values) -> Dict[str, Any]:
    base = {
        'image': IMAGE,
        'pipeline_root': 'gs://b/root',
        'data_root': 'gs://b/data',
        'serving_root': SERVING_ROOT,
    }
    return dict(base, **values)


def test_flags_override_the_file_and_beam_args_after_double_dash_replace_its_list():
    argv = ['--config', str(EXAMPLE_CONFIG), '--image', 'other:1', '--no-enable-cache']
    config, _ = cli.config_from_args(
        argv + ['--', '--runner=FlinkRunner', '--environment_type=LOOPBACK']
    )
    assert config.image == 'other:1'
    assert config.enable_cache is False
    assert config.pipeline_root == 'gs://BUCKET/tfx/flickr8k-captioning'  # From the file.
    assert config.beam_pipeline_args == ('--runner=FlinkRunner', '--environment_type=LOOPBACK')
    config.validate()
    file_only, _ = cli.config_from_args(['--config', str(EXAMPLE_CONFIG)])
    assert '--runner=DataflowRunner' in file_only.beam_pipeline_args


def test_beam_args_name_the_image_and_pipeline_root_without_repeating_them():
    config = kf_config.make_config(
        _valid(
            beam_pipeline_args=[
                '--sdk_container_image={image}',
                '--temp_location={pipeline_root}/t',
            ]
        )
    )
    assert config.resolved_beam_args() == [
        f'--sdk_container_image={IMAGE}',
        '--temp_location=gs://b/root/t',
    ]
    assert config.pipeline_kwargs()['beam_pipeline_args'] == config.resolved_beam_args()


def test_a_config_missing_required_values_names_each_of_them():
    with pytest.raises(ValueError) as raised:
        kf_config.make_config({}).validate()
    for name in ('image', 'pipeline_root', 'data_root'):
        assert f'{name} is required' in str(raised.value)


@pytest.mark.parametrize(
    'beam_args, needed',
    [
        (
            ['--runner=DataflowRunner', '--sdk_container_image={image}'],
            '--project, --region, --temp_location',
        ),
        (
            ['--runner=DataflowRunner', '--project=p', '--region=r', '--temp_location=gs://b/t'],
            '--sdk_container_image={image}',
        ),
        (['--runner=FlinkRunner', '--flink_master=h:8081'], '--environment_type'),
        (['--runner=SparkRunner', '--environment_type=DOCKER'], '--environment_config'),
        (['runner=DataflowRunner'], 'starting with "--"'),
    ],
)
def test_remote_beam_runners_missing_what_their_workers_need_are_refused(beam_args, needed):
    with pytest.raises(ValueError, match=re.escape(needed)):
        kf_config.make_config(_valid(beam_pipeline_args=beam_args)).validate()


def test_unknown_keys_in_the_config_file_are_refused(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('image: x\npipline_root: gs://typo\n')
    with pytest.raises(ValueError, match='pipline_root'):
        kf_config.load_file(str(path))


def test_the_config_maps_onto_the_same_parameter_objects_as_the_local_runner():
    config = kf_config.make_config(
        _valid(
            tflite_root=TFLITE_ROOT,
            train_steps=5,
            hparams={'epochs': 3, 'min_word_count': 2},
            extractor={'weights': 'random', 'batch_size': 8, 'encoder_precision': 'auto'},
            gate={'max_cider_drop': 0.05, 'min_metrics': {'BLEU-4': 0.1}},
        )
    )
    config.validate()
    kwargs = config.pipeline_kwargs()
    assert kwargs['pusher'] == PusherParameters(serving_root=SERVING_ROOT, tflite_root=TFLITE_ROOT)
    assert kwargs['hparams'] == HParams(epochs=3, min_word_count=2)
    assert kwargs['extractor'] == ExtractorParameters(
        weights='random', batch_size=8, encoder_precision='auto'
    )
    assert kwargs['evaluator'] == EvaluatorParameters(
        gate=GateConfig(max_cider_drop=0.05, min_metrics={'BLEU-4': 0.1})
    )
    assert kwargs['train_steps'] == 5 and kwargs['eval_steps'] is None
    assert 'metadata_connection_config' not in kwargs
    pipeline = runner.build_pipeline(config)
    assert pipeline.metadata_connection_config is None
    ids = {component.id for component in pipeline.components}
    assert {'Transform', 'Trainer', 'CaptionEvaluator', 'CaptionPusher'} <= ids


@pytest.mark.parametrize(
    'values, message',
    [
        ({'hparams': {'epochs': 0}}, 'epochs must be >= 1'),
        ({'hparams': {'epoch': 3}}, 'Unknown hyperparameters'),
        ({'gate': {'max_loss': -1}}, 'max_loss'),
        ({'gate': {'min_metrics': {'BLEU-7': 0.1}}}, 'unknown metric'),
        ({'extractor': {'weights': 'imagnet'}}, 'imagenet'),
        ({'extractor': {'wieghts': 'random'}}, 'unknown keys'),
        ({'extractor': {'encoder_precision': 'bf16'}}, 'encoder precision'),
        ({'min_tflite_agreement': 2.0}, 'min_tflite_agreement'),
        ({'train_steps': 0}, 'train_steps'),
        ({'serving_root': ''}, 'serving_root is required'),
    ],
)
def test_every_bad_setting_is_named_before_compiling(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kf_config.make_config(_valid(**values)).validate()


def test_the_example_config_gives_create_pipeline_all_it_needs():
    values = kf_config.load_file(str(EXAMPLE_CONFIG))
    config = kf_config.make_config(values)
    config.validate()
    pipeline = runner.build_pipeline(config)

    # The pipeline is the one the file describes, placeholders expanded.
    assert pipeline.pipeline_info.pipeline_name == values['pipeline_name']
    assert pipeline.pipeline_info.pipeline_root == values['pipeline_root']
    assert pipeline.enable_cache is values['enable_cache']
    assert pipeline.metadata_connection_config is None  # Kubeflow supplies the store.
    beam_args = config.resolved_beam_args()
    assert len(beam_args) == len(values['beam_pipeline_args'])
    assert f'--temp_location={values["pipeline_root"]}/beam-tmp' in beam_args
    assert pipeline.beam_pipeline_args == beam_args
    ids = [component.id for component in pipeline.components]
    assert len(ids) == len(set(ids)), ids
    for component in pipeline.components:
        if isinstance(getattr(component, 'executor_spec', None), executor_spec.BeamExecutorSpec):
            assert component.executor_spec.beam_pipeline_args[: len(beam_args)] == beam_args
    # Where data is read from and models are pushed to.
    (example_gen,) = [c for c in pipeline.components if isinstance(c, FileBasedExampleGen)]
    input_base = example_gen.exec_properties[standard_component_specs.INPUT_BASE_KEY]
    assert input_base == values['data_root']
    (pusher,) = [c for c in pipeline.components if isinstance(c, tfx.components.Pusher)]
    destination = json_format.Parse(
        pusher.exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
        tfx.proto.PushDestination(),
    )
    assert destination.filesystem.base_directory.startswith(values['serving_root'] + '/')
    custom_config = pusher.exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY]
    assert values['tflite_root'] + '/' in custom_config
    kwargs = config.pipeline_kwargs()
    assert kwargs['pusher'].tflite_base_directory == values['tflite_root'] + '/captioner'
    assert create_pipeline(**kwargs).pipeline_info.pipeline_name == config.pipeline_name


def test_cli_reports_an_invalid_config_with_exit_status_2(capsys):
    assert cli.main(['--pipeline-root', 'gs://b/r']) == 2
    assert 'image is required' in capsys.readouterr().err


# --- The image ------------------------------------------------------------------------


def _instructions(dockerfile: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith('#')]
    joined = re.sub(r'\\\n', ' ', '\n'.join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(' ')
            result.append((keyword.upper(), rest.strip()))
    return result


_PIP_NOISE = {'--quiet', '-q', '--disable-pip-version-check', '--no-cache-dir'}


def _pip_installs(commands: List[str]) -> List[List[str]]:
    """The arguments of every `pip install` in shell commands, without output/caching flags."""
    installs = []
    for command in commands:
        if 'pip install' not in command:
            continue
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for at in range(len(tokens) - 1):
            if tokens[at : at + 2] == ['pip', 'install']:
                arguments = []
                for token in tokens[at + 2 :]:
                    if token in ('&&', '||', ';', '|', ')'):
                        break
                    arguments.append(token)
                installs.append([a for a in arguments if a not in _PIP_NOISE])
    return installs


def _install_script_commands() -> List[str]:
    text = (REPO / 'scripts' / 'install.sh').read_text()
    text = re.sub(r'\\\n', ' ', text)
    return [line for line in text.splitlines() if not line.lstrip().startswith('#')]


def _lock_pins() -> Dict[str, str]:
    pins = {}
    for line in (REPO / 'requirements.lock').read_text().splitlines():
        name, sep, version = line.partition('==')
        if sep and not line.startswith('#'):
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.fixture(scope='module')
def dockerfile() -> List[Tuple[str, str]]:
    return _instructions((REPO / 'Dockerfile').read_text())


def _args(instructions) -> Dict[str, str]:
    return dict(rest.split('=', 1) for keyword, rest in instructions if keyword == 'ARG')


def test_image_installs_dependencies_exactly_as_the_local_install(dockerfile):
    image_installs = _pip_installs([rest for keyword, rest in dockerfile if keyword == 'RUN'])
    local_installs = _pip_installs(_install_script_commands())
    assert ['-c', 'requirements.lock', '-r', 'requirements.txt'] in local_installs
    assert image_installs == local_installs


def test_image_base_and_beam_worker_match_the_lock(dockerfile):
    pins = _lock_pins()
    args = _args(dockerfile)
    assert args['TFX_IMAGE'] == f'gcr.io/tfx-oss-public/tfx:{pins["tfx"]}'
    assert 'tfx[kfp]==' + pins['tfx'] in (REPO / 'requirements.txt').read_text()
    assert args['BEAM_VERSION'] == pins['apache-beam']
    setup_kwargs = _setup_kwargs()
    python = re.search(r'>=(\d+\.\d+)', setup_kwargs['python_requires']).group(1)
    froms = [rest for keyword, rest in dockerfile if keyword == 'FROM']
    assert froms[0] == f'apache/beam_python{python}_sdk:${{BEAM_VERSION}} AS beam_sdk'
    assert froms[-1] == '${TFX_IMAGE}'
    assert ('ENTRYPOINT', '["/opt/apache/beam/boot"]') in dockerfile
    env = ' '.join(rest for keyword, rest in dockerfile if keyword == 'ENV')
    assert 'TF_USE_LEGACY_KERAS=1' in env
    assert re.search(r'export TF_USE_LEGACY_KERAS := 1', (REPO / 'Makefile').read_text())


def _setup_kwargs() -> Dict[str, Any]:
    """What setup.py passes to setuptools.setup, found by running it with setup() stubbed."""
    captured = {}
    original_setup, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO)  # find_packages() looks in the working directory.
        runpy.run_path(str(REPO / 'setup.py'), run_name='__main__')
    finally:
        setuptools.setup = original_setup
        os.chdir(cwd)
    return captured


def test_image_copies_every_package_setup_py_installs(dockerfile):
    sources = []
    for keyword, rest in dockerfile:
        if keyword == 'COPY' and not rest.startswith('--from'):
            sources += [s.rstrip('/') for s in rest.split()[:-1]]
    for source in sources:
        assert (REPO / source).exists(), source
    # setup.py maps each folder onto the tfx_captioning namespace (package_dir).
    packages = set(_setup_kwargs()['package_dir'].values())
    assert packages >= {'models', 'components', 'pipeline', 'cli', 'serving', 'kubeflow'}
    assert packages <= set(sources), f'not copied into the image: {sorted(packages - set(sources))}'
    assert {'setup.py', 'requirements.txt', 'requirements.lock'} <= set(sources)
    # .dockerignore is an allow-list: everything copied must be allowed back in.
    ignore = [
        line.strip()
        for line in (REPO / '.dockerignore').read_text().splitlines()
        if line.strip() and not line.startswith('#')
    ]
    assert ignore[0] == '*'
    allowed = {line[1:].rstrip('/') for line in ignore if line.startswith('!')}
    assert set(sources) <= allowed, f'excluded by .dockerignore: {sorted(set(sources) - allowed)}'


# --- Local scale-out ------------------------------------------------------------------------


@pytest.mark.parametrize('workers, mode', [(1, 'in_memory'), (2, 'multi_processing')])
def test_local_runner_gives_every_beam_step_the_worker_args(tmp_path, monkeypatch, workers, mode):
    handed = []
    monkeypatch.setattr(
        tfx.orchestration.LocalDagRunner, 'run', lambda self, p, **kw: handed.append(p)
    )
    local_runner.run(str(tmp_path / 'data'), str(tmp_path / 'out'), beam_workers=workers)
    (pipeline,) = handed
    expected = [f'--direct_running_mode={mode}', f'--direct_num_workers={workers}']
    assert pipeline.beam_pipeline_args == expected
    beam_components = [
        c
        for c in pipeline.components
        if isinstance(c.executor_spec, executor_spec.BeamExecutorSpec)
    ]
    assert beam_components
    for component in beam_components:
        assert component.executor_spec.beam_pipeline_args[:2] == expected, component.id


def _examples_as_arrays(uri: str, split: str) -> List[Dict[str, np.ndarray]]:
    rows = []
    for example in _read_examples(uri, split):
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof('kind')
            row[key] = np.array(getattr(feature, kind).value)
        rows.append(row)
    # Worker count changes record order, not content: sort on exact (non-float) values.
    return sorted(
        rows, key=lambda r: [(k, r[k].tolist()) for k in sorted(r) if r[k].dtype.kind != 'f']
    )


@pytest.mark.slow
def test_two_beam_workers_transform_exactly_like_one(tmp_path, monkeypatch):
    config = kf_config.make_config(_valid(data_root=str(tmp_path / 'data')))
    transforms = [
        c
        for c in runner.build_pipeline(config).components
        if isinstance(c, tfx.components.Transform)
    ]
    assert len(transforms) == 1, f'create_pipeline should have one Transform: {transforms}'
    (transform,) = transforms
    data = tmp_path / 'data'
    sample_data.generate(str(data), 16, seed=3)
    # Only Transform and what it needs run: the steps after it cost minutes and
    # say nothing about Transform's output.
    original_run = tfx.orchestration.LocalDagRunner.run

    def run_to_transform(self, pipeline, run_options=None, **kwargs):
        del run_options
        options = tfx_pipeline.RunOptions(to_nodes=[transform.id])
        return original_run(self, pipeline, run_options=options, **kwargs)

    monkeypatch.setattr(tfx.orchestration.LocalDagRunner, 'run', run_to_transform)
    outputs = {}
    for workers in (1, 2):
        paths = local_runner.run(
            str(data),
            str(tmp_path / f'out{workers}'),
            beam_workers=workers,
            extractor=ExtractorParameters(weights='random'),
            hparams=HParams(min_word_count=1),
        )
        node_root = os.path.join(paths.pipeline_root, transform.id)
        (graph,) = glob.glob(
            os.path.join(node_root, standard_component_specs.TRANSFORM_GRAPH_KEY, '*')
        )
        (examples,) = glob.glob(
            os.path.join(node_root, standard_component_specs.TRANSFORMED_EXAMPLES_KEY, '*')
        )
        outputs[workers] = (graph, examples)

    def assets(graph_uri):
        directory = Path(graph_uri) / 'transform_fn' / 'assets'
        return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}

    one, two = outputs[1], outputs[2]
    assert assets(one[0]), 'Transform wrote no vocabulary'
    assert assets(one[0]) == assets(two[0])
    for split in features.SPLITS:
        rows_one, rows_two = _examples_as_arrays(one[1], split), _examples_as_arrays(two[1], split)
        assert len(rows_one) == len(rows_two)
        for row_one, row_two in zip(rows_one, rows_two):
            assert row_one.keys() == row_two.keys()
            for key in row_one:
                if key == features.NORMALIZED_REGIONS_KEY:
                    # Regions are stored as float16: where the two runs' float32
                    # outputs (see below) straddle a float16 rounding boundary,
                    # the stored values differ by one float16 step (2**-11
                    # relative), which the z-score scales up: measured on 0.11 %
                    # of values, by at most 3.7e-3.
                    differs = ~np.isclose(row_one[key], row_two[key], rtol=1e-4, atol=2e-4)
                    assert differs.mean() < 0.01, differs.mean()
                    np.testing.assert_allclose(row_one[key], row_two[key], rtol=0, atol=1e-2)
                elif row_one[key].dtype.kind == 'f':
                    # z-scored features (unit scale): oneDNN's InceptionV3 output
                    # depends on batch composition at ~1e-6 relative, and the z-score
                    # divides by small per-dimension deviations (measured: <= 6e-5).
                    np.testing.assert_allclose(row_one[key], row_two[key], rtol=1e-4, atol=2e-4)
                else:
                    np.testing.assert_array_equal(row_one[key], row_two[key])
