"""The whole compiled Kubeflow pipeline, run step by step as Kubeflow would, equals a local run.

`tests/kfp_local.py` plays the KFP backend for every task of the compiled
spec, in dependency order: each executor step runs its container command
(`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`
with the spec's arguments) in its own process, with only the image's
environment, and hands its output artifacts on to the next steps. The
latest-blessed-model Resolver resolves as on a first run: empty lists, so
the evaluator has no baseline model.

The same settings (one `KubeflowConfig`, mapped onto the same parameter
objects) also run under TFX's LocalDagRunner; both runs must give the same
vocabulary and the same captions on the test images, from the SavedModel and
from the TFLite file each pushed.
"""

import dataclasses
import glob
import os
import time
from pathlib import Path
from typing import Dict, List

import pytest
import tensorflow as tf
from kfp.pipeline_spec import pipeline_spec_pb2

from tests import kfp_local
from tfx_captioning.cli import pipeline_cli, sample_data, summary
from tfx_captioning.components.caption_pusher import executor as pusher_executor
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.components.image_feature_extractor import spec as extractor_spec
from tfx_captioning.kubeflow import config as kf_config
from tfx_captioning.kubeflow import runner
from tfx_captioning.models import features
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner
from tfx_captioning.pipeline import configs, local_runner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXECUTOR_COMMAND = [
    'python',
    '-m',
    'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor',
]
NUM_IMAGES = 96
# As tests/test_e2e.py: small enough to train in well under a minute on 2
# cores, big enough to learn colour and shape from random-weight features and
# clearly beat the most-frequent-caption baseline (measured: CIDEr-D 1.9 vs
# 0.6), so the gate blesses and both runs push.
SETTINGS = {
    'hparams': {
        'min_word_count': 1,
        'embedding_dim': 32,
        'units': 96,
        'num_layers': 2,
        'epochs': 30,
        'patience': 4,
        'batch_size': 32,
        'max_len': 12,
        'tflite_quantization': 'float32',
    },
    'extractor': {'weights': 'random'},
    'gate': {'min_margin_over_baseline': 0},
    # Ship the TFLite file even when a few eval images flip through the
    # device's (Pillow) image path: this checks the path, not TFLite fidelity,
    # which tests/test_e2e.py gates at the default 95 %.
    'min_tflite_agreement': 0.5,
}


@dataclasses.dataclass
class KfpRun:
    config: kf_config.KubeflowConfig
    spec: pipeline_spec_pb2.PipelineSpec
    runner: kfp_local.LocalSpecRunner
    wall_s: float


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp('kfp_run_data') / 'flickr8k')
    sample_data.generate(path, NUM_IMAGES, seed=11)
    return path


@pytest.fixture(scope='module')
def kfp_run(tmp_path_factory, data) -> KfpRun:
    """Compiles the pipeline and runs every task of the spec through the backend's motions."""
    root = tmp_path_factory.mktemp('kfp_run')
    config = kf_config.make_config(
        {
            'image': 'registry.example.com/team/flickr8k-captioning:test',
            'pipeline_root': str(root / 'pipeline_root'),
            'data_root': data,
            'serving_root': str(root / 'serving'),
            'tflite_root': str(root / 'tflite'),
            'model_name': configs.MODEL_NAME,
            'output_file': str(root / 'pipeline.yaml'),
            'beam_pipeline_args': configs.beam_args_for_local(1),
            **SETTINGS,
        }
    )
    start = time.monotonic()
    runner.compile_pipeline(config)
    spec = runner.load_pipeline_spec(config.output_file)
    spec_runner = kfp_local.LocalSpecRunner(
        spec,
        config.pipeline_root,
        env=kfp_local.image_environment(
            kfp_local.dockerfile_env(str(REPO / 'Dockerfile')), home=str(root / 'home')
        ),
        inherit_env=False,
    )
    spec_runner.run_all()
    wall_s = time.monotonic() - start
    print(f'\nKFP spec run: {wall_s:.0f} s; per task: ' + _format_times(spec_runner.wall_s))
    return KfpRun(config, spec, spec_runner, wall_s)


