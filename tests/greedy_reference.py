"""The seed tutorial's decoding loop (fixed), as the slow, obviously correct reference for tests.

It re-runs the whole Keras decoder on the padded prefix for every emitted
token, as the seed tutorial (docs/architecture.md) does, but with the image
wired into the initial state and the same token choice as
`models.decoder.greedy_decode`. Test code only.
"""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_captioning.models import features
from tfx_captioning.models.decoder import next_token


def reference_greedy_decode(
    model: keras.Model, normalized_features: np.ndarray, max_len: int
) -> np.ndarray:
    """Greedy ids by re-running the whole Keras model on the prefix per token.

    One `model.predict` over the full padded sequence per emitted token, as
    the seed tutorial does, but with the image wired into the initial state and the
    same token choice as `greedy_decode`. Slow by design: the reference for
    tests and the baseline of the benchmark.

    Args:
      model: a model built by `build_decoder`.
      normalized_features: float32 [batch, FEATURE_SIZE].
      max_len: the most tokens to emit per row.

    Returns:
      int32 [batch, max_len] ids, laid out as `greedy_decode`'s ``token_ids``.
    """
    batch_size = normalized_features.shape[0]
    decoder_input = np.full([batch_size, max_len], features.PAD_ID, np.int32)
    decoder_input[:, 0] = features.START_ID
    token_ids = np.full([batch_size, max_len], features.PAD_ID, np.int32)
    finished = np.zeros([batch_size], bool)
    for step in range(max_len):
        logits = model.predict(
            {
                features.NORMALIZED_FEATURES_KEY: normalized_features,
                features.DECODER_INPUT_KEY: decoder_input,
            },
            verbose=0,
        )
        tokens = next_token(tf.constant(logits[:, step, :])).numpy()
        tokens = np.where(finished, features.PAD_ID, tokens)
        token_ids[:, step] = tokens
        finished |= tokens == features.END_ID
        if finished.all():
            break
        if step + 1 < max_len:
            decoder_input[:, step + 1] = tokens
    return token_ids
