"""TFLite conversion: bytes of builtin ops that the standalone runtime runs like TensorFlow.

A small convolutional encoder with InceptionV3's input/output contract stands
in for InceptionV3 here to keep conversion fast; the end-to-end pipeline test
converts the real InceptionV3 through the Trainer.
"""

import json
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
    decoder_model = decoder.build_decoder(hparams, len(words))
    # Larger embeddings and logits than a fresh initialisation: captions then
    # vary with the state, and beam search differs from greedy decoding.
    for name in (decoder.EMBEDDING_LAYER, decoder.LOGITS_LAYER):
        weights = decoder_model.get_layer(name).get_weights()
        decoder_model.get_layer(name).set_weights([weights[0] * 4.0, *weights[1:]])
    return export.CaptionModel(
        encoder,
        decoder_model,
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
        },
        features.TFLITE_BEAM_SIGNATURE: {
            'inputs': [features.TFLITE_IMAGE_INPUT],
            'outputs': [features.TFLITE_LOG_PROB_OUTPUT, features.TFLITE_TOKEN_IDS_OUTPUT],
        },
    }
    greedy = interpreter.get_signature_runner(features.TFLITE_SIGNATURE)
    beam = interpreter.get_signature_runner(features.TFLITE_BEAM_SIGNATURE)
    same_greedy = same_beam = beam_differs = 0
    for image in images(4):
        features_of_image = caption_model.encoder(image)
        expected = caption_model.caption_from_features(features_of_image)
        expected_beam = caption_model.caption_beam_from_features(features_of_image)
        got = greedy(**{features.TFLITE_IMAGE_INPUT: image})[features.TFLITE_TOKEN_IDS_OUTPUT]
        assert got.shape == (1, caption_model.max_len) and got.dtype == np.int32
        same_greedy += int(np.array_equal(got, expected[features.TOKEN_IDS_OUTPUT].numpy()))
        got_beam = beam(**{features.TFLITE_IMAGE_INPUT: image})
        beam_ids = got_beam[features.TFLITE_TOKEN_IDS_OUTPUT]
        assert beam_ids.shape == (1, caption_model.max_len) and beam_ids.dtype == np.int32
        assert got_beam[features.TFLITE_LOG_PROB_OUTPUT].shape == (1,)
        if np.array_equal(beam_ids, expected_beam[features.TOKEN_IDS_OUTPUT].numpy()):
            same_beam += 1
            np.testing.assert_allclose(
                got_beam[features.TFLITE_LOG_PROB_OUTPUT],
                expected_beam[features.LOG_PROB_OUTPUT].numpy(),
                atol=1e-4 if quantization == 'float32' else 0.1,
            )
        beam_differs += int(not np.array_equal(beam_ids, got))
    # float32 is the same arithmetic; quantised weights may flip a near-tie.
    assert same_greedy == 4 if quantization == 'float32' else same_greedy >= 3
    assert same_beam == 4 if quantization == 'float32' else same_beam >= 3
    assert beam_differs  # the beam search is not the greedy loop again


def test_dynamic_range_is_smaller_than_float32(caption_model):
    small = tflite_export.convert_to_tflite(caption_model, 'dynamic')
    large = tflite_export.convert_to_tflite(caption_model, 'float32')
    assert len(small) < 0.5 * len(large)


def test_unknown_quantization_is_refused(caption_model):
    with pytest.raises(ValueError, match='quantization'):
        tflite_export.convert_to_tflite(caption_model, 'int4')


def test_written_model_captions_without_tensorflow(caption_model, tmp_path):
    """models.tflite_runtime runs both signatures in a process that never imports TensorFlow."""
    path = tflite_export.write_tflite(caption_model, caption_model.words, str(tmp_path), 'float32')
    image = images(1)[0]
    np.save(tmp_path / 'image.npy', image)
    features_of_image = caption_model.encoder(image)
    expected = caption_model.caption_from_features(features_of_image)
    expected_beam = caption_model.caption_beam_from_features(features_of_image)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np
        from tfx_captioning.models.tflite_runtime import TFLiteCaptioner
        image = np.load({str(tmp_path / 'image.npy')!r})
        beam = TFLiteCaptioner({path!r}, beam=True)
        print(json.dumps({{
            'greedy': TFLiteCaptioner({path!r}).caption(image),
            'beam': beam.caption(image),
            'log_prob': float(beam.decode(image)['log_prob']),
            'decoding': beam.decoding,
        }}))
        assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result['greedy'] == expected[features.CAPTION_OUTPUT].numpy()[0].decode()
    assert result['beam'] == expected_beam[features.CAPTION_OUTPUT].numpy()[0].decode()
    assert result['log_prob'] == pytest.approx(
        float(expected_beam[features.LOG_PROB_OUTPUT].numpy()[0]), abs=1e-4
    )
    beam_settings = result['decoding']['beam_search']
    assert beam_settings['signatures'] == [features.TFLITE_BEAM_SIGNATURE]
    assert (beam_settings['beam_width'], beam_settings['length_alpha']) == (3, 0.6)


def test_litert_breaks_ties_like_tensorflow(caption_model, tmp_path):
    """Every word equally likely: TOPK_V2 keeps the lower beam, then the lower id, as top_k."""
    from ai_edge_litert.interpreter import Interpreter

    tied = decoder.build_decoder(HParams(embedding_dim=16, units=32, num_layers=2), 24)
    logits = tied.get_layer(decoder.LOGITS_LAYER)
    kernel, bias = logits.get_weights()
    bias = np.zeros_like(bias)
    bias[features.END_ID] = -30.0  # never ends: every step is a tie
    logits.set_weights([np.zeros_like(kernel), bias])
    tied_model = export.CaptionModel(
        caption_model.encoder,
        tied,
        feature_scale=np.ones(features.FEATURE_SIZE, np.float32),
        feature_offset=np.zeros(features.FEATURE_SIZE, np.float32),
        vocabulary_file=caption_model.vocabulary_file,
        max_len=caption_model.max_len,
    )
    path = tmp_path / 'tied.tflite'
    path.write_bytes(tflite_export.convert_to_tflite(tied_model, 'float32'))
    beam = Interpreter(model_path=str(path)).get_signature_runner(features.TFLITE_BEAM_SIGNATURE)
    image = images(1)[0]
    got = beam(**{features.TFLITE_IMAGE_INPUT: image})[features.TFLITE_TOKEN_IDS_OUTPUT]
    expected = tied_model.caption_beam_from_features(tied_model.encoder(image))
    lowest_word = [decoder.NUM_RESERVED] * caption_model.max_len
    assert got.tolist() == [lowest_word]
    assert expected[features.TOKEN_IDS_OUTPUT].numpy().tolist() == [lowest_word]


def test_runtime_refuses_beam_on_a_greedy_only_file(caption_model, tmp_path):
    import tensorflow as tf

    from tfx_captioning.models.tflite_runtime import TFLiteCaptioner

    module = tflite_export.TFLiteCaptionModule(caption_model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.caption.get_concrete_function()], module
    )
    (tmp_path / features.TFLITE_FILE).write_bytes(converter.convert())
    (tmp_path / features.TFLITE_VOCAB_FILE).write_text('\n'.join(caption_model.words) + '\n')
    path = str(tmp_path / features.TFLITE_FILE)
    assert TFLiteCaptioner(path).decoding is None  # an older file: greedy only, no settings
    with pytest.raises(ValueError, match='no .caption_beam. signature'):
        TFLiteCaptioner(path, beam=True)
