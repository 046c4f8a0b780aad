"""The decoder model, its masked loss and input pipeline, training, and in-graph greedy decoding."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests import beam_reference, captioning_fixtures, greedy_reference
from tfx_captioning.models import decoder, features, trainer

VOCAB_SIZE = 20


@pytest.fixture(scope='module')
def random_decoder(caption_hparams):
    keras.utils.set_random_seed(0)
    return decoder.build_decoder(caption_hparams, VOCAB_SIZE)


@pytest.fixture(scope='module')
def trained(caption_transform_run, caption_hparams, tmp_path_factory):
    """(decoder trained on the synthetic split, Keras history, eval features, run dir)."""
    hparams = dataclasses.replace(caption_hparams, epochs=40, patience=3, learning_rate=5e-3)
    tft_output = caption_transform_run.tft_output
    keras.utils.set_random_seed(hparams.seed)
    decoder_model = trainer.compile_decoder(
        decoder.build_decoder(hparams, tft_output.vocabulary_size_by_name(features.VOCAB_NAME)),
        hparams,
    )
    train_dataset = trainer.input_fn(
        [caption_transform_run.file_pattern(features.TRAIN_SPLIT)],
        tft_output,
        hparams.batch_size,
        shuffle=True,
        repeat=False,
        shuffle_buffer=hparams.shuffle_buffer,
        seed=0,
    )
    eval_dataset = trainer.input_fn(
        [caption_transform_run.file_pattern(features.EVAL_SPLIT)],
        tft_output,
        hparams.batch_size,
        shuffle=False,
        repeat=False,
    )
    run_dir = str(tmp_path_factory.mktemp('run'))
    history = trainer.train(decoder_model, train_dataset, eval_dataset, hparams, run_dir)
    return decoder_model, history, _eval_examples(caption_transform_run), run_dir


def _eval_examples(run):
    """Normalised features and first caption's ids of every eval image."""
    dataset = tf.data.TFRecordDataset(
        tf.io.gfile.glob(run.file_pattern(features.EVAL_SPLIT)), compression_type='GZIP'
    )
    spec = run.tft_output.transformed_feature_spec()
    parsed = [tf.io.parse_single_example(r, spec) for r in dataset]
    normalized = np.stack([p[features.NORMALIZED_FEATURES_KEY].numpy() for p in parsed])
    first_captions = np.stack([p[features.CAPTION_IDS_KEY][0].numpy() for p in parsed])
    return normalized, first_captions


def test_build_decoder_shapes(random_decoder, caption_hparams):
    logits = random_decoder(
        {
            features.NORMALIZED_FEATURES_KEY: tf.zeros([2, features.FEATURE_SIZE]),
            features.DECODER_INPUT_KEY: tf.zeros([2, 5], tf.int32),
        }
    )
    assert logits.shape == (2, 5, VOCAB_SIZE)
    layers = decoder.DecoderLayers.from_model(random_decoder)
    assert len(layers.grus) == caption_hparams.num_layers
    assert all(g.units == caption_hparams.units for g in layers.grus)
    assert layers.embedding.output_dim == caption_hparams.embedding_dim
    assert layers.vocab_size == VOCAB_SIZE


def test_vocabulary_without_words_is_rejected(caption_hparams):
    with pytest.raises(ValueError, match='no word'):
        decoder.build_decoder(caption_hparams, len(features.RESERVED_TOKENS))


