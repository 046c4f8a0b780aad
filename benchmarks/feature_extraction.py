"""Benchmark: ImageFeatureExtractor through Beam against TensorFlow's own ceiling.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.feature_extraction --num-images 64
    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m benchmarks.feature_extraction \\
        --num-images 128 --batch-size 16 --repeats 2 --memory

On the same N generated sample JPEGs, in one run, prints images/second for:

(a) the component's Beam pipeline (read gzipped tf.Examples -> decode and
    check in TF -> batches of `batch_size` -> InceptionV3 -> write tf.Examples),
    in-memory DirectRunner, with the encoder already in memory like (b) and (c);
    plus the executor's whole `Do` (which also builds the encoder and writes
    its artifact) and that fixed cost in seconds;
(b) one batched Keras `predict` over all images (decoding included): the
    ceiling TensorFlow itself reaches on this CPU;
(c) one `predict` call per image, the habit of tutorials such as the seed tutorial (docs/architecture.md);

then the ratios a/b (target >= 0.9) and a/c (target >= 1.6). Every mode is
warmed up first (traced functions, oneDNN kernels), and with ``--repeats`` the
modes take turns and the best round counts, which damps other processes'
load on a shared machine.

``--memory`` runs the Beam pipeline alone in two fresh processes, on N/2 and N
images, and prints each one's peak RSS and tracemalloc peak: flat numbers mean
no split is held in memory.

bfloat16: where the CPU computes it natively (AVX512-BF16 or AMX, what
``--encoder-precision auto`` looks for), every round also times (a) and (b)
with the extractor's bfloat16 encoder (`models.encoder.with_precision`), and
prints both precisions' images/second and the minimum cosine similarity of
the bfloat16 features to float32 ones (target >= 1.3x at cosine >= 0.999).
Elsewhere it says that it skipped them; ``--bf16`` times them anyway
(emulated bfloat16 is slower than float32).

Weights are 'random' (seeded) by default, which costs exactly what ImageNet
weights cost; pass ``--weights imagenet`` or a file to use real ones.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Dict, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tf_keras as keras
from apache_beam.utils import shared
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts

from tfx_captioning.cli import sample_data
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.components.image_feature_extractor import executor, spec
from tfx_captioning.models import encoder, features, image_preprocessing

IN_MEMORY_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']
SPLIT = features.TRAIN_SPLIT
TARGET_VS_BATCHED = 0.9
TARGET_VS_PER_IMAGE = 1.6
TARGET_BF16_SPEEDUP = 1.3
TARGET_BF16_COSINE = 0.999


def load_images(directory: str, count: int, seed: int = 0) -> List[Tuple[str, bytes]]:
    """`count` (image id, JPEG bytes) pairs of the generated sample dataset."""
    sample_data.generate(directory, num_images=max(8, count), seed=seed)
    images_dir = os.path.join(directory, layout.IMAGES_DIR)
    names = sorted(os.listdir(images_dir))[:count]
    images = []
    for name in names:
        with open(os.path.join(images_dir, name), 'rb') as f:
            images.append((name, f.read()))
    return images


def write_examples(uri: str, images: Sequence[Tuple[str, bytes]]) -> standard_artifacts.Examples:
    """One-split Examples artifact of the images, as Flickr8kExampleGen writes them."""
    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names([SPLIT])
    directory = artifact_utils.get_split_uri([examples], SPLIT)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'data_tfrecord-00000-of-00001.gz')
    with tf.io.TFRecordWriter(path, options='GZIP') as writer:
        for image_id, data in images:
            example = tf.train.Example()
            feature = example.features.feature
            feature[features.IMAGE_ID_KEY].bytes_list.value.append(image_id.encode('utf-8'))
            feature[features.IMAGE_KEY].bytes_list.value.append(data)
            feature[features.CAPTIONS_KEY].bytes_list.value.append(b'a caption')
            writer.write(example.SerializeToString())
    return examples


class Beam:
    """Runs the component's Beam pipeline on one split with an encoder kept in memory."""

    def __init__(
        self,
        model: keras.Model,
        encoder_uri: str,
        batch_size: int,
        precision: str = encoder.PRECISION_FLOAT32,
    ):
        self.encoder_uri = encoder_uri
        self.parameters = spec.ExtractorParameters(weights='random', batch_size=batch_size)
        self.handle = shared.Shared()
        # As Executor.Do does: the in-process workers reuse this runner.
        self.runner = self.handle.acquire(
            lambda: executor.EncoderRunner(model, precision), tag=self.encoder_uri
        )

    def run(self, examples: standard_artifacts.Examples, output_dir: str) -> None:
        with beam.Pipeline(argv=IN_MEMORY_ARGS) as pipeline:
            _ = pipeline | executor.ExtractSplitFeatures(
                input_split_uri=artifact_utils.get_split_uri([examples], SPLIT),
                output_split_uri=output_dir,
                split=SPLIT,
                encoder_path=self.encoder_uri,
                encoder_handle=self.handle,
                parameters=self.parameters,
                reshuffle=False,
            )


