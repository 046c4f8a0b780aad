"""Benchmark: greedy vs beam-search captions, SavedModel and TFLite, side by side in one run.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.beam_search
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.beam_search --beam-width 5 --rounds 5

On the same weights it times, greedy next to beam search (width `--beam-width`):

* the SavedModel's ``caption_from_features`` vs ``caption_beam_from_features``
  (decoder only) for 1 caption and a batch of `--batch-size`;
* the SavedModel's ``serving_default`` vs ``caption_beam`` (JPEG bytes in:
  decoding, InceptionV3, decoder) for 1 image and the batch;
* the TFLite file's ``serving_default`` vs ``caption_beam`` signatures in
  `ai-edge-litert` (`--quantization`, float32 by default): 1 image, and the
  batch as one invoke per image (the file's batch size is 1).

The decoder has the production sizes (3 x GRU(512), embedding 256) and a
~3,000-word vocabulary, randomly initialised, with the reserved tokens'
logits pushed down as in `benchmarks/decode.py`: no caption ends early, so
both decoders run `--max-len` steps (the beam search's worst case: on a
trained model it stops when every hypothesis has said ``<end>``). The encoder
is the real InceptionV3 with random weights.

What bounds the numbers: at batch 1 each decoding step reads every decoder
weight once; beam search runs the step on `width` hypotheses at once, which
re-uses the same weight reads, and adds a log-softmax and one top-k over
width x vocabulary per step plus gathers of the GRU states. So its cost per
caption grows far slower than the width while the step is bandwidth-bound,
and close to the width once the batch makes the matrix products compute-bound
(batch 64 x width 3 = 192 rows). With the image path, InceptionV3 dominates
both. Greedy and beam calls alternate; medians of rounds; ratios, never
timed asserts.
"""

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from benchmarks.decode import build_caption_model
from tfx_captioning.models import export, features, image_preprocessing, tflite_export
from tfx_captioning.models.hparams import HParams
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner

# The target: beam-3 costs at most 3x greedy per caption at batch 1.
_BATCH_ONE_RATIO_TARGET = 3.0


def _jpeg_images(count: int, seed: int = 0) -> List[bytes]:
    """`count` different photo-sized noisy JPEGs."""
    rng = np.random.default_rng(seed)
    return [
        tf.io.encode_jpeg(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).numpy()
        for _ in range(count)
    ]


# A case: (greedy call, beam call, timed calls per round, captions per call).
_Case = Tuple[Callable[[], object], Callable[[], object], int, int]


