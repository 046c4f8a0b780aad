"""CaptionPusher's executor on real artifacts: blessing gate, atomic versions, warmup, TFLite."""

import json
import os

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.components.caption_pusher import component, executor, publish
from tfx_captioning.models import features


class _Echo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, image_bytes):
        return {features.CAPTION_OUTPUT: tf.strings.as_string(tf.strings.length(image_bytes))}


@pytest.fixture
def model(tmp_path):
    """A Model artifact with a real SavedModel and a TFLite folder."""
    artifact = standard_artifacts.Model()
    artifact.uri = str(tmp_path / 'model')
    module = _Echo()
    tf.saved_model.save(
        module,
        os.path.join(artifact.uri, 'Format-Serving'),
        signatures={features.SERVING_SIGNATURE: module.serve},
    )
    tflite = tmp_path / 'model' / features.TFLITE_MODEL_DIR
    tflite.mkdir()
    (tflite / publish.TFLITE_FILE).write_bytes(b'TFL3 fake flatbuffer for copy tests')
    (tflite / 'vocab.txt').write_text('<pad>\n<unk>\n')
    return artifact


def blessing(tmp_path, blessed: bool, agreement=None):
    artifact = standard_artifacts.ModelBlessing()
    artifact.uri = str(tmp_path / f'blessing-{blessed}-{agreement}')
    os.makedirs(artifact.uri, exist_ok=True)
    artifact.set_int_custom_property('blessed', int(blessed))
    artifact.set_string_custom_property(
        features.BLESSING_REASON_PROPERTY, 'bleu_4 0.01 < 0.10' if not blessed else 'ok'
    )
    if agreement is not None:
        artifact.set_float_custom_property(features.TFLITE_AGREEMENT_PROPERTY, agreement)
    return artifact


def push(tmp_path, model, model_blessing, min_agreement=0.95):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f'pushed-{len(os.listdir(tmp_path))}')
    exec_properties = {
        standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(
            pusher_pb2.PushDestination(
                filesystem=pusher_pb2.PushDestination.Filesystem(
                    base_directory=str(tmp_path / 'serving' / 'captioner')
                )
            )
        ),
        'custom_config': json.dumps(
            {
                executor.MODEL_NAME_KEY: 'captioner',
                executor.TFLITE_BASE_DIRECTORY_KEY: str(tmp_path / 'tflite' / 'captioner'),
                executor.MIN_TFLITE_AGREEMENT_KEY: min_agreement,
            }
        ),
    }
    executor.Executor().Do(
        {
            standard_component_specs.MODEL_KEY: [model],
            standard_component_specs.MODEL_BLESSING_KEY: [model_blessing],
        },
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        exec_properties,
    )
    return pushed


def test_blessed_model_is_pushed_complete_with_warmup(tmp_path, model):
    pushed = push(tmp_path, model, blessing(tmp_path, True, agreement=1.0))
    assert pushed.get_int_custom_property('pushed') == 1
    base = tmp_path / 'serving' / 'captioner'
    (version,) = os.listdir(base)  # no temporary directory left behind
    assert version.isdigit()
    assert pushed.get_string_custom_property('pushed_version') == version
    loaded = tf.saved_model.load(str(base / version))
    out = loaded.signatures[features.SERVING_SIGNATURE](image_bytes=tf.constant([b'abc']))
    assert out[features.CAPTION_OUTPUT].numpy().tolist() == [b'3']
    records = list(tf.data.TFRecordDataset(str(base / version / publish.WARMUP_FILE)))
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.name == 'captioner'
    assert request.model_spec.signature_name == features.SERVING_SIGNATURE
    image = tf.make_ndarray(request.inputs[features.IMAGE_BYTES_INPUT])[0]
    assert tf.io.decode_jpeg(image).shape[-1] == 3
    tflite = tmp_path / 'tflite' / 'captioner' / version
    assert sorted(os.listdir(tflite)) == [publish.TFLITE_FILE, 'vocab.txt']
    assert pushed.get_int_custom_property(executor.TFLITE_PUSHED_KEY) == 1


def test_unblessed_model_is_never_pushed(tmp_path, model):
    pushed = push(tmp_path, model, blessing(tmp_path, False, agreement=1.0))
    assert pushed.get_int_custom_property('pushed') == 0
    assert 'bleu_4' in pushed.get_string_custom_property(executor.NOT_PUSHED_REASON_KEY)
    assert not (tmp_path / 'serving').exists()
    assert not (tmp_path / 'tflite').exists()


def test_the_same_model_is_not_pushed_twice(tmp_path, model):
    first = push(tmp_path, model, blessing(tmp_path, True, agreement=1.0))
    again = push(tmp_path, model, blessing(tmp_path, True, agreement=1.0))
    assert os.listdir(tmp_path / 'serving' / 'captioner') == [
        first.get_string_custom_property('pushed_version')
    ]
    assert again.get_int_custom_property('pushed') == 1
    assert again.get_string_custom_property('pushed_version') == first.get_string_custom_property(
        'pushed_version'
    )
    assert again.get_int_custom_property(executor.TFLITE_PUSHED_KEY) == 1


def test_versions_increase_and_low_agreement_keeps_tflite_back(tmp_path, model, tmp_path_factory):
    push(tmp_path, model, blessing(tmp_path, True, agreement=1.0))
    retrained = standard_artifacts.Model()
    retrained.uri = str(tmp_path_factory.mktemp('retrained'))
    import shutil

    shutil.copytree(model.uri, retrained.uri, dirs_exist_ok=True)
    second = push(tmp_path, retrained, blessing(tmp_path, True, agreement=0.5))
    versions = publish.integer_versions(os.listdir(tmp_path / 'serving' / 'captioner'))
    assert len(versions) == 2 and versions[0] < versions[1]
    assert second.get_int_custom_property(executor.TFLITE_PUSHED_KEY) == 0
    assert len(os.listdir(tmp_path / 'tflite' / 'captioner')) == 1


def test_next_version():
    assert publish.next_version([], now=100.5) == 100
    assert publish.next_version(['99', 'x', '.tmp-5'], now=100) == 100
    assert publish.next_version(['100', '7'], now=100) == 101


def test_failed_publish_leaves_nothing(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a').write_text('x')

    def fail(_):
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        publish.publish_directory(str(src), str(tmp_path / 'base'), 3, fill=fail)
    assert os.listdir(tmp_path / 'base') == []
    publish.publish_directory(str(src), str(tmp_path / 'base'), 3)
    with pytest.raises(FileExistsError):
        publish.publish_directory(str(src), str(tmp_path / 'base'), 3)


def test_component_validates_arguments():
    from tfx.types import channel_utils

    model = channel_utils.as_channel([standard_artifacts.Model()])
    bless = channel_utils.as_channel([standard_artifacts.ModelBlessing()])
    pusher = component.make_pusher(model, bless, '/srv/captioner', 'captioner', '/tfl/captioner')
    assert pusher.outputs['pushed_model'].type_name == 'PushedModel'
    with pytest.raises(ValueError, match='min_tflite_agreement'):
        component.make_pusher(model, bless, '/srv/c', 'c', min_tflite_agreement=1.5)
    with pytest.raises(ValueError, match='serving_base_directory'):
        component.make_pusher(model, bless, '', 'c')
