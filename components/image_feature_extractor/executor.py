"""Beam executor of ImageFeatureExtractor: encoded images -> InceptionV3 features.

1. `Do` validates the parameters and the input splits, resolves the compute
   precision on this machine (``auto``: bfloat16 only with native CPU
   support), then builds the encoder once, in the driver, and writes it to
   the ``encoder`` artifact (`models.encoder` documents the layout; the spec
   records the requested and resolved precision). Workers load that artifact
   and compute in the recorded precision, so every worker uses exactly these
   weights, and the Trainer builds the float32 serving model from them.
2. Per split, one Beam branch reads the gzipped tf.Examples, decodes and
   checks each image in TensorFlow with the shared preprocessing function
   (`models.image_preprocessing`), batches `batch_size` images per InceptionV3
   call and writes tf.Examples with the id, the 2048 features and every
   caption to ``Split-<name>/`` of ``feature_examples``, as ExampleGen does.
3. Images that cannot be used (empty, not an image, header above
   `max_image_pixels`, truncated or corrupt) are skipped and counted with Beam
   counters; the counts are logged and recorded on ``feature_examples``
   (``skipped_<reason>``, ``num_examples_<split>``, JSON ``extraction_report``).

Progress: every worker prints its images done / total, images per second and
an ETA per split at most every ~10 s (`components.progress`).

Efficiency: the encoder is loaded once per worker process (`DoFn.setup` through
`apache_beam.utils.shared`), and in the in-memory DirectRunner, which runs in
the driver's process, the driver's own copy is reused instead of a second one.
Decode, batch, encode and write are fused into one stage, so no image or
pixel array is ever held for a whole split; only when the runner has several
workers is a Reshuffle added after reading, to spread the images over them.

Determinism: the features of an image do not depend on the runner, the
bundling or the order of records, up to float32 rounding: oneDNN's kernels
depend on the batch shape, so an image encoded in another batch may differ
by ~1e-6 relative. The order of records in the output files is not guaranteed.
"""

import dataclasses
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tf_keras as keras
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.utils import shared
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import io_utils

from tfx_captioning.components import beam_metrics, progress
from tfx_captioning.components.image_feature_extractor import spec
from tfx_captioning.models import encoder, features, image_preprocessing

METRICS_NAMESPACE = 'image_feature_extractor'
REPORT_PROPERTY = 'extraction_report'
SKIPPED_PROPERTY_PREFIX = beam_metrics.SKIPPED_PROPERTY_PREFIX
EXAMPLES_PROPERTY_PREFIX = beam_metrics.EXAMPLES_PROPERTY_PREFIX
EXAMPLES_COUNTER_PREFIX = 'examples_'

# Custom properties of the encoder artifact.
ENCODER_WEIGHTS_PROPERTY = 'encoder_weights'
ENCODER_SEED_PROPERTY = 'encoder_seed'
ENCODER_FINGERPRINT_PROPERTY = 'encoder_weights_fingerprint'
# On both outputs: the compute precision asked for and the one used.
ENCODER_PRECISION_PROPERTY = 'encoder_precision'
REQUESTED_PRECISION_PROPERTY = 'encoder_precision_requested'

# The names ExampleGen gives its files (tfx write_split), so every TFX reader
# of Examples finds ours the same way.
OUTPUT_FILE_PREFIX = 'data_tfrecord'
OUTPUT_FILE_SUFFIX = '.gz'
OUTPUT_FILE_FORMAT = 'tfrecords_gzip'

# Why an example is skipped. Every count is logged and recorded on the output.
REASON_NO_IMAGE_ID = 'examples_without_image_id'
REASON_EMPTY_IMAGE = 'empty_images'
REASON_UNKNOWN_FORMAT = 'unsupported_format_images'
REASON_OVERSIZED = 'oversized_images'
REASON_UNDECODABLE = 'undecodable_images'
REASON_NON_FINITE = 'non_finite_features'
REASONS = (
    REASON_NO_IMAGE_ID,
    REASON_EMPTY_IMAGE,
    REASON_UNKNOWN_FORMAT,
    REASON_OVERSIZED,
    REASON_UNDECODABLE,
    REASON_NON_FINITE,
)

_SCALAR_STRING = tf.TensorSpec([], tf.string)


@tf.function(input_signature=[_SCALAR_STRING], autograph=False)
def _inspect_image(image_bytes: tf.Tensor):
    return image_preprocessing.image_format(image_bytes), image_preprocessing.image_dimensions(
        image_bytes
    )


