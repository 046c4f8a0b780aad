"""HParams: defaults of the issue, validation, and the custom_config round trip."""

import pytest

from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams


def test_defaults_are_the_tutorial_sizes():
    hparams = HParams().validate()
    assert (hparams.embedding_dim, hparams.units, hparams.num_layers) == (256, 512, 3)
    assert hparams.learning_rate == pytest.approx(1e-3)
    assert hparams.max_len == features.MAX_LEN
    assert hparams.min_word_count == features.MIN_WORD_COUNT


def test_custom_config_round_trip_through_json_types():
    config = HParams(units=64, epochs=3, learning_rate=0.01).to_custom_config()
    config['units'] = 64.0  # custom_config travels as JSON
    assert HParams.from_custom_config(config) == HParams(units=64, epochs=3, learning_rate=0.01)


def test_transform_config_holds_only_what_transform_reads():
    assert set(HParams().transform_config()) == {
        features.MAX_LEN_CONFIG,
        features.MIN_WORD_COUNT_CONFIG,
    }


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="Unknown hyperparameters \\['unitz'\\]"):
        HParams.from_custom_config({'unitz': 3})


def test_invalid_values_are_all_reported():
    with pytest.raises(ValueError) as error:
        HParams(units=0, max_len=1, learning_rate=0.0).validate()
    for name in ('units', 'max_len', 'learning_rate'):
        assert name in str(error.value)


def test_fractional_integer_is_rejected():
    with pytest.raises(ValueError, match='units must be an integer'):
        HParams.from_custom_config({'units': 2.5})


def test_frozen():
    with pytest.raises(AttributeError):
        HParams().units = 3


def test_beam_search_defaults_and_validation():
    hparams = HParams().validate()
    assert (hparams.beam_width, hparams.beam_length_alpha) == (3, 0.6)
    with pytest.raises(ValueError) as error:
        HParams(beam_width=0, beam_length_alpha=-0.1).validate()
    assert 'beam_width' in str(error.value) and 'beam_length_alpha' in str(error.value)
    # JSON may carry alpha as an int.
    assert HParams.from_custom_config({'beam_length_alpha': 0}).beam_length_alpha == 0.0
