"""The ONE exported SavedModel: image bytes (or raw features) -> caption, decoded in the graph.

`CaptionModel` computes, and `save_caption_model` writes as one graph:

1. the shared image preprocessing (`image_preprocessing.preprocess_batch`),
2. the extractor's exact InceptionV3 encoder,
3. Transform's z-score of the features, as per-dimension constants
   ``normalized = raw * scale + offset`` (`feature_normalization` reads them
   from Transform's graph),
4. the trained decoder, run by `decoder.greedy_decode` (a batched
   `tf.while_loop` that stops each row at ``<end>``) or by
   `decoder.beam_search` (the same step, a batched in-graph beam search),
5. the id -> word table (the vocabulary as a constant; the file is also copied
   to the SavedModel's ``assets/``).

Signatures (names in `models.features`):

- `SERVING_SIGNATURE`: `IMAGE_BYTES_INPUT` string[None] ->
  `CAPTION_OUTPUT` string[None], `TOKEN_IDS_OUTPUT` int32[None, max_len],
  `LENGTH_OUTPUT` int32[None].
- `FEATURES_SIGNATURE`: `IMAGE_FEATURES_INPUT` float32[None, FEATURE_SIZE]
  (raw extractor features) -> the same outputs.
- `BEAM_SIGNATURE` and `BEAM_FEATURES_SIGNATURE`: the same inputs as the two
  above -> the same outputs plus `LOG_PROB_OUTPUT` float32[None], decoded by
  beam search with the width and GNMT length-normalisation alpha fixed at
  export. Those settings are written to ``assets.extra/decoding.json``
  (`features.DECODING_FILE`, see `decoding_metadata`): TF Serving copies
  ``assets.extra`` with the version but never reads it, and the signature
  defs have no room for them.
- `LOSS_SIGNATURE` (for the evaluator): `NORMALIZED_FEATURES_KEY`
  float32[None, FEATURE_SIZE] and `CAPTION_IDS_KEY` int64[None, max_len + 1]
  (Transform's output, one caption per row) -> `LOSS_OUTPUT` float32[None]
  (masked cross-entropy summed per caption) and `TOKENS_OUTPUT` int32[None].

An attention model (`features.DECODER_ATTENTION`) also reads the 64 region
features: its encoder returns InceptionV3's last map beside the pooled
vector, Transform's per-channel z-score of the regions is applied as
constants the same way, the features signatures and the loss signature take
the regions as a second input (`IMAGE_REGIONS_INPUT`, or
`NORMALIZED_REGIONS_KEY` for the loss), and one more signature,
`ATTENTION_SIGNATURE`, returns each generated word's attention weights over
the 8 x 8 grid (`serving_default` is unchanged).

Why constants rather than Transform's Keras layer: the z-score is the only
transformation serving needs, and as two constant vectors it needs no
TFT ops, no dummy caption inputs and no lookup tables, so the same graph
also converts to TFLite builtins.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from tfx_captioning.models import decoder, features, image_preprocessing
from tfx_captioning.models import encoder as encoder_lib
from tfx_captioning.models.hparams import HParams


def _probe(tft_output: tft.TFTransformOutput) -> Dict[str, np.ndarray]:
    """Transform's outputs, float64, for two raw images whose every value is 0 and 1.

    Every raw input Transform's graph reads (the features, and the regions
    when the extractor kept them) is fed; other raw features are missing on
    purpose: TFT feeds placeholders for them. 0 and 1 are exact in float16,
    the regions' stored type.
    """
    raw_spec = tft_output.raw_feature_spec()
    inputs = {
        features.IMAGE_FEATURES_KEY: _dense_or_sparse(
            raw_spec[features.IMAGE_FEATURES_KEY],
            np.stack([np.zeros(features.FEATURE_SIZE), np.ones(features.FEATURE_SIZE)]).tolist(),
        )
    }
    if features.IMAGE_REGIONS_KEY in raw_spec:
        region_dtype = np.dtype(features.REGION_DTYPE).newbyteorder('<')
        shape = (features.NUM_REGIONS, features.FEATURE_SIZE)
        probe = [[np.full(shape, value, region_dtype).tobytes()] for value in (0.0, 1.0)]
        inputs[features.IMAGE_REGIONS_KEY] = _dense_or_sparse(
            raw_spec[features.IMAGE_REGIONS_KEY], probe
        )
    transformed = tft_output.transform_raw_features(inputs)
    return {
        key: np.asarray(value, np.float64)
        for key, value in transformed.items()
        if key in (features.NORMALIZED_FEATURES_KEY, features.NORMALIZED_REGIONS_KEY)
    }


def _dense_or_sparse(raw_spec: Any, values: Any) -> Any:
    """[2, n] values as `raw_spec` wants them: dense, or sparse with every value present.

    (tf.sparse.from_dense would drop the zeros.) Byte strings stay Python
    lists: NumPy's fixed-width bytes would strip the trailing NUL bytes of
    float16 zeros.
    """
    rows, cols = len(values), len(values[0])
    dense = tf.constant(values, dtype=tf.string if isinstance(values[0][0], bytes) else tf.float32)
    if isinstance(raw_spec, tf.io.FixedLenFeature):
        return dense if raw_spec.shape else dense[:, 0]
    index_rows, index_cols = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
    return tf.SparseTensor(
        indices=np.stack([index_rows.ravel(), index_cols.ravel()], axis=1).astype(np.int64),
        values=tf.reshape(dense, [-1]),
        dense_shape=[rows, cols],
    )


def feature_normalization(tft_output: tft.TFTransformOutput) -> Tuple[np.ndarray, np.ndarray]:
    """Transform's per-dimension z-score of the image features, as ``(scale, offset)``.

    `tft.scale_to_z_score` is affine in each dimension, ``f(x) = x * scale +
    offset`` (``scale = 1 / std``, or 1 where the variance is 0), so running
    Transform's own graph on x = 0 and x = 1 recovers it exactly.

    Args:
      tft_output: Transform's output (its graph holds the training mean/var).

    Returns:
      float32 arrays ``scale`` and ``offset`` of shape [FEATURE_SIZE].
    """
    return _affine(_probe(tft_output)[features.NORMALIZED_FEATURES_KEY])


def _affine(probed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Outputs at inputs 0 and 1 -> ``(scale, offset)`` of an affine map, float32."""
    at_zero, at_one = probed
    return (at_one - at_zero).astype(np.float32), at_zero.astype(np.float32)


