"""Corpus BLEU-1..4 for captions, against every reference caption of each image.

The definition of the captioning literature (Papineni et al. 2002 as used by
coco-caption): clipped ("modified") n-gram precision summed over the corpus,
geometric mean of orders 1..n with equal weights, and one corpus-level brevity
penalty using, per hypothesis, the reference length closest to it (ties go to
the shorter reference). No smoothing: if some order has no match at all, that
BLEU-n is 0.

Edge conventions follow `nltk.translate.bleu_score.corpus_bleu` (which the
tests check this against to 1e-6): each hypothesis adds max(1, #n-grams) to an
order's denominator, so a hypothesis shorter than n counts as one miss, and an
empty corpus scores 0. coco-caption differs only in those degenerate cases
(it adds nothing for them and uses 1e-9/1e-15 epsilons).

Written here rather than calling nltk at evaluation time: it is 40 lines,
exact (integer counts), returns all four orders in one pass, and keeps nltk a
test-only dependency.
"""

import collections
import math
from typing import Dict, Iterable, List, Sequence, Tuple

MAX_ORDER = 4


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def closest_ref_length(references: Sequence[Sequence[str]], hyp_len: int) -> int:
    """The reference length closest to `hyp_len`; the shorter one on a tie."""
    return min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))


def corpus_counts(
    references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    max_order: int = MAX_ORDER,
) -> Tuple[List[int], List[int], int, int]:
    """Clipped n-gram matches and totals per order, hypothesis and reference lengths.

    Args:
      references: per hypothesis, its reference token lists (at least one).
      hypotheses: token lists.

    Returns:
      (matches, totals, hyp_length, ref_length) with matches[k], totals[k] for
      order k + 1.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} reference lists.')
    matches = [0] * max_order
    totals = [0] * max_order
    hyp_length = ref_length = 0
    for refs, hyp in zip(references, hypotheses):
        if not refs:
            raise ValueError('Every hypothesis needs at least one reference.')
        for n in range(1, max_order + 1):
            hyp_counts = _ngrams(hyp, n)
            max_ref = collections.Counter()
            for ref in refs:
                for gram, count in _ngrams(ref, n).items():
                    max_ref[gram] = max(max_ref[gram], count)
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(1, sum(hyp_counts.values()))
        hyp_length += len(hyp)
        ref_length += closest_ref_length(refs, len(hyp))
    return matches, totals, hyp_length, ref_length


def brevity_penalty(ref_length: int, hyp_length: int) -> float:
    if hyp_length > ref_length:
        return 1.0
    if hyp_length == 0:
        return 0.0
    return math.exp(1 - ref_length / hyp_length)


def corpus_bleu(
    references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    max_order: int = MAX_ORDER,
) -> Dict[str, float]:
    """Corpus BLEU-1..`max_order` as {'bleu_1': …, …}.

    Args:
      references: per hypothesis, all its reference captions as token lists.
      hypotheses: generated captions as token lists.
    """
    matches, totals, hyp_length, ref_length = corpus_counts(references, hypotheses, max_order)
    bp = brevity_penalty(ref_length, hyp_length)
    scores = {}
    log_sum = 0.0
    for n in range(1, max_order + 1):
        if matches[n - 1] == 0 or matches[0] == 0:
            # No smoothing: a missing order makes this and every higher BLEU 0.
            log_sum = -math.inf
        else:
            log_sum += math.log(matches[n - 1] / totals[n - 1])
        scores[f'bleu_{n}'] = 0.0 if log_sum == -math.inf else bp * math.exp(log_sum / n)
    return scores


def tokenize_all(captions: Iterable[str]) -> List[List[str]]:
    """Splits already-normalised captions on whitespace."""
    return [c.split() for c in captions]
