"""Reads what the latest pipeline run produced from ML Metadata, for people.

Used by the CLI to print the run summary and by tests to inspect executions.
"""

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_component_specs

from tfx_captioning.components.flickr8k_example_gen import executor as example_gen_executor


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    """Opens the SQLite ML Metadata store of a local run (read-only use)."""
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f'No ML Metadata store at {metadata_path}: run the pipeline first.')
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    )
    return metadata_store.MetadataStore(config)


def latest_artifact(
    store: metadata_store.MetadataStore, type_name: str
) -> Optional[metadata_store_pb2.Artifact]:
    """The most recently created LIVE artifact of `type_name`, or None."""
    artifacts = [
        a
        for a in store.get_artifacts_by_type(type_name)
        if a.state == metadata_store_pb2.Artifact.LIVE
    ]
    return max(artifacts, key=lambda a: (a.create_time_since_epoch, a.id), default=None)


def ingestion_report(store: metadata_store.MetadataStore) -> Optional[Dict[str, Any]]:
    """The ExampleGen's report (examples per split, skipped inputs per reason)."""
    for artifact in sorted(
        store.get_artifacts_by_type('Examples'), key=lambda a: -a.create_time_since_epoch
    ):
        prop = artifact.custom_properties.get(example_gen_executor.REPORT_PROPERTY)
        if prop is not None:
            return json.loads(prop.string_value)
    return None


def anomalies(store: metadata_store.MetadataStore) -> Dict[str, List[str]]:
    """Data-validation anomalies per split from the latest ExampleValidator output."""
    # Transform also writes ExampleAnomalies (post-transform); take the validator's.
    validated = [
        a
        for a in store.get_artifacts_by_type('ExampleAnomalies')
        if 'split_names' in a.properties and '/ExampleValidator/' in a.uri
    ]
    artifact = max(validated, key=lambda a: (a.create_time_since_epoch, a.id), default=None)
    if artifact is None:
        return {}
    split_names = artifact_utils.decode_split_names(artifact.properties['split_names'].string_value)
    result = {}
    for split in split_names:
        path = os.path.join(artifact.uri, f'Split-{split}', 'SchemaDiff.pb')
        if not os.path.exists(path):
            continue
        with open(path, 'rb') as f:
            proto = anomalies_pb2.Anomalies.FromString(f.read())
        result[split] = sorted(
            f'{name}: {info.short_description}' for name, info in proto.anomaly_info.items()
        )
    return result


def raw_examples(store: metadata_store.MetadataStore) -> Optional[metadata_store_pb2.Artifact]:
    """The latest ExampleGen output (the Examples that carry an ingestion report)."""
    candidates = [
        a
        for a in store.get_artifacts_by_type('Examples')
        if example_gen_executor.REPORT_PROPERTY in a.custom_properties
    ]
    return max(candidates, key=lambda a: (a.create_time_since_epoch, a.id), default=None)


def input_base(store: metadata_store.MetadataStore) -> Optional[str]:
    """The directory the latest ExampleGen output was read from, or None.

    TFX records a component's exec properties as custom properties of its
    execution, so the ExampleGen execution that output `raw_examples` carries
    its `input_base`. A cached re-run outputs the same artifact with the same
    properties; the newest execution wins.
    """
    raw = raw_examples(store)
    if raw is None:
        return None
    producer_ids = [
        event.execution_id
        for event in store.get_events_by_artifact_ids([raw.id])
        if event.type == metadata_store_pb2.Event.OUTPUT
    ]
    for execution in sorted(store.get_executions_by_id(producer_ids), key=lambda e: -e.id):
        prop = execution.custom_properties.get(standard_component_specs.INPUT_BASE_KEY)
        if prop is not None and prop.string_value:
            return prop.string_value
    return None


def latest_pushed(store: metadata_store.MetadataStore) -> Dict[str, Any]:
    """Where the latest push went: {'version', 'saved_model', 'tflite'} (empty if none)."""
    from tfx_captioning.components.caption_pusher import executor as pusher_executor
    from tfx_captioning.models import features

    pushed = [
        a
        for a in store.get_artifacts_by_type('PushedModel')
        if a.custom_properties.get('pushed') is not None
        and a.custom_properties['pushed'].int_value == 1
    ]
    latest = max(pushed, key=lambda a: (a.create_time_since_epoch, a.id), default=None)
    if latest is None:
        return {}
    props = latest.custom_properties
    tflite_dir = props.get(pusher_executor.TFLITE_DESTINATION_KEY)
    variant = props.get(pusher_executor.TFLITE_VARIANT_KEY)
    choice = props.get(pusher_executor.TFLITE_CHOICE_KEY)
    return {
        'version': props['pushed_version'].string_value,
        'saved_model': props['pushed_destination'].string_value,
        'tflite': (
            os.path.join(tflite_dir.string_value, features.TFLITE_FILE) if tflite_dir else None
        ),
        'tflite_variant': variant.string_value if variant else None,
        'tflite_choice': choice.string_value if choice else '',
    }


