"""Production deployment files for the real TF Serving, checked as far as this machine allows.

No Docker or cluster here, so: the TF Serving configs parse with the real
protos (`ModelServerConfig`; `BatchingParameters` with its official schema),
the manifests parse as YAML with the fields Kubernetes requires, and ports,
paths, names, the image tag and the flags agree with each other, with
`pipeline.configs` and with the Pusher's `<serving_root>/<model>/<version>`
layout. The stand-in server then serves a pushed directory with the same
`models.config`.
"""

import importlib.metadata
import os
import posixpath
import re
import shlex
import subprocess

import pytest
import yaml

from tfx_captioning.models import features
from tfx_captioning.pipeline import configs
from tfx_captioning.serving import options, tf_serving_config
from tfx_captioning.serving.fixture_model import fixture_serving_images, publish_fixture_version

_DEPLOY_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'serving', 'deploy'
)
_MODELS_MOUNT = '/models'
"""Where the serving root volume is mounted in the container."""
_CONFIG_MOUNT = '/etc/tfserving'


def _path(name: str) -> str:
    return os.path.join(_DEPLOY_DIR, name)


def _yaml(name: str):
    with open(_path(name), encoding='utf-8') as manifest:
        return yaml.safe_load(manifest)


@pytest.fixture(scope='module')
def deployment():
    return _yaml('deployment.yaml')


@pytest.fixture(scope='module')
def container(deployment):
    (only,) = deployment['spec']['template']['spec']['containers']
    return only


def _flag_values(args):
    """['--a=1', '--b=x'] -> {'a': '1', 'b': 'x'}."""
    values = {}
    for arg in args:
        match = re.fullmatch(r'--([a-z_]+)=(.*)', arg)
        assert match, f'unexpected argument {arg!r}'
        values[match.group(1)] = match.group(2)
    return values


def _docker_command():
    """The `docker run` command of docker_run.sh, as an argument list."""
    with open(_path('docker_run.sh'), encoding='utf-8') as script:
        text = script.read().replace('\\\n', ' ')
    (line,) = [line for line in text.splitlines() if line.strip().startswith('exec docker run')]
    image = re.search(r'^IMAGE="([^"]+)"', text, re.MULTILINE).group(1)
    return shlex.split(line.strip())[1:], image


def test_models_config_parses_and_matches_the_pusher_layout():
    config = tf_serving_config.read_model_server_config(_path('models.config'))
    model = tf_serving_config.find_model_config(config, configs.MODEL_NAME)
    assert len(config.model_config_list.config) == 1
    assert model.model_platform == 'tensorflow'
    # The Pusher writes <serving_root>/<MODEL_NAME>/<version>; the volume holds serving_root.
    local_base = os.path.join(
        configs.LocalPaths(configs.DEFAULT_OUTPUT_ROOT).serving_root, configs.MODEL_NAME
    )
    relative = os.path.relpath(
        local_base, configs.LocalPaths(configs.DEFAULT_OUTPUT_ROOT).serving_root
    )
    assert model.base_path == posixpath.join(_MODELS_MOUNT, relative)
    assert model.model_version_policy.WhichOneof('policy_choice') == 'latest'
    assert model.model_version_policy.latest.num_versions >= 1


def test_batching_parameters_parse_with_the_official_schema():
    parameters = tf_serving_config.read_batching_parameters(_path('batching_parameters.txt'))
    assert parameters.DESCRIPTOR.full_name == 'tensorflow.serving.BatchingParameters'
    max_batch_size = parameters.max_batch_size.value
    assert max_batch_size >= 1
    assert parameters.batch_timeout_micros.value > 0
    assert parameters.num_batch_threads.value >= 1
    allowed = list(parameters.allowed_batch_sizes)
    # TF Serving refuses the file otherwise: increasing, ending at max_batch_size.
    assert allowed == sorted(set(allowed)) and allowed[-1] == max_batch_size
    with pytest.raises(ValueError, match='BatchingParameters'):
        tf_serving_config.parse_batching_parameters('max_batch_sise { value: 8 }')


def test_deployment_runs_tf_serving_matching_the_installed_api(deployment, container):
    assert deployment['apiVersion'] == 'apps/v1' and deployment['kind'] == 'Deployment'
    template_labels = deployment['spec']['template']['metadata']['labels']
    assert deployment['spec']['selector']['matchLabels'].items() <= template_labels.items()
    assert deployment['spec']['strategy']['rollingUpdate']['maxUnavailable'] == 0
    api_version = importlib.metadata.version('tensorflow-serving-api')
    assert container['image'] == f'tensorflow/serving:{api_version}'
    assert container['command'] == ['tensorflow_model_server']