def time_beam(runner: Beam, examples, output_root: str, round_index: int) -> float:
    start = time.perf_counter()
    runner.run(examples, os.path.join(output_root, f'beam_{round_index}'))
    return time.perf_counter() - start


def time_executor_do(examples, output_root: str, weights: str, batch_size: int) -> float:
    """The whole executor: builds the encoder, writes its artifact, runs Beam."""
    feature_examples = standard_artifacts.Examples()
    feature_examples.uri = os.path.join(output_root, 'do', 'feature_examples')
    encoder_artifact = standard_artifacts.Model()
    encoder_artifact.uri = os.path.join(output_root, 'do', 'encoder')
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=IN_MEMORY_ARGS)
    properties = spec.ExtractorParameters(weights=weights, batch_size=batch_size)
    start = time.perf_counter()
    executor.Executor(context).Do(
        {spec.EXAMPLES_KEY: [examples]},
        {spec.FEATURE_EXAMPLES_KEY: [feature_examples], spec.ENCODER_KEY: [encoder_artifact]},
        properties.to_exec_properties(),
    )
    return time.perf_counter() - start


def batched_predict(model: keras.Model, images: Sequence[bytes], batch_size: int) -> np.ndarray:
    pixels = image_preprocessing.preprocess_batch(tf.constant(list(images)))
    return model.predict(pixels, batch_size=batch_size, verbose=0)


def per_image_predict(model: keras.Model, images: Sequence[bytes]) -> np.ndarray:
    rows = []
    for data in images:
        pixels = image_preprocessing.preprocess_image(tf.constant(data))[tf.newaxis]
        rows.append(model.predict(pixels, verbose=0)[0])
    return np.stack(rows)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosine.min())


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), or since start (ru_maxrss) without /proc."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def memory_child(num_images: int, batch_size: int) -> Dict:
    """In a fresh process: the Beam pipeline alone on `num_images`, and its memory peaks."""
    with tempfile.TemporaryDirectory() as tmp:
        images = load_images(os.path.join(tmp, 'data'), num_images)
        examples = write_examples(os.path.join(tmp, 'examples'), images)
        model = encoder.build_inception_encoder(encoder.WEIGHTS_RANDOM)
        encoder_uri = os.path.join(tmp, 'encoder')
        encoder.save_encoder(model, encoder_uri, encoder.WEIGHTS_RANDOM, 0)
        runner = Beam(model, encoder_uri, batch_size)
        runner.runner.encode(np.zeros([1, 299, 299, 3], np.float32))  # warm-up
        del images
        rss_before = _rss_mb()
        peak_is_reset = _reset_peak_rss()
        # numpy reports its buffers to tracemalloc, so pixels held by Beam show up.
        tracemalloc.start()
        runner.run(examples, os.path.join(tmp, 'out'))
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_peak = _peak_rss_mb()
    return {
        'num_images': num_images,
        'rss_before_beam_mb': rss_before,
        'rss_peak_during_beam_mb': rss_peak if peak_is_reset else None,
        'rss_peak_mb': rss_peak,
        'python_peak_mb': python_peak / 2**20,
    }


