"""CaptionPusher's executor on real artifacts: blessing gate, atomic versions, warmup, TFLite."""

import json
import os

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.components.caption_pusher import component, executor, publish
from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.models import features


class _Echo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, image_bytes):
        return {features.CAPTION_OUTPUT: tf.strings.as_string(tf.strings.length(image_bytes))}


VARIANT_SIZES = {'dynamic': 10, 'float16': 20, 'float32': 40}
"""Fake flatbuffer sizes of the three variants the Trainer writes (smallest first)."""


@pytest.fixture
def model(tmp_path):
    """A Model artifact with a real SavedModel and three TFLite variant folders."""
    artifact = standard_artifacts.Model()
    artifact.uri = str(tmp_path / 'model')
    module = _Echo()
    tf.saved_model.save(
        module,
        os.path.join(artifact.uri, 'Format-Serving'),
        signatures={features.SERVING_SIGNATURE: module.serve},
    )
    for variant, size in VARIANT_SIZES.items():
        folder = tmp_path / 'model' / features.TFLITE_MODEL_DIR / variant
        folder.mkdir(parents=True)
        (folder / publish.TFLITE_FILE).write_bytes(variant.encode().ljust(size, b'.'))
        (folder / 'vocab.txt').write_text('<pad>\n<unk>\n')
    return artifact


def blessing(tmp_path, blessed: bool, agreement=None):
    """A ModelBlessing; `agreement` is one rate for every variant or {variant: rate}."""
    artifact = standard_artifacts.ModelBlessing()
    artifact.uri = str(tmp_path / f'blessing-{blessed}-{len(os.listdir(tmp_path))}')
    os.makedirs(artifact.uri, exist_ok=True)
    artifact.set_int_custom_property('blessed', int(blessed))
    artifact.set_string_custom_property(
        features.BLESSING_REASON_PROPERTY,
        'CIDEr-D 0.01 does not beat the baseline' if not blessed else 'ok',
    )
    if agreement is not None:
        rates = (
            agreement if isinstance(agreement, dict) else dict.fromkeys(VARIANT_SIZES, agreement)
        )
        candidates = [
            {'variant': v, 'size_bytes': VARIANT_SIZES[v], 'latency_ms': 1.0, 'agreement': r}
            for v, r in rates.items()
        ]
        artifact.set_string_custom_property(
            features.TFLITE_CANDIDATES_PROPERTY, json.dumps(candidates)
        )
    return artifact


def push(tmp_path, model, model_blessing, min_agreement=0.95):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / f'pushed-{len(os.listdir(tmp_path))}')
    args = PusherParameters(
        serving_root=str(tmp_path / 'serving'),
        tflite_root=str(tmp_path / 'tflite'),
        min_tflite_agreement=min_agreement,
    ).to_component_args()
    exec_properties = {
        standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(
            args['push_destination']
        ),
        'custom_config': json.dumps(args['custom_config']),
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


def _published_tflite(tmp_path, version: str) -> bytes:
    return (tmp_path / 'tflite' / 'captioner' / version / publish.TFLITE_FILE).read_bytes()


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
    # Every variant agrees: the smallest ships.
    assert _published_tflite(tmp_path, version).startswith(b'dynamic')
    assert pushed.get_string_custom_property(executor.TFLITE_VARIANT_KEY) == 'dynamic'


@pytest.mark.parametrize(
    'rates, shipped',
    [
        ({'dynamic': 0.0, 'float16': 0.97, 'float32': 1.0}, 'float16'),
        ({'dynamic': 0.5, 'float16': 0.9, 'float32': 1.0}, 'float32'),
        ({'dynamic': 0.95, 'float16': 1.0, 'float32': 1.0}, 'dynamic'),
    ],
)
def test_the_smallest_variant_that_agrees_ships(tmp_path, model, rates, shipped):
    pushed = push(tmp_path, model, blessing(tmp_path, True, agreement=rates))
    version = pushed.get_string_custom_property('pushed_version')
    assert _published_tflite(tmp_path, version).startswith(shipped.encode())
    assert pushed.get_string_custom_property(executor.TFLITE_VARIANT_KEY) == shipped
    assert shipped in pushed.get_string_custom_property(executor.TFLITE_CHOICE_KEY)


def test_no_variant_ships_when_none_agrees_but_the_saved_model_does(tmp_path, model):
    rates = {'dynamic': 0.0, 'float16': 0.5, 'float32': 0.9}
    pushed = push(tmp_path, model, blessing(tmp_path, True, agreement=rates))
    assert pushed.get_int_custom_property('pushed') == 1
    assert pushed.get_int_custom_property(executor.TFLITE_PUSHED_KEY) == 0
    assert not (tmp_path / 'tflite').exists()
    why = pushed.get_string_custom_property(executor.TFLITE_CHOICE_KEY)
    assert 'no TFLite variant agrees' in why and 'float32 90.0%' in why


def test_choose_tflite_is_a_pure_choice():
    candidates = [
        {'variant': 'float32', 'size_bytes': 40, 'agreement': 1.0},
        {'variant': 'dynamic', 'size_bytes': 10, 'agreement': 0.2},
        {'variant': 'float16', 'size_bytes': 20, 'agreement': 0.96},
    ]
    assert executor.choose_tflite(candidates, 0.95)[0]['variant'] == 'float16'
    assert executor.choose_tflite(candidates, 0.1)[0]['variant'] == 'dynamic'
    assert executor.choose_tflite(candidates, 1.0)[0]['variant'] == 'float32'
    chosen, why = executor.choose_tflite(candidates, 1.01)
    assert chosen is None and 'no TFLite variant' in why
    assert executor.choose_tflite([], 0.5)[0] is None


def test_unblessed_model_is_never_pushed(tmp_path, model):
    pushed = push(tmp_path, model, blessing(tmp_path, False, agreement=1.0))
    assert pushed.get_int_custom_property('pushed') == 0
    assert 'CIDEr-D' in pushed.get_string_custom_property(executor.NOT_PUSHED_REASON_KEY)
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
    parameters = PusherParameters(serving_root='/srv', tflite_root='/tfl')
    pusher = component.make_pusher(model, bless, parameters)
    assert pusher.outputs['pushed_model'].type_name == 'PushedModel'
    custom_config = pusher.exec_properties['custom_config']
    read_back = PusherParameters.from_exec_properties(
        {
            standard_component_specs.PUSH_DESTINATION_KEY: pusher.exec_properties[
                standard_component_specs.PUSH_DESTINATION_KEY
            ],
            'custom_config': custom_config
            if isinstance(custom_config, str)
            else json.dumps(custom_config),
        }
    )
    assert read_back == parameters
    with pytest.raises(ValueError, match='min_tflite_agreement'):
        component.make_pusher(
            model, bless, PusherParameters(serving_root='/srv', min_tflite_agreement=1.5)
        )
    with pytest.raises(ValueError, match='serving_root'):
        component.make_pusher(model, bless, PusherParameters(serving_root=''))