def test_image_features_enter_through_the_initial_state(caption_hparams):
    keras.utils.set_random_seed(1)
    decoder_model = decoder.build_decoder(caption_hparams, VOCAB_SIZE)
    tokens = tf.constant([[features.START_ID, 5, 6]] * 2, tf.int32)
    images = tf.random.normal([2, features.FEATURE_SIZE], seed=3)

    def logits(image_features):
        return decoder_model(
            {features.NORMALIZED_FEATURES_KEY: image_features, features.DECODER_INPUT_KEY: tokens}
        ).numpy()

    out = logits(images)
    # Same tokens, different images: every step differs.
    assert np.abs(out[0] - out[1]).max(axis=-1).min() > 1e-4
    # Each GRU layer is given the image state (not only the first).
    layers = decoder.DecoderLayers.from_model(decoder_model)
    state = layers.initial_state(images)
    x = layers.embedding(tokens)
    for gru in layers.grus:
        x = gru(x, initial_state=state)
    np.testing.assert_allclose(layers.logits(x).numpy(), out, atol=1e-5)
    # With the state layer zeroed, the image has no other way in.
    kernel, bias = layers.initial_state.get_weights()
    layers.initial_state.set_weights([np.zeros_like(kernel), np.zeros_like(bias)])
    out = logits(images)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_masked_loss_ignores_padding():
    rng = np.random.default_rng(0)
    y_true = np.array([[5, 6, features.END_ID, 0, 0], [7, features.END_ID, 0, 0, 0]], np.int32)
    logits = rng.normal(size=[2, 5, VOCAB_SIZE]).astype(np.float32)
    loss = trainer.masked_loss(tf.constant(y_true), tf.constant(logits)).numpy()

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = y_true != features.PAD_ID
    expected = -np.mean([log_probs[b, t, y_true[b, t]] for b, t in zip(*np.nonzero(real))])
    assert loss == pytest.approx(expected, rel=1e-5)

    noisy = logits.copy()
    noisy[~real] = rng.normal(size=[(~real).sum(), VOCAB_SIZE]) * 100
    assert trainer.masked_loss(tf.constant(y_true), tf.constant(noisy)).numpy() == pytest.approx(
        loss
    )
    assert trainer.masked_loss(tf.zeros([1, 3], tf.int32), tf.constant(logits[:1, :3])).numpy() == 0


def test_masked_accuracy_counts_only_real_tokens():
    y_true = tf.constant([[5, 6, 0, 0]])
    logits = tf.one_hot([[5, 7, 0, 0]], VOCAB_SIZE)
    assert trainer.masked_accuracy(y_true, logits).numpy() == pytest.approx(0.5)


def test_input_fn_one_shifted_pair_per_caption(caption_transform_run, caption_hparams):
    dataset = trainer.input_fn(
        [caption_transform_run.file_pattern(features.EVAL_SPLIT)],
        caption_transform_run.tft_output,
        batch_size=7,
        shuffle=False,
        repeat=False,
    )
    inputs, targets = [], []
    for x, y in dataset:
        assert x[features.NORMALIZED_FEATURES_KEY].shape[1:] == [features.FEATURE_SIZE]
        inputs.append(x[features.DECODER_INPUT_KEY].numpy())
        targets.append(y.numpy())
    inputs, targets = np.concatenate(inputs), np.concatenate(targets)
    # 12 eval images with 3, 4, 5, 3, ... captions: 4 * (3 + 4 + 5) pairs.
    assert len(inputs) == 48
    assert inputs.shape[1] == targets.shape[1] == caption_hparams.max_len
    assert (inputs[:, 0] == features.START_ID).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # teacher forcing shift
    assert ((targets == features.END_ID).sum(axis=1) == 1).all()


def test_input_fn_without_files_fails_clearly(caption_transform_run, tmp_path):
    with pytest.raises(ValueError, match='No transformed examples'):
        trainer.input_fn(
            [str(tmp_path / 'none*')], caption_transform_run.tft_output, 4, False, False
        )


def test_training_lowers_eval_loss_and_logs(trained):
    _, history, _, run_dir = trained
    val_loss = history.history['val_loss']
    assert min(val_loss) < 0.5 * val_loss[0], val_loss
    assert tf.io.gfile.exists(os.path.join(run_dir, 'checkpoints', 'best.index'))
    assert tf.io.gfile.glob(os.path.join(run_dir, 'train', 'events.out.tfevents.*'))
    assert tf.io.gfile.glob(os.path.join(run_dir, 'validation', 'events.out.tfevents.*'))