@pytest.fixture(scope='module')
def local_paths(tmp_path_factory, data, kfp_run) -> configs.LocalPaths:
    """The same create_pipeline settings under LocalDagRunner (in this process, DirectRunner)."""
    objects = kfp_run.config.parameter_objects()
    start = time.monotonic()
    paths = local_runner.run(
        data,
        str(tmp_path_factory.mktemp('local_run')),
        hparams=objects['hparams'],
        extractor=objects['extractor'],
        evaluator=objects['evaluator'],
        min_tflite_agreement=objects['pusher'].min_tflite_agreement,
    )
    print(f'\nLocalDagRunner run: {time.monotonic() - start:.0f} s')
    return paths


def _format_times(times: Dict[str, float]) -> str:
    return ', '.join(f'{name} {seconds:.0f} s' for name, seconds in times.items())


def _single(
    output: pipeline_spec_pb2.ExecutorOutput, key: str
) -> pipeline_spec_pb2.RuntimeArtifact:
    (artifact,) = output.artifacts[key].artifacts
    return artifact


def _test_images(data: str) -> List[bytes]:
    ids = layout.read_lines(os.path.join(data, layout.SPLIT_FILES[features.TEST_SPLIT]))
    assert ids
    images = []
    for image_id in ids:
        with open(os.path.join(data, layout.IMAGES_DIR, image_id), 'rb') as f:
            images.append(f.read())
    return images


def _vocabulary(transform_graph_uri: str) -> Dict[str, bytes]:
    assets = Path(transform_graph_uri) / 'transform_fn' / 'assets'
    return {path.name: path.read_bytes() for path in sorted(assets.iterdir())}


def _records(uri: str, split: str) -> Dict[bytes, bytes]:
    """image_id -> the tf.Example's features, serialized deterministically."""
    files = sorted(glob.glob(os.path.join(uri, f'Split-{split}', '*')))
    rows = {}
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        image_id = example.features.feature[features.IMAGE_ID_KEY].bytes_list.value[0]
        rows[image_id] = example.SerializeToString(deterministic=True)
    return rows


def _first_difference(kfp_run: KfpRun, local_paths: configs.LocalPaths) -> str:
    """Which artifact first differs between the two runs (to diagnose a caption mismatch)."""
    for task, key in (
        ('Flickr8kExampleGen', 'examples'),
        ('ImageFeatureExtractor', 'feature_examples'),
        ('Transform', 'transformed_examples'),
    ):
        kfp_uri = _single(kfp_run.runner.outputs[task], key).uri
        (local_uri,) = glob.glob(os.path.join(local_paths.pipeline_root, task, key, '*'))
        for split in features.SPLITS:
            if _records(kfp_uri, split) != _records(local_uri, split):
                return f'{task}.{key} differs in split {split!r}'
    return 'the inputs of the Trainer are equal: training differed'


# --- The spec runs, step by step -------------------------------------------------------


def test_every_task_runs_after_its_dependencies_and_every_executor_through_its_container_command(
    kfp_run,
):
    tasks = kfp_run.spec.root.dag.tasks
    order = kfp_run.runner.task_order()
    assert sorted(order) == sorted(tasks)
    assert set(kfp_run.runner.outputs) == set(tasks)
    for name in order:
        upstream = set(tasks[name].dependent_tasks) | {
            a.task_output_artifact.producer_task for a in tasks[name].inputs.artifacts.values()
        }
        assert all(order.index(u) < order.index(name) for u in upstream), name
    containers = [n for n in order if kfp_run.runner.executor_kind(n) == 'container']
    resolvers = [n for n in order if kfp_run.runner.executor_kind(n) == 'resolver']
    assert sorted(containers + resolvers) == sorted(order)
    assert {'Flickr8kExampleGen', 'ImageFeatureExtractor', 'Transform', 'Trainer'} <= set(
        containers
    )
    assert {'CaptionEvaluator', 'CaptionPusher'} <= set(containers)
    for name in containers:
        # Each process the backend would start, in order (ExampleGen's driver first).
        assert kfp_run.runner.commands[name][-1][:3] == EXECUTOR_COMMAND, name
        output = kfp_run.runner.outputs[name]
        component = kfp_run.spec.components[tasks[name].component_ref.name]
        assert set(output.artifacts) == set(component.output_definitions.artifacts), name


