"""Reading a finished Beam pipeline's counters, shared by the Beam executors."""

from typing import Dict, Optional

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter


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
