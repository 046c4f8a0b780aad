"""The Transform `preprocessing_fn`: vocabulary, caption id sequences, z-scored features.

Transform calls `preprocessing_fn` (by dotted path
``tfx_captioning.models.preprocessing.preprocessing_fn``) on the ImageFeatureExtractor's
examples and writes, per image:

- `features.IMAGE_ID_KEY`: the image id, passed through;
- `features.NORMALIZED_FEATURES_KEY`: the InceptionV3 features z-scored per
  dimension (`z_score_per_dimension`: `tft.scale_to_z_score` in float64, so
  that the result does not depend on how Beam batches the examples), so that
  even random-weight features (std ~5e-4) reach the decoder at unit scale;
- `features.NORMALIZED_REGIONS_KEY` (when the extractor kept region
  features): the 64 regions' features z-scored per channel
  (`z_score_per_channel`), float32;
- `features.CAPTION_IDS_KEY`: **every** caption as ``<start> w1 .. wk <end>``
  ids, padded with ``<pad>`` (id 0) or truncated to ``max_len + 1`` ids, as a
  ragged ``[n_captions, max_len + 1]`` tensor, so any number of captions per
  image is kept.

The vocabulary (`features.VOCAB_NAME`) starts with `features.RESERVED_TOKENS`
and keeps words seen at least ``min_word_count`` times; serving reads it back
with `tft.TFTransformOutput.vocabulary_file_by_name`.

`normalize_caption` is a pure TF function so evaluation (BLEU references) can
normalise text exactly as training did.
"""

import re
from typing import Any, Dict, Mapping, Optional

import tensorflow as tf
import tensorflow_transform as tft

from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams

# One character class built from the filter list; RE2 accepts Python's escapes.
_FILTER_PATTERN = '[' + re.escape(features.CAPTION_FILTER_CHARS) + ']'


def normalize_caption(captions: tf.Tensor) -> tf.Tensor:
    """Lowercases, replaces the seed tutorial's filter punctuation by spaces, collapses whitespace.

    Pure TensorFlow (no Python per element), usable in Transform, in the
    Evaluator and in tests alike.

    Args:
      captions: a string tensor (any shape) of UTF-8 captions.

    Returns:
      A string tensor of the same shape: words separated by single spaces,
      without leading or trailing whitespace.
    """
    text = tf.strings.lower(captions, encoding='utf-8')
    # Replace (not delete) so that "black-and-white" gives three words, as the
    # tutorial's Keras Tokenizer does.
    text = tf.strings.regex_replace(text, _FILTER_PATTERN, ' ')
    text = tf.strings.regex_replace(text, r'\s+', ' ')
    return tf.strings.strip(text)


def _to_ragged(tensor: Any) -> tf.RaggedTensor:
    """A batch of string lists (dense, sparse or ragged) as a ragged [batch, (n)] tensor.

    SchemaGen describes the captions as a VarLenFeature (SparseTensor) when it
    does not infer shapes, and as a FixedLenFeature (dense) when every image
    has the same number; Transform must accept both.
    """
    if isinstance(tensor, tf.RaggedTensor):
        return tensor
    if isinstance(tensor, tf.SparseTensor):
        return tf.RaggedTensor.from_sparse(tensor)
    if tensor.shape.rank == 1:
        tensor = tf.expand_dims(tensor, 1)
    return tf.RaggedTensor.from_tensor(tensor)


def _to_dense(tensor: Any, width: int, default_value: Any) -> tf.Tensor:
    """A batch of fixed-width values (dense, sparse or ragged) as a dense [batch, width] tensor."""
    if isinstance(tensor, tf.SparseTensor):
        tensor = tft.sparse_tensor_to_dense_with_shape(
            tensor, [None, width], default_value=default_value
        )
    elif isinstance(tensor, tf.RaggedTensor):
        tensor = tensor.to_tensor(default_value=default_value, shape=[None, width])
    elif tensor.shape.rank == 1:
        tensor = tf.expand_dims(tensor, 1)
    tensor.set_shape([None, width])
    return tensor


def caption_ids(
    word_ids: tf.RaggedTensor, max_len: int, start_id: int, end_id: int, pad_id: int
) -> tf.Tensor:
    """Word ids of captions -> fixed-length ``<start> .. <end> <pad>..`` sequences.

    Captions longer than ``max_len - 1`` words are truncated; ``<end>`` is
    always kept, so the model always learns to stop.

    Args:
      word_ids: int64 ragged [n_captions, (words)].
      max_len: tokens after ``<start>``, ``<end>`` included.
      start_id: id of ``<start>``.
      end_id: id of ``<end>``.
      pad_id: id of ``<pad>``.

    Returns:
      int64 [n_captions, max_len + 1].
    """
    word_ids = word_ids[:, : max_len - 1]
    n_captions = word_ids.nrows()
    start = tf.fill([n_captions, 1], tf.constant(start_id, tf.int64))
    end = tf.fill([n_captions, 1], tf.constant(end_id, tf.int64))
    sequences = tf.concat([start, word_ids, end], axis=1)
    return sequences.to_tensor(
        default_value=tf.constant(pad_id, tf.int64), shape=[None, max_len + 1]
    )