def image_problem(image_bytes: bytes, max_image_pixels: int) -> Optional[str]:
    """Why an image must be skipped, judged from its header; None when it may be decoded.

    Uses the same header parsing as the preprocessing function's own size
    guard, so what is skipped here is exactly what serving would reject.
    Truncated or corrupt pixel data is only found by decoding.

    Returns:
      One of the ``REASON_*`` values, or None.
    """
    if not image_bytes:
        return REASON_EMPTY_IMAGE
    try:
        image_format, dimensions = _inspect_image(tf.constant(image_bytes))
    except tf.errors.InvalidArgumentError:
        return REASON_UNDECODABLE  # A JPEG whose header cannot be parsed.
    if int(image_format) == image_preprocessing.FORMAT_UNKNOWN:
        return REASON_UNKNOWN_FORMAT
    height, width = (int(v) for v in dimensions.numpy())
    if height <= 0 or width <= 0:
        return REASON_UNDECODABLE
    if height * width > max_image_pixels:
        return REASON_OVERSIZED
    return None


def make_feature_example(
    image_id: bytes,
    image_features: np.ndarray,
    captions: Sequence[bytes],
    image_bytes: Optional[bytes] = None,
    regions: Optional[np.ndarray] = None,
) -> tf.train.Example:
    """The output tf.Example of one image.

    Args:
      image_id: the image's id, as in the input.
      image_features: float[FEATURE_SIZE] InceptionV3 features.
      captions: every caption of the image, as in the input.
      image_bytes: the encoded image, only when it is kept.
      regions: float[NUM_REGIONS, FEATURE_SIZE] region features, only when
        kept; stored as `features.REGION_DTYPE` bytes (`encode_regions`).
    """
    feature = {
        features.IMAGE_ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id])),
        features.IMAGE_FEATURES_KEY: tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(image_features, np.float32).tolist())
        ),
        features.CAPTIONS_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=list(captions))
        ),
    }
    if image_bytes is not None:
        feature[features.IMAGE_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[image_bytes])
        )
    if regions is not None:
        feature[features.IMAGE_REGIONS_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[encode_regions(regions)])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def encode_regions(regions: np.ndarray) -> bytes:
    """float [NUM_REGIONS, FEATURE_SIZE] -> the stored bytes (little-endian float16).

    Bytes rather than a float list: a tf.Example has no float16, and float32
    would double the size (512 KiB per image). Transform decodes them with
    ``tf.io.decode_raw(..., tf.float16)``.
    """
    regions = np.asarray(regions)
    expected = (features.NUM_REGIONS, features.FEATURE_SIZE)
    if regions.shape != expected:
        raise ValueError(f'regions must have shape {expected}, got {regions.shape}.')
    return np.ascontiguousarray(
        regions, dtype='<' + np.dtype(features.REGION_DTYPE).str[1:]
    ).tobytes()


def decode_regions(data: bytes) -> np.ndarray:
    """The inverse of `encode_regions`: float32 [NUM_REGIONS, FEATURE_SIZE]."""
    values = np.frombuffer(data, dtype='<' + np.dtype(features.REGION_DTYPE).str[1:])
    return values.astype(np.float32).reshape(features.NUM_REGIONS, features.FEATURE_SIZE)


@dataclasses.dataclass(frozen=True)
class _DecodedImage:
    """One checked image on its way to the encoder.

    A dataclass rather than a NamedTuple: Beam would infer a schema coder for a
    NamedTuple, which cannot hold a NumPy array.
    """

    image_id: bytes
    captions: Sequence[bytes]
    pixels: np.ndarray
    image_bytes: Optional[bytes]


