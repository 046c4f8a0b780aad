"""The TFLite variant: the same weights as the SavedModel, TFLite builtin ops only.

`TFLiteCaptionModule` wraps a `export.CaptionModel` (the same encoder,
normalisation and decoder layers, so no weight is copied or retrained) in one
fixed-shape function::

    image float32[1, 299, 299, 3] in [-1, 1]  ->  token_ids int32[1, max_len]

The greedy loop is `decoder.greedy_decode`, written with fixed shapes and
`tf.where` writes, so it converts to a TFLite `WHILE` of builtin ops: no Flex
delegate, no SELECT_TF_OPS, and the standalone `ai-edge-litert` runtime runs it
without TensorFlow. Decoding the image file and mapping ids to words happen
outside (see `models/tflite_runtime.py`); `vocab.txt` ships beside the model.

`convert_to_tflite` returns bytes; the caller writes the file.
"""

import os
from typing import Dict

import tensorflow as tf

from tfx_captioning.models import decoder, features
from tfx_captioning.models.export import CaptionModel

QUANTIZATIONS = ('dynamic', 'float16', 'float32')
"""dynamic: int8 weights, float activations (default, ~4x smaller); float16:
half-size weights; float32: no quantisation."""


class TFLiteCaptionModule(tf.Module):
    """The on-device function over a CaptionModel's encoder and decoder."""

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
        image_features = model.encoder(image, training=False)
        token_ids, _ = decoder.greedy_decode(
            model.decoder_layers, model.normalize(image_features), model.max_len
        )
        return {features.TFLITE_TOKEN_IDS_OUTPUT: token_ids}


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
    concrete = module.caption.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
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
    """Writes `model.tflite` and `vocab.txt` into `output_dir`; returns the model path."""
    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, features.TFLITE_FILE)
    with tf.io.gfile.GFile(path, 'wb') as f:
        f.write(convert_to_tflite(caption_model, quantization))
    with tf.io.gfile.GFile(os.path.join(output_dir, features.TFLITE_VOCAB_FILE), 'w') as f:
        f.write('\n'.join(vocabulary) + '\n')
    return path
