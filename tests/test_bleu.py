"""BLEU against nltk's corpus_bleu (default weights per order, no smoothing)."""

import warnings

import pytest
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from tfx_captioning.models import bleu

REFS = [
    ['a red circle on the left'.split(), 'a small red circle on the left of the picture'.split()],
    ['a blue square in the middle'.split(), 'there is a blue square in the middle'.split()],
    ['a green triangle on the right'.split(), 'a big green triangle on the right'.split()],
]

CASES = {
    'exact': [
        'a red circle on the left'.split(),
        'a blue square in the middle'.split(),
        'a green triangle on the right'.split(),
    ],
    'shorter than references': ['red circle'.split(), 'a blue'.split(), 'triangle on the'.split()],
    'longer than references': [
        'a red circle on the left on the left of the picture today'.split(),
        'there is a blue square in the middle of it all right now'.split(),
        'a big green triangle on the right side of a big picture'.split(),
    ],
    'one empty hypothesis': [
        'a red circle on the left'.split(),
        [],
        'a green triangle on the right'.split(),
    ],
    'missing 4-gram order': [
        'red circle left'.split(),
        'blue square middle'.split(),
        'green triangle right'.split(),
    ],
    'missing every order': ['xyz'.split(), 'qq ww'.split(), 'zz'.split()],
    'repeated words clipped': [
        'the the the the the'.split(),
        'a a a a'.split(),
        'right right'.split(),
    ],
}


def nltk_scores(refs, hyps):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # nltk warns when an order has no match
        for n in range(1, 5):
            out[f'bleu_{n}'] = nltk_corpus_bleu(refs, hyps, weights=(1.0 / n,) * n)
    return out


@pytest.mark.parametrize('case', sorted(CASES))
def test_agrees_with_nltk(case):
    ours = bleu.corpus_bleu(REFS, CASES[case])
    theirs = nltk_scores(REFS, CASES[case])
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), (case, key)


def test_perfect_match_scores_one_and_order_is_monotone():
    scores = bleu.corpus_bleu(REFS, CASES['exact'])
    assert scores == pytest.approx({'bleu_1': 1.0, 'bleu_2': 1.0, 'bleu_3': 1.0, 'bleu_4': 1.0})
    partial = bleu.corpus_bleu(REFS, CASES['shorter than references'])
    assert 0 < partial['bleu_1'] < 1
    assert partial['bleu_1'] >= partial['bleu_2'] >= partial['bleu_3'] >= partial['bleu_4']


def test_closest_reference_length_prefers_shorter_on_tie():
    assert bleu.closest_ref_length([[1] * 4, [1] * 6], 5) == 4
    assert bleu.closest_ref_length([[1] * 4, [1] * 6], 6) == 6


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match='reference lists'):
        bleu.corpus_bleu(REFS, CASES['exact'][:2])
    with pytest.raises(ValueError, match='at least one reference'):
        bleu.corpus_bleu([[]], [['a']])