def test_decode_step_reproduces_the_teacher_forced_model(random_decoder):
    layers = decoder.DecoderLayers.from_model(random_decoder)
    images = tf.random.normal([3, features.FEATURE_SIZE], seed=4)
    tokens = tf.constant([[2, 5, 9, 7], [2, 4, 4, 3], [2, 11, 12, 13]], tf.int32)
    full = random_decoder(
        {features.NORMALIZED_FEATURES_KEY: images, features.DECODER_INPUT_KEY: tokens}
    ).numpy()
    states = decoder.initial_states(layers, images)
    for t in range(tokens.shape[1]):
        step_logits, states = decoder.decode_step(layers, tokens[:, t], states)
        np.testing.assert_allclose(step_logits.numpy(), full[:, t], atol=1e-5)


def test_in_graph_greedy_loop_matches_keras_reference(trained, random_decoder, caption_hparams):
    trained_decoder, _, (normalized, _), _ = trained
    for decoder_model, images in (
        (trained_decoder, normalized),
        (random_decoder, np.random.default_rng(5).normal(size=[4, features.FEATURE_SIZE])),
    ):
        images = images.astype(np.float32)
        token_ids, length = tf.function(decoder.greedy_decode, reduce_retracing=True)(
            decoder.DecoderLayers.from_model(decoder_model), images, caption_hparams.max_len
        )
        reference = greedy_reference.reference_greedy_decode(
            decoder_model, images, caption_hparams.max_len
        )
        np.testing.assert_array_equal(token_ids.numpy(), reference)
        assert token_ids.dtype == tf.int32 and length.dtype == tf.int32


def test_greedy_decode_stops_each_row_at_end(trained, caption_transform_run, caption_hparams):
    trained_decoder, _, (normalized, first_captions), _ = trained
    token_ids, length = decoder.greedy_decode(
        decoder.DecoderLayers.from_model(trained_decoder), normalized, caption_hparams.max_len
    )
    token_ids, length = token_ids.numpy(), length.numpy()
    assert token_ids.shape == (len(normalized), caption_hparams.max_len)
    for row, n in zip(token_ids, length):
        assert (row[:n] >= decoder.NUM_RESERVED).all()  # words only: no <pad>/<unk>/<start>
        if n < len(row):
            assert row[n] == features.END_ID
            assert (row[n + 1 :] == features.PAD_ID).all()
    # The trained model names the colour and shape its image shows.
    words = caption_transform_run.tft_output.vocabulary_by_name(features.VOCAB_NAME)
    captions = decoder.ids_to_captions(token_ids, length, tf.constant(words)).numpy()
    names = {w.encode() for w in captioning_fixtures.COLOURS + captioning_fixtures.SHAPES}
    right = 0
    for caption, reference in zip(captions, first_captions):
        shown = {words[i] for i in reference} & names  # the image's colour and shape
        right += set(caption.split()) & names == shown
    assert right >= 0.75 * len(captions), captions


def test_ids_to_captions_joins_words_before_end():
    vocabulary = tf.constant(list(features.RESERVED_TOKENS) + ['a', 'red', 'circle'])
    token_ids = tf.constant([[4, 5, 6, 3, 0], [6, 3, 0, 0, 0], [4, 4, 4, 4, 4]])
    captions = decoder.ids_to_captions(token_ids, tf.constant([3, 1, 5]), vocabulary)
    assert captions.numpy().tolist() == [b'a red circle', b'circle', b'a a a a a']


def test_next_token_never_chooses_reserved_ids_but_end():
    logits = np.zeros([1, VOCAB_SIZE], np.float32)
    logits[0, [features.PAD_ID, features.UNK_ID, features.START_ID]] = 100.0
    logits[0, features.END_ID] = 1.0
    assert decoder.next_token(tf.constant(logits)).numpy().tolist() == [features.END_ID]


