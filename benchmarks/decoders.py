"""Benchmark: the init-inject and attention decoders side by side: training, latency, TFLite size.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.decoders
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.decoders --variants float32 float16 dynamic
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.decoders --quick   # smoke test, ~1 minute

Both decoders (`HParams.decoder` 'init_inject' and 'attention') get the same
sizes, by default the real model's (`HParams()`: embedding 256, 3 x
GRU(512), attention_units 256, captions of `features.MAX_LEN` tokens) and a
~3,000-word vocabulary (about Flickr8k's with min_word_count 5, as in the
other benchmarks), randomly initialised: speed and size do not depend on
what the weights say. In one run, it measures:

1. training: `trainer.compile_decoder(decoder.build_decoder(...))` fitted on
   one synthetic batch of `--batch-size` pairs (normalised features, the 64
   regions for attention, random caption ids) repeated: ms per step, median
   over `--steps` timed steps after `--warmup` steps, and the projected time
   of one Flickr8k epoch (`--pairs` = 6,000 images x 5 captions at
   `--batch-size`). The model's work only: the real input pipeline (reading
   and decoding 512 KiB of float16 regions per pair) is not in it.
2. single-image latency, greedy (`serving_default`) and beam search
   (`caption_beam`, width `--beam-width`): the SavedModel (`export.CaptionModel`
   over a random-weight InceptionV3, written with `export.save_caption_model`
   and loaded back with `tf.saved_model.load`) on one 500x375 JPEG's bytes,
   and each TFLite variant of `--variants` (`tflite_export`) in
   `ai-edge-litert` (`TFLiteCaptioner`, its default threads) on the same
   image preprocessed: median of `--runs` calls per round after a warm-up
   call.
3. the size of the SavedModel and of each TFLite file.

Unless `--natural-end`, the reserved tokens' logits (``<end>`` included) are
pushed down as in `benchmarks/decode.py`, so that every caption, greedy or
beam, runs the full `--max-len` tokens in both decoders: equal work, a fair
comparison (a random decoder would otherwise stop at a random length). The
tokens each call emitted are printed beside its time either way.

The two decoders alternate (and swap order every round) over `--rounds`
rounds, so that on a shared machine both sides of each ratio see the same
load; a ratio is the median of the per-round ratios. Ratios are printed,
never asserted. `--quick` shrinks everything (a tiny stand-in encoder with
InceptionV3's contract and last-map layer instead of InceptionV3, tiny
decoders, one round, the dynamic variant only) to check that the script
runs; its numbers mean nothing.

What to expect: per word, the attention decoder adds the additive attention
over 64 regions (one [64, attention_units] tanh and a weighted sum of 64 x
2048 values) and a first GRU whose input grows from 256 to 256 + 2048;
training runs it through Keras' generic `RNN` loop over a custom cell,
where the init-inject decoder uses Keras' `GRU` layers (cuDNN on a GPU).
InceptionV3 weighs on every latency here, the decoders on what is left.
"""

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfx_captioning.models import (
    decoder,
    encoder,
    export,
    features,
    image_preprocessing,
    tflite_export,
    trainer,
)
from tfx_captioning.models.hparams import HParams
from tfx_captioning.models.tflite_runtime import TFLiteCaptioner

DECODERS = (features.DECODER_INIT_INJECT, features.DECODER_ATTENTION)
FLICKR8K_TRAIN_PAIRS = 30_000  # 6,000 training images x 5 captions
ENCODER_INCEPTION = 'inception'
ENCODER_TINY = 'tiny'

# Flags `--quick` sets, unless given on the command line too.
QUICK = {
    'vocab_size': 40,
    'units': 16,
    'num_layers': 1,
    'embedding_dim': 8,
    'attention_units': 8,
    'max_len': 4,
    'batch_size': 4,
    'warmup': 1,
    'steps': 2,
    'rounds': 1,
    'runs': 1,
    'variants': ['dynamic'],
    'encoder': ENCODER_TINY,
}
DEFAULTS = {
    'vocab_size': 3000,
    'units': HParams.units,
    'num_layers': HParams.num_layers,
    'embedding_dim': HParams.embedding_dim,
    'attention_units': HParams.attention_units,
    'max_len': features.MAX_LEN,
    'batch_size': HParams.batch_size,
    'warmup': 3,
    'steps': 30,
    'rounds': 3,
    'runs': 5,
    'variants': ['float16', 'dynamic'],
    'encoder': ENCODER_INCEPTION,
}


