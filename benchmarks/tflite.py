"""Benchmark: SavedModel vs TFLite variants: sizes, single-image latency, caption agreement.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.tflite [--output build] [--images 32]

Rebuilds the latest run's model from its artifacts (encoder, Transform graph,
the Trainer's best checkpoint), converts it to TFLite as float32, float16 and
dynamic-range, and on the same eval images (same pixels for all) prints each
file's size, its latency in `ai-edge-litert` next to the SavedModel's in
TensorFlow, and how many captions equal the SavedModel's. Targets:
dynamic-range <= 32 MB and >= 95 % agreement (with ImageNet weights; see the
README on random weights).
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from tfx_captioning.cli import report, summary
from tfx_captioning.models import decoder, export, features, image_preprocessing, tflite_export
from tfx_captioning.models import encoder as encoder_lib
from tfx_captioning.models.hparams import HParams
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner
from tfx_captioning.pipeline import configs


def latest_uri(store, type_name: str) -> str:
    artifact = summary.latest_artifact(store, type_name)
    if artifact is None:
        raise SystemExit(f'No {type_name} artifact: run `caption-pipeline run` first.')
    return artifact.uri


def trainer_hparams(store) -> HParams:
    trainers = [e for e in store.get_executions() if e.type.endswith('Trainer')]
    if not trainers:
        raise SystemExit('No Trainer execution found.')
    config = json.loads(
        max(trainers, key=lambda e: e.id).custom_properties['custom_config'].string_value
    )
    return HParams.from_custom_config(config)


def rebuild(store) -> export.CaptionModel:
    hparams = trainer_hparams(store)
    tft_output = tft.TFTransformOutput(latest_uri(store, 'TransformGraph'))
    vocab_size = tft_output.vocabulary_size_by_name(features.VOCAB_NAME)
    decoder_model = decoder.build_decoder(hparams, vocab_size)
    best = os.path.join(latest_uri(store, 'ModelRun'), 'checkpoints', 'best')
    decoder_model.load_weights(best).expect_partial()
    encoders = [a for a in store.get_artifacts_by_type('Model') if 'ImageFeatureExtractor' in a.uri]
    encoder_uri = max(encoders, key=lambda a: a.id).uri
    scale, offset = export.feature_normalization(tft_output)
    return export.CaptionModel(
        encoder=encoder_lib.load_encoder(encoder_uri),
        decoder_model=decoder_model,
        feature_scale=scale,
        feature_offset=offset,
        vocabulary_file=tft_output.vocabulary_file_by_name(features.VOCAB_NAME),
        max_len=hparams.max_len,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--output', default=configs.DEFAULT_OUTPUT_ROOT)
    parser.add_argument('--images', type=int, default=32)
    args = parser.parse_args()
    paths = configs.LocalPaths(os.path.abspath(args.output))
    store = summary.open_store(paths.metadata_path)
    pushed = summary.latest_pushed(store)
    if not pushed:
        raise SystemExit('No pushed model: run `caption-pipeline run` first.')
    keras.utils.set_random_seed(0)
    model = rebuild(store)
    images = report.first_images(summary.raw_examples(store).uri, features.EVAL_SPLIT, args.images)
    pixels = [image_preprocessing.preprocess_batch(tf.constant([b])).numpy() for _, b in images]
    serving = tf.saved_model.load(pushed['saved_model']).signatures[features.SERVING_SIGNATURE]

    def saved_model_caption(image_bytes):
        out = serving(**{features.IMAGE_BYTES_INPUT: tf.constant([image_bytes])})
        return out[features.CAPTION_OUTPUT].numpy()[0].decode('utf-8')

    saved_model_caption(images[0][1])  # warm up
    expected, sm_times = [], []
    for _, image_bytes in images:
        start = time.perf_counter()
        expected.append(saved_model_caption(image_bytes))
        sm_times.append(time.perf_counter() - start)
    size = report.directory_size(pushed['saved_model'])
    print(f'{"model":<22} {"size MB":>8} {"p50 ms":>8} {"agreement":>10}')
    print(
        f'{"SavedModel (TF)":<22} {size / 1e6:>8.1f} {1e3 * statistics.median(sm_times):>8.1f} {"-":>10}'
    )
    tmp = tempfile.mkdtemp()
    for quantization in ('float32', 'float16', 'dynamic'):
        path = tflite_export.write_tflite(
            model, model.words, os.path.join(tmp, quantization), quantization
        )
        captioner = TFLiteCaptioner(path)
        captioner.caption(pixels[0])
        times, same = [], 0
        for image, want in zip(pixels, expected):
            start = time.perf_counter()
            got = captioner.caption(image)
            times.append(time.perf_counter() - start)
            same += int(got == want)
        print(
            f'{"TFLite " + quantization:<22} {os.path.getsize(path) / 1e6:>8.1f} '
            f'{1e3 * statistics.median(times):>8.1f} {same / len(pixels):>10.1%}'
        )
    print(f'({len(pixels)} eval images; latency is single-image, median)')


if __name__ == '__main__':
    main()
