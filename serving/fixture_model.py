"""Tiny models with the exported captioner's exact contracts, for serving tests and benchmarks.

They are NOT the real captioner (that comes from the Trainer): they name an
image's mean colour ("a red picture"). The SavedModel decodes with the real
`models.image_preprocessing.preprocess_batch`, with the same signatures,
input/output names, dtypes, shapes and warmup file; the TFLite model has the
on-device contract (`model.tflite` + `vocab.txt`, one preprocessed image in,
token ids out). Serving code can be tested and benchmarked with them without
training anything.
"""

import io
import os
import shutil
import uuid

FIXTURE_MODEL_COLOURS = (
    ('black', (0, 0, 0)),
    ('white', (255, 255, 255)),
    ('red', (220, 30, 30)),
    ('green', (30, 200, 30)),
    ('blue', (30, 30, 220)),
    ('yellow', (230, 220, 40)),
)
"""Colour words of the fixture model and the RGB each stands for."""


def build_fixture_caption_model(export_dir: str, noun: str = 'picture') -> str:
    """Writes a TEST FIXTURE SavedModel captioning an image by its mean colour.

    'a red picture' for a reddish image: serving_default decodes with the real
    `models.image_preprocessing.preprocess_batch` (so decoding errors are the
    real model's), takes the mean pixel, picks the nearest colour word and
    emits caption / token_ids / length exactly shaped like the real model.
    `caption_from_features` reads the colour from the first three features.
    `caption_beam` and `caption_beam_from_features` give the same captions
    plus `log_prob`: the log-softmax of the negative colour distances at the
    chosen colour (a number with the real output's dtype, shape and sign, not
    a beam search). Different `noun`s make distinguishable versions for
    hot-swap tests.

    Args:
      export_dir: where to write the SavedModel (must not exist).
      noun: the last word of every caption.

    Returns:
      export_dir.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from tfx_captioning.models import features, image_preprocessing

    reserved = list(features.RESERVED_TOKENS)
    words = reserved + ['a'] + [name for name, _ in FIXTURE_MODEL_COLOURS] + [noun]
    a_id = len(reserved)
    first_colour_id = a_id + 1
    noun_id = first_colour_id + len(FIXTURE_MODEL_COLOURS)
    end_id = reserved.index(features.END_TOKEN)
    # Palette in the preprocessing's [-1, 1] pixel scale.
    palette = [[channel / 127.5 - 1.0 for channel in rgb] for _, rgb in FIXTURE_MODEL_COLOURS]

    class FixtureCaptionModel(tf.Module):
        """TEST FIXTURE: mean-colour captions with the exported model's signatures."""

        def __init__(self):
            super().__init__()
            self.vocabulary = tf.constant(words)
            self.palette = tf.constant(palette, tf.float32)

        def _distances(self, colour):
            return tf.reduce_sum(tf.square(colour[:, None, :] - self.palette[None, :, :]), axis=-1)

        def _caption(self, colour):
            distances = self._distances(colour)
            colour_ids = first_colour_id + tf.argmin(distances, axis=1, output_type=tf.int32)
            rows = tf.shape(colour)[0]
            ids = tf.stack(
                [
                    tf.fill([rows], a_id),
                    colour_ids,
                    tf.fill([rows], noun_id),
                    tf.fill([rows], end_id),
                ],
                axis=1,
            )
            token_ids = tf.pad(ids, [[0, 0], [0, features.MAX_LEN - 4]])
            caption = tf.strings.reduce_join(
                tf.gather(self.vocabulary, ids[:, :3]), axis=1, separator=' '
            )
            return {
                features.CAPTION_OUTPUT: caption,
                features.TOKEN_IDS_OUTPUT: token_ids,
                features.LENGTH_OUTPUT: tf.fill([rows], 3),
            }

        def _beam_caption(self, colour):
            outputs = self._caption(colour)
            log_probs = tf.nn.log_softmax(-self._distances(colour), axis=1)
            outputs[features.LOG_PROB_OUTPUT] = tf.reduce_max(log_probs, axis=1)
            return outputs

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_INPUT)]
        )
        def serve(self, encoded_images):
            pixels = image_preprocessing.preprocess_batch(encoded_images)
            return self._caption(tf.reduce_mean(pixels, axis=[1, 2]))

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_INPUT)]
        )
        def serve_beam(self, encoded_images):
            pixels = image_preprocessing.preprocess_batch(encoded_images)
            return self._beam_caption(tf.reduce_mean(pixels, axis=[1, 2]))

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, features.FEATURE_SIZE], tf.float32, name=features.IMAGE_FEATURES_INPUT
                )
            ]
        )
        def from_features(self, image_features):
            return self._caption(tf.tanh(image_features[:, :3]))

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, features.FEATURE_SIZE], tf.float32, name=features.IMAGE_FEATURES_INPUT
                )
            ]
        )
        def beam_from_features(self, image_features):
            return self._beam_caption(tf.tanh(image_features[:, :3]))

    module = FixtureCaptionModel()
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            features.SERVING_SIGNATURE: module.serve,
            features.FEATURES_SIGNATURE: module.from_features,
            features.BEAM_SIGNATURE: module.serve_beam,
            features.BEAM_FEATURES_SIGNATURE: module.beam_from_features,
        },
    )
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = features.SERVING_SIGNATURE
    request.inputs[features.IMAGE_BYTES_INPUT].CopyFrom(
        tf.make_tensor_proto([fixture_image_bytes('JPEG', (200, 40, 40))], dtype=tf.string)
    )
    warmup_dir = os.path.join(export_dir, features.WARMUP_REQUESTS_DIR)
    os.makedirs(warmup_dir, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(warmup_dir, features.WARMUP_REQUESTS_FILE)) as writer:
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        writer.write(log.SerializeToString())
    return export_dir