# --- Beam search (decoder.beam_search) against the NumPy reference (tests/beam_reference.py) ---

_beam_search = tf.function(decoder.beam_search, autograph=False, reduce_retracing=True)


def _beam_cases(trained, random_decoder):
    """(decoder, normalised features) pairs: the trained model on eval images, a random one."""
    trained_decoder, _, (normalized, _), _ = trained
    noise = np.random.default_rng(5).normal(size=[4, features.FEATURE_SIZE])
    return (
        (trained_decoder, normalized.astype(np.float32)),
        (random_decoder, noise.astype(np.float32)),
    )


def test_numpy_reference_step_equals_decode_step(random_decoder):
    layers = decoder.DecoderLayers.from_model(random_decoder)
    numpy_decoder = beam_reference.NumpyDecoder.from_layers(layers)
    images = np.random.default_rng(2).normal(size=[2, features.FEATURE_SIZE]).astype(np.float32)
    states = decoder.initial_states(layers, images)
    numpy_states = [numpy_decoder.initial_states(image) for image in images]
    for token in (features.START_ID, 7, features.END_ID):
        logits, states = decoder.decode_step(layers, tf.constant([token, token]), states)
        expected = tf.nn.log_softmax(logits).numpy()
        for row in range(2):
            log_probs, numpy_states[row] = numpy_decoder.step(token, numpy_states[row])
            np.testing.assert_allclose(log_probs, expected[row], atol=1e-5)


@pytest.mark.parametrize('width', [1, 3, 5])
@pytest.mark.parametrize('alpha', [0.6, 0.0])
def test_beam_search_equals_the_numpy_reference(
    trained, random_decoder, caption_hparams, width, alpha
):
    differs_from_greedy = 0
    for decoder_model, images in _beam_cases(trained, random_decoder):
        layers = decoder.DecoderLayers.from_model(decoder_model)
        token_ids, length, log_prob = _beam_search(
            layers, images, caption_hparams.max_len, width, alpha
        )
        expected_ids, expected_log_prob = beam_reference.beam_search(
            beam_reference.NumpyDecoder.from_layers(layers),
            images,
            caption_hparams.max_len,
            width,
            alpha,
        )
        np.testing.assert_array_equal(token_ids.numpy(), expected_ids)
        np.testing.assert_allclose(log_prob.numpy(), expected_log_prob, atol=1e-4)
        np.testing.assert_array_equal(
            length.numpy(), (expected_ids >= decoder.NUM_RESERVED).sum(axis=1)
        )
        assert token_ids.dtype == tf.int32 and length.dtype == tf.int32
        assert log_prob.dtype == tf.float32
        greedy_ids, _ = decoder.greedy_decode(layers, images, caption_hparams.max_len)
        differs_from_greedy += int((token_ids.numpy() != greedy_ids.numpy()).any(axis=1).sum())
    print(f'width {width}, alpha {alpha}: {differs_from_greedy} captions differ from greedy')


def test_beam_of_width_one_is_exactly_greedy(trained, random_decoder, caption_hparams):
    for decoder_model, images in _beam_cases(trained, random_decoder):
        layers = decoder.DecoderLayers.from_model(decoder_model)
        greedy_ids, greedy_length = decoder.greedy_decode(layers, images, caption_hparams.max_len)
        for alpha in (0.0, 0.6, 2.0):
            token_ids, length, _ = _beam_search(layers, images, caption_hparams.max_len, 1, alpha)
            np.testing.assert_array_equal(token_ids.numpy(), greedy_ids.numpy())
            np.testing.assert_array_equal(length.numpy(), greedy_length.numpy())