def _timed_rounds(cases: Dict[str, _Case], rounds: int) -> Dict[str, Tuple[float, float, float]]:
    """Per case: medians of (greedy s, beam s) per call and of the per-round beam/greedy ratio.

    Greedy and beam calls alternate one by one, and rounds go over every case
    in turn: on a shared machine the load drifts, and both sides of each
    ratio should see the same load.
    """
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (greedy, beam, repeats, _) in cases.items():
            greedy_s, beam_s = [], []
            for _ in range(repeats):
                for fn, times in ((greedy, greedy_s), (beam, beam_s)):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
            samples[name].append((statistics.median(greedy_s), statistics.median(beam_s)))
    return {
        name: (
            statistics.median(g for g, _ in rows),
            statistics.median(b for _, b in rows),
            statistics.median(b / g for g, b in rows),
        )
        for name, rows in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--vocab-size', type=int, default=3000)
    parser.add_argument('--units', type=int, default=HParams.units)
    parser.add_argument('--num-layers', type=int, default=HParams.num_layers)
    parser.add_argument('--embedding-dim', type=int, default=HParams.embedding_dim)
    parser.add_argument('--max-len', type=int, default=features.MAX_LEN, help='tokens per caption')
    parser.add_argument('--beam-width', type=int, default=HParams.beam_width)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--quantization', default='float32', choices=tflite_export.QUANTIZATIONS)
    parser.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds')
    parser.add_argument('--repeats', type=int, default=5, help='calls per single-caption timing')
    args = parser.parse_args()

    hparams = HParams(
        embedding_dim=args.embedding_dim,
        units=args.units,
        num_layers=args.num_layers,
        max_len=args.max_len,
        beam_width=args.beam_width,
    ).validate()
    width = hparams.beam_width
    batch = args.batch_size
    rng = np.random.default_rng(0)
    raw_features = rng.normal(size=[batch, features.FEATURE_SIZE]).astype(np.float32)
    jpegs = _jpeg_images(batch)
    pixels = [image_preprocessing.preprocess_batch(tf.constant([j])).numpy() for j in jpegs]

    with tempfile.TemporaryDirectory() as directory:
        print(
            f'Decoder: {hparams.num_layers} x GRU({hparams.units}), embedding '
            f'{hparams.embedding_dim}, vocabulary {args.vocab_size}, {hparams.max_len} tokens; '
            f'beam width {width}, length alpha {hparams.beam_length_alpha}.'
        )
        start = time.perf_counter()
        caption_model = build_caption_model(hparams, args.vocab_size, directory)
        saved_model_dir = os.path.join(directory, 'saved_model')
        export.save_caption_model(caption_model, saved_model_dir)
        loaded = tf.saved_model.load(saved_model_dir)
        print(f'Exported and loaded the SavedModel in {time.perf_counter() - start:.1f} s.')
        start = time.perf_counter()
        tflite_path = tflite_export.write_tflite(
            caption_model,
            caption_model.words,
            os.path.join(directory, 'tflite'),
            args.quantization,
        )
        greedy_lite = TFLiteCaptioner(tflite_path)
        beam_lite = TFLiteCaptioner(tflite_path, beam=True)
        print(
            f'Converted the {args.quantization} TFLite file '
            f'({os.path.getsize(tflite_path) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s.'
        )

        signatures = loaded.signatures

        def saved_model(name, input_name, value):
            signature = signatures[name]
            return lambda: signature(**{input_name: tf.constant(value)})

        def lite(captioner, images):
            return lambda: [captioner.decode(image) for image in images]

        on_features = (features.FEATURES_SIGNATURE, features.BEAM_FEATURES_SIGNATURE)
        on_images = (features.SERVING_SIGNATURE, features.BEAM_SIGNATURE)

        def pair(name, input_name, values):
            greedy, beam = (saved_model(n, input_name, values) for n in name)
            return greedy, beam

        cases: Dict[str, _Case] = {
            'SavedModel, features in, batch 1': (
                *pair(on_features, features.IMAGE_FEATURES_INPUT, raw_features[:1]),
                args.repeats,
                1,
            ),
            f'SavedModel, features in, batch {batch}': (
                *pair(on_features, features.IMAGE_FEATURES_INPUT, raw_features),
                2,
                batch,
            ),
            'SavedModel, JPEG in, batch 1': (
                *pair(on_images, features.IMAGE_BYTES_INPUT, jpegs[:1]),
                args.repeats,
                1,
            ),
            f'SavedModel, JPEG in, batch {batch}': (
                *pair(on_images, features.IMAGE_BYTES_INPUT, jpegs),
                1,
                batch,
            ),
            f'TFLite {args.quantization}, 1 image': (
                lite(greedy_lite, pixels[:1]),
                lite(beam_lite, pixels[:1]),
                args.repeats,
                1,
            ),
            f'TFLite {args.quantization}, {batch} images, 1 invoke each': (
                lite(greedy_lite, pixels),
                lite(beam_lite, pixels),
                1,
                batch,
            ),
        }
        for greedy, beam, _, _ in cases.values():  # warm up every shape
            greedy()
            beam()

        # Same pixels, same decoding: the TFLite beam search against the SavedModel's.
        compared = pixels[:8]
        sm_beam = signatures[features.BEAM_FEATURES_SIGNATURE](
            **{
                features.IMAGE_FEATURES_INPUT: caption_model.encoder(
                    np.concatenate(compared), training=False
                )
            }
        )[features.TOKEN_IDS_OUTPUT].numpy()
        lite_beam = np.stack(
            [beam_lite.decode(image)[features.TFLITE_TOKEN_IDS_OUTPUT] for image in compared]
        )
        same_tokens = int((sm_beam == lite_beam).all(axis=1).sum())

        results = _timed_rounds(cases, args.rounds)

    print(
        f'\nMedians over {args.rounds} rounds, ms per caption; beam/greedy is the median of '
        'the per-round ratios:'
    )
    header = f'{"":48} {"greedy":>10} {f"beam-{width}":>10} {"beam/greedy":>12}'
    print(header)
    print('-' * len(header))
    for name, (greedy_s, beam_s, ratio) in results.items():
        captions = cases[name][3]
        print(
            f'{name:48} {1e3 * greedy_s / captions:10.1f} {1e3 * beam_s / captions:10.1f} '
            f'{ratio:11.2f}x'
        )
    worst = max(ratio for name, (_, _, ratio) in results.items() if cases[name][3] == 1)
    verdict = 'met' if worst <= _BATCH_ONE_RATIO_TARGET else 'NOT met'
    print(
        f'\nTarget (width 3): beam <= {_BATCH_ONE_RATIO_TARGET:.0f}x greedy per caption at '
        f'batch 1: {verdict} with width {width} (worst batch-1 ratio {worst:.2f}x).'
    )
    print(
        f'TFLite {args.quantization} beam search = SavedModel beam search on the same pixels: '
        f'{same_tokens}/{len(compared)} captions.'
    )


if __name__ == '__main__':
    main()