# TFX Transform calls this.
def z_score_per_dimension(values: tf.Tensor) -> tf.Tensor:
    """float32 [batch, d] -> ``(values - mean) / std`` per dimension (`tft.scale_to_z_score`).

    One mean and variance per dimension, not one over all of them (the
    features' dimensions have very different scales); a dimension without
    variance is only centred. Computed in float64, rounded to float32 at the
    end: TFX's Transform lets Beam size its input batches by measured time,
    and in float32 the per-batch sums made the statistics, and so the trained
    model, depend on that batching (z-scores moved by up to 2e-4); in float64
    two batchings agree to float32 rounding.
    """
    normalized = tft.scale_to_z_score(tf.cast(values, tf.float64), elementwise=True)
    return tf.cast(normalized, tf.float32)


# TFX Transform calls this.
def z_score_per_channel(regions: tf.Tensor) -> tf.Tensor:
    """float [batch, NUM_REGIONS, FEATURE_SIZE] -> z-scored per channel, float32 [batch, NUM_REGIONS * FEATURE_SIZE].

    One mean and variance per channel over every region of every image (the
    regions of a channel are the same detector at different places), from
    `tft.scale_to_z_score` on the regions as rows of one [batch * NUM_REGIONS,
    FEATURE_SIZE] matrix, in float64 as `z_score_per_dimension`.
    """
    rows = tf.reshape(tf.cast(regions, tf.float64), [-1, features.FEATURE_SIZE])
    normalized = tft.scale_to_z_score(rows, elementwise=True)
    return tf.reshape(
        tf.cast(normalized, tf.float32), [-1, features.NUM_REGIONS * features.FEATURE_SIZE]
    )


def decode_regions(region_bytes: tf.Tensor) -> tf.Tensor:
    """string [batch] (the extractor's `features.IMAGE_REGIONS_KEY`) -> float32 [batch, NUM_REGIONS, FEATURE_SIZE]."""
    values = tf.io.decode_raw(region_bytes, tf.dtypes.as_dtype(features.REGION_DTYPE))
    return tf.reshape(
        tf.cast(values, tf.float32), [-1, features.NUM_REGIONS, features.FEATURE_SIZE]
    )


def preprocessing_fn(
    inputs: Mapping[str, Any], custom_config: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Raw extractor features -> vocabulary ids, padded captions and z-scored features.

    Args:
      inputs: a batch of extractor examples: `features.IMAGE_ID_KEY`,
        `features.IMAGE_FEATURES_KEY`, `features.CAPTIONS_KEY` (each dense,
        sparse or ragged, as the schema says).
      custom_config: Transform's ``custom_config``; reads
        `features.MAX_LEN_CONFIG` and `features.MIN_WORD_COUNT_CONFIG`
        (see `HParams.transform_config`), defaults otherwise.

    Returns:
      The transformed batch: `features.IMAGE_ID_KEY` string [batch],
      `features.NORMALIZED_FEATURES_KEY` float32 [batch, FEATURE_SIZE],
      `features.CAPTION_IDS_KEY` int64 ragged [batch, (n_captions), max_len + 1],
      and `features.NORMALIZED_REGIONS_KEY` float32 [batch, NUM_REGIONS *
      FEATURE_SIZE] when the input has `features.IMAGE_REGIONS_KEY`.
    """
    hparams = HParams.from_custom_config(custom_config or {})

    image_id = _to_dense(inputs[features.IMAGE_ID_KEY], 1, default_value='')[:, 0]

    image_features = _to_dense(
        tf.cast(inputs[features.IMAGE_FEATURES_KEY], tf.float32),
        features.FEATURE_SIZE,
        default_value=0.0,
    )
    normalized = z_score_per_dimension(image_features)
    outputs = {}
    if features.IMAGE_REGIONS_KEY in inputs:
        region_bytes = _to_dense(inputs[features.IMAGE_REGIONS_KEY], 1, default_value='')[:, 0]
        outputs[features.NORMALIZED_REGIONS_KEY] = z_score_per_channel(decode_regions(region_bytes))

    captions = normalize_caption(_to_ragged(inputs[features.CAPTIONS_KEY]))
    # A caption that was only punctuation would teach "<start> <end>": drop it.
    captions = tf.ragged.boolean_mask(captions, tf.strings.length(captions) > 0)
    words = tf.strings.split(captions)  # [batch, (captions), (words)]

    word_ids = tft.compute_and_apply_vocabulary(
        words.flat_values,
        default_value=features.UNK_ID,
        # TFT warns that a threshold of 1 is a no-op; None says the same quietly.
        frequency_threshold=hparams.min_word_count if hparams.min_word_count > 1 else None,
        reserved_tokens=list(features.RESERVED_TOKENS),
        vocab_filename=features.VOCAB_NAME,
    )
    per_caption = words.values.with_flat_values(word_ids)  # [total captions, (words)]
    sequences = caption_ids(
        per_caption,
        hparams.max_len,
        start_id=features.START_ID,
        end_id=features.END_ID,
        pad_id=features.PAD_ID,
    )
    # Back to one row per image: [batch, (captions), max_len + 1].
    per_image = tf.RaggedTensor.from_row_splits(sequences, words.row_splits, validate=False)

    return {
        features.IMAGE_ID_KEY: image_id,
        features.NORMALIZED_FEATURES_KEY: normalized,
        features.CAPTION_IDS_KEY: per_image,
        **outputs,
    }
