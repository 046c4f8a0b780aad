"""Beam executor of Flickr8kExampleGen: Flickr8k layout -> tf.Examples per split.

TFX's `BaseExampleGenExecutor` does the splitting and artifact bookkeeping;
this executor says how one split becomes tf.Examples, and writes them itself:

1. `Do` reads the small text files once (`layout.load_plan`), failing at once
   on a directory that is not a Flickr8k layout, and counts bad lines.
2. Per split, Beam reads each image file, checks it as every runtime does
   (`models.image_files`: accepted format, at most `features.MAX_IMAGE_PIXELS`)
   and that it decodes, and builds a tf.Example with the id, the encoded bytes
   and **all** captions. Images that cannot be used are skipped and counted
   with a Beam counter (``unreadable_images``, ``oversized_images``).
3. Each split is written as TFX's ExampleGen writes it (gzipped TFRecords,
   ``Split-<name>/data_tfrecord-*.gz``, payload and file format on the
   artifact), but without TFX's `Reshuffle` before the write: the image list
   is already shuffled before the images are read, and on the in-memory
   DirectRunner that second shuffle held every encoded image of the run in
   memory at once (1.1 GB of JPEGs for Flickr8k; see `WriteExamples`).
4. After the pipeline, every count is logged and recorded on the output
   Examples artifact (custom properties ``skipped_<reason>`` and a JSON
   ``ingestion_report``), so nothing is dropped silently.
"""

import io
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional

import apache_beam as beam
import tensorflow as tf
from PIL import Image
from tfx import types
from tfx.components.example_gen import base_example_gen_executor, write_split
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.components import beam_metrics
from tfx_captioning.components.flickr8k_example_gen import layout
from tfx_captioning.models import features, image_files

METRICS_NAMESPACE = 'flickr8k_example_gen'
REPORT_PROPERTY = 'ingestion_report'
SKIPPED_PROPERTY_PREFIX = beam_metrics.SKIPPED_PROPERTY_PREFIX
EXAMPLES_PROPERTY_PREFIX = beam_metrics.EXAMPLES_PROPERTY_PREFIX
EXAMPLES_COUNTER_PREFIX = 'examples_'


def check_image(
    data: bytes, max_pixels: int = features.MAX_IMAGE_PIXELS
) -> Optional[image_files.ImageError]:
    """Returns why `data` is not a usable image, or None when it decodes.

    First the header check every runtime shares (`image_files.check_image`:
    one of `features.IMAGE_FORMATS`, at most `max_pixels` pixels), so nothing
    is ingested that serving would refuse and a decompression bomb is never
    decoded; then a real decode. JPEGs are decoded at 1/8 scale (`draft`),
    which still reads every compressed byte, so truncated files fail while
    large photos cost little.

    Returns:
      None, or the `ImageError` whose `reason` says which counter it goes to.
    """
    try:
        header = image_files.check_image(data, max_pixels)
        with Image.open(io.BytesIO(data)) as image:
            if header.format == 'JPEG':
                image.draft('RGB', (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except image_files.ImageError as error:
        return error
    except Exception as error:  # PIL raises many types for bad data.
        return image_files.ImageError(image_files.NOT_DECODABLE, f'{type(error).__name__}: {error}')
    return None


def make_example(record: layout.ImageRecord, image_bytes: bytes) -> tf.train.Example:
    """The tf.Example of one image: id, encoded bytes and every caption."""
    feature = {
        features.IMAGE_ID_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[record.image_id.encode('utf-8')])
        ),
        features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        features.CAPTIONS_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[c.encode('utf-8') for c in record.captions])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


class _ReadImageDoFn(beam.DoFn):
    """Reads and checks one image; emits its tf.Example or counts why it could not."""

    def __init__(self, split: str) -> None:
        self._written = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, EXAMPLES_COUNTER_PREFIX + split
        )
        self._unreadable = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, layout.REASON_UNREADABLE_IMAGE
        )
        self._missing = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, layout.REASON_MISSING_IMAGE_FILE
        )
        self._oversized = beam.metrics.Metrics.counter(
            METRICS_NAMESPACE, layout.REASON_OVERSIZED_IMAGE
        )

    def process(self, record: layout.ImageRecord) -> Iterator[tf.train.Example]:
        try:
            with tf.io.gfile.GFile(record.path, 'rb') as f:
                data = f.read()
        except tf.errors.NotFoundError:
            # Listed when the plan was made, gone now.
            logging.warning('Skipping %s: image file disappeared.', record.image_id)
            self._missing.inc()
            return
        problem = check_image(data)
        if problem is not None:
            logging.warning('Skipping %s: %s.', record.image_id, problem)
            if problem.reason == image_files.TOO_MANY_PIXELS:
                self._oversized.inc()
            else:
                self._unreadable.inc()
            return
        self._written.inc()
        yield make_example(record, data)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _Flickr8kSplitToExample(  # noqa: N802 (Beam's PTransform naming)
    pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str
) -> beam.pvalue.PCollection:
    """One split's images (chosen by `split_pattern`, a split file name) as tf.Examples."""
    plan: layout.IngestionPlan = exec_properties[_PLAN_KEY]
    split = _split_for_pattern(exec_properties, split_pattern)
    return (
        pipeline
        | 'ListImages' >> beam.Create(plan.splits[split])
        # Image reading is the costly step: let the runner spread it.
        | 'Reshuffle' >> beam.Reshuffle()
        | 'ReadImages' >> beam.ParDo(_ReadImageDoFn(split))
    )


