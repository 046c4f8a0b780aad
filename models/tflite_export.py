"""The TFLite variant: the same weights as the SavedModel, TFLite builtin ops only.

`TFLiteCaptionModule` wraps a `export.CaptionModel` (the same encoder,
normalisation and decoder layers, so no weight is copied or retrained) in two
fixed-shape functions, the flatbuffer's two signatures::

    serving_default: image float32[1, 299, 299, 3] in [-1, 1] -> token_ids int32[1, max_len]
    caption_beam:    image (the same)  -> token_ids int32[1, max_len], log_prob float32[1]

The greedy loop is `decoder.greedy_decode` and the beam search
`decoder.beam_search` (width and length normalisation fixed at export, as in
the SavedModel), both written with fixed shapes and `tf.where` writes, so they
convert to TFLite `WHILE`s of builtin ops: no Flex delegate, no SELECT_TF_OPS,
and the standalone `ai-edge-litert` runtime runs them without TensorFlow.
Decoding the image file and mapping ids to words happen outside (see
`models/tflite_runtime.py`); `vocab.txt` and `decoding.json` (the decoding
settings) ship beside the model.

`convert_to_tflite` returns bytes; the caller writes the file.
"""

import os
import tempfile
from typing import Dict

import tensorflow as tf

from tfx_captioning.models import decoder, features
from tfx_captioning.models.export import CaptionModel, write_decoding_metadata

QUANTIZATIONS = ('dynamic', 'float16', 'float32')
"""dynamic: int8 weights, float activations (default, ~4x smaller); float16:
half-size weights; float32: no quantisation."""


class TFLiteCaptionModule(tf.Module):
    """Greedy and beam-search on-device functions over a CaptionModel's encoder and decoder."""

    def __init__(self, caption_model: CaptionModel):
        super().__init__(name='tflite_caption_model')
        self.caption_model = caption_model
        # CaptionModel is a plain object: track its variables here so the
        # converter freezes them into the flatbuffer.
        self.model_variables = caption_model.variables

    @tf.function(
        autograph=False,  # the loop is an explicit tf.while_loop
        input_signature=[
            tf.TensorSpec(
                [1, features.IMAGE_SIZE, features.IMAGE_SIZE, 3],
                tf.float32,
                name=features.TFLITE_IMAGE_INPUT,
            )
        ],
    )
    def caption(self, image: tf.Tensor) -> Dict[str, tf.Tensor]:
        model = self.caption_model
        image_features, regions = model.encode(image)
        token_ids, _ = decoder.greedy_decode(
            model.decoder_layers,
            model.normalize(image_features),
            model.max_len,
            model.normalize_regions(regions),
        )
        return {features.TFLITE_TOKEN_IDS_OUTPUT: token_ids}

    @tf.function(
        autograph=False,
        input_signature=[
            tf.TensorSpec(
                [1, features.IMAGE_SIZE, features.IMAGE_SIZE, 3],
                tf.float32,
                name=features.TFLITE_IMAGE_INPUT,
            )
        ],
    )
    def caption_beam(self, image: tf.Tensor) -> Dict[str, tf.Tensor]:
        model = self.caption_model
        image_features, regions = model.encode(image)
        token_ids, _, log_prob = decoder.beam_search(
            model.decoder_layers,
            model.normalize(image_features),
            model.max_len,
            model.beam_width,
            model.beam_length_alpha,
            model.normalize_regions(regions),
        )
        return {
            features.TFLITE_TOKEN_IDS_OUTPUT: token_ids,
            features.TFLITE_LOG_PROB_OUTPUT: log_prob,
        }

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """The flatbuffer's signatures, by name."""
        return {
            features.TFLITE_SIGNATURE: self.caption.get_concrete_function(),
            features.TFLITE_BEAM_SIGNATURE: self.caption_beam.get_concrete_function(),
        }


def decoding_metadata(caption_model: CaptionModel) -> dict:
    """The decoding settings of the TFLite signatures, for `features.DECODING_FILE`."""
    return caption_model.decoding_metadata(
        greedy_signatures=(features.TFLITE_SIGNATURE,),
        beam_signatures=(features.TFLITE_BEAM_SIGNATURE,),
        attention_signatures=(),
    )


def convert_to_tflite(caption_model: CaptionModel, quantization: str = 'dynamic') -> bytes:
    """Converts the captioner to a TFLite flatbuffer of builtin ops.

    Args:
      caption_model: the model exported for TF Serving.
      quantization: one of `QUANTIZATIONS`.

    Returns:
      The .tflite file's bytes.

    Raises:
      ValueError: an unknown quantization.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f'quantization must be one of {QUANTIZATIONS}, got {quantization!r}.')
    module = TFLiteCaptionModule(caption_model)
    signatures = module.signatures()
    # Named signatures come from a SavedModel: the converter names several
    # concrete functions after their graphs. (It saves a temporary SavedModel
    # for a single concrete function too.)
    with tempfile.TemporaryDirectory() as saved_model_dir:
        tf.saved_model.save(module, saved_model_dir, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=list(signatures)
        )
        # Builtins only: the standalone runtime has no Flex (TensorFlow) kernels.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == 'dynamic':
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == 'float16':
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def write_tflite(
    caption_model: CaptionModel, vocabulary: list, output_dir: str, quantization: str = 'dynamic'
) -> str:
    """Writes `model.tflite`, `vocab.txt` and `decoding.json` into `output_dir`.

    Returns:
      The model's path.
    """
    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, features.TFLITE_FILE)
    with tf.io.gfile.GFile(path, 'wb') as f:
        f.write(convert_to_tflite(caption_model, quantization))
    with tf.io.gfile.GFile(os.path.join(output_dir, features.TFLITE_VOCAB_FILE), 'w') as f:
        f.write('\n'.join(vocabulary) + '\n')
    write_decoding_metadata(decoding_metadata(caption_model), output_dir)
    return path