class EncoderRunner:
    """One encoder and its compiled graph function, shared by the DoFns of a process.

    Args:
      model: the float32 encoder.
      precision: 'float32', or 'bfloat16' to compute with a mixed-bfloat16
        copy of it (features still float32).
    """

    def __init__(self, model: keras.Model, precision: str = encoder.PRECISION_FLOAT32):
        self.precision = precision
        self.model = encoder.with_precision(model, precision)
        self._encode = encoder.make_encode_fn(self.model)
        self._encode_regions = None

    @classmethod
    def load(cls, encoder_path: str) -> 'EncoderRunner':
        """The artifact's encoder, computing in the precision its spec records."""
        precision = encoder.read_encoder_spec(encoder_path).precision
        return cls(encoder.load_encoder(encoder_path), precision)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [n, 299, 299, 3] in [-1, 1] -> float32 [n, FEATURE_SIZE]."""
        return self._encode(tf.constant(pixels, dtype=tf.float32)).numpy()

    def encode_with_regions(self, pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """float32 [n, 299, 299, 3] -> (pooled [n, FEATURE_SIZE], regions [n, NUM_REGIONS,
        FEATURE_SIZE]), from one InceptionV3 pass."""
        if self._encode_regions is None:
            self._encode_regions = encoder.make_encode_regions_fn(self.model)
        pooled, regions = self._encode_regions(tf.constant(pixels, dtype=tf.float32))
        return pooled.numpy(), regions.numpy()


def _skip_counters() -> Dict[str, beam.metrics.metricbase.Counter]:
    return {reason: beam.metrics.Metrics.counter(METRICS_NAMESPACE, reason) for reason in REASONS}


class _DecodeImageDoFn(beam.DoFn):
    """Parses one input tf.Example and decodes its image; skips and counts unusable ones."""

    def __init__(
        self,
        max_image_pixels: int,
        keep_image_bytes: bool,
        progress_args: Optional[Dict[str, Any]] = None,
    ):
        self._max_image_pixels = max_image_pixels
        self._keep_image_bytes = keep_image_bytes
        self._skipped = _skip_counters()
        self._progress_args = progress_args

    def setup(self):
        self._progress = None
        max_pixels = self._max_image_pixels
        self._preprocess = tf.function(
            lambda image_bytes: image_preprocessing.preprocess_image(image_bytes, max_pixels),
            input_signature=[_SCALAR_STRING],
            autograph=False,
        )

    def process(self, record: bytes) -> Iterator[_DecodedImage]:
        if self._progress is None and self._progress_args:
            # Created with the first image, so the rate leaves out model loading.
            self._progress = progress.shared(**self._progress_args)
        if self._progress is not None:
            self._progress.update()
        feature = tf.train.Example.FromString(record).features.feature
        ids = feature[features.IMAGE_ID_KEY].bytes_list.value
        if not ids or not ids[0]:
            logging.warning('Skipping an example without %s.', features.IMAGE_ID_KEY)
            self._skipped[REASON_NO_IMAGE_ID].inc()
            return
        image_id = ids[0]
        images = feature[features.IMAGE_KEY].bytes_list.value
        image_bytes = images[0] if images else b''
        problem, detail = image_problem(image_bytes, self._max_image_pixels), ''
        if problem is None:
            try:
                pixels = self._preprocess(tf.constant(image_bytes)).numpy()
            except tf.errors.InvalidArgumentError as e:
                first_line = next(iter((e.message or '').splitlines()), '')
                problem, detail = REASON_UNDECODABLE, f' ({first_line})'
        if problem is not None:
            logging.warning('Skipping image %r: %s%s.', image_id, problem, detail)
            self._skipped[problem].inc()
            return
        yield _DecodedImage(
            image_id=image_id,
            captions=tuple(feature[features.CAPTIONS_KEY].bytes_list.value),
            pixels=pixels,
            image_bytes=image_bytes if self._keep_image_bytes else None,
        )


class _EncodeBatchDoFn(beam.DoFn):
    """Runs InceptionV3 once per batch and emits serialized output tf.Examples."""

    def __init__(
        self,
        encoder_handle: shared.Shared,
        encoder_path: str,
        split: str,
        region_features: bool = False,
    ):
        self._encoder_handle = encoder_handle
        self._encoder_path = encoder_path
        self._region_features = region_features
        self._written = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, EXAMPLES_COUNTER_PREFIX + split
        )
        self._skipped = _skip_counters()

    def setup(self):
        path = self._encoder_path
        # Once per process: every DoFn instance (one per split, per thread)
        # gets the same runner; the driver's when the runner is in-process.
        self._runner = self._encoder_handle.acquire(lambda: EncoderRunner.load(path), tag=path)

    def process(self, batch: List[_DecodedImage]) -> Iterator[bytes]:
        pixels = np.stack([image.pixels for image in batch])
        if self._region_features:
            image_features, regions = self._runner.encode_with_regions(pixels)
        else:
            image_features, regions = self._runner.encode(pixels), [None] * len(batch)
        for image, vector, image_regions in zip(batch, image_features, regions):
            if not np.all(np.isfinite(vector)):
                logging.warning('Skipping image %r: non-finite features.', image.image_id)
                self._skipped[REASON_NON_FINITE].inc()
                continue
            self._written.inc()
            yield make_feature_example(
                image.image_id, vector, image.captions, image.image_bytes, image_regions
            ).SerializeToString()


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def ExtractSplitFeatures(  # noqa: N802 (Beam's PTransform naming)
    pipeline: beam.Pipeline,
    input_split_uri: str,
    output_split_uri: str,
    split: str,
    encoder_path: str,
    encoder_handle: shared.Shared,
    parameters: spec.ExtractorParameters,
    reshuffle: bool,
    num_images: Optional[int] = None,
    num_workers: Optional[int] = 1,
) -> beam.pvalue.PDone:
    """Reads one split's tf.Examples, writes them back with InceptionV3 features.

    Args:
      pipeline: the Beam pipeline.
      input_split_uri: directory of the input split's gzipped TFRecords.
      output_split_uri: directory for the output split.
      split: the split name, for counters.
      encoder_path: the encoder artifact (see `models.encoder`).
      encoder_handle: shares one loaded encoder per process.
      parameters: the extractor's validated parameters.
      reshuffle: spread images over workers after reading (several workers only).
      num_images: images in the split, for the progress lines' ETA; None if unknown.
      num_workers: Beam workers sharing the split (each reports its share);
        None if unknown.
    """
    records = pipeline | 'ReadExamples' >> beam.io.ReadFromTFRecord(
        io_utils.all_files_pattern(input_split_uri), coder=beam.coders.BytesCoder()
    )
    if reshuffle:
        records = records | 'Reshuffle' >> beam.Reshuffle()
    return (
        records
        | 'DecodeImages'
        >> beam.ParDo(
            _DecodeImageDoFn(
                parameters.max_image_pixels,
                parameters.keep_image_bytes,
                progress_args={
                    'key': output_split_uri,
                    'label': f'ImageFeatureExtractor {split}',
                    'total': num_images,
                    'num_workers': num_workers,
                },
            )
        )
        # Fixed-size batches: predictable memory (batch_size x 1 MB of pixels).
        | 'Batch'
        >> beam.BatchElements(
            min_batch_size=parameters.batch_size, max_batch_size=parameters.batch_size
        )
        | 'Encode'
        >> beam.ParDo(
            _EncodeBatchDoFn(encoder_handle, encoder_path, split, parameters.region_features)
        )
        | 'WriteExamples'
        >> beam.io.WriteToTFRecord(
            os.path.join(output_split_uri, OUTPUT_FILE_PREFIX),
            file_name_suffix=OUTPUT_FILE_SUFFIX,
        )
    )


def runner_has_several_workers(beam_pipeline_args: Sequence[str]) -> bool:
    """False only for the DirectRunner with one worker, where a Reshuffle gains nothing.

    On that runner a Reshuffle would hold every encoded image of a split in
    memory at once; elsewhere it lets all workers share the inference.
    """
    options = PipelineOptions(list(beam_pipeline_args))
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, 'DirectRunner', 'direct', 'FnApiRunner'):
        return True
    return options.view_as(DirectOptions).direct_num_workers != 1


def beam_worker_count(beam_pipeline_args: Sequence[str]) -> Optional[int]:
    """The DirectRunner's worker processes (or threads); None for other runners."""
    options = PipelineOptions(list(beam_pipeline_args))
    if options.view_as(StandardOptions).runner not in (None, 'DirectRunner', 'direct'):
        return None
    return options.view_as(DirectOptions).direct_num_workers or os.cpu_count()