_PLAN_KEY = '_flickr8k_plan'


@beam.ptransform_fn
@beam.typehints.with_input_types(tf.train.Example)
def WriteExamples(  # noqa: N802 (Beam's PTransform naming)
    examples: beam.pvalue.PCollection, output_split_uri: str
) -> beam.pvalue.PDone:
    """Writes one split as TFX's `write_split.WriteSplit` does, without its `Reshuffle`.

    Records stream from reading to the file. A `Reshuffle` (a GroupByKey)
    here would make the in-memory DirectRunner buffer the whole split, image
    bytes included, before writing a record; the order is random already
    (`_Flickr8kSplitToExample` shuffles the image list before reading).
    """
    return (
        examples
        | 'Serialize' >> beam.Map(lambda example: example.SerializeToString())
        | 'Write'
        >> beam.io.WriteToTFRecord(
            os.path.join(output_split_uri, write_split.DEFAULT_FILE_NAME),
            file_name_suffix='.gz',
        )
    )


def _split_for_pattern(exec_properties: Dict[str, Any], pattern: str) -> str:
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
    )
    for split in input_config.splits:
        if split.pattern == pattern:
            return split.name
    raise ValueError(f'No input split has pattern {pattern!r}.')


def split_files_from_config(input_config_json: str) -> Dict[str, str]:
    """Split name -> split file name, from the component's `input_config`.

    Raises:
      ValueError: a split pattern is a glob or a path; each must name one file.
    """
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(input_config_json, input_config)
    split_files = {}
    for split in input_config.splits:
        if any(ch in split.pattern for ch in '*?[]') or '/' in split.pattern:
            raise ValueError(
                f'Split {split.name!r}: pattern {split.pattern!r} must be the name of one '
                'Flickr8k split file in input_base, e.g. Flickr_8k.trainImages.txt.'
            )
        split_files[split.name] = split.pattern
    return split_files


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Flickr8k layout -> tf.Example TFRecords, one output split per split file."""

    _pipeline = None

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 (TFX API)
        return _Flickr8kSplitToExample

    def _make_beam_pipeline(self):
        # Kept so that Do can read the pipeline's counters once it has run.
        self._pipeline = super()._make_beam_pipeline()
        return self._pipeline

    def Do(  # noqa: N802 (TFX API)
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        split_files = split_files_from_config(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY]
        )
        # Fails at once, naming what is missing, if input_base is not Flickr8k.
        plan = layout.load_plan(input_base, split_files)
        for split, records in plan.splits.items():
            logging.info('Flickr8k split %s: %d images planned.', split, len(records))
        self._generate_and_write(output_dict, dict(exec_properties, **{_PLAN_KEY: plan}))

        counters = self._beam_counters()
        skipped = dict(plan.skipped)
        for reason in skipped:
            skipped[reason] += counters.get(reason, 0)
        report = {
            'input_base': input_base,
            'examples': {
                split: counters.get(EXAMPLES_COUNTER_PREFIX + split, 0) for split in plan.splits
            },
            'skipped': skipped,
        }
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY]
        )
        record_report(examples, report)

    def _generate_and_write(
        self, output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]
    ) -> None:
        """`BaseExampleGenExecutor.Do`, with `WriteExamples` as the write step."""
        examples = output_dict[standard_component_specs.EXAMPLES_KEY]
        input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config
        )
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config
        )
        split_names = example_gen_utils.generate_output_split_names(input_config, output_config)
        for artifact in examples:
            artifact.split_names = artifact_utils.encode_split_names(split_names)
        with self._make_beam_pipeline() as pipeline:
            example_splits = self.GenerateExamplesByBeam(pipeline, exec_properties)
            for split, example_split in example_splits.items():
                _ = example_split | f'WriteSplit[{split}]' >> WriteExamples(
                    artifact_utils.get_split_uri(examples, split)
                )
        file_format = exec_properties.get(
            standard_component_specs.OUTPUT_FILE_FORMAT_KEY,
            example_gen_pb2.FILE_FORMAT_UNSPECIFIED,
        )
        for artifact in examples:
            examples_utils.set_payload_format(artifact, example_gen_pb2.FORMAT_TF_EXAMPLE)
            examples_utils.set_file_format(artifact, write_split.to_file_format_str(file_format))

    def _beam_counters(self) -> Dict[str, int]:
        return beam_metrics.read_counters(
            getattr(self._pipeline, 'result', None), METRICS_NAMESPACE
        )


def record_report(examples: types.Artifact, report: Mapping[str, Any]) -> None:
    """Logs the report and records it on the output Examples artifact."""
    beam_metrics.record_report(examples, report, REPORT_PROPERTY, 'Flickr8k ingestion')
