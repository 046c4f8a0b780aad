"""Both caption commands on a folder of good and bad images, and the bomb through every runtime.

`caption-pipeline caption` runs a real SavedModel in-process and
`caption-tflite` a real TFLite interpreter (the TEST FIXTURE models of
`serving/fixture_model.py`, which caption by mean colour). Each must caption
every good image, name every bad one with its reason, agree file by file,
and exit 0 / 1 / 2.
"""

import json
import os

import grpc
import pytest
import tensorflow as tf

from tests import bad_images
from tfx_captioning.cli import pipeline_cli
from tfx_captioning.models import features, image_files, tflite_runtime
from tfx_captioning.serving import client as client_lib
from tfx_captioning.serving import tflite_cli
from tfx_captioning.serving.fixture_model import build_fixture_tflite_model, fixture_image_bytes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return bad_images.write_image_folder(str(tmp_path_factory.mktemp('images') / 'photos'))


@pytest.fixture(scope='module')
def saved_model(fixture_caption_models):
    return fixture_caption_models['picture']


@pytest.fixture(scope='module')
def tflite_model(tmp_path_factory):
    return build_fixture_tflite_model(str(tmp_path_factory.mktemp('tflite')))


def caption_pipeline(*argv):
    return pipeline_cli.main(['--output', '/nonexistent-output', 'caption', *argv])


def test_caption_pipeline_captions_the_good_and_names_the_bad(folder, saved_model, capsys):
    assert caption_pipeline('--model-dir', saved_model, folder) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f'{os.path.join(folder, name)}\t{caption}' for name, caption in bad_images.GOOD.items()
    ]
    errors = err.splitlines()
    assert errors[-1] == '4 of 7 files could not be captioned.'
    assert len(errors) == 1 + len(bad_images.BAD)
    for line, (name, reason) in zip(errors, bad_images.BAD.items()):
        assert line.startswith(f'{os.path.join(folder, name)}\terror: {reason}'), line
    assert 'Graph execution error' not in err and 'Traceback' not in err


def test_both_commands_agree_file_by_file_in_json(folder, saved_model, tflite_model, capsys):
    outputs = []
    for run in (
        lambda: caption_pipeline('--model-dir', saved_model, '--json', folder),
        lambda: tflite_cli.main([tflite_model, folder, '--json']),
    ):
        assert run() == 1
        out, err = capsys.readouterr()
        assert 'error' not in err
        outputs.append([json.loads(line) for line in out.splitlines()])
    in_process, on_device = outputs
    files = [os.path.join(folder, name) for name in sorted({**bad_images.GOOD, **bad_images.BAD})]
    for results in outputs:
        assert [result['file'] for result in results] == files
        for result in results:
            name = os.path.basename(result['file'])
            if name in bad_images.GOOD:
                assert result == {'file': result['file'], 'caption': bad_images.GOOD[name]}
            else:
                assert set(result) == {'file', 'error'}
                assert result['error'].startswith(bad_images.BAD[name] + ':') or (
                    result['error'] == bad_images.BAD[name]
                )
    # The header checks are shared, so the reasons are the very same words;
    # only the decoder's own message about a truncated file differs.
    header_refusals = [r for r in in_process if r.get('error', '').split(':')[0] != 'not decodable']
    assert header_refusals == [
        r for r in on_device if r.get('error', '').split(':')[0] != 'not decodable'
    ]