def measure_memory(sizes: Sequence[int], batch_size: int) -> List[Dict]:
    results = []
    for size in sizes:
        output = subprocess.run(
            [
                sys.executable,
                '-m',
                'benchmarks.feature_extraction',
                '--memory-child',
                str(size),
                '--batch-size',
                str(batch_size),
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num-images', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=spec.DEFAULT_BATCH_SIZE)
    parser.add_argument('--repeats', type=int, default=1, help='rounds; the best counts')
    parser.add_argument('--weights', default=encoder.WEIGHTS_RANDOM)
    parser.add_argument(
        '--bf16',
        action='store_true',
        help='time the bfloat16 encoder even where the CPU has no native bfloat16',
    )
    parser.add_argument('--memory', action='store_true', help='peak memory at N/2 and N')
    parser.add_argument('--memory-child', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args(argv)

    if args.memory_child:
        result = memory_child(args.memory_child, args.batch_size)
        print(json.dumps(result))
        return result

    with tempfile.TemporaryDirectory() as tmp:
        named_images = load_images(os.path.join(tmp, 'data'), args.num_images)
        images = [data for _, data in named_images]
        examples = write_examples(os.path.join(tmp, 'examples'), named_images)
        model = encoder.build_inception_encoder(args.weights)
        encoder_uri = os.path.join(tmp, 'encoder')
        encoder.save_encoder(model, encoder_uri, args.weights, 0)
        beam_runner = Beam(model, encoder_uri, args.batch_size)

        # Warm-up: traces every function and lets oneDNN pick its kernels.
        beam_runner.run(write_examples(os.path.join(tmp, 'warm'), named_images[:2]), tmp + '/w')
        batched_predict(model, images[: args.batch_size], args.batch_size)
        per_image_predict(model, images[:2])
        seconds = {'a': [], 'b': [], 'c': []}
        native_bf16 = encoder.resolve_precision(encoder.PRECISION_AUTO) == 'bfloat16'
        time_bf16 = native_bf16 or args.bf16
        if time_bf16:
            bf16_model = encoder.with_precision(model, encoder.PRECISION_BFLOAT16)
            bf16_beam = Beam(model, encoder_uri + '-bf16', args.batch_size, 'bfloat16')
            bf16_beam.run(
                write_examples(os.path.join(tmp, 'warm16'), named_images[:2]), tmp + '/w16'
            )
            batched_predict(bf16_model, images[: args.batch_size], args.batch_size)
            seconds['a_bf16'], seconds['b_bf16'] = [], []

        for round_index in range(args.repeats):
            seconds['a'].append(time_beam(beam_runner, examples, tmp, round_index))
            seconds['b'].append(timed(batched_predict, model, images, args.batch_size))
            if time_bf16:
                # Timed beside (a) and (b) in every round: the machine's load drifts.
                seconds['a_bf16'].append(time_beam(bf16_beam, examples, tmp, 100 + round_index))
                seconds['b_bf16'].append(
                    timed(batched_predict, bf16_model, images, args.batch_size)
                )
            seconds['c'].append(timed(per_image_predict, model, images))
            print(
                f'round {round_index + 1}: '
                + ', '.join(f'{k} {v[-1]:.1f} s' for k, v in seconds.items())
            )
        rates = {k: args.num_images / min(v) for k, v in seconds.items()}
        do_seconds = time_executor_do(examples, tmp, args.weights, args.batch_size)
        results = {
            'num_images': args.num_images,
            'batch_size': args.batch_size,
            'repeats': args.repeats,
            'cpu_count': os.cpu_count(),
            'load_average': os.getloadavg(),
            'a_component_beam_images_per_second': rates['a'],
            'b_batched_predict_images_per_second': rates['b'],
            'c_per_image_predict_images_per_second': rates['c'],
            'a_over_b': rates['a'] / rates['b'],
            'a_over_c': rates['a'] / rates['c'],
            'executor_do_seconds': do_seconds,
            'executor_do_images_per_second': args.num_images / do_seconds,
            'executor_fixed_seconds': do_seconds - min(seconds['a']),
        }
        results['native_bf16'] = native_bf16
        if time_bf16:
            results['a_bf16_images_per_second'] = rates['a_bf16']
            results['b_bf16_images_per_second'] = rates['b_bf16']
            results['a_bf16_over_a'] = rates['a_bf16'] / rates['a']
            results['b_bf16_over_b'] = rates['b_bf16'] / rates['b']
            results['bf16_min_cosine_to_float32'] = min_cosine(
                batched_predict(bf16_model, images, args.batch_size),
                batched_predict(model, images, args.batch_size),
            )
    if args.memory:
        results['memory'] = measure_memory(
            [max(8, args.num_images // 2), args.num_images], args.batch_size
        )

    report(results)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


def report(results: Dict) -> None:
    n = results['num_images']
    print(
        f'\nImage feature extraction, {n} images, batch {results["batch_size"]}, '
        f'{results["cpu_count"]} CPUs, load average {results["load_average"][0]:.1f}'
    )
    print(
        f'  (a) component, Beam in-memory     {results["a_component_beam_images_per_second"]:6.2f} img/s'
    )
    print(
        f'  (b) one batched Keras predict     {results["b_batched_predict_images_per_second"]:6.2f} img/s'
    )
    print(
        f'  (c) one predict call per image    {results["c_per_image_predict_images_per_second"]:6.2f} img/s'
    )
    print(
        f'  a/b = {results["a_over_b"]:.2f} (target >= {TARGET_VS_BATCHED}), '
        f'a/c = {results["a_over_c"]:.2f} (target >= {TARGET_VS_PER_IMAGE})'
    )
    print(
        f'  executor Do end to end: {results["executor_do_seconds"]:.1f} s '
        f'({results["executor_do_images_per_second"]:.2f} img/s), of which about '
        f'{results["executor_fixed_seconds"]:.1f} s fixed (encoder build + artifact)'
    )
    if 'a_bf16_images_per_second' in results:
        native = 'native' if results['native_bf16'] else 'EMULATED (no AVX512-BF16/AMX here)'
        print(
            f'  bfloat16 ({native}): component {results["a_bf16_images_per_second"]:.2f} img/s '
            f'({results["a_bf16_over_a"]:.2f} x a), batched predict '
            f'{results["b_bf16_images_per_second"]:.2f} img/s ({results["b_bf16_over_b"]:.2f} x b); '
            f'min cosine to float32 {results["bf16_min_cosine_to_float32"]:.6f} '
            f'(target >= {TARGET_BF16_SPEEDUP}x at >= {TARGET_BF16_COSINE})'
        )
    else:
        print(
            '  bfloat16: skipped, this CPU has no native bfloat16 (AVX512-BF16 or AMX); '
            '--bf16 times it anyway'
        )
    for memory in results.get('memory', []):
        print(
            f'  memory, Beam alone on {memory["num_images"]:4d} images: RSS '
            f'{memory["rss_before_beam_mb"]:.0f} MB before, peak {memory["rss_peak_mb"]:.0f} MB '
            f'{"during Beam" if memory["rss_peak_during_beam_mb"] else "(whole process)"}, '
            f'Python allocations peak {memory["python_peak_mb"]:.1f} MB'
        )


if __name__ == '__main__':
    main()
