"""Counters and reports of the Beam executors (ExampleGen, feature extractor), shared."""

import json
import logging
from typing import Any, Dict, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from tfx import types


def read_counters(
    result: Optional[beam.runners.runner.PipelineResult], namespace: str
) -> Dict[str, int]:
    """The counters of `namespace` by name, summed over steps (committed when available).

    Returns {} when there is no result (the pipeline did not run).
    """
    if result is None:
        return {}
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    counts: Dict[str, int] = {}
    for counter in query['counters']:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[name] = counts.get(name, 0) + int(value or 0)
    return counts


SKIPPED_PROPERTY_PREFIX = 'skipped_'
EXAMPLES_PROPERTY_PREFIX = 'num_examples_'


def record_report(
    examples: types.Artifact, report: Mapping[str, Any], report_property: str, what: str
) -> None:
    """Logs a Beam executor's report and records it on its output Examples artifact.

    Args:
      examples: the output artifact.
      report: {'examples': {split: count}, 'skipped': {reason: count}, ...}.
      report_property: the custom property holding the whole report as JSON.
      what: the step's name in log lines ('Flickr8k ingestion', ...).
    """
    for split, count in report['examples'].items():
        examples.set_int_custom_property(EXAMPLES_PROPERTY_PREFIX + split, count)
    for reason, count in report['skipped'].items():
        examples.set_int_custom_property(SKIPPED_PROPERTY_PREFIX + reason, count)
    examples.set_string_custom_property(report_property, json.dumps(report, sort_keys=True))
    logging.info('%s report: %s', what, json.dumps(report, sort_keys=True))
    skipped = {reason: count for reason, count in report['skipped'].items() if count}
    if skipped:
        logging.warning('%s skipped %d inputs: %s', what, sum(skipped.values()), skipped)