def test_all_good_images_exit_zero(folder, saved_model, tflite_model, capsys):
    good = [os.path.join(folder, name) for name in bad_images.GOOD]
    assert caption_pipeline('--model-dir', saved_model, *good) == 0
    assert tflite_cli.main([os.path.dirname(tflite_model), *good]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 * len(good) and 'error' not in err


def test_a_failing_batch_falls_back_to_one_call_per_image(saved_model, folder, capsys):
    """A truncated JPEG passes the header check and fails the whole graph call."""
    names = ['a_red.jpg', 'c_truncated.jpg', 'b_blue.PNG']
    paths = [os.path.join(folder, name) for name in names]
    signature = pipeline_cli.load_caption_signature(saved_model)
    results = list(pipeline_cli.caption_files(signature, paths, batch_size=3))
    assert [r.caption for r in results] == ['a red picture', None, 'a blue picture']
    assert results[1].error.startswith('not decodable: ') and 'JPEG' in results[1].error
    assert 'node' not in results[1].error  # TensorFlow's graph noise is cleaned away


def test_missing_files_are_reported_and_the_rest_captioned(tmp_path, saved_model, folder, capsys):
    good = os.path.join(folder, 'a_red.jpg')
    assert caption_pipeline('--model-dir', saved_model, str(tmp_path / 'gone.jpg'), good) == 1
    out, err = capsys.readouterr()
    assert out == f'{good}\ta red picture\n'
    assert f'{tmp_path / "gone.jpg"}\terror: unreadable: no such file' in err


@pytest.mark.parametrize('where', ['missing', 'file', 'empty_dir', 'base_path', 'not_a_captioner'])
def test_a_model_dir_that_is_not_a_pushed_model_is_a_usage_error(
    where, tmp_path, fixture_model_base_path, folder, capsys
):
    paths = {
        'missing': (str(tmp_path / 'nope'), 'does not exist'),
        'file': (os.path.join(folder, 'a_red.jpg'), 'is a file, not a SavedModel version'),
        'empty_dir': (str(tmp_path), 'has no saved_model.pb'),
        'base_path': (
            fixture_model_base_path,
            f'holds model versions 1: give one, e.g. --model-dir {fixture_model_base_path}/1',
        ),
    }
    if where == 'not_a_captioner':
        module = tf.Module()
        module.f = tf.function(lambda x: x, input_signature=[tf.TensorSpec([], tf.float32)])
        tf.saved_model.save(module, str(tmp_path / 'other'), signatures={'f': module.f})
        paths[where] = (str(tmp_path / 'other'), "no 'serving_default' signature taking")
    model_dir, message = paths[where]
    assert caption_pipeline('--model-dir', model_dir, folder) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --model-dir: ') and message in err
    assert len(err.splitlines()) == 1


def test_verbose_shows_the_traceback(tmp_path, folder, capsys):
    argv = ['--verbose', 'caption', '--model-dir', str(tmp_path / 'nope'), folder]
    assert pipeline_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert 'Traceback' in err and 'ModelDirError' in err


def test_no_run_yet_and_nothing_pushed_yet(tmp_path, folder, capsys):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from tfx_captioning.pipeline import configs

    output = str(tmp_path / 'build')
    for command in (['caption', folder], ['report']):
        assert pipeline_cli.main(['--output', output, *command]) == 2
        err = capsys.readouterr().err
        assert 'No ML Metadata store' in err and 'run the pipeline first' in err
        assert len(err.splitlines()) == 1
    # A store with no push yet: the run stopped early, or its model was not blessed.
    metadata_path = configs.LocalPaths(os.path.abspath(output)).metadata_path
    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    )
    metadata_store.MetadataStore(config)
    assert pipeline_cli.main(['--output', output, 'caption', folder]) == 2
    assert capsys.readouterr().err == (
        'error: no model has been pushed yet: run `caption-pipeline run`.\n'
    )
    assert pipeline_cli.main(['--output', output, 'report']) == 2
    assert 'No model evaluation in this run yet' in capsys.readouterr().err


@pytest.mark.parametrize('model', ['missing', 'not_tflite'])
def test_caption_tflite_refuses_a_model_it_cannot_load(model, tmp_path, folder, capsys):
    path = tmp_path / 'model.tflite'
    if model == 'not_tflite':
        path.write_bytes(b'not a flatbuffer' * 10)
        (tmp_path / features.TFLITE_VOCAB_FILE).write_text('<pad>\n')
    assert tflite_cli.main([str(path), folder]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'caption-tflite: error: cannot load {path}') and 'Traceback' not in err


# --- The 30000x30000 PNG bomb through every runtime ---------------------------------------


def test_the_savedmodel_graph_refuses_the_bomb(saved_model):
    signature = tf.saved_model.load(saved_model).signatures[features.SERVING_SIGNATURE]
    with pytest.raises(tf.errors.InvalidArgumentError, match='above the limit of 40000000'):
        signature(**{features.IMAGE_BYTES_INPUT: tf.constant([bad_images.png_bomb()])})


def test_the_local_server_refuses_the_bomb_over_grpc(fixture_model_base_path, start_caption_server):
    caption_server = start_caption_server(fixture_model_base_path)
    with client_lib.CaptionClient(caption_server.target, timeout_s=30) as client:
        with pytest.raises(client_lib.CaptionClientError) as caught:
            client.caption([bad_images.png_bomb()])
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert 'too many pixels: PNG of 30000x30000' in str(caught.value)
        assert client.caption([_red()]).captions[0].text == 'a red picture'  # still serving


def _red() -> bytes:
    return fixture_image_bytes('JPEG', (220, 30, 30))


def test_the_tflite_runner_refuses_the_bomb_without_pillow_errors(tflite_model):
    captioner = tflite_runtime.TFLiteCaptioner(tflite_model)
    for image in (bad_images.png_bomb(), _red()):
        try:
            caption = captioner.caption(image)
        except image_files.ImageError as error:
            assert error.reason == image_files.TOO_MANY_PIXELS
            assert image == bad_images.png_bomb()
        else:
            assert caption == 'a red picture'
