"""The GRU caption decoder: the Keras training model, greedy decoding and beam search.

Training uses `build_decoder`, a teacher-forced Keras model
``(normalized image features, caption ids[:-1]) -> logits for ids[1:]``:

    features -> Dense(units, tanh) ──initial state──┐ (each of the stacked GRUs)
    ids -> Embedding(vocab, embedding_dim) -> GRU -> GRU -> GRU -> Dense(vocab) logits

With ``hparams.decoder == 'attention'`` it also takes the normalised region
features, and the stacked GRUs become one `attention_lib.AttentionGRUCell` run by
Keras' `RNN`: at every word the top GRU's state attends over the 64 regions
and the context vector joins the word embedding (Show, Attend and Tell).

Inference reuses the *same layers* one token at a time: `initial_states` and
`decode_step` are small functions of `DecoderLayers`, and `greedy_decode` runs
them in a batched `tf.while_loop` that stops each row at ``<end>`` (no Python
per token, no `py_function`). The loop uses only fixed-shape tensor ops
(`tf.where` writes, no TensorArray) so the same step converts to TFLite
builtins. `beam_search` runs the same step in a batched beam search (one
top-k over beam x vocabulary per image and step), with the same fixed-shape
ops.
model re-run on the growing prefix per token), kept as the slow,
obviously-correct reference for tests and the benchmark.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_captioning.models import attention as attention_lib
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams

# Layer names: `DecoderLayers.from_model` finds the layers by them.
INITIAL_STATE_LAYER = 'initial_state'
EMBEDDING_LAYER = 'embedding'
GRU_LAYER_PREFIX = 'gru_'
LOGITS_LAYER = 'logits'
ATTENTION_LAYER = 'attention_gru'

# Added to the logits of tokens that must never be generated. Large and finite
# (not -inf) so that no NaN can appear, in TF or in TFLite.
_FORBIDDEN_LOGIT = -1e9
# Never emitted: <pad> and <start> are not words, and an <unk> in a caption
# says nothing; the next best real word is more useful.
_FORBIDDEN_IDS = (features.PAD_ID, features.UNK_ID, features.START_ID)
NUM_RESERVED = len(features.RESERVED_TOKENS)


def build_decoder(hparams: HParams, vocab_size: int) -> keras.Model:
    """The teacher-forced training model.

    Inputs (a dict, or a list in this order):
      `features.NORMALIZED_FEATURES_KEY`: float32 [batch, FEATURE_SIZE].
      `features.DECODER_INPUT_KEY`: int32 [batch, time], ``<start>`` first.
      `features.NORMALIZED_REGIONS_KEY` (attention only): float32 [batch,
      NUM_REGIONS * FEATURE_SIZE], as Transform writes them.

    Output: float32 logits [batch, time, vocab_size] for the next token.

    Args:
      hparams: sizes (embedding_dim, units, num_layers) and the seed.
      vocab_size: number of ids, reserved tokens included.

    Raises:
      ValueError: a vocabulary with no real word.
    """
    if vocab_size <= NUM_RESERVED:
        raise ValueError(
            f'vocab_size {vocab_size} has no word beyond the {NUM_RESERVED} reserved tokens; '
            'lower min_word_count or check the captions.'
        )
    image_features = keras.Input(
        shape=(features.FEATURE_SIZE,), dtype=tf.float32, name=features.NORMALIZED_FEATURES_KEY
    )
    decoder_input = keras.Input(shape=(None,), dtype=tf.int32, name=features.DECODER_INPUT_KEY)
    # The seed tutorial describes this state but never passes it to the GRUs; here
    # every GRU layer starts from the image.
    state = keras.layers.Dense(hparams.units, activation='tanh', name=INITIAL_STATE_LAYER)(
        image_features
    )
    x = keras.layers.Embedding(vocab_size, hparams.embedding_dim, name=EMBEDDING_LAYER)(
        decoder_input
    )
    inputs = [image_features, decoder_input]
    if hparams.attention:
        flat_regions = keras.Input(
            shape=(features.NUM_REGIONS * features.FEATURE_SIZE,),
            dtype=tf.float32,
            name=features.NORMALIZED_REGIONS_KEY,
        )
        inputs.append(flat_regions)
        regions = keras.layers.Reshape((features.NUM_REGIONS, features.FEATURE_SIZE))(flat_regions)
        cell = attention_lib.AttentionGRUCell(
            hparams.units,
            hparams.num_layers,
            hparams.attention_units,
            context_dim=hparams.embedding_dim,
            name='attention_cell',
        )
        values, keys = cell.project(regions)  # once per image, not per word
        x = keras.layers.RNN(cell, return_sequences=True, name=ATTENTION_LAYER)(
            x, initial_state=[state] * hparams.num_layers, constants=[values, keys]
        )
    else:
        for i in range(hparams.num_layers):
            x = keras.layers.GRU(
                hparams.units, return_sequences=True, name=f'{GRU_LAYER_PREFIX}{i + 1}'
            )(x, initial_state=state)
    logits = keras.layers.Dense(vocab_size, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name='caption_decoder')


def masked_cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per caption: summed cross-entropy over its real (non-``<pad>``) target tokens, and their count.

    The one definition of the loss, used by training (`model.masked_loss`) and
    by the exported evaluation signature.

    Args:
      targets: int [batch, time] target ids.
      logits: float32 [batch, time, vocab].

    Returns:
      (loss_sum float32 [batch] in nats, token_count int32 [batch]).
    """
    targets = tf.cast(targets, tf.int32)
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    real = tf.not_equal(targets, features.PAD_ID)
    loss_sum = tf.reduce_sum(per_token * tf.cast(real, per_token.dtype), axis=1)
    return loss_sum, tf.reduce_sum(tf.cast(real, tf.int32), axis=1)


