"""The attention decoder (Show, Attend and Tell) on its own: training model, step, greedy, beam.

Random weights and random inputs: these check that inference reuses exactly
the training model's arithmetic and that the attention weights mean what the
signature says. Learning is checked on Transform's output in test_attention.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfx_captioning.models import decoder, features
from tfx_captioning.models.hparams import HParams

VOCAB = 12
MAX_LEN = 6
HPARAMS = HParams(
    decoder=features.DECODER_ATTENTION,
    units=24,
    embedding_dim=8,
    attention_units=8,
    num_layers=2,
    max_len=MAX_LEN,
    seed=3,
)


@pytest.fixture(scope='module')
def model():
    tf.keras.utils.set_random_seed(HPARAMS.seed)
    return decoder.build_decoder(HPARAMS, VOCAB)


def _inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    image_features = rng.normal(size=(batch, features.FEATURE_SIZE)).astype(np.float32)
    regions = rng.normal(size=(batch, features.NUM_REGIONS * features.FEATURE_SIZE)).astype(
        np.float32
    )
    ids = rng.integers(0, VOCAB, size=(batch, MAX_LEN)).astype(np.int32)
    return image_features, regions, ids


def test_the_step_reproduces_the_teacher_forced_model(model):
    image_features, regions, ids = _inputs()
    logits = model(
        {
            features.NORMALIZED_FEATURES_KEY: image_features,
            features.NORMALIZED_REGIONS_KEY: regions,
            features.DECODER_INPUT_KEY: ids,
        }
    ).numpy()
    layers = decoder.DecoderLayers.from_model(model)
    assert layers.attention is not None and layers.num_layers == 2 and not layers.grus
    memory = decoder.memory(layers, regions)
    states = decoder.initial_states(layers, image_features)
    stepped = []
    for t in range(MAX_LEN):
        step_logits, states = decoder.decode_step(layers, ids[:, t], states, memory)
        stepped.append(step_logits.numpy())
    np.testing.assert_allclose(np.stack(stepped, axis=1), logits, rtol=1e-5, atol=1e-5)


def test_the_regions_change_the_logits(model):
    """The decoder does look at the regions (a decoder that ignored them would pass the test above)."""
    image_features, regions, ids = _inputs()
    inputs = {features.NORMALIZED_FEATURES_KEY: image_features, features.DECODER_INPUT_KEY: ids}
    a = model({**inputs, features.NORMALIZED_REGIONS_KEY: regions}).numpy()
    b = model({**inputs, features.NORMALIZED_REGIONS_KEY: regions[::-1].copy()}).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_greedy_attention_weights_are_distributions_until_end(model):
    image_features, regions, _ = _inputs(batch=4, seed=1)
    layers = decoder.DecoderLayers.from_model(model)
    token_ids, length, weights = decoder.greedy_decode(
        layers, image_features, MAX_LEN, regions, with_attention=True
    )
    token_ids, length, weights = token_ids.numpy(), length.numpy(), weights.numpy()
    assert weights.shape == (4, MAX_LEN, features.NUM_REGIONS)
    for row in range(4):
        emitted = int(np.sum(token_ids[row] != features.PAD_ID))  # words and <end>
        np.testing.assert_allclose(weights[row, :emitted].sum(axis=-1), 1.0, atol=1e-5)
        assert np.all(weights[row, emitted:] == 0.0)
        assert emitted >= length[row]
    again, _ = decoder.greedy_decode(layers, image_features, MAX_LEN, regions)
    np.testing.assert_array_equal(again.numpy(), token_ids)


def test_a_beam_of_one_is_greedy_and_wider_beams_score_no_worse(model):
    image_features, regions, _ = _inputs(batch=4, seed=2)
    layers = decoder.DecoderLayers.from_model(model)
    greedy, _ = decoder.greedy_decode(layers, image_features, MAX_LEN, regions)
    one, _, one_log_prob = decoder.beam_search(layers, image_features, MAX_LEN, 1, 0.0, regions)
    np.testing.assert_array_equal(one.numpy(), greedy.numpy())
    _, _, wide_log_prob = decoder.beam_search(layers, image_features, MAX_LEN, 4, 0.0, regions)
    # alpha = 0 ranks by raw log-probability, which a wider beam can only raise.
    assert np.all(wide_log_prob.numpy() >= one_log_prob.numpy() - 1e-4)


def test_regions_are_required_by_attention_and_refused_without_it(model):
    image_features, regions, _ = _inputs()
    layers = decoder.DecoderLayers.from_model(model)
    with pytest.raises(ValueError, match='needs the region features'):
        decoder.greedy_decode(layers, image_features, MAX_LEN)
    plain = decoder.DecoderLayers.from_model(
        decoder.build_decoder(HParams(units=8, embedding_dim=4, num_layers=1), VOCAB)
    )
    with pytest.raises(ValueError, match='no attention'):
        decoder.greedy_decode(plain, image_features, MAX_LEN, regions)
    with pytest.raises(ValueError, match='with_attention'):
        decoder.greedy_decode(plain, image_features, MAX_LEN, with_attention=True)


def test_the_decoder_hyperparameter_is_validated():
    assert HParams(decoder='attention').validate().attention
    assert not HParams().attention
    with pytest.raises(ValueError, match='decoder must be one of'):
        HParams(decoder='transformer').validate()
    with pytest.raises(ValueError, match='attention_units'):
        HParams(attention_units=0).validate()
