"""The gRPC client library and the `caption-client` / `caption-server` CLIs, over loopback.

Retries: only UNAVAILABLE is retried, with growing backoff, and a client
started before its server succeeds once the server is up. CLI: one line of
output per image, one line of error and a non-zero exit for any failure.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tests.conftest import loopback_free_port
from tfx_captioning.models import features
from tfx_captioning.pipeline import configs
from tfx_captioning.serving import client as client_lib
from tfx_captioning.serving import client_cli, server_cli
from tfx_captioning.serving.fixture_model import (
    fixture_in_process_captions,
    fixture_serving_images,
)

pytestmark = pytest.mark.timeout(180)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEPLOY_DIR = os.path.join(_REPO_ROOT, 'serving', 'deploy')


@pytest.fixture
def images():
    return fixture_serving_images()


@pytest.fixture
def running(fixture_model_base_path, start_caption_server):
    return start_caption_server(fixture_model_base_path)


class _RecordingSleep:
    """Stands in for time.sleep: records the backoff waits, sleeps a little for real."""

    def __init__(self, real_fraction: float = 0.0):
        self.waits = []
        self._real_fraction = real_fraction

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds * self._real_fraction)


def test_caption_several_images_in_one_request(running, fixture_model_base_path, images):
    names = list(images)
    expected = fixture_in_process_captions(
        os.path.join(fixture_model_base_path, '1'), [images[name] for name in names]
    )
    with client_lib.CaptionClient(running.target) as client:
        result = client.caption([images[name] for name in names])
    assert result.model_name == configs.MODEL_NAME
    assert result.version == 1
    assert [caption.text for caption in result.captions] == expected
    for caption in result.captions:
        assert caption.length == len(caption.text.split())
        end_id = features.RESERVED_TOKENS.index(features.END_TOKEN)
        assert caption.token_ids[-1] == end_id
        assert len(caption.token_ids) == caption.length + 1


def test_metadata_and_status(running):
    with client_lib.CaptionClient(running.target) as client:
        metadata = client.metadata()
        states = client.status()
    assert metadata.version == 1
    serving = metadata.signatures[features.SERVING_SIGNATURE]
    assert serving.inputs[features.IMAGE_BYTES_INPUT] == client_lib.TensorSummary('string', (None,))
    assert serving.outputs[features.TOKEN_IDS_OUTPUT] == client_lib.TensorSummary(
        'int32', (None, features.MAX_LEN)
    )
    assert features.FEATURES_SIGNATURE in metadata.signatures
    assert states == [client_lib.VersionState(1, 'AVAILABLE', 'OK', '')]


def test_errors_carry_the_grpc_code_and_are_not_retried(running, images):
    sleep = _RecordingSleep()
    with client_lib.CaptionClient(running.target, 'no-such-model', sleep=sleep) as client:
        with pytest.raises(client_lib.CaptionClientError) as raised:
            client.caption([images['red.jpg']])
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.attempts == 1
    assert sleep.waits == []
    assert str(raised.value).startswith('Predict failed: NOT_FOUND: ')
    with client_lib.CaptionClient(running.target, sleep=sleep) as client:
        with pytest.raises(client_lib.CaptionClientError) as raised:
            client.caption([b'not an image'])
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(client_lib.CaptionClientError) as raised:
            client.caption([images['red.jpg']], version=42)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError):
            client.caption([images['red.jpg']], version=1, version_label='stable')
        with pytest.raises(ValueError):
            client.caption([])
    assert sleep.waits == []


def test_unavailable_is_retried_with_exponential_backoff_then_reported(images):
    port = loopback_free_port()  # Nothing listens there.
    sleep = _RecordingSleep()
    retry = client_lib.RetryPolicy(max_attempts=4, initial_backoff_s=0.1, multiplier=2, jitter=0)
    with client_lib.CaptionClient(
        f'127.0.0.1:{port}', timeout_s=2, retry=retry, sleep=sleep
    ) as client:
        with pytest.raises(client_lib.CaptionClientError) as raised:
            client.caption([images['red.jpg']])
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.attempts == 4
    assert sleep.waits == pytest.approx([0.1, 0.2, 0.4])


def test_backoff_is_capped_and_jittered():
    policy = client_lib.RetryPolicy(initial_backoff_s=1, multiplier=10, max_backoff_s=3, jitter=0.2)
    waits = [policy.backoff_s(retry) for retry in range(1, 6)]
    assert 0.8 <= waits[0] <= 1.2
    assert all(2.4 <= wait <= 3.6 for wait in waits[1:])
    with pytest.raises(ValueError):
        client_lib.RetryPolicy(max_attempts=0).validate()


def test_client_started_before_the_server_succeeds_once_it_is_up(
    fixture_model_base_path, start_caption_server, images
):
    port = loopback_free_port()
    sleep = _RecordingSleep(real_fraction=1.0)
    retry = client_lib.RetryPolicy(max_attempts=30, initial_backoff_s=0.05, max_backoff_s=0.5)
    outcome = {}

    def caption_early():
        with client_lib.CaptionClient(
            f'127.0.0.1:{port}', timeout_s=5, retry=retry, sleep=sleep
        ) as client:
            try:
                outcome['result'] = client.caption([images['red.jpg']])
            except client_lib.CaptionClientError as error:
                outcome['error'] = error

    thread = threading.Thread(target=caption_early)
    thread.start()
    time.sleep(1.0)  # The client is already failing and backing off.
    start_caption_server(fixture_model_base_path, port=port)
    thread.join(60)
    assert 'error' not in outcome, outcome.get('error')
    assert outcome['result'].captions[0].text == 'a red picture'
    assert len(sleep.waits) >= 2  # It really retried.


# --- caption-client CLI -------------------------------------------------------------


def _write_images(tmp_path, images, names):
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_bytes(images[name])
        paths.append(str(path))
    return paths


def test_cli_prints_one_caption_per_image(running, tmp_path, images, capsys):
    paths = _write_images(tmp_path, images, ['red.jpg', 'blue.png'])
    status = client_cli.main(['--server', running.target, *paths])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.splitlines() == [f'{paths[0]}\ta red picture', f'{paths[1]}\ta blue picture']


def test_beam_signature_through_the_client_and_the_cli(running, tmp_path, images, capsys):
    with client_lib.CaptionClient(running.target) as client:
        beam = client.caption(
            [images['red.jpg'], images['blue.png']], signature=features.BEAM_SIGNATURE
        )
        greedy = client.caption([images['red.jpg']])
        metadata = client.metadata()
    assert [caption.text for caption in beam.captions] == ['a red picture', 'a blue picture']
    assert all(caption.log_prob < 0 for caption in beam.captions)
    assert greedy.captions[0].log_prob is None  # the greedy signature has no log_prob
    outputs = metadata.signatures[features.BEAM_SIGNATURE].outputs
    assert outputs[features.LOG_PROB_OUTPUT] == client_lib.TensorSummary('float32', (None,))
    assert features.BEAM_FEATURES_SIGNATURE in metadata.signatures

    paths = _write_images(tmp_path, images, ['green.gif'])
    for flags in (['--beam'], ['--signature', features.BEAM_SIGNATURE]):
        assert client_cli.main(['--server', running.target, '--json', *flags, *paths]) == 0
        caption = json.loads(capsys.readouterr().out)['captions'][0]
        assert caption['text'] == 'a green picture'
        assert caption['log_prob'] < 0
    assert client_cli.main(['--server', running.target, '--beam', *paths]) == 0
    assert capsys.readouterr().out == f'{paths[0]}\ta green picture\n'
    # An unknown signature is TF Serving's FAILED_PRECONDITION, one line, exit 1.
    assert client_cli.main(['--server', running.target, '--signature', 'nope', *paths]) == 1
    assert 'FAILED_PRECONDITION' in capsys.readouterr().err


def test_cli_json_metadata_and_status(running, tmp_path, images, capsys):
    paths = _write_images(tmp_path, images, ['green.gif'])
    assert client_cli.main(['--server', running.target, '--json', *paths]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['version'] == 1
    assert printed['captions'][0]['text'] == 'a green picture'
    assert client_cli.main(['--server', running.target, '--metadata']) == 0
    out = capsys.readouterr().out
    assert f'signature {features.SERVING_SIGNATURE}' in out
    assert f'input {features.IMAGE_BYTES_INPUT}: string [None]' in out
    assert client_cli.main(['--server', running.target, '--status']) == 0
    assert capsys.readouterr().out.strip() == 'version 1: AVAILABLE'


@pytest.mark.parametrize(
    'extra_args, file_bytes, expected_status, expected_text',
    [
        (['--model', 'no-such-model'], None, 1, 'NOT_FOUND'),
        (['--version', '9'], None, 1, 'NOT_FOUND'),
        (['--version-label', 'stable'], None, 1, 'INVALID_ARGUMENT'),
        ([], b'this is not an image', 1, 'INVALID_ARGUMENT'),
    ],
)
def test_cli_server_errors_are_one_line_and_exit_1(
    running, tmp_path, images, capsys, extra_args, file_bytes, expected_status, expected_text
):
    path = tmp_path / 'input.jpg'
    path.write_bytes(file_bytes if file_bytes is not None else images['red.jpg'])
    status = client_cli.main(['--server', running.target, *extra_args, str(path)])
    out, err = capsys.readouterr()
    assert status == expected_status
    assert out == ''
    assert len(err.strip().splitlines()) == 1
    assert err.startswith('caption-client: error: Predict failed: ' + expected_text)
    assert 'Traceback' not in err


def test_cli_local_and_connection_errors(tmp_path, capsys):
    missing = str(tmp_path / 'missing.jpg')
    assert client_cli.main(['--server', '127.0.0.1:1', missing]) == 2
    assert capsys.readouterr().err.count('\n') == 1
    port = loopback_free_port()
    image = tmp_path / 'image.jpg'
    image.write_bytes(fixture_serving_images()['red.jpg'])
    status = client_cli.main(
        ['--server', f'127.0.0.1:{port}', '--retries', '1', '--timeout', '2', str(image)]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert 'UNAVAILABLE' in err and err.count('\n') == 1


# --- caption-server CLI --------------------------------------------------------------


def test_server_cli_rejects_bad_settings_with_one_line(tmp_path, capsys):
    bad_config = tmp_path / 'models.config'
    bad_config.write_text('model_config_list { config { nme: "x" } }')
    status = server_cli.main(['--model-config-file', str(bad_config), '--port', '0'])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith('caption-server: error:') and err.count('\n') == 1


def test_server_cli_serves_with_the_deploy_config_files(fixture_model_base_path, images):
    """`caption-server` as a process, with the checked-in models.config and batching file."""
    command = [
        sys.executable,
        '-m',
        'tfx_captioning.serving.server_cli',
        '--model-config-file',
        os.path.join(_DEPLOY_DIR, 'models.config'),
        '--batching-parameters-file',
        os.path.join(_DEPLOY_DIR, 'batching_parameters.txt'),
        '--model-base-path',
        fixture_model_base_path,
        '--port',
        '0',
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO_ROOT)
    process = subprocess.Popen(
        command,
        cwd=_REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # The server prints one line when it listens.
        match = re.search(r'on (127\.0\.0\.1:\d+), batching up to 8', line)
        assert match, line + process.stderr.read() if not line else line
        with client_lib.CaptionClient(match.group(1)) as client:
            result = client.caption([images['red.jpg'], images['yellow.bmp']])
        assert [caption.text for caption in result.captions] == [
            'a red picture',
            'a yellow picture',
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