@dataclasses.dataclass(frozen=True)
class DecoderLayers:
    """The trained layers that one decoding step needs (weights shared with the Keras model)."""

    initial_state: keras.layers.Dense
    embedding: keras.layers.Embedding
    grus: Tuple[keras.layers.GRU, ...]
    logits: keras.layers.Dense
    attention: Optional[attention_lib.AttentionGRUCell] = None
    """The attention decoder's cell (its GRU cells replace `grus`, which is empty)."""

    @classmethod
    def from_model(cls, model: keras.Model) -> 'DecoderLayers':
        """The layers of a model built by `build_decoder`."""
        names = [layer.name for layer in model.layers]
        cell = model.get_layer(ATTENTION_LAYER).cell if ATTENTION_LAYER in names else None
        grus = tuple(layer for layer in model.layers if layer.name.startswith(GRU_LAYER_PREFIX))
        if not grus and cell is None:
            raise ValueError(
                f'Model {model.name!r} has no {GRU_LAYER_PREFIX}* or {ATTENTION_LAYER} layer.'
            )
        return cls(
            initial_state=model.get_layer(INITIAL_STATE_LAYER),
            embedding=model.get_layer(EMBEDDING_LAYER),
            grus=grus,
            logits=model.get_layer(LOGITS_LAYER),
            attention=cell,
        )

    @property
    def vocab_size(self) -> int:
        return int(self.logits.units)

    @property
    def num_layers(self) -> int:
        return self.attention.num_layers if self.attention is not None else len(self.grus)


Memory = Optional[Tuple[tf.Tensor, tf.Tensor]]
"""What the attention decoder attends over: the projected regions and their keys
(`AttentionGRUCell.project`); None for the init-inject decoder."""


def memory(layers: DecoderLayers, normalized_regions: Optional[tf.Tensor]) -> Memory:
    """The attention memory of a batch (keys computed once per image), or None.

    Args:
      layers: the decoder's layers.
      normalized_regions: float32 [batch, NUM_REGIONS, FEATURE_SIZE] (or flat
        [batch, NUM_REGIONS * FEATURE_SIZE]), z-scored as in training; None
        for the init-inject decoder.

    Raises:
      ValueError: regions given to a decoder without attention, or missing
        for one with it.
    """
    if layers.attention is None:
        if normalized_regions is not None:
            raise ValueError('This decoder has no attention: it takes no region features.')
        return None
    if normalized_regions is None:
        raise ValueError('The attention decoder needs the region features.')
    regions = tf.reshape(normalized_regions, [-1, features.NUM_REGIONS, features.FEATURE_SIZE])
    return layers.attention.project(regions)