def normalizations(
    tft_output: tft.TFTransformOutput,
) -> Tuple[Tuple[np.ndarray, np.ndarray], Optional[Tuple[np.ndarray, np.ndarray]]]:
    """`feature_normalization` and `region_normalization` from ONE run of Transform's graph."""
    probed = _probe(tft_output)
    regions = probed.get(features.NORMALIZED_REGIONS_KEY)
    if regions is not None:
        # Every region of a channel shares one mean and variance: read region 0's.
        regions = _affine(regions.reshape(2, features.NUM_REGIONS, features.FEATURE_SIZE)[:, 0, :])
    return _affine(probed[features.NORMALIZED_FEATURES_KEY]), regions


def region_normalization(
    tft_output: tft.TFTransformOutput,
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Transform's per-channel z-score of the region features as ``(scale, offset)``, or None.

    As `feature_normalization` (every region of a channel shares one mean
    and variance), float32 arrays of shape [FEATURE_SIZE]; None when
    Transform wrote no regions.
    """
    return normalizations(tft_output)[1]


def read_vocabulary(vocabulary_file: str) -> List[str]:
    """The words of a Transform text vocabulary file, in id order."""
    with tf.io.gfile.GFile(vocabulary_file, 'r') as f:
        words = f.read().splitlines()
    if tuple(words[: len(features.RESERVED_TOKENS)]) != features.RESERVED_TOKENS:
        raise ValueError(
            f'{vocabulary_file} should start with {features.RESERVED_TOKENS}, '
            f'starts with {words[: len(features.RESERVED_TOKENS)]}.'
        )
    return words


class CaptionModel:
    """The combined model's computation: normalisation, greedy or beam decoding, id -> word.

    A plain Python object over the Keras encoder and decoder (so the TFLite
    variant can reuse the same pieces); `serving_module` turns it into the
    `tf.Module` that is saved.

    Attributes:
      encoder: float32 [N, 299, 299, 3] in [-1, 1] -> float32 [N, FEATURE_SIZE].
      decoder_model: the trained `decoder.build_decoder` model.
      decoder_layers: its layers, for `decoder.greedy_decode`.
      vocabulary_file: Transform's vocabulary file.
      words: the vocabulary, in id order.
      max_len: the most tokens emitted per caption, ``<end>`` included.
      beam_width: hypotheses per image of the beam-search signatures.
      beam_length_alpha: GNMT length-normalisation alpha of the beam search.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder_model: keras.Model,
        feature_scale: np.ndarray,
        feature_offset: np.ndarray,
        vocabulary_file: str,
        max_len: int,
        beam_width: int = HParams.beam_width,
        beam_length_alpha: float = HParams.beam_length_alpha,
        region_scale: Optional[np.ndarray] = None,
        region_offset: Optional[np.ndarray] = None,
    ):
        """Args:
        encoder: float32 [N, 299, 299, 3] in [-1, 1] -> float32 [N, FEATURE_SIZE].
        decoder_model: a trained `decoder.build_decoder` model.
        feature_scale: float32 [FEATURE_SIZE], from `feature_normalization`.
        feature_offset: float32 [FEATURE_SIZE], from `feature_normalization`.
        vocabulary_file: Transform's vocabulary (copied to the SavedModel's assets).
        max_len: the most tokens to emit per caption, ``<end>`` included.
        beam_width: hypotheses per image of the beam search (1 = greedy).
        beam_length_alpha: GNMT's length-normalisation alpha (0 = raw log-probability).
        region_scale: float32 [FEATURE_SIZE], from `region_normalization`
          (attention decoder only).
        region_offset: float32 [FEATURE_SIZE], likewise.

        Raises:
          ValueError: the vocabulary does not match the decoder, max_len < 1,
            beam settings out of range, or an attention decoder without the
            region normalisation (or one given to a decoder without attention).
        """
        self.words = read_vocabulary(vocabulary_file)
        self.decoder_layers = decoder.DecoderLayers.from_model(decoder_model)
        if len(self.words) != self.decoder_layers.vocab_size:
            raise ValueError(
                f'{vocabulary_file} has {len(self.words)} words, '
                f'the decoder {self.decoder_layers.vocab_size}.'
            )
        if max_len < 1:
            raise ValueError(f'max_len must be >= 1, got {max_len}.')
        widest = decoder.max_beam_width(len(self.words))
        if not 1 <= beam_width <= widest:
            raise ValueError(
                f'beam_width must be in [1, {widest}] (the tokens this vocabulary can '
                f'generate), got {beam_width}.'
            )
        if not beam_length_alpha >= 0:
            raise ValueError(f'beam_length_alpha must be >= 0, got {beam_length_alpha}.')
        self.attention = self.decoder_layers.attention is not None
        if self.attention != (region_scale is not None and region_offset is not None):
            raise ValueError(
                'An attention decoder needs region_scale and region_offset (Transform wrote '
                'no region features?); a decoder without attention takes neither.'
            )
        self.encoder = encoder
        # The same layers with InceptionV3's last map as a second output.
        self._regions_encoder = encoder_lib.regions_model(encoder) if self.attention else None
        self.decoder_model = decoder_model
        self.vocabulary_file = vocabulary_file
        self.max_len = int(max_len)
        self.beam_width = int(beam_width)
        self.beam_length_alpha = float(beam_length_alpha)
        self._vocabulary = tf.constant(self.words)
        self._scale = tf.constant(np.asarray(feature_scale, np.float32))
        self._offset = tf.constant(np.asarray(feature_offset, np.float32))
        if self.attention:
            self._region_scale = tf.constant(np.asarray(region_scale, np.float32))
            self._region_offset = tf.constant(np.asarray(region_offset, np.float32))

    @property
    def variables(self) -> List[tf.Variable]:
        """Every variable the computation reads (encoder and decoder)."""
        return list(self.encoder.variables) + list(self.decoder_model.variables)

    def normalize(self, image_features: tf.Tensor) -> tf.Tensor:
        """Raw extractor features -> the z-scored features the decoder was trained on."""
        return image_features * self._scale + self._offset

    def normalize_regions(self, image_regions: Optional[tf.Tensor]) -> Optional[tf.Tensor]:
        """Raw regions [N, NUM_REGIONS, FEATURE_SIZE] -> z-scored per channel (None stays None)."""
        if image_regions is None:
            return None
        return image_regions * self._region_scale + self._region_offset

    def encode(self, images: tf.Tensor) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
        """Preprocessed images -> raw (features, regions); regions only with attention."""
        if self.attention:
            image_features, regions = self._regions_encoder(images, training=False)
            return image_features, regions
        return self.encoder(images, training=False), None

    def _outputs(self, token_ids: tf.Tensor, length: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {
            features.CAPTION_OUTPUT: decoder.ids_to_captions(token_ids, length, self._vocabulary),
            features.TOKEN_IDS_OUTPUT: token_ids,
            features.LENGTH_OUTPUT: length,
        }

    def decode(
        self, normalized_features: tf.Tensor, normalized_regions: Optional[tf.Tensor] = None
    ) -> Dict[str, tf.Tensor]:
        """Normalised features [N, FEATURE_SIZE] (and regions) -> the signature outputs."""
        token_ids, length = decoder.greedy_decode(
            self.decoder_layers, normalized_features, self.max_len, normalized_regions
        )
        return self._outputs(token_ids, length)

    def decode_attention(
        self, normalized_features: tf.Tensor, normalized_regions: tf.Tensor
    ) -> Dict[str, tf.Tensor]:
        """As `decode`, plus `ATTENTION_OUTPUT` [N, max_len, NUM_REGIONS] (attention only)."""
        token_ids, length, weights = decoder.greedy_decode(
            self.decoder_layers,
            normalized_features,
            self.max_len,
            normalized_regions,
            with_attention=True,
        )
        return {**self._outputs(token_ids, length), features.ATTENTION_OUTPUT: weights}

    def decode_beam(
        self, normalized_features: tf.Tensor, normalized_regions: Optional[tf.Tensor] = None
    ) -> Dict[str, tf.Tensor]:
        """Normalised features [N, FEATURE_SIZE] (and regions) -> the beam signatures' outputs."""
        token_ids, length, log_prob = decoder.beam_search(
            self.decoder_layers,
            normalized_features,
            self.max_len,
            self.beam_width,
            self.beam_length_alpha,
            normalized_regions,
        )
        return {**self._outputs(token_ids, length), features.LOG_PROB_OUTPUT: log_prob}

    def caption_from_features(
        self, image_features: tf.Tensor, image_regions: Optional[tf.Tensor] = None
    ) -> Dict[str, tf.Tensor]:
        """Raw float32 [N, FEATURE_SIZE] features (as the extractor writes them) -> outputs."""
        return self.decode(self.normalize(image_features), self.normalize_regions(image_regions))

    def caption_beam_from_features(
        self, image_features: tf.Tensor, image_regions: Optional[tf.Tensor] = None
    ) -> Dict[str, tf.Tensor]:
        """Raw float32 [N, FEATURE_SIZE] features (and regions) -> the beam search's outputs."""
        return self.decode_beam(
            self.normalize(image_features), self.normalize_regions(image_regions)
        )

    def decoding_metadata(
        self,
        greedy_signatures: Sequence[str] = (
            features.SERVING_SIGNATURE,
            features.FEATURES_SIGNATURE,
        ),
        beam_signatures: Sequence[str] = (
            features.BEAM_SIGNATURE,
            features.BEAM_FEATURES_SIGNATURE,
        ),
        attention_signatures: Sequence[str] = (features.ATTENTION_SIGNATURE,),
    ) -> Dict[str, Any]:
        """The decoding settings fixed in the exported graphs, for `features.DECODING_FILE`.

        Args:
          greedy_signatures: the signatures that decode greedily.
          beam_signatures: the signatures that decode by beam search.
          attention_signatures: the signatures that return attention
            weights (attention model only).
        """
        return {
            'max_len': self.max_len,
            'decoder': features.DECODER_ATTENTION
            if self.attention
            else features.DECODER_INIT_INJECT,
            **(
                {
                    'attention': {
                        'signatures': list(attention_signatures),
                        'grid': [features.REGION_GRID, features.REGION_GRID],
                        'regions': 'row-major over the grid of the 299 x 299 input',
                    }
                }
                if self.attention
                else {}
            ),
            'greedy': {'signatures': list(greedy_signatures)},
            'beam_search': {
                'signatures': list(beam_signatures),
                'beam_width': self.beam_width,
                'length_normalization': decoder.LENGTH_NORMALIZATION,
                'length_alpha': self.beam_length_alpha,
                'score': 'log_prob / ((5 + n) / 6) ** length_alpha, n = tokens incl. <end>',
                'reference': decoder.LENGTH_NORMALIZATION_REFERENCE,
                'ties': decoder.TIE_BREAK,
            },
        }

    def caption_loss(
        self,
        normalized_features: tf.Tensor,
        caption_ids: tf.Tensor,
        normalized_regions: Optional[tf.Tensor] = None,
    ) -> Dict[str, tf.Tensor]:
        """Teacher-forced loss of given captions, for the evaluator.

        Args:
          normalized_features: float32 [N, FEATURE_SIZE], as Transform wrote them.
          caption_ids: int64 [N, max_len + 1], one caption per row, as Transform wrote them.
          normalized_regions: float32 [N, NUM_REGIONS * FEATURE_SIZE], as
            Transform wrote them (attention only).

        Returns:
          `features.LOSS_OUTPUT` float32 [N] (nats summed over each caption's
          real target tokens) and `features.TOKENS_OUTPUT` int32 [N].
        """
        caption_ids = tf.cast(caption_ids, tf.int32)
        inputs = {
            features.NORMALIZED_FEATURES_KEY: normalized_features,
            features.DECODER_INPUT_KEY: caption_ids[:, :-1],
        }
        if normalized_regions is not None:
            inputs[features.NORMALIZED_REGIONS_KEY] = normalized_regions
        logits = self.decoder_model(inputs, training=False)
        loss_sum, token_count = decoder.masked_cross_entropy(caption_ids[:, 1:], logits)
        return {features.LOSS_OUTPUT: loss_sum, features.TOKENS_OUTPUT: token_count}

    def caption_from_images(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Encoded images string [N] (JPEG, PNG, GIF, BMP) -> outputs."""
        images = image_preprocessing.preprocess_batch(image_bytes)
        return self.caption_from_features(*self.encode(images))

    def caption_beam_from_images(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Encoded images string [N] -> the beam search's outputs (same decoding path)."""
        images = image_preprocessing.preprocess_batch(image_bytes)
        return self.caption_beam_from_features(*self.encode(images))

    def caption_attention_from_images(self, image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Encoded images string [N] -> greedy outputs plus each word's attention weights."""
        image_features, regions = self.encode(image_preprocessing.preprocess_batch(image_bytes))
        return self.decode_attention(
            self.normalize(image_features), self.normalize_regions(regions)
        )


def serving_module(model: CaptionModel) -> tf.Module:
    """The `tf.Module` to save: variables, vocabulary asset and the signature functions.

    The Keras models themselves are not attached, only their variables: saving
    then does not trace and serialise every InceptionV3 layer for Keras
    (minutes on a CPU), and loading needs no Keras.

    Returns:
      A module with ``caption_from_images``, ``caption_from_features``,
      their ``caption_beam_*`` twins and ``caption_loss`` `tf.function`s
      (see `signatures`), and ``caption_attention_from_images`` for an
      attention model.
    """
    module = tf.Module(name='caption_model')
    # Tracked so that the functions' captured variables are saved with the module.
    module.model_variables = model.variables
    module.vocabulary_file = tf.saved_model.Asset(model.vocabulary_file)
    image_bytes = [tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_INPUT)]
    raw_features = [
        tf.TensorSpec([None, features.FEATURE_SIZE], tf.float32, name=features.IMAGE_FEATURES_INPUT)
    ]
    loss_inputs = [
        tf.TensorSpec(
            [None, features.FEATURE_SIZE], tf.float32, name=features.NORMALIZED_FEATURES_KEY
        ),
        tf.TensorSpec([None, model.max_len + 1], tf.int64, name=features.CAPTION_IDS_KEY),
    ]
    if model.attention:
        raw_features.append(
            tf.TensorSpec(
                [None, features.NUM_REGIONS, features.FEATURE_SIZE],
                tf.float32,
                name=features.IMAGE_REGIONS_INPUT,
            )
        )
        loss_inputs.append(
            tf.TensorSpec(
                [None, features.NUM_REGIONS * features.FEATURE_SIZE],
                tf.float32,
                name=features.NORMALIZED_REGIONS_KEY,
            )
        )

    # No AutoGraph: the code has no tensor-dependent Python control flow (the
    # loop is an explicit tf.while_loop), and converting InceptionV3's ~300
    # layer calls would add tens of seconds to every export.
    def function(method, input_signature):
        return tf.function(method, autograph=False, input_signature=input_signature)

    module.caption_from_features = function(model.caption_from_features, raw_features)
    module.caption_from_images = function(model.caption_from_images, image_bytes)
    module.caption_beam_from_features = function(model.caption_beam_from_features, raw_features)
    module.caption_beam_from_images = function(model.caption_beam_from_images, image_bytes)
    module.caption_loss = function(model.caption_loss, loss_inputs)
    if model.attention:
        module.caption_attention_from_images = function(
            model.caption_attention_from_images, image_bytes
        )
    return module


def signatures(module: tf.Module) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The serving signatures of a `serving_module`, by name."""
    found = {
        features.SERVING_SIGNATURE: module.caption_from_images.get_concrete_function(),
        features.FEATURES_SIGNATURE: module.caption_from_features.get_concrete_function(),
        features.BEAM_SIGNATURE: module.caption_beam_from_images.get_concrete_function(),
        features.BEAM_FEATURES_SIGNATURE: (
            module.caption_beam_from_features.get_concrete_function()
        ),
        features.LOSS_SIGNATURE: module.caption_loss.get_concrete_function(),
    }
    if hasattr(module, 'caption_attention_from_images'):
        found[features.ATTENTION_SIGNATURE] = (
            module.caption_attention_from_images.get_concrete_function()
        )
    return found


def write_decoding_metadata(metadata: Dict[str, Any], directory: str) -> str:
    """Writes `metadata` (see `CaptionModel.decoding_metadata`) as `directory/DECODING_FILE`.

    Returns:
      The file's path.
    """
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, features.DECODING_FILE)
    with tf.io.gfile.GFile(path, 'w') as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True) + '\n')
    return path


def decoder_model_attends(decoder_model: keras.Model) -> bool:
    """Whether a `decoder.build_decoder` model is the attention decoder."""
    return decoder.DecoderLayers.from_model(decoder_model).attention is not None


def save_caption_model(model: CaptionModel, export_dir: str) -> None:
    """Writes `model` as a SavedModel with its signatures (see the module docstring).

    The beam search's settings go to ``assets.extra/decoding.json`` beside it.
    """
    module = serving_module(model)
    tf.saved_model.save(module, export_dir, signatures=signatures(module))
    write_decoding_metadata(
        model.decoding_metadata(), os.path.join(export_dir, features.WARMUP_REQUESTS_DIR)
    )


def export_serving_model(
    export_dir: str,
    decoder_model: keras.Model,
    encoder_dir: str,
    tft_output: tft.TFTransformOutput,
    max_len: int,
    beam_width: int = HParams.beam_width,
    beam_length_alpha: float = HParams.beam_length_alpha,
) -> CaptionModel:
    """Builds the combined model from the Trainer's pieces and saves it to `export_dir`.

    Args:
      export_dir: the Trainer's ``serving_model_dir``.
      decoder_model: the trained decoder.
      encoder_dir: the extractor's encoder Model artifact (``fn_args.base_model``).
      tft_output: Transform's output (normalisation and vocabulary).
      max_len: the most tokens to emit per caption.
      beam_width: hypotheses per image of the beam-search signatures.
      beam_length_alpha: GNMT length-normalisation alpha of the beam search.

    Returns:
      The saved model's computation (for further exports, such as TFLite).
    """
    (scale, offset), regions = normalizations(tft_output)
    if not decoder_model_attends(decoder_model):
        regions = None  # Transform wrote regions; this decoder does not read them
    region_scale, region_offset = regions or (None, None)
    model = CaptionModel(
        encoder=encoder_lib.load_encoder(encoder_dir),
        decoder_model=decoder_model,
        feature_scale=scale,
        feature_offset=offset,
        vocabulary_file=tft_output.vocabulary_file_by_name(features.VOCAB_NAME),
        max_len=max_len,
        beam_width=beam_width,
        beam_length_alpha=beam_length_alpha,
        region_scale=region_scale,
        region_offset=region_offset,
    )
    save_caption_model(model, export_dir)
    return model