def tiny_encoder(seed: int = 0) -> keras.Model:
    """A fast stand-in for InceptionV3 (for `--quick`) with its contract and its last-map layer.

    [N, 299, 299, 3] -> [N, FEATURE_SIZE], the mean of an 8 x 8 x FEATURE_SIZE
    map from a layer named `encoder.REGIONS_LAYER`, so that
    `encoder.regions_model` gives the attention decoder its 64 regions.
    """
    keras.utils.set_random_seed(seed)
    image = keras.Input([features.IMAGE_SIZE, features.IMAGE_SIZE, 3])
    x = keras.layers.AveragePooling2D(pool_size=features.IMAGE_SIZE // features.REGION_GRID)(image)
    x = keras.layers.Conv2D(
        features.FEATURE_SIZE, 1, activation='relu', name=encoder.REGIONS_LAYER
    )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, x, name='tiny_encoder')


def build_decoder(hparams: HParams, vocab_size: int, natural_end: bool, seed: int) -> keras.Model:
    """A random-weight `decoder.build_decoder` model; without `natural_end` it never emits a reserved token."""
    keras.utils.set_random_seed(seed)
    decoder_model = decoder.build_decoder(hparams, vocab_size)
    if not natural_end:
        logits = decoder.DecoderLayers.from_model(decoder_model).logits
        kernel, bias = logits.get_weights()
        bias[: len(features.RESERVED_TOKENS)] = -1e4  # no <end>: every caption runs max_len
        logits.set_weights([kernel, bias])
    return decoder_model


def write_vocabulary(vocab_size: int, directory: str) -> str:
    """A vocabulary file of the reserved tokens and made-up words, `vocab_size` ids in all."""
    path = os.path.join(directory, 'vocabulary.txt')
    words = list(features.RESERVED_TOKENS) + [
        f'word{i}' for i in range(vocab_size - len(features.RESERVED_TOKENS))
    ]
    with open(path, 'w') as f:
        f.write('\n'.join(words) + '\n')
    return path


def build_caption_model(
    hparams: HParams, decoder_model: keras.Model, image_encoder: keras.Model, vocabulary_file: str
) -> export.CaptionModel:
    """The combined model, with identity normalisation (no Transform run here; same cost)."""
    ones = np.ones(features.FEATURE_SIZE, np.float32)
    zeros = np.zeros(features.FEATURE_SIZE, np.float32)
    return export.CaptionModel(
        encoder=image_encoder,
        decoder_model=decoder_model,
        feature_scale=ones,
        feature_offset=zeros,
        vocabulary_file=vocabulary_file,
        max_len=hparams.max_len,
        beam_width=hparams.beam_width,
        beam_length_alpha=hparams.beam_length_alpha,
        region_scale=ones if hparams.attention else None,
        region_offset=zeros if hparams.attention else None,
    )


def training_batch(
    hparams: HParams, vocab_size: int, batch_size: int, seed: int = 0
) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """One synthetic batch as `trainer.input_fn` yields it: (inputs dict, target ids).

    Every caption has `max_len` real tokens (no ``<pad>``): the GRUs run the
    whole padded length in training either way, and the masked loss costs
    the same.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(
        len(features.RESERVED_TOKENS), vocab_size, size=[batch_size, hparams.max_len + 1]
    ).astype(np.int32)
    ids[:, 0] = features.START_ID
    inputs = {
        features.NORMALIZED_FEATURES_KEY: rng.normal(
            size=[batch_size, features.FEATURE_SIZE]
        ).astype(np.float32),
        features.DECODER_INPUT_KEY: ids[:, :-1],
    }
    if hparams.attention:
        inputs[features.NORMALIZED_REGIONS_KEY] = rng.normal(
            size=[batch_size, features.NUM_REGIONS * features.FEATURE_SIZE]
        ).astype(np.float32)
    return inputs, ids[:, 1:]


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (Keras syncs the logs to NumPy at each batch end)."""

    def __init__(self):
        super().__init__()
        self.seconds: List[float] = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def fit_steps(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> List[float]:
    """Runs `steps` training steps; returns each one's seconds."""
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return timer.seconds


def jpeg_image(seed: int = 0) -> bytes:
    """A 500x375 JPEG (Flickr8k's typical size) of noise."""
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).numpy()