def test_log_prob_is_the_models_probability_of_the_chosen_caption(trained, caption_hparams):
    trained_decoder, _, (normalized, _), _ = trained
    token_ids, _, log_prob = _beam_search(
        decoder.DecoderLayers.from_model(trained_decoder),
        normalized,
        caption_hparams.max_len,
        3,
        0.6,
    )
    # Teacher forcing on <start> + the chosen ids: the loss is minus the log-probability.
    start = np.full([len(normalized), 1], features.START_ID, np.int32)
    logits = trained_decoder(
        {
            features.NORMALIZED_FEATURES_KEY: normalized,
            features.DECODER_INPUT_KEY: np.concatenate([start, token_ids.numpy()[:, :-1]], axis=1),
        }
    )
    loss_sum, _ = decoder.masked_cross_entropy(token_ids, logits)
    np.testing.assert_allclose(log_prob.numpy(), -loss_sum.numpy(), atol=1e-4)


def test_beam_search_stops_each_caption_at_end(trained, caption_hparams):
    trained_decoder, _, (normalized, _), _ = trained
    token_ids, length, _ = decoder.beam_search(
        decoder.DecoderLayers.from_model(trained_decoder),
        normalized,
        caption_hparams.max_len,
        3,
        0.6,
    )
    for row, n in zip(token_ids.numpy(), length.numpy()):
        assert (row[:n] >= decoder.NUM_RESERVED).all()
        if n < len(row):
            assert row[n] == features.END_ID
            assert (row[n + 1 :] == features.PAD_ID).all()


def _tie_every_word(layers, end_bias):
    """Fixes the next-token distribution: every word equally likely, <end> at `end_bias`."""
    kernel, bias = layers.logits.get_weights()
    bias[:] = 0.0
    bias[features.END_ID] = end_bias
    layers.logits.set_weights([np.zeros_like(kernel), bias])
    return layers


def test_ties_go_to_the_lower_beam_then_the_lower_token(caption_hparams):
    keras.utils.set_random_seed(0)
    layers = decoder.DecoderLayers.from_model(decoder.build_decoder(caption_hparams, VOCAB_SIZE))
    max_len = caption_hparams.max_len
    images = np.random.default_rng(0).normal(size=[2, features.FEATURE_SIZE]).astype(np.float32)
    first_word = decoder.NUM_RESERVED
    # <end> unlikely: every candidate of a step ties, so each step keeps the
    # first beam's lowest ids, and the first beam is always the lowest word.
    _tie_every_word(layers, end_bias=-30.0)
    token_ids, _, _ = decoder.beam_search(layers, images, max_len, 3, 0.6)
    assert token_ids.numpy().tolist() == [[first_word] * max_len] * 2
    # <end> tied with the words, and the lowest id: it wins the first step, and
    # the one-token caption stays best (no length normalisation with alpha 0).
    _tie_every_word(layers, end_bias=0.0)
    token_ids, _, log_prob = decoder.beam_search(layers, images, max_len, 3, 0.0)
    assert token_ids.numpy()[:, 0].tolist() == [features.END_ID] * 2
    np.testing.assert_allclose(log_prob.numpy(), -np.log(VOCAB_SIZE), rtol=1e-6)
    # The reference breaks the same ties the same way.
    for end_bias, alpha in ((-30.0, 0.6), (0.0, 0.0), (0.0, 0.6), (0.0, 3.0)):
        _tie_every_word(layers, end_bias)
        for width in (1, 3, 5):
            token_ids, _, _ = decoder.beam_search(layers, images, max_len, width, alpha)
            expected, _ = beam_reference.beam_search(
                beam_reference.NumpyDecoder.from_layers(layers), images, max_len, width, alpha
            )
            np.testing.assert_array_equal(token_ids.numpy(), expected)


def test_beam_settings_out_of_range_are_refused(random_decoder):
    layers = decoder.DecoderLayers.from_model(random_decoder)
    images = tf.zeros([1, features.FEATURE_SIZE])
    for width in (0, VOCAB_SIZE - 2):
        with pytest.raises(ValueError, match='beam_width'):
            decoder.beam_search(layers, images, 4, width, 0.6)
    with pytest.raises(ValueError, match='length_alpha'):
        decoder.beam_search(layers, images, 4, 2, -1.0)