def read_counters(result: Optional[beam.runners.runner.PipelineResult]) -> Dict[str, int]:
    """The counters of `METRICS_NAMESPACE`, summed over steps (committed when available)."""
    return beam_metrics.read_counters(result, METRICS_NAMESPACE)


def make_report(
    counters: Mapping[str, int], splits: Iterable[str], encoder_spec: encoder.EncoderSpec
) -> Dict[str, Any]:
    """The extraction report: examples written per split, skips per reason, the encoder."""
    return {
        'examples': {split: counters.get(EXAMPLES_COUNTER_PREFIX + split, 0) for split in splits},
        'skipped': {reason: counters.get(reason, 0) for reason in REASONS},
        'encoder_weights': encoder_spec.weights,
        'encoder_seed': encoder_spec.seed,
        'encoder_precision': encoder_spec.precision,
        'encoder_precision_requested': encoder_spec.requested_precision,
    }


def record_report(examples: types.Artifact, report: Mapping[str, Any]) -> None:
    """Logs the report and records it on the output Examples artifact."""
    beam_metrics.record_report(examples, report, REPORT_PROPERTY, 'Image feature extraction')


def record_encoder(encoder_artifact: types.Artifact, encoder_spec: encoder.EncoderSpec) -> None:
    """Records how the encoder was built on its artifact."""
    encoder_artifact.set_string_custom_property(ENCODER_WEIGHTS_PROPERTY, encoder_spec.weights)
    encoder_artifact.set_int_custom_property(ENCODER_SEED_PROPERTY, encoder_spec.seed)
    encoder_artifact.set_string_custom_property(
        ENCODER_FINGERPRINT_PROPERTY, encoder_spec.weights_fingerprint
    )
    record_precision(encoder_artifact, encoder_spec)