def test_deployment_ports_probe_resources_and_volumes(deployment, container):
    flags = _flag_values(container['args'])
    ports = {port['name']: port['containerPort'] for port in container['ports']}
    assert ports == {'grpc': options.GRPC_PORT, 'http': options.REST_PORT}
    assert flags['port'] == str(options.GRPC_PORT)
    assert flags['rest_api_port'] == str(options.REST_PORT)
    assert flags['enable_batching'] == 'true'

    probe = container['readinessProbe']['httpGet']
    assert probe['path'] == f'/v1/models/{configs.MODEL_NAME}'
    assert probe['port'] in ports
    assert container['livenessProbe']['tcpSocket']['port'] in ports
    requests = container['resources']['requests']
    assert requests['cpu'] and requests['memory']
    parameters = tf_serving_config.read_batching_parameters(_path('batching_parameters.txt'))
    assert parameters.num_batch_threads.value <= int(requests['cpu'])

    mounts = {mount['name']: mount for mount in container['volumeMounts']}
    volumes = {
        volume['name']: volume for volume in deployment['spec']['template']['spec']['volumes']
    }
    assert set(mounts) == set(volumes)
    assert mounts['models']['mountPath'] == _MODELS_MOUNT and mounts['models']['readOnly']
    claim = volumes['models']['persistentVolumeClaim']['claimName']
    assert claim == _yaml('persistentvolumeclaim.yaml')['metadata']['name']
    config_mount = mounts['serving-config']['mountPath']
    assert config_mount == _CONFIG_MOUNT
    assert flags['model_config_file'] == posixpath.join(config_mount, 'models.config')
    assert flags['batching_parameters_file'] == posixpath.join(
        config_mount, 'batching_parameters.txt'
    )
    config_map = volumes['serving-config']['configMap']['name']
    (generator,) = _yaml('kustomization.yaml')['configMapGenerator']
    assert generator['name'] == config_map
    assert sorted(generator['files']) == ['batching_parameters.txt', 'models.config']

    model = tf_serving_config.find_model_config(
        tf_serving_config.read_model_server_config(_path('models.config')), configs.MODEL_NAME
    )
    assert model.base_path.startswith(_MODELS_MOUNT + '/')


def test_service_exposes_grpc_and_rest(deployment):
    service = _yaml('service.yaml')
    assert service['apiVersion'] == 'v1' and service['kind'] == 'Service'
    labels = deployment['spec']['template']['metadata']['labels']
    assert service['spec']['selector'].items() <= labels.items()
    ports = {port['name']: (port['port'], port['targetPort']) for port in service['spec']['ports']}
    assert ports == {'grpc': (options.GRPC_PORT, 'grpc'), 'http': (options.REST_PORT, 'http')}
    assert service['metadata']['name'] == deployment['metadata']['name']


def test_kustomization_lists_existing_files():
    kustomization = _yaml('kustomization.yaml')
    for name in kustomization['resources'] + kustomization['configMapGenerator'][0]['files']:
        assert os.path.isfile(_path(name)), name
    for name in kustomization['resources']:
        document = _yaml(name)
        assert document['apiVersion'] and document['kind'] and document['metadata']['name']


def test_docker_run_uses_the_same_image_flags_and_mounts(container):
    subprocess.run(['bash', '-n', _path('docker_run.sh')], check=True)
    assert os.access(_path('docker_run.sh'), os.X_OK)
    command, image = _docker_command()
    assert image == container['image']
    image_index = command.index('${IMAGE}')
    assert _flag_values(command[image_index + 1 :]) == _flag_values(container['args'])
    assert command[command.index('--entrypoint') + 1] == container['command'][0]
    published = [command[index + 1] for index, arg in enumerate(command) if arg == '-p']
    assert published == [
        f'127.0.0.1:{options.GRPC_PORT}:{options.GRPC_PORT}',
        f'127.0.0.1:{options.REST_PORT}:{options.REST_PORT}',
    ]
    targets = {
        re.search(r'target=([^,]+)', command[index + 1]).group(1)
        for index, arg in enumerate(command)
        if arg == '--mount'
    }
    assert targets == {_MODELS_MOUNT, _CONFIG_MOUNT}
    with open(_path('docker_run.sh'), encoding='utf-8') as script:
        default_root = re.search(r'\$\{1:-([^}]+)\}', script.read()).group(1)
    assert default_root == configs.LocalPaths(configs.DEFAULT_OUTPUT_ROOT).serving_root


def test_stand_in_serves_a_pushed_directory_with_the_production_config(
    tmp_path, fixture_caption_models
):
    """models.config's version policy (latest 2) governs the stand-in as it would TF Serving."""
    from tfx_captioning.serving import client, server

    serving_root = tmp_path / 'serving'
    base_path = str(serving_root / configs.MODEL_NAME)
    for version, noun in ((1, 'picture'), (2, 'picture'), (3, 'photo')):
        publish_fixture_version(fixture_caption_models[noun], base_path, version)
    config = tf_serving_config.read_model_server_config(_path('models.config'))
    with server.CaptionServer.for_model_config(
        config,
        server.ServerOptions(port=0),
        base_path_overrides={configs.MODEL_NAME: base_path},
    ) as caption_server:
        assert caption_server.managers[configs.MODEL_NAME].served_versions == [2, 3]
        with client.CaptionClient(caption_server.target) as caption_client:
            red = fixture_serving_images()['red.jpg']
            assert caption_client.caption([red]).captions[0].text == 'a red photo'
            pinned = caption_client.caption([red], version=2)
            assert (pinned.version, pinned.captions[0].text) == (2, 'a red picture')
            metadata = caption_client.metadata()
            assert set(metadata.signatures) == {
                features.SERVING_SIGNATURE,
                features.FEATURES_SIGNATURE,
                features.BEAM_SIGNATURE,
                features.BEAM_FEATURES_SIGNATURE,
            }