def test_the_resolver_finds_no_blessed_model_so_the_first_model_has_no_baseline(kfp_run):
    resolvers = [
        n for n in kfp_run.runner.task_order() if kfp_run.runner.executor_kind(n) == 'resolver'
    ]
    assert len(resolvers) == 2  # latest ModelBlessing, then the Model it names
    for name in resolvers:
        assert all(not a.artifacts for a in kfp_run.runner.outputs[name].artifacts.values())
    evaluator_input = kfp_run.runner.executor_input('CaptionEvaluator')
    assert list(evaluator_input.inputs.artifacts['baseline_model'].artifacts) == []
    blessing = kfp_local.artifact_metadata(kfp_run.runner.outputs['CaptionEvaluator'], 'blessing')
    assert blessing['blessed'] == 1, blessing


def test_the_run_ends_with_a_pushed_saved_model_and_tflite_file(kfp_run):
    pushed = kfp_local.artifact_metadata(kfp_run.runner.outputs['CaptionPusher'], 'pushed_model')
    assert pushed['pushed'] == 1, pushed
    saved_model = pushed['pushed_destination']
    assert saved_model.startswith(os.path.join(kfp_run.config.serving_root, configs.MODEL_NAME))
    assert os.path.isfile(os.path.join(saved_model, 'saved_model.pb'))
    tflite_dir = pushed[pusher_executor.TFLITE_DESTINATION_KEY]
    assert tflite_dir.startswith(os.path.join(kfp_run.config.tflite_root, configs.MODEL_NAME))
    assert os.path.getsize(os.path.join(tflite_dir, features.TFLITE_FILE)) > 0
    # The encoder the Trainer built the SavedModel on is the extractor's, handed on by URI.
    encoder = _single(kfp_run.runner.outputs['ImageFeatureExtractor'], extractor_spec.ENCODER_KEY)
    trainer_input = kfp_run.runner.executor_input('Trainer')
    assert trainer_input.inputs.artifacts['base_model'].artifacts[0].uri == encoder.uri


def test_the_same_vocabulary_and_captions_as_the_local_dag_runner(kfp_run, local_paths, data):
    transform_graph = _single(kfp_run.runner.outputs['Transform'], 'transform_graph')
    (local_graph,) = glob.glob(
        os.path.join(local_paths.pipeline_root, 'Transform', 'transform_graph', '*')
    )
    kfp_vocabulary = _vocabulary(transform_graph.uri)
    assert kfp_vocabulary, 'Transform wrote no vocabulary'
    assert kfp_vocabulary == _vocabulary(local_graph)

    local = summary.latest_pushed(summary.open_store(local_paths.metadata_path))
    assert local, 'the local run pushed nothing'
    pushed = kfp_local.artifact_metadata(kfp_run.runner.outputs['CaptionPusher'], 'pushed_model')
    images = _test_images(data)
    kfp_captions = pipeline_cli.caption_bytes(pushed['pushed_destination'], images)
    assert all(kfp_captions), kfp_captions
    local_captions = pipeline_cli.caption_bytes(local['saved_model'], images)
    assert kfp_captions == local_captions, _first_difference(kfp_run, local_paths)

    kfp_tflite = TFLiteCaptioner(
        os.path.join(pushed[pusher_executor.TFLITE_DESTINATION_KEY], features.TFLITE_FILE)
    )
    local_tflite = TFLiteCaptioner(local['tflite'])
    assert [kfp_tflite.caption(i) for i in images] == [local_tflite.caption(i) for i in images]
