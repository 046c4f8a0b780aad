"""A plain NumPy beam search over a trained decoder's weights: the tests' independent reference.

Nothing here runs TensorFlow: the weights are read once from the Keras layers
(`get_weights`), and the GRU, the embedding, the dense layers, the
log-softmax and the search itself are written out in NumPy (float64) and
Python lists, one image and one hypothesis at a time. It follows the
documented contract of `models.decoder.beam_search`, not its code:

- a live hypothesis may be extended by any id but ``<pad>``, ``<unk>`` and
  ``<start>``; its score grows by the token's log-softmax over the whole
  vocabulary;
- a finished hypothesis (it emitted ``<end>``) competes again as itself,
  emitting ``<pad>``, score unchanged;
- candidates are ranked by ``score / ((5 + n) / 6) ** alpha`` (GNMT), n the
  tokens emitted, ``<end>`` included; equal normalised scores go to the lower
  beam index, then the lower token id (a stable sort over candidates listed
  in that order);
- the search starts from one ``<start>`` hypothesis, stops when all kept
  hypotheses are finished or after ``max_len`` tokens, and answers the best
  one by the same ranking.
"""

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

from tfx_captioning.models import features

_NEVER_GENERATED = (features.PAD_ID, features.UNK_ID, features.START_ID)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass(frozen=True)
class NumpyDecoder:
    """The decoder's weights as float64 arrays, with the Keras GRU (reset_after=True) step.

    Attributes:
      initial_kernel, initial_bias: Dense(units, tanh) from image features to the state.
      embeddings: [vocab, embedding_dim].
      grus: per layer (kernel [in, 3u], recurrent_kernel [u, 3u], bias [2, 3u]),
        gates in Keras order z, r, h.
      logits_kernel, logits_bias: Dense(vocab).
    """

    initial_kernel: np.ndarray
    initial_bias: np.ndarray
    embeddings: np.ndarray
    grus: Tuple[Tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    logits_kernel: np.ndarray
    logits_bias: np.ndarray

    @classmethod
    def from_layers(cls, layers) -> 'NumpyDecoder':
        """Copies the weights of a `models.decoder.DecoderLayers`."""

        def as64(weights):
            return [np.asarray(w, np.float64) for w in weights]

        grus = []
        for gru in layers.grus:
            if not gru.cell.reset_after:
                raise ValueError('The reference implements GRU(reset_after=True) only.')
            grus.append(tuple(as64(gru.get_weights())))
        initial_kernel, initial_bias = as64(layers.initial_state.get_weights())
        (embeddings,) = as64(layers.embedding.get_weights())
        logits_kernel, logits_bias = as64(layers.logits.get_weights())
        return cls(
            initial_kernel, initial_bias, embeddings, tuple(grus), logits_kernel, logits_bias
        )

    @property
    def vocab_size(self) -> int:
        return self.logits_bias.shape[0]

    def initial_states(self, image_features: np.ndarray) -> List[np.ndarray]:
        """One image's normalised features [FEATURE_SIZE] -> one state per GRU layer."""
        state = np.tanh(image_features.astype(np.float64) @ self.initial_kernel + self.initial_bias)
        return [state for _ in self.grus]

    def step(self, token: int, states: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """One token -> (log-softmax over the vocabulary, new states)."""
        x = self.embeddings[token]
        new_states = []
        for (kernel, recurrent_kernel, bias), h in zip(self.grus, states):
            units = h.shape[0]
            from_input = x @ kernel + bias[0]
            from_state = h @ recurrent_kernel + bias[1]
            z = _sigmoid(from_input[:units] + from_state[:units])
            r = _sigmoid(from_input[units : 2 * units] + from_state[units : 2 * units])
            candidate = np.tanh(from_input[2 * units :] + r * from_state[2 * units :])
            h = z * h + (1.0 - z) * candidate
            new_states.append(h)
            x = h
        logits = x @ self.logits_kernel + self.logits_bias
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum()), new_states


@dataclasses.dataclass
class _Hypothesis:
    tokens: List[int]
    score: float
    states: List[np.ndarray]
    finished: bool


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016, section 7): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search_one(
    model: NumpyDecoder, image_features: np.ndarray, max_len: int, width: int, alpha: float
) -> Tuple[List[int], float]:
    """One image's beam search -> (token ids padded to max_len, summed log-probability)."""

    def normalized(score: float, length: int) -> float:
        return score / length_penalty(length, alpha)

    beams = [_Hypothesis([], 0.0, model.initial_states(image_features), False)]
    for _ in range(max_len):
        if all(h.finished for h in beams):
            break
        # (normalised score, score, beam index, token), listed in (beam, token) order.
        candidates = []
        steps = []
        for index, hypothesis in enumerate(beams):
            if hypothesis.finished:
                steps.append(None)
                candidates.append(
                    (
                        normalized(hypothesis.score, len(hypothesis.tokens)),
                        hypothesis.score,
                        index,
                        features.PAD_ID,
                    )
                )
                continue
            last = hypothesis.tokens[-1] if hypothesis.tokens else features.START_ID
            log_probs, states = model.step(last, hypothesis.states)
            steps.append(states)
            for token in range(model.vocab_size):
                if token in _NEVER_GENERATED:
                    continue
                score = hypothesis.score + log_probs[token]
                candidates.append(
                    (normalized(score, len(hypothesis.tokens) + 1), score, index, token)
                )
        # Stable: equal normalised scores keep the (beam, token) order.
        candidates.sort(key=lambda candidate: -candidate[0])
        kept = []
        for _, score, index, token in candidates[:width]:
            source = beams[index]
            if source.finished:
                kept.append(source)
            else:
                kept.append(
                    _Hypothesis(
                        source.tokens + [token], score, steps[index], token == features.END_ID
                    )
                )
        beams = kept
    best = max(
        range(len(beams)),
        key=lambda i: (normalized(beams[i].score, len(beams[i].tokens)), -i),
    )
    tokens = beams[best].tokens + [features.PAD_ID] * (max_len - len(beams[best].tokens))
    return tokens, beams[best].score


def beam_search(
    model: NumpyDecoder, normalized_features: np.ndarray, max_len: int, width: int, alpha: float
) -> Tuple[np.ndarray, np.ndarray]:
    """A batch, image by image -> (int32 token ids [batch, max_len], float64 log_prob [batch])."""
    results = [beam_search_one(model, row, max_len, width, alpha) for row in normalized_features]
    token_ids = np.array([tokens for tokens, _ in results], np.int32).reshape(-1, max_len)
    return token_ids, np.array([score for _, score in results], np.float64)