def build_fixture_tflite_model(export_dir: str, noun: str = 'picture') -> str:
    """Writes a TEST FIXTURE `model.tflite` and `vocab.txt` captioning by mean colour.

    The on-device contract of the Trainer's TFLite variants: signature
    `features.TFLITE_SIGNATURE` takes `features.TFLITE_IMAGE_INPUT` float32
    [1, 299, 299, 3] in [-1, 1] and returns `features.TFLITE_TOKEN_IDS_OUTPUT`
    int32 [1, MAX_LEN]; `vocab.txt` maps the ids to the words of
    `build_fixture_caption_model`, so both captions agree.

    Returns:
      The path of model.tflite.
    """
    import tensorflow as tf

    from tfx_captioning.models import features

    reserved = list(features.RESERVED_TOKENS)
    words = reserved + ['a'] + [name for name, _ in FIXTURE_MODEL_COLOURS] + [noun]
    a_id = len(reserved)
    noun_id = a_id + 1 + len(FIXTURE_MODEL_COLOURS)
    end_id = reserved.index(features.END_TOKEN)
    palette = tf.constant(
        [[channel / 127.5 - 1.0 for channel in rgb] for _, rgb in FIXTURE_MODEL_COLOURS]
    )

    class FixtureTFLiteCaptioner(tf.Module):
        """TEST FIXTURE: mean-colour token ids with the TFLite variant's signature."""

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [1, features.IMAGE_SIZE, features.IMAGE_SIZE, 3],
                    tf.float32,
                    name=features.TFLITE_IMAGE_INPUT,
                )
            ]
        )
        def serve(self, image):
            colour = tf.reduce_mean(image, axis=[1, 2])
            distances = tf.reduce_sum(tf.square(colour[:, None, :] - palette[None]), axis=-1)
            colour_id = a_id + 1 + tf.argmin(distances, axis=1, output_type=tf.int32)
            ids = tf.stack(
                [tf.fill([1], a_id), colour_id, tf.fill([1], noun_id), tf.fill([1], end_id)], axis=1
            )
            return {
                features.TFLITE_TOKEN_IDS_OUTPUT: tf.pad(ids, [[0, 0], [0, features.MAX_LEN - 4]])
            }

    module = FixtureTFLiteCaptioner()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    os.makedirs(export_dir, exist_ok=True)
    model_path = os.path.join(export_dir, features.TFLITE_FILE)
    with open(model_path, 'wb') as model_file:
        model_file.write(converter.convert())
    with open(os.path.join(export_dir, features.TFLITE_VOCAB_FILE), 'w', encoding='utf-8') as f:
        f.write('\n'.join(words) + '\n')
    return model_path


def publish_fixture_version(model_dir: str, base_path: str, version: int) -> str:
    """Copies a built model into `base_path/<version>` atomically (temp dir, then rename).

    The way the Pusher publishes: a server polling `base_path` never sees a
    half-written version, because the temporary name is not an integer.
    """
    os.makedirs(base_path, exist_ok=True)
    temporary = os.path.join(base_path, f'.tmp-{version}-{uuid.uuid4().hex[:8]}')
    shutil.copytree(model_dir, temporary)
    final = os.path.join(base_path, str(version))
    os.rename(temporary, final)
    return final


def fixture_image_bytes(image_format: str, colour, size=(64, 48), mode: str = 'RGB') -> bytes:
    """A solid-colour image encoded as `image_format` (JPEG, PNG, GIF, BMP)."""
    from PIL import Image

    image = Image.new('RGB', size, tuple(colour)).convert(mode)
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


def fixture_serving_images():
    """Mixed valid images: four formats, grayscale, RGBA, palette, a noisy photo-sized JPEG."""
    import numpy as np
    from PIL import Image

    noisy = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    noisy[..., 2] //= 4  # Tilt it away from grey so its caption is not a tie.
    photo = io.BytesIO()
    Image.fromarray(noisy).save(photo, format='JPEG', quality=90)
    return {
        'red.jpg': fixture_image_bytes('JPEG', (220, 30, 30)),
        'blue.png': fixture_image_bytes('PNG', (30, 30, 220), size=(40, 30)),
        'green.gif': fixture_image_bytes('GIF', (30, 200, 30), size=(32, 32)),
        'yellow.bmp': fixture_image_bytes('BMP', (230, 220, 40), size=(20, 24)),
        'grey.jpg': fixture_image_bytes('JPEG', (200, 200, 200), mode='L'),
        'rgba.png': fixture_image_bytes('PNG', (20, 20, 20), size=(33, 17), mode='RGBA'),
        'palette.png': fixture_image_bytes('PNG', (220, 30, 30), mode='P'),
        'photo.jpg': photo.getvalue(),
    }


def fixture_in_process_captions(version_dir: str, images):
    """caption texts the SavedModel gives in-process, one request per image."""
    import tensorflow as tf

    from tfx_captioning.models import features

    signature = tf.saved_model.load(version_dir).signatures[features.SERVING_SIGNATURE]
    return [
        signature(**{features.IMAGE_BYTES_INPUT: tf.constant([image])})[features.CAPTION_OUTPUT]
        .numpy()[0]
        .decode('utf-8')
        for image in images
    ]
