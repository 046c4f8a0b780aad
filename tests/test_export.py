"""The combined SavedModel: signatures, a fresh process without project code, agreement of paths."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2

from tests import beam_reference, captioning_fixtures, greedy_reference
from tests.flickr8k_fixtures import jpeg_bytes, png_bytes
from tfx_captioning.models import decoder, export, features, image_preprocessing, trainer
from tfx_captioning.serving.fixture_model import fixture_image_bytes, fixture_serving_images

# Runs in a fresh interpreter, outside the repository, importing only TensorFlow.
_CLIENT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    names = json.loads(sys.argv[1])
    model = tf.saved_model.load(sys.argv[2])
    images = [open(path, 'rb').read() for path in sys.argv[3:]]
    serve = model.signatures[names['signature']]

    def run(batch):
        out = serve(**{names['input']: tf.constant(batch)})
        return {key: value.numpy().tolist() for key, value in out.items()}

    try:
        run([b'not an image'])
        bad_image = 'accepted'
    except tf.errors.InvalidArgumentError as error:
        bad_image = 'InvalidArgumentError'

    def text(result):
        result[names['caption']] = [c.decode() for c in result[names['caption']]]
        return result

    project = sorted(
        m for m in sys.modules
        if m.split('.')[0] in ('models', 'components', 'pipeline', 'serving', 'tests')
    )
    print(json.dumps({
        'batch': text(run(images)),
        'single': [text(run([image])) for image in images],
        'bad_image': bad_image,
        'project_modules': project,
    }))
    """
)


def _caption_in_fresh_process(
    saved_model_dir, image_paths, tmp_path, signature=features.SERVING_SIGNATURE
):
    names = {
        'signature': signature,
        'input': features.IMAGE_BYTES_INPUT,
        'caption': features.CAPTION_OUTPUT,
    }
    script = tmp_path / 'client.py'
    script.write_text(_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['TF_CPP_MIN_LOG_LEVEL'] = '2'
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(names), saved_model_dir, *image_paths],
        cwd=str(tmp_path),  # not the repository: project code is not importable
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def exported(caption_transform_run, caption_hparams, tmp_path_factory):
    """(SavedModel dir, CaptionModel) with the tiny encoder and a random decoder."""
    tft_output = caption_transform_run.tft_output
    keras.utils.set_random_seed(7)
    decoder_model = decoder.build_decoder(
        caption_hparams, tft_output.vocabulary_size_by_name(features.VOCAB_NAME)
    )
    # A random decoder often says <end> first; make it talk, so captions have words.
    logits_layer = decoder.DecoderLayers.from_model(decoder_model).logits
    kernel, bias = logits_layer.get_weights()
    bias[features.END_ID] -= 3.0
    logits_layer.set_weights([kernel, bias])
    scale, offset = export.feature_normalization(tft_output)
    caption_model = export.CaptionModel(
        encoder=captioning_fixtures.tiny_encoder(),
        decoder_model=decoder_model,
        feature_scale=scale,
        feature_offset=offset,
        vocabulary_file=tft_output.vocabulary_file_by_name(features.VOCAB_NAME),
        max_len=caption_hparams.max_len,
    )
    export_dir = str(tmp_path_factory.mktemp('export') / 'saved_model')
    export.save_caption_model(caption_model, export_dir)
    return export_dir, caption_model