def initial_states(layers: DecoderLayers, normalized_features: tf.Tensor) -> List[tf.Tensor]:
    """float32 [batch, FEATURE_SIZE] -> one [batch, units] initial state per GRU layer."""
    state = layers.initial_state(normalized_features)
    return [state for _ in range(layers.num_layers)]


def attention_step(
    layers: DecoderLayers,
    token_ids: tf.Tensor,
    states: Sequence[tf.Tensor],
    attention_memory: Memory = None,
) -> Tuple[tf.Tensor, List[tf.Tensor], Optional[tf.Tensor]]:
    """`decode_step`, also returning the attention weights (None without attention)."""
    x = layers.embedding(token_ids)
    if layers.attention is not None:
        values, keys = attention_memory
        x, new_states, alpha = layers.attention.step(x, states, values, keys)
        return layers.logits(x), new_states, alpha
    new_states = []
    for gru, state in zip(layers.grus, states):
        x, state_list = gru.cell(x, [state])
        new_states.append(state_list[0])
    return layers.logits(x), new_states, None


def decode_step(
    layers: DecoderLayers,
    token_ids: tf.Tensor,
    states: Sequence[tf.Tensor],
    attention_memory: Memory = None,
) -> Tuple[tf.Tensor, List[tf.Tensor]]:
    """One decoding step for a batch: previous token and GRU states -> next-token logits.

    Runs each GRU layer's own cell (or the attention cell's `step`), so the
    weights and the arithmetic are exactly those of the teacher-forced
    training model.

    Args:
      layers: the decoder's layers.
      token_ids: int32 [batch], the previous token.
      states: one float32 [batch, units] state per GRU layer.
      attention_memory: `memory(...)` of the batch, for the attention decoder.

    Returns:
      (logits float32 [batch, vocab], new states).
    """
    logits, new_states, _ = attention_step(layers, token_ids, states, attention_memory)
    return logits, new_states


def next_token(logits: tf.Tensor) -> tf.Tensor:
    """Greedy choice: float32 [batch, vocab] logits -> int32 [batch] ids, never a forbidden one."""
    vocab_size = logits.shape[-1]
    penalty = np.zeros([vocab_size], np.float32)
    penalty[list(_FORBIDDEN_IDS)] = _FORBIDDEN_LOGIT
    return tf.argmax(logits + penalty, axis=-1, output_type=tf.int32)