def record_precision(artifact: types.Artifact, encoder_spec: encoder.EncoderSpec) -> None:
    """Records the requested and the resolved compute precision on `artifact`."""
    artifact.set_string_custom_property(ENCODER_PRECISION_PROPERTY, encoder_spec.precision)
    artifact.set_string_custom_property(
        REQUESTED_PRECISION_PROPERTY, encoder_spec.requested_precision
    )


def _num_examples(examples: types.Artifact, split: str) -> Optional[int]:
    """The split's size as ExampleGen recorded it, or None."""
    name = EXAMPLES_PROPERTY_PREFIX + split
    if examples.has_custom_property(name):
        return examples.get_int_custom_property(name) or None
    return None


def _input_split_uris(examples: types.Artifact) -> Dict[str, str]:
    """Split name -> directory, failing early when a split has no files."""
    split_names = artifact_utils.decode_split_names(examples.split_names)
    if not split_names:
        raise ValueError(f'Input examples at {examples.uri!r} declare no splits.')
    uris = {}
    for split in split_names:
        uri = artifact_utils.get_split_uri([examples], split)
        if not tf.io.gfile.glob(io_utils.all_files_pattern(uri)):
            raise ValueError(f'Input split {split!r} has no files under {uri!r}.')
        uris[split] = uri
    return uris


class Executor(base_beam_executor.BaseBeamExecutor):
    """Examples with encoded images -> Examples with InceptionV3 features, plus the encoder."""

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        parameters = spec.ExtractorParameters.from_exec_properties(exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[spec.EXAMPLES_KEY])
        feature_examples = artifact_utils.get_single_instance(
            output_dict[spec.FEATURE_EXAMPLES_KEY]
        )
        encoder_artifact = artifact_utils.get_single_instance(output_dict[spec.ENCODER_KEY])
        input_uris = _input_split_uris(examples)

        precision = encoder.resolve_precision(parameters.encoder_precision)
        logging.info(
            'Encoder compute precision: %s (requested %s).',
            precision,
            parameters.encoder_precision,
        )
        model = encoder.build_inception_encoder(parameters.weights, parameters.seed)
        encoder_spec = encoder.save_encoder(
            model,
            encoder_artifact.uri,
            parameters.weights,
            parameters.seed,
            requested_precision=parameters.encoder_precision,
            precision=precision,
        )
        record_encoder(encoder_artifact, encoder_spec)
        record_precision(feature_examples, encoder_spec)

        feature_examples.split_names = artifact_utils.encode_split_names(list(input_uris))
        reshuffle = runner_has_several_workers(self._beam_pipeline_args)
        encoder_handle = shared.Shared()
        # Registered under the artifact's path and kept alive until the pipeline
        # ends, so in-process workers reuse this model instead of loading it again.
        driver_runner = encoder_handle.acquire(
            lambda: EncoderRunner(model, precision), tag=encoder_artifact.uri
        )
        with self._make_beam_pipeline() as pipeline:
            for split, input_uri in input_uris.items():
                _ = pipeline | f'ExtractFeatures[{split}]' >> ExtractSplitFeatures(
                    input_split_uri=input_uri,
                    output_split_uri=artifact_utils.get_split_uri([feature_examples], split),
                    split=split,
                    encoder_path=encoder_artifact.uri,
                    encoder_handle=encoder_handle,
                    parameters=parameters,
                    reshuffle=reshuffle,
                    num_images=_num_examples(examples, split),
                    num_workers=beam_worker_count(self._beam_pipeline_args),
                )
        del driver_runner

        report = make_report(
            read_counters(getattr(pipeline, 'result', None)), input_uris, encoder_spec
        )
        record_report(feature_examples, report)
        examples_utils.set_payload_format(feature_examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(feature_examples, OUTPUT_FILE_FORMAT)
        # Same data, new features: keep the span and version for resolvers.
        for name in ('span', 'version'):
            if examples.has_property(name) and feature_examples.has_property(name):
                setattr(feature_examples, name, getattr(examples, name))