def latest_decision(store: metadata_store.MetadataStore) -> Optional[Dict[str, Any]]:
    """The latest blessing: {'blessed', 'reason', 'pushed', 'not_pushed_reason'}."""
    from tfx_captioning.components.caption_pusher import executor as pusher_executor
    from tfx_captioning.models import features

    blessing = latest_artifact(store, 'ModelBlessing')
    if blessing is None:
        return None
    props = blessing.custom_properties
    push = latest_artifact(store, 'PushedModel')
    return {
        'blessed': props['blessed'].int_value == 1 if 'blessed' in props else False,
        'reason': props[features.BLESSING_REASON_PROPERTY].string_value
        if features.BLESSING_REASON_PROPERTY in props
        else '',
        'pushed': bool(push and push.custom_properties['pushed'].int_value == 1)
        if push is not None and 'pushed' in push.custom_properties
        else False,
        'not_pushed_reason': push.custom_properties[
            pusher_executor.NOT_PUSHED_REASON_KEY
        ].string_value
        if push is not None and pusher_executor.NOT_PUSHED_REASON_KEY in push.custom_properties
        else '',
    }


def _latest_evaluation_json(store: metadata_store.MetadataStore, name: str) -> Optional[Any]:
    """A JSON file of the latest CaptionEvaluator output, or None (no evaluation, no file)."""
    evaluation = latest_artifact(store, 'ModelEvaluation')
    if evaluation is None:
        return None
    path = os.path.join(evaluation.uri, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def evaluation_metrics(store: metadata_store.MetadataStore) -> Optional[Dict[str, Any]]:
    """The latest CaptionEvaluator report (metrics.json), or None."""
    from tfx_captioning.components.caption_evaluator import spec as evaluator_spec

    return _latest_evaluation_json(store, evaluator_spec.METRICS_FILE)


def evaluation_captions(
    store: metadata_store.MetadataStore,
) -> Optional[Dict[str, Dict[str, Dict[str, str]]]]:
    """The latest evaluation's captions: {split: {image_id: {'greedy': .., 'beam': ..}}}, or None.

    None when there is no evaluation or it predates the evaluator writing its captions.
    """
    from tfx_captioning.components.caption_evaluator import spec as evaluator_spec

    return _latest_evaluation_json(store, evaluator_spec.CAPTIONS_FILE)


def known_truth_accuracy(
    store: metadata_store.MetadataStore, data_root: Optional[str] = None
) -> Optional[Dict[str, Dict[str, Dict[str, float]]]]:
    """The latest evaluation's test captions scored against the sample data's truth.

    Args:
      store: the run's ML Metadata store.
      data_root: the run's data directory when the caller knows it;
        otherwise the ExampleGen's `input_base` from ML Metadata.

    Returns:
      decoding -> attribute -> {'correct', 'named', 'images'}
      (`attributes.accuracy_by_decoding`); None when the data has no truth
      file (real Flickr8k) or the evaluation no test captions. The truth is
      read first, so real Flickr8k never loads the captions.

    Raises:
      ValueError: the truth file is malformed, or none of its images was captioned.
    """
    from tfx_captioning.cli import attributes
    from tfx_captioning.models import features

    root = data_root or input_base(store)
    truth = attributes.read_truth(root) if root else None
    if truth is None:
        return None
    captions = (evaluation_captions(store) or {}).get(features.TEST_SPLIT)
    if not captions:
        return None
    return attributes.accuracy_by_decoding(captions, truth)


def format_metrics_table(report: Dict[str, Any]) -> str:
    """The evaluator's metrics per split, the model beside the most-frequent-caption baseline."""
    from tfx_captioning.models import features

    names = list(features.METRIC_NAMES)
    header = f'{"split":<6} {"":<14}' + ''.join(f' {n:>8}' for n in names) + f' {"loss":>8}'
    lines = [header]
    for split, result in report['splits'].items():
        rows = [('model, greedy', result['metrics'])]
        if result.get('beam'):
            rows.append(('model, beam', {**result['beam'], 'loss': None}))
        if result.get('most_frequent_caption'):
            rows.append(('most frequent', result['most_frequent_caption']))
        for label, metrics in rows:
            loss = metrics.get('loss')
            lines.append(
                f'{split:<6} {label:<14}'
                + ''.join(f' {metrics[n]:>8.4f}' for n in names)
                + (f' {loss:>8.4f}' if loss is not None else f' {"-":>8}')
            )
    lines.append(
        '(coco-caption toolkit, all references; most frequent: the most frequent training '
        f'caption for every image; the gate judges {report.get("decoding", "greedy")} decoding)'
    )
    return '\n'.join(lines)


def format_tflite_table(candidates: List[Dict[str, Any]], shipped: Optional[str]) -> str:
    """The TFLite variants' size, one-image latency and agreement; which one shipped."""
    if not candidates:
        return 'TFLite: no variant measured.'
    images = candidates[0].get('images', 0)
    lines = [
        f'TFLite variants (caption agreement with the SavedModel on {images} eval images, '
        'through the on-device image loading):'
    ]
    for c in candidates:
        latency = '-' if c.get('latency_ms') is None else f'{c["latency_ms"]:.0f} ms'
        mark = '  <- shipped' if c['variant'] == shipped else ''
        lines.append(
            f'  {c["variant"]:<8} {c["size_bytes"] / 1e6:>7.1f} MB {latency:>8} '
            f'{c["agreement"]:>7.1%}{mark}'
        )
    return '\n'.join(lines)