def greedy_decode(
    layers: DecoderLayers,
    normalized_features: tf.Tensor,
    max_len: int,
    normalized_regions: Optional[tf.Tensor] = None,
    with_attention: bool = False,
) -> Tuple[tf.Tensor, ...]:
    """Greedy decoding of a batch inside the graph, each row stopping at ``<end>``.

    The loop ends when every row has produced ``<end>`` or after `max_len`
    tokens. Rows already finished emit ``<pad>``.

    Args:
      layers: the decoder's layers.
      normalized_features: float32 [batch, FEATURE_SIZE], z-scored as in training.
      max_len: the most tokens to emit per row, ``<end>`` included.
      normalized_regions: float32 [batch, NUM_REGIONS, FEATURE_SIZE] (or
        flat), z-scored as in training: the attention decoder's input only.
      with_attention: also return the attention weights (attention decoder).

    Returns:
      token_ids int32 [batch, max_len]: words, then ``<end>``, then ``<pad>``;
      length int32 [batch]: number of words (before ``<end>``); with
      `with_attention`, attention float32 [batch, max_len, NUM_REGIONS]: each
      emitted token's weights over the regions (zeros after ``<end>``).
    """
    if with_attention and layers.attention is None:
        raise ValueError('with_attention needs the attention decoder.')
    attention_memory = memory(layers, normalized_regions)
    batch_size = tf.shape(normalized_features)[0]
    positions = tf.range(max_len, dtype=tf.int32)

    def keep_going(step, tokens, states, token_ids, finished, *weights):
        del tokens, states, token_ids, weights
        return tf.logical_and(step < max_len, tf.logical_not(tf.reduce_all(finished)))

    def body(step, tokens, states, token_ids, finished, *weights):
        logits, states, alpha = attention_step(layers, tokens, states, attention_memory)
        tokens = tf.where(finished, features.PAD_ID, next_token(logits))
        # Write column `step` with a select rather than a TensorArray: fixed
        # shapes and builtin ops only (the TFLite variant reuses this loop).
        at_step = tf.equal(positions, step)[tf.newaxis, :]
        token_ids = tf.where(at_step, tokens[:, tf.newaxis], token_ids)
        if weights:
            alpha = tf.where(finished[:, tf.newaxis], tf.zeros_like(alpha), alpha)
            weights = (tf.where(at_step[:, :, tf.newaxis], alpha[:, tf.newaxis, :], weights[0]),)
        finished = tf.logical_or(finished, tf.equal(tokens, features.END_ID))
        return (step + 1, tokens, states, token_ids, finished, *weights)

    loop_vars = (
        tf.constant(0, tf.int32),
        tf.fill([batch_size], tf.constant(features.START_ID, tf.int32)),
        initial_states(layers, normalized_features),
        tf.zeros([batch_size, max_len], tf.int32),
        tf.zeros([batch_size], tf.bool),
    )
    if with_attention:
        loop_vars += (tf.zeros([batch_size, max_len, features.NUM_REGIONS], tf.float32),)
    results = tf.while_loop(keep_going, body, loop_vars, maximum_iterations=max_len)
    token_ids = results[3]
    # Generated words are exactly the ids past the reserved ones.
    length = tf.reduce_sum(tf.cast(token_ids >= NUM_RESERVED, tf.int32), axis=1)
    if with_attention:
        return token_ids, length, results[5]
    return token_ids, length


LENGTH_NORMALIZATION = 'gnmt'
"""How `beam_search` compares hypotheses of different lengths (recorded in the model metadata)."""
LENGTH_NORMALIZATION_REFERENCE = (
    'Wu et al. 2016, "Google\'s Neural Machine Translation System", arXiv:1609.08144, '
    'section 7: lp(Y) = ((5 + |Y|) / 6) ** alpha; alpha = 0.6 as in Vaswani et al. 2017, '
    'arXiv:1706.03762, section 6.1'
)
TIE_BREAK = 'equal scores: the lower beam index, then the lower token id (tf.math.top_k order)'


def length_penalties(max_len: int, alpha: float) -> np.ndarray:
    """GNMT's ``lp(n) = ((5 + n) / 6) ** alpha`` for n = 0..max_len, float32 [max_len + 1].

    A hypothesis of n tokens (``<end>`` included) is ranked by its summed
    log-probability divided by lp(n); ``alpha = 0`` gives lp = 1, the raw
    log-probability.
    """
    lengths = np.arange(max_len + 1, dtype=np.float64)
    return (((5.0 + lengths) / 6.0) ** float(alpha)).astype(np.float32)


def max_beam_width(vocab_size: int) -> int:
    """The widest beam a vocabulary allows: the number of tokens that may be generated."""
    return vocab_size - len(_FORBIDDEN_IDS)


