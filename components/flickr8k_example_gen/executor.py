"""Beam executor of Flickr8kExampleGen: Flickr8k layout -> tf.Examples per split.

TFX's `BaseExampleGenExecutor` does the splitting, writing and artifact
bookkeeping; this executor only says how one split becomes tf.Examples:

1. `Do` reads the small text files once (`layout.load_plan`), failing at once
   on a directory that is not a Flickr8k layout, and counts bad lines.
2. Per split, Beam reads each image file, checks it as every runtime does
   (`models.image_files`: accepted format, at most `features.MAX_IMAGE_PIXELS`)
   and that it decodes, and builds a tf.Example with the id, the encoded bytes
   and **all** captions. Images that cannot be used are skipped and counted
   with a Beam counter (``unreadable_images``, ``oversized_images``).
3. After the pipeline, every count is logged and recorded on the output
   Examples artifact (custom properties ``skipped_<reason>`` and a JSON
   ``ingestion_report``), so nothing is dropped silently.
"""

import io
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional

import apache_beam as beam
import tensorflow as tf
from PIL import Image
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
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
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        split_files = split_files_from_config(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY]
        )
        # Fails at once, naming what is missing, if input_base is not Flickr8k.
        plan = layout.load_plan(input_base, split_files)
        for split, records in plan.splits.items():
            logging.info('Flickr8k split %s: %d images planned.', split, len(records))
        super().Do(input_dict, output_dict, dict(exec_properties, **{_PLAN_KEY: plan}))

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

    def _beam_counters(self) -> Dict[str, int]:
        return beam_metrics.read_counters(
            getattr(self._pipeline, 'result', None), METRICS_NAMESPACE
        )


def record_report(examples: types.Artifact, report: Mapping[str, Any]) -> None:
    """Logs the report and records it on the output Examples artifact."""
    beam_metrics.record_report(examples, report, REPORT_PROPERTY, 'Flickr8k ingestion')