@pytest.fixture(scope='module')
def loaded(exported):
    return tf.saved_model.load(exported[0])


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Paths of a JPEG and two PNGs (RGB and RGBA) of different colours and sizes."""
    directory = tmp_path_factory.mktemp('images')
    paths = []
    for name, data in (
        ('red.jpg', jpeg_bytes((220, 30, 30), (320, 240))),
        ('blue.png', png_bytes((30, 30, 220), (200, 300))),
        ('green.png', png_bytes((30, 200, 30), (64, 64))),
    ):
        (directory / name).write_bytes(data)
        paths.append(str(directory / name))
    return paths


@pytest.fixture(scope='module')
def every_format(tmp_path_factory):
    """Paths of JPEG, PNG, GIF, BMP, grayscale, CMYK, RGBA and palette images and a noisy photo."""
    directory = tmp_path_factory.mktemp('every_format')
    images = dict(fixture_serving_images())
    images['cmyk.jpg'] = fixture_image_bytes('JPEG', (200, 120, 30), mode='CMYK')
    for name, data in images.items():
        (directory / name).write_bytes(data)
    return [str(directory / name) for name in sorted(images)]


def test_feature_normalization_equals_transform(caption_transform_run):
    tft_output = caption_transform_run.tft_output
    scale, offset = export.feature_normalization(tft_output)
    raw = np.stack(
        [
            image[features.IMAGE_FEATURES_KEY]
            for image in captioning_fixtures.synthetic_images(5, seed=9)
        ]
    )
    expected = tft_output.transform_raw_features({features.IMAGE_FEATURES_KEY: tf.constant(raw)})
    np.testing.assert_allclose(
        raw * scale + offset, expected[features.NORMALIZED_FEATURES_KEY].numpy(), atol=1e-4
    )


def test_signatures_names_dtypes_and_shapes(loaded, caption_hparams):
    from_features = (features.IMAGE_FEATURES_INPUT, tf.float32, [None, features.FEATURE_SIZE])
    expected_inputs = {
        features.SERVING_SIGNATURE: (features.IMAGE_BYTES_INPUT, tf.string, [None]),
        features.FEATURES_SIGNATURE: from_features,
        features.BEAM_SIGNATURE: (features.IMAGE_BYTES_INPUT, tf.string, [None]),
        features.BEAM_FEATURES_SIGNATURE: from_features,
    }
    assert set(expected_inputs) <= set(loaded.signatures)
    for name, (input_name, dtype, shape) in expected_inputs.items():
        signature = loaded.signatures[name]
        _, inputs = signature.structured_input_signature
        assert list(inputs) == [input_name]
        assert inputs[input_name].dtype == dtype
        assert inputs[input_name].shape.as_list() == shape
        outputs = signature.structured_outputs
        assert outputs[features.CAPTION_OUTPUT].dtype == tf.string
        assert outputs[features.CAPTION_OUTPUT].shape.as_list() == [None]
        assert outputs[features.TOKEN_IDS_OUTPUT].dtype == tf.int32
        assert outputs[features.TOKEN_IDS_OUTPUT].shape.as_list() == [None, caption_hparams.max_len]
        assert outputs[features.LENGTH_OUTPUT].dtype == tf.int32
        assert outputs[features.LENGTH_OUTPUT].shape.as_list() == [None]
        beam = name in (features.BEAM_SIGNATURE, features.BEAM_FEATURES_SIGNATURE)
        assert (features.LOG_PROB_OUTPUT in outputs) == beam
        if beam:
            assert outputs[features.LOG_PROB_OUTPUT].dtype == tf.float32
            assert outputs[features.LOG_PROB_OUTPUT].shape.as_list() == [None]


def test_vocabulary_file_is_a_saved_model_asset(exported):
    export_dir, caption_model = exported
    with open(os.path.join(export_dir, 'assets', features.VOCAB_NAME)) as f:
        assert f.read().splitlines() == caption_model.words


def test_fresh_process_captions_jpeg_and_png_batched_and_single(exported, images, tmp_path):
    export_dir, caption_model = exported
    out = _caption_in_fresh_process(export_dir, images, tmp_path)
    assert out['project_modules'] == []
    assert out['bad_image'] == 'InvalidArgumentError'
    batch = out['batch']
    assert len(batch[features.CAPTION_OUTPUT]) == len(images)
    for i, single in enumerate(out['single']):
        # Each row is decoded on its own: batching changes nothing.
        assert single[features.TOKEN_IDS_OUTPUT] == [batch[features.TOKEN_IDS_OUTPUT][i]]
        assert single[features.CAPTION_OUTPUT] == [batch[features.CAPTION_OUTPUT][i]]
    for caption, ids, length in zip(
        batch[features.CAPTION_OUTPUT],
        batch[features.TOKEN_IDS_OUTPUT],
        batch[features.LENGTH_OUTPUT],
    ):
        assert caption == ' '.join(caption_model.words[i] for i in ids[:length])
        assert 0 <= length <= len(ids)
    assert any(batch[features.LENGTH_OUTPUT])


def test_caption_from_features_agrees_with_serving_default(exported, loaded, images):
    _, caption_model = exported
    image_bytes = tf.constant([open(p, 'rb').read() for p in images])
    from_images = loaded.signatures[features.SERVING_SIGNATURE](
        **{features.IMAGE_BYTES_INPUT: image_bytes}
    )
    # The extractor's path: shared preprocessing, then the same encoder.
    raw_features = caption_model.encoder(image_preprocessing.preprocess_batch(image_bytes))
    from_features = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: raw_features}
    )
    for key in (features.TOKEN_IDS_OUTPUT, features.LENGTH_OUTPUT, features.CAPTION_OUTPUT):
        np.testing.assert_array_equal(from_images[key].numpy(), from_features[key].numpy())
    # Different images, different features: the encoder really is in the graph.
    assert len({tuple(row) for row in raw_features.numpy().round(4)}) == len(images)


def test_exported_loop_matches_keras_reference_on_raw_features(exported, loaded, caption_hparams):
    _, caption_model = exported
    raw = np.stack(
        [i[features.IMAGE_FEATURES_KEY] for i in captioning_fixtures.synthetic_images(6, seed=3)]
    )
    out = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: tf.constant(raw)}
    )
    reference = greedy_reference.reference_greedy_decode(
        caption_model.decoder_model,
        caption_model.normalize(tf.constant(raw)).numpy(),
        caption_hparams.max_len,
    )
    np.testing.assert_array_equal(out[features.TOKEN_IDS_OUTPUT].numpy(), reference)


def test_empty_batch_gives_empty_outputs(loaded, caption_hparams):
    out = loaded.signatures[features.FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: tf.zeros([0, features.FEATURE_SIZE])}
    )
    assert out[features.TOKEN_IDS_OUTPUT].shape == (0, caption_hparams.max_len)
    assert out[features.CAPTION_OUTPUT].shape == (0,)


def test_vocabulary_must_match_decoder(caption_hparams, tmp_path):
    vocabulary = captioning_fixtures.write_vocabulary(['a', 'b'], str(tmp_path / 'vocab'))
    decoder_model = decoder.build_decoder(caption_hparams, len(features.RESERVED_TOKENS) + 5)
    with pytest.raises(ValueError, match='has 6 words, the decoder 9'):
        export.CaptionModel(
            captioning_fixtures.tiny_encoder(),
            decoder_model,
            np.ones(features.FEATURE_SIZE),
            np.zeros(features.FEATURE_SIZE),
            vocabulary,
            caption_hparams.max_len,
        )


def test_caption_loss_signature_equals_the_training_loss(exported, loaded, caption_transform_run):
    _, caption_model = exported
    inputs, targets = next(
        iter(
            trainer.input_fn(
                [caption_transform_run.file_pattern(features.EVAL_SPLIT)],
                caption_transform_run.tft_output,
                batch_size=16,
                shuffle=False,
                repeat=False,
            )
        )
    )
    caption_ids = tf.concat([inputs[features.DECODER_INPUT_KEY], targets[:, -1:]], axis=1)
    out = loaded.signatures[features.LOSS_SIGNATURE](
        **{
            features.NORMALIZED_FEATURES_KEY: inputs[features.NORMALIZED_FEATURES_KEY],
            features.CAPTION_IDS_KEY: tf.cast(caption_ids, tf.int64),
        }
    )
    tokens = out[features.TOKENS_OUTPUT].numpy()
    np.testing.assert_array_equal(tokens, (targets.numpy() != features.PAD_ID).sum(axis=1))
    training_loss = trainer.masked_loss(targets, caption_model.decoder_model(inputs)).numpy()
    assert out[features.LOSS_OUTPUT].numpy().sum() / tokens.sum() == pytest.approx(
        training_loss, rel=1e-5
    )


def test_graph_has_no_python_ops(exported):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported[0], 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    assert 'While' in ops or 'StatelessWhile' in ops  # the decoding loop is in the graph
    assert not ops & {'PyFunc', 'EagerPyFunc', 'PyFuncStateless'}


# --- Beam search signatures ------------------------------------------------------------


def test_fresh_process_captions_every_format_by_beam_search_batched_and_single(
    exported, every_format, tmp_path
):
    export_dir, caption_model = exported
    out = _caption_in_fresh_process(export_dir, every_format, tmp_path, features.BEAM_SIGNATURE)
    assert out['project_modules'] == []
    assert out['bad_image'] == 'InvalidArgumentError'
    batch = out['batch']
    assert len(batch[features.CAPTION_OUTPUT]) == len(every_format)
    for i, single in enumerate(out['single']):
        for key in (features.TOKEN_IDS_OUTPUT, features.CAPTION_OUTPUT, features.LENGTH_OUTPUT):
            assert single[key] == [batch[key][i]]
        # Float sums may differ in the last bits with the batch size (matmul blocking).
        assert single[features.LOG_PROB_OUTPUT][0] == pytest.approx(
            batch[features.LOG_PROB_OUTPUT][i], abs=1e-4
        )
    for caption, ids, length, log_prob in zip(
        batch[features.CAPTION_OUTPUT],
        batch[features.TOKEN_IDS_OUTPUT],
        batch[features.LENGTH_OUTPUT],
        batch[features.LOG_PROB_OUTPUT],
    ):
        assert caption == ' '.join(caption_model.words[i] for i in ids[:length])
        assert log_prob < 0
    assert any(batch[features.LENGTH_OUTPUT])


def test_bad_images_fail_the_beam_signature_as_they_fail_serving_default(loaded):
    for data in (b'not an image', b'', b'\x89PNG\r\n\x1a\n' + b'\x00' * 20):
        messages = []
        for name in (features.SERVING_SIGNATURE, features.BEAM_SIGNATURE):
            with pytest.raises(tf.errors.InvalidArgumentError) as raised:
                loaded.signatures[name](**{features.IMAGE_BYTES_INPUT: tf.constant([data])})
            messages.append(raised.value.message.splitlines()[0])
        assert messages[0] == messages[1]


def test_caption_beam_from_features_agrees_with_caption_beam(exported, loaded, images):
    _, caption_model = exported
    image_bytes = tf.constant([open(p, 'rb').read() for p in images])
    from_images = loaded.signatures[features.BEAM_SIGNATURE](
        **{features.IMAGE_BYTES_INPUT: image_bytes}
    )
    raw_features = caption_model.encoder(image_preprocessing.preprocess_batch(image_bytes))
    from_features = loaded.signatures[features.BEAM_FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: raw_features}
    )
    for key in (features.TOKEN_IDS_OUTPUT, features.LENGTH_OUTPUT, features.CAPTION_OUTPUT):
        np.testing.assert_array_equal(from_images[key].numpy(), from_features[key].numpy())
    np.testing.assert_allclose(
        from_images[features.LOG_PROB_OUTPUT].numpy(),
        from_features[features.LOG_PROB_OUTPUT].numpy(),
        atol=1e-5,
    )


def test_exported_beam_search_equals_the_numpy_reference(exported, loaded, caption_hparams):
    _, caption_model = exported
    raw = np.stack(
        [i[features.IMAGE_FEATURES_KEY] for i in captioning_fixtures.synthetic_images(6, seed=3)]
    )
    out = loaded.signatures[features.BEAM_FEATURES_SIGNATURE](
        **{features.IMAGE_FEATURES_INPUT: tf.constant(raw)}
    )
    expected_ids, expected_log_prob = beam_reference.beam_search(
        beam_reference.NumpyDecoder.from_layers(caption_model.decoder_layers),
        caption_model.normalize(tf.constant(raw)).numpy(),
        caption_hparams.max_len,
        caption_model.beam_width,
        caption_model.beam_length_alpha,
    )
    np.testing.assert_array_equal(out[features.TOKEN_IDS_OUTPUT].numpy(), expected_ids)
    np.testing.assert_allclose(out[features.LOG_PROB_OUTPUT].numpy(), expected_log_prob, atol=1e-4)


def test_beam_settings_are_recorded_beside_the_saved_model(exported):
    export_dir, caption_model = exported
    path = os.path.join(export_dir, features.WARMUP_REQUESTS_DIR, features.DECODING_FILE)
    with open(path) as f:
        recorded = json.load(f)
    beam = recorded['beam_search']
    assert (beam['beam_width'], beam['length_alpha']) == (3, pytest.approx(0.6))
    assert (caption_model.beam_width, caption_model.beam_length_alpha) == (3, 0.6)
    assert beam['length_normalization'] == 'gnmt' and 'arXiv:1609.08144' in beam['reference']
    assert beam['signatures'] == [features.BEAM_SIGNATURE, features.BEAM_FEATURES_SIGNATURE]
    assert recorded['greedy']['signatures'] == [
        features.SERVING_SIGNATURE,
        features.FEATURES_SIGNATURE,
    ]
    assert recorded['max_len'] == caption_model.max_len


def test_beam_width_beyond_the_vocabulary_is_refused(caption_hparams, tmp_path):
    vocabulary = captioning_fixtures.write_vocabulary(['a', 'b'], str(tmp_path / 'vocab'))
    decoder_model = decoder.build_decoder(caption_hparams, len(features.RESERVED_TOKENS) + 2)
    # Two words and <end> can be generated: a beam of 3 fits, 4 does not.
    for width, alpha in ((4, 0.6), (0, 0.6), (3, -0.5)):
        with pytest.raises(ValueError, match='beam_'):
            export.CaptionModel(
                captioning_fixtures.tiny_encoder(),
                decoder_model,
                np.ones(features.FEATURE_SIZE),
                np.zeros(features.FEATURE_SIZE),
                vocabulary,
                caption_hparams.max_len,
                beam_width=width,
                beam_length_alpha=alpha,
            )


def test_local_server_serves_caption_beam(exported, loaded, images, start_caption_server, tmp_path):
    from tfx_captioning.serving import client as client_lib
    from tfx_captioning.serving.fixture_model import publish_fixture_version

    export_dir, _ = exported
    base_path = str(tmp_path / 'serving' / features.MODEL_NAME)
    publish_fixture_version(export_dir, base_path, 1)
    image_bytes = [open(p, 'rb').read() for p in images]
    expected = loaded.signatures[features.BEAM_SIGNATURE](
        **{features.IMAGE_BYTES_INPUT: tf.constant(image_bytes)}
    )
    running = start_caption_server(base_path)
    with client_lib.CaptionClient(running.target) as client:
        metadata = client.metadata()
        beam = client.caption(image_bytes, signature=features.BEAM_SIGNATURE)
        greedy = client.caption(image_bytes)
    signature = metadata.signatures[features.BEAM_SIGNATURE]
    assert signature.outputs[features.LOG_PROB_OUTPUT] == client_lib.TensorSummary(
        'float32', (None,)
    )
    assert features.BEAM_FEATURES_SIGNATURE in metadata.signatures
    assert [c.text.encode() for c in beam.captions] == expected[
        features.CAPTION_OUTPUT
    ].numpy().tolist()
    np.testing.assert_allclose(
        [c.log_prob for c in beam.captions], expected[features.LOG_PROB_OUTPUT].numpy(), atol=1e-5
    )
    assert all(c.log_prob is None for c in greedy.captions)