def beam_search(
    layers: DecoderLayers,
    normalized_features: tf.Tensor,
    max_len: int,
    beam_width: int,
    length_alpha: float,
    normalized_regions: Optional[tf.Tensor] = None,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batched beam search inside the graph: `beam_width` hypotheses per image.

    One `tf.while_loop` over steps. Each step runs `decode_step` on every
    image's `beam_width` hypotheses at once (a [batch * width] batch), then,
    per image, keeps the `beam_width` best of the width x vocabulary
    candidates with one `tf.math.top_k`:

    - a live hypothesis of score s offers every word and ``<end>`` (never
      ``<pad>``, ``<unk>`` or ``<start>``, as in greedy decoding), each with
      score ``s + log p(token)`` (log-softmax over the whole vocabulary);
    - a finished hypothesis (it emitted ``<end>``) offers only itself again,
      emitting ``<pad>``, its score unchanged. Finished and live hypotheses
      compete for the same slots.

    Candidates are ranked by GNMT's length-normalised score (Wu et al. 2016,
    section 7): ``score / lp(n)``, ``lp(n) = ((5 + n) / 6) ** length_alpha``,
    n = tokens emitted (``<end>`` included). Live candidates of one step share
    n, so among them this is the raw log-probability order; it matters when a
    finished hypothesis competes with a longer live one, and for the final
    choice. Equal scores go to the lower beam index, then the lower token id
    (`tf.math.top_k` returns equal values in index order; TFLite's TOPK_V2
    does the same). The loop stops when every hypothesis of every image has
    emitted ``<end>``, or after `max_len` tokens. Hypotheses stay sorted by
    normalised score, so the answer is each image's first one.

    At step 0 all hypotheses of an image would be the same ``<start>``; only
    the first is live (the others start at a score of -1e9), so the first
    step keeps `beam_width` different first tokens. With ``beam_width = 1``
    this is exactly greedy decoding.

    Only fixed-shape tensor ops (gathers, selects, top-k; no TensorArray), so
    it converts to TFLite builtins like `greedy_decode`.

    Args:
      layers: the decoder's layers.
      normalized_features: float32 [batch, FEATURE_SIZE], z-scored as in training.
      max_len: the most tokens to emit per caption, ``<end>`` included.
      beam_width: hypotheses kept per image, from 1 to `max_beam_width`.
      length_alpha: GNMT's alpha, >= 0 (0: rank by raw log-probability).
      normalized_regions: the attention decoder's regions (see
        `greedy_decode`); every hypothesis of an image attends over its
        image's regions.

    Returns:
      token_ids int32 [batch, max_len] (words, ``<end>``, then ``<pad>``, as
      `greedy_decode`), length int32 [batch] (words before ``<end>``) and
      log_prob float32 [batch] (the chosen sequence's summed log-probability,
      ``<end>`` included, not normalised).

    Raises:
      ValueError: a width out of range or a negative alpha.
    """
    vocab_size = layers.vocab_size
    if not 1 <= beam_width <= max_beam_width(vocab_size):
        raise ValueError(
            f'beam_width must be in [1, {max_beam_width(vocab_size)}] for a vocabulary of '
            f'{vocab_size} ids, got {beam_width}.'
        )
    if not length_alpha >= 0:
        raise ValueError(f'length_alpha must be >= 0, got {length_alpha}.')
    width = int(beam_width)
    batch_size = tf.shape(normalized_features)[0]
    hypotheses = batch_size * width

    def per_hypothesis(tensor: tf.Tensor) -> tf.Tensor:
        """[batch, a, b] -> [batch * width, a, b]: row i * width + k is image i's."""
        _, a, b = tensor.shape
        tiled = tf.tile(tensor[:, tf.newaxis, :, :], [1, width, 1, 1])
        return tf.reshape(tiled, [hypotheses, a, b])

    # A hypothesis never moves to another image (its source beam is one of
    # the same image's), so the memory is tiled once and never gathered.
    attention_memory = memory(layers, normalized_regions)
    if attention_memory is not None:
        attention_memory = tuple(per_hypothesis(tensor) for tensor in attention_memory)
    positions = tf.range(max_len, dtype=tf.int32)
    penalties = tf.constant(length_penalties(max_len, length_alpha))
    # Log-probability offsets of a live hypothesis (forbidden tokens out) and
    # of a finished one (only <pad>, at no cost).
    live_offset = np.zeros([vocab_size], np.float32)
    live_offset[list(_FORBIDDEN_IDS)] = _FORBIDDEN_LOGIT
    finished_offset = np.full([vocab_size], _FORBIDDEN_LOGIT, np.float32)
    finished_offset[features.PAD_ID] = 0.0
    # Hypothesis b of image i is row i * width + b of the flat [batch * width] batch.
    first_of_image = tf.range(batch_size, dtype=tf.int32)[:, tf.newaxis] * width

    def keep_going(step, tokens, states, token_ids, scores, lengths, finished):
        del tokens, states, token_ids, scores, lengths
        return tf.logical_and(step < max_len, tf.logical_not(tf.reduce_all(finished)))

    def body(step, tokens, states, token_ids, scores, lengths, finished):
        logits, states = decode_step(layers, tokens, states, attention_memory)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        log_probs = tf.where(
            finished[:, tf.newaxis], finished_offset[tf.newaxis, :], log_probs + live_offset
        )
        candidate_scores = scores[:, tf.newaxis] + log_probs  # [batch * width, vocab]
        candidate_lengths = tf.where(finished, lengths, lengths + 1)
        normalized = candidate_scores / tf.gather(penalties, candidate_lengths)[:, tf.newaxis]
        _, best = tf.math.top_k(tf.reshape(normalized, [batch_size, width * vocab_size]), k=width)
        source_beam = best // vocab_size  # [batch, width]
        tokens = tf.reshape(best - source_beam * vocab_size, [hypotheses])
        source = tf.reshape(first_of_image + source_beam, [hypotheses])
        flat_best = tf.reshape(first_of_image * vocab_size + best, [hypotheses])
        scores = tf.gather(tf.reshape(candidate_scores, [-1]), flat_best)
        lengths = tf.gather(candidate_lengths, source)
        finished = tf.logical_or(tf.gather(finished, source), tf.equal(tokens, features.END_ID))
        states = [tf.gather(state, source) for state in states]
        token_ids = tf.where(
            tf.equal(positions, step)[tf.newaxis, :],
            tokens[:, tf.newaxis],
            tf.gather(token_ids, source),
        )
        return step + 1, tokens, states, token_ids, scores, lengths, finished

    initial_scores = np.full([width], _FORBIDDEN_LOGIT, np.float32)
    initial_scores[0] = 0.0
    loop_vars = (
        tf.constant(0, tf.int32),
        tf.fill([hypotheses], tf.constant(features.START_ID, tf.int32)),
        [
            tf.reshape(tf.tile(state[:, tf.newaxis, :], [1, width, 1]), [hypotheses, -1])
            for state in initial_states(layers, normalized_features)
        ],
        tf.zeros([hypotheses, max_len], tf.int32),
        tf.reshape(tf.tile(initial_scores[tf.newaxis, :], [batch_size, 1]), [hypotheses]),
        tf.zeros([hypotheses], tf.int32),
        tf.zeros([hypotheses], tf.bool),
    )
    _, _, _, token_ids, scores, _, _ = tf.while_loop(
        keep_going, body, loop_vars, maximum_iterations=max_len
    )
    token_ids = tf.reshape(token_ids, [batch_size, width, max_len])[:, 0, :]
    log_prob = tf.reshape(scores, [batch_size, width])[:, 0]
    length = tf.reduce_sum(tf.cast(token_ids >= NUM_RESERVED, tf.int32), axis=1)
    return token_ids, length, log_prob


def ids_to_captions(token_ids: tf.Tensor, length: tf.Tensor, vocabulary: tf.Tensor) -> tf.Tensor:
    """int32 [batch, max_len] ids and int32 [batch] lengths -> string [batch] captions.

    Args:
      token_ids: output of `greedy_decode`.
      length: output of `greedy_decode`.
      vocabulary: string [vocab_size], word of each id.
    """
    words = tf.gather(vocabulary, token_ids)
    words = tf.RaggedTensor.from_tensor(words, lengths=length)
    return tf.strings.reduce_join(words, axis=1, separator=' ')
