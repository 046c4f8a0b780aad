"""Reading a split of an Examples artifact (gzipped TFRecords of tf.Examples) in batches."""

import os
from typing import Any, Dict, Iterator, List

import tensorflow as tf
from tfx import types
from tfx.types import artifact_utils


def split_files(examples: types.Artifact, split: str) -> List[str]:
    """The record files of one split.

    Raises:
      ValueError: the split has no files.
    """
    files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), '*'))
    if not files:
        raise ValueError(f'No records in split {split!r} of {examples.uri}.')
    return files


def read_examples(
    examples: types.Artifact, split: str, feature_spec: Dict[str, Any], batch_size: int
) -> Iterator[Dict[str, tf.Tensor]]:
    """Parsed batches of one split's gzipped tf.Examples, in file order."""
    dataset = tf.data.TFRecordDataset(split_files(examples, split), compression_type='GZIP')
    dataset = dataset.batch(batch_size).map(lambda x: tf.io.parse_example(x, feature_spec))
    yield from dataset