def directory_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(path)
        for name in names
    )


def _rotation(round_index: int) -> Tuple[str, ...]:
    """The decoders in this round's order (swapped every round)."""
    return DECODERS if round_index % 2 == 0 else DECODERS[::-1]


def time_training(
    models: Dict[str, keras.Model],
    datasets: Dict[str, tf.data.Dataset],
    warmup: int,
    steps: int,
    rounds: int,
) -> Dict[str, List[List[float]]]:
    """Per decoder, per round, the seconds of each timed step (after `warmup` steps each)."""
    for name in DECODERS:
        fit_steps(models[name], datasets[name], warmup)  # traces the train function
    per_round = max(1, steps // rounds)
    samples: Dict[str, List[List[float]]] = {name: [] for name in DECODERS}
    for round_index in range(rounds):
        for name in _rotation(round_index):
            samples[name].append(fit_steps(models[name], datasets[name], per_round))
    return samples


# A latency case: per decoder, a call that returns the emitted token ids [max_len].
_Case = Dict[str, Callable[[], np.ndarray]]


def time_cases(
    cases: Dict[str, _Case], runs: int, rounds: int
) -> Dict[str, Dict[str, List[float]]]:
    """Per case and decoder, the median seconds of `runs` calls in each round (decoders alternating)."""
    samples = {case: {name: [] for name in DECODERS} for case in cases}
    for round_index in range(rounds):
        for case, calls in cases.items():
            for name in _rotation(round_index):
                seconds = []
                for _ in range(runs):
                    start = time.perf_counter()
                    calls[name]()
                    seconds.append(time.perf_counter() - start)
                samples[case][name].append(statistics.median(seconds))
    return samples


def emitted(token_ids: np.ndarray) -> int:
    """Tokens a caption emitted: its words and ``<end>`` (everything but the ``<pad>`` after)."""
    return int(np.sum(np.asarray(token_ids) != features.PAD_ID))


def _ratio(per_round: Dict[str, List[float]]) -> float:
    """Median over rounds of attention / init-inject."""
    init_inject, attention = (per_round[name] for name in DECODERS)
    return statistics.median(a / i for i, a in zip(init_inject, attention))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--quick', action='store_true', help=f'tiny smoke-test settings: {QUICK} (flags win)'
    )
    parser.add_argument('--vocab-size', '--vocab', dest='vocab_size', type=int)
    parser.add_argument('--units', type=int)
    parser.add_argument('--num-layers', type=int)
    parser.add_argument('--embedding-dim', type=int)
    parser.add_argument('--attention-units', type=int)
    parser.add_argument('--max-len', type=int, help='tokens per caption')
    parser.add_argument('--beam-width', type=int, default=HParams.beam_width)
    parser.add_argument('--batch-size', type=int, help='training pairs per step')
    parser.add_argument(
        '--pairs',
        type=int,
        default=FLICKR8K_TRAIN_PAIRS,
        help='training pairs per epoch, for the projection',
    )
    parser.add_argument('--warmup', type=int, help='untimed training steps per decoder')
    parser.add_argument('--steps', type=int, help='timed training steps per decoder, all rounds')
    parser.add_argument('--rounds', type=int, help='interleaved timing rounds')
    parser.add_argument('--runs', type=int, help='calls per latency case, decoder and round')
    parser.add_argument(
        '--variants', nargs='+', choices=tflite_export.QUANTIZATIONS, help='TFLite variants'
    )
    parser.add_argument(
        '--encoder',
        choices=(ENCODER_INCEPTION, ENCODER_TINY),
        help='random-weight InceptionV3, or the tiny stand-in of --quick',
    )
    parser.add_argument(
        '--natural-end',
        action='store_true',
        help='let the random decoders emit <end> (captions of random lengths)',
    )
    parser.add_argument('--json', default=None, help='also write the results here')
    args = parser.parse_args(argv)
    preset = {**DEFAULTS, **(QUICK if args.quick else {})}
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Builds both decoders, measures them; returns the measurements."""
    hparams = {
        name: HParams(
            embedding_dim=args.embedding_dim,
            units=args.units,
            num_layers=args.num_layers,
            attention_units=args.attention_units,
            max_len=args.max_len,
            batch_size=args.batch_size,
            beam_width=args.beam_width,
            decoder=name,
        ).validate()
        for name in DECODERS
    }
    decoder_models = {
        name: build_decoder(hparams[name], args.vocab_size, args.natural_end, seed=0)
        for name in DECODERS
    }
    result: Dict[str, Any] = {
        'settings': {
            key: value for key, value in vars(args).items() if key not in ('json', 'quick')
        },
        'parameters': {name: decoder_models[name].count_params() for name in DECODERS},
    }
    print(
        f'Decoders: {args.num_layers} x GRU({args.units}), embedding {args.embedding_dim}, '
        f'attention_units {args.attention_units}, vocabulary {args.vocab_size}, '
        f'{args.max_len} tokens, beam width {args.beam_width}; parameters '
        + ', '.join(f'{name} {count / 1e6:.2f} M' for name, count in result['parameters'].items())
        + '.'
    )

    # 1. Training.
    start = time.perf_counter()
    datasets = {}
    for name in DECODERS:
        trainer.compile_decoder(decoder_models[name], hparams[name])
        batch = training_batch(hparams[name], args.vocab_size, args.batch_size)
        datasets[name] = tf.data.Dataset.from_tensors(batch).repeat()
    train_samples = time_training(decoder_models, datasets, args.warmup, args.steps, args.rounds)
    print(
        f'Trained {args.warmup} + {args.steps} steps each in {time.perf_counter() - start:.1f} s.'
    )
    result['train_step_s'] = {
        name: statistics.median(s for r in train_samples[name] for s in r) for name in DECODERS
    }
    result['train_ratio'] = _ratio(
        {name: [statistics.median(r) for r in train_samples[name]] for name in DECODERS}
    )
    del datasets

    # 2. Exports.
    jpeg = jpeg_image()
    pixels = image_preprocessing.preprocess_batch(tf.constant([jpeg])).numpy()
    start = time.perf_counter()
    image_encoder = (
        encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM, seed=0)
        if args.encoder == ENCODER_INCEPTION
        else tiny_encoder(seed=0)
    )
    print(f'Built the {args.encoder} encoder in {time.perf_counter() - start:.1f} s.')
    sizes: Dict[str, Dict[str, int]] = {}
    cases: Dict[str, _Case] = {}
    loaded = []  # the loaded SavedModels' signatures need them alive
    beam = f'beam-{args.beam_width}'
    with tempfile.TemporaryDirectory() as directory:
        vocabulary_file = write_vocabulary(args.vocab_size, directory)
        for name in DECODERS:
            caption_model = build_caption_model(
                hparams[name], decoder_models[name], image_encoder, vocabulary_file
            )
            start = time.perf_counter()
            saved_model_dir = os.path.join(directory, name, 'saved_model')
            export.save_caption_model(caption_model, saved_model_dir)
            loaded.append(tf.saved_model.load(saved_model_dir))
            signatures = loaded[-1].signatures
            sizes.setdefault('SavedModel', {})[name] = directory_size(saved_model_dir)
            print(
                f'{name}: exported and loaded the SavedModel in {time.perf_counter() - start:.1f} s.'
            )

            def saved_model_call(signature_name, signatures=signatures):
                signature = signatures[signature_name]
                image_bytes = tf.constant([jpeg])

                def call():
                    out = signature(**{features.IMAGE_BYTES_INPUT: image_bytes})
                    return out[features.TOKEN_IDS_OUTPUT].numpy()[0]

                return call

            cases.setdefault('SavedModel greedy', {})[name] = saved_model_call(
                features.SERVING_SIGNATURE
            )
            cases.setdefault(f'SavedModel {beam}', {})[name] = saved_model_call(
                features.BEAM_SIGNATURE
            )
            for variant in args.variants:
                start = time.perf_counter()
                path = tflite_export.write_tflite(
                    caption_model,
                    caption_model.words,
                    os.path.join(directory, name, variant),
                    variant,
                )
                sizes.setdefault(f'TFLite {variant}', {})[name] = os.path.getsize(path)
                print(
                    f'{name}: converted TFLite {variant} '
                    f'({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s.'
                )
                for label, use_beam in (('greedy', False), (beam, True)):
                    captioner = TFLiteCaptioner(path, beam=use_beam)
                    cases.setdefault(f'TFLite {variant} {label}', {})[name] = (
                        lambda captioner=captioner: captioner.token_ids(pixels)
                    )

        # 3. Latency: warm up every call once, counting its tokens.
        tokens = {
            case: {name: emitted(call()) for name, call in calls.items()}
            for case, calls in cases.items()
        }
        latency = time_cases(cases, args.runs, args.rounds)
    result['latency_s'] = {
        case: {name: statistics.median(latency[case][name]) for name in DECODERS} for case in cases
    }
    result['latency_ratio'] = {case: _ratio(latency[case]) for case in cases}
    result['tokens'] = tokens
    result['bytes'] = sizes
    result['size_ratio'] = {
        artifact: by_name[DECODERS[1]] / by_name[DECODERS[0]] for artifact, by_name in sizes.items()
    }
    result['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def format_report(result: Dict[str, Any]) -> str:
    settings = result['settings']
    steps_per_epoch = -(-settings['pairs'] // settings['batch_size'])
    a, b = DECODERS
    lines = [
        '',
        f'Training, batch {settings["batch_size"]} x {settings["max_len"]} tokens, median of '
        f'{settings["steps"]} steps; Flickr8k epoch = {settings["pairs"]:,} pairs = '
        f'{steps_per_epoch} steps:',
    ]
    header = f'{"":34}{a:>14}{b:>14}'
    lines += [header, '-' * len(header)]
    step = result['train_step_s']
    lines.append(f'{"ms per step":34}{1e3 * step[a]:14.1f}{1e3 * step[b]:14.1f}')
    lines.append(
        f'{"min per epoch (projected)":34}{step[a] * steps_per_epoch / 60:14.1f}'
        f'{step[b] * steps_per_epoch / 60:14.1f}'
    )
    lines += [
        '',
        f'Single image, median ms over {settings["rounds"]} rounds of {settings["runs"]} '
        '(SavedModel: JPEG bytes in; TFLite: preprocessed pixels in); tokens emitted:',
    ]
    header = f'{"":34}{a:>14}{"tokens":>8}{b:>14}{"tokens":>8}'
    lines += [header, '-' * len(header)]
    for case, by_name in result['latency_s'].items():
        tokens = result['tokens'][case]
        lines.append(
            f'{case:34}{1e3 * by_name[a]:14.1f}{tokens[a]:8d}{1e3 * by_name[b]:14.1f}{tokens[b]:8d}'
        )
    lines += ['', 'Size, MB:']
    header = f'{"":34}{a:>14}{b:>14}'
    lines += [header, '-' * len(header)]
    for artifact, by_name in result['bytes'].items():
        lines.append(f'{artifact:34}{by_name[a] / 1e6:14.1f}{by_name[b] / 1e6:14.1f}')
    params = result['parameters']
    lines += [
        '',
        f'{b} / {a} (latency and training: median of the per-round ratios):',
        f'  {"decoder parameters":32}{params[b] / params[a]:8.2f}x',
        f'  {"training step":32}{result["train_ratio"]:8.2f}x',
    ]
    for case, ratio in result['latency_ratio'].items():
        lines.append(f'  {case + " latency":32}{ratio:8.2f}x')
    for artifact, ratio in result['size_ratio'].items():
        lines.append(f'  {artifact + " size":32}{ratio:8.2f}x')
    ended = '' if settings['natural_end'] else '; <end> suppressed, captions run max_len'
    lines.append(
        f'(peak RSS {result["peak_rss_mb"]:.0f} MB; {settings["encoder"]} encoder, random '
        f'weights{ended})'
    )
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(format_report(result))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == '__main__':
    main()
