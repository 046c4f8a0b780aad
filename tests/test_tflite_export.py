"""TFLite conversion: bytes of builtin ops that the standalone runtime runs like TensorFlow.

A small convolutional encoder with InceptionV3's input/output contract stands
in for InceptionV3 here to keep conversion fast; the end-to-end pipeline test
converts the real InceptionV3 through the Trainer.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tf_keras as keras

from tfx_captioning.models import decoder, export, features, tflite_export
from tfx_captioning.models.hparams import HParams


@pytest.fixture(scope='module')
def caption_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    image = keras.Input([features.IMAGE_SIZE, features.IMAGE_SIZE, 3])
    x = keras.layers.Conv2D(8, 9, strides=8, activation='relu')(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    encoder = keras.Model(image, keras.layers.Dense(features.FEATURE_SIZE)(x))
    hparams = HParams(embedding_dim=16, units=32, num_layers=2)
    words = list(features.RESERVED_TOKENS) + [f'word{i}' for i in range(20)]
    vocab = tmp_path_factory.mktemp('vocab') / 'vocab.txt'
    vocab.write_text('\n'.join(words) + '\n')
    return export.CaptionModel(
        encoder,
        decoder.build_decoder(hparams, len(words)),
        feature_scale=np.full(features.FEATURE_SIZE, 3.0, np.float32),
        feature_offset=np.zeros(features.FEATURE_SIZE, np.float32),
        vocabulary_file=str(vocab),
        max_len=8,
    )


def images(n):
    return np.random.RandomState(1).uniform(-1, 1, [n, 1, 299, 299, 3]).astype(np.float32)


@pytest.mark.parametrize('quantization', ['float32', 'float16', 'dynamic'])
def test_conversion_runs_in_litert_like_tensorflow(caption_model, quantization, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    flatbuffer = tflite_export.convert_to_tflite(caption_model, quantization)
    assert isinstance(flatbuffer, bytes) and flatbuffer[4:8] == b'TFL3'
    path = tmp_path / 'model.tflite'
    path.write_bytes(flatbuffer)
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.get_signature_list() == {
        features.TFLITE_SIGNATURE: {
            'inputs': [features.TFLITE_IMAGE_INPUT],
            'outputs': [features.TFLITE_TOKEN_IDS_OUTPUT],
        }
    }
    runner = interpreter.get_signature_runner(features.TFLITE_SIGNATURE)
    same = 0
    for image in images(4):
        expected = caption_model.caption_from_features(caption_model.encoder(image))
        got = runner(**{features.TFLITE_IMAGE_INPUT: image})[features.TFLITE_TOKEN_IDS_OUTPUT]
        assert got.shape == (1, caption_model.max_len) and got.dtype == np.int32
        same += int(np.array_equal(got, expected[features.TOKEN_IDS_OUTPUT].numpy()))
    # float32 is the same arithmetic; quantised weights may flip a near-tie.
    assert same == 4 if quantization == 'float32' else same >= 3


def test_dynamic_range_is_smaller_than_float32(caption_model):
    small = tflite_export.convert_to_tflite(caption_model, 'dynamic')
    large = tflite_export.convert_to_tflite(caption_model, 'float32')
    assert len(small) < 0.5 * len(large)


def test_unknown_quantization_is_refused(caption_model):
    with pytest.raises(ValueError, match='quantization'):
        tflite_export.convert_to_tflite(caption_model, 'int4')


def test_written_model_captions_without_tensorflow(caption_model, tmp_path):
    """models.tflite_runtime runs the file in a process that never imports TensorFlow."""
    path = tflite_export.write_tflite(caption_model, caption_model.words, str(tmp_path), 'float32')
    image = images(1)[0]
    np.save(tmp_path / 'image.npy', image)
    expected = caption_model.caption_from_features(caption_model.encoder(image))
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from tfx_captioning.models.tflite_runtime import TFLiteCaptioner
        caption = TFLiteCaptioner({path!r}).caption(np.load({str(tmp_path / 'image.npy')!r}))
        assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
        print(caption)
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected[features.CAPTION_OUTPUT].numpy()[0].decode()
