"""Flickr8kExampleGen: TFX's FileBasedExampleGen with the Flickr8k Beam executor.

Each output split is named by one official split file, read from `input_base`
(a local directory or any filesystem TensorFlow reads, such as gs://):

    train <- Flickr_8k.trainImages.txt
    eval  <- Flickr_8k.devImages.txt
    test  <- Flickr_8k.testImages.txt

Caching: the driver (`driver.Flickr8kDriver`) fingerprints the split files,
the token file and the images, and `custom_config` carries a fingerprint of
the executor's and driver's code, so an edit of any of them re-runs the
component (and, through its new output, everything downstream).
"""

from typing import Mapping, Optional

from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.flickr8k_example_gen import driver, executor, layout
from tfx_captioning.models import features


def make_input_config(split_files: Optional[Mapping[str, str]] = None) -> example_gen_pb2.Input:
    """The ExampleGen input config: one split per Flickr8k split file.

    Args:
      split_files: split name -> split file name; the official files by default.
    """
    split_files = split_files or layout.SPLIT_FILES
    return example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name=name, pattern=f) for name, f in split_files.items()
        ]
    )


class Flickr8kExampleGen(FileBasedExampleGen):
    """Reads Flickr8k's original layout into tf.Example splits train/eval/test.

    Output examples carry `features.IMAGE_ID_KEY`, `features.IMAGE_KEY` (the
    encoded image) and `features.CAPTIONS_KEY` (all captions). Skipped inputs
    are counted on the output artifact (see `executor`).
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.Flickr8kDriver

    def __init__(self, input_base: str, split_files: Optional[Mapping[str, str]] = None):
        """Args:
        input_base: directory in the Flickr8k layout.
        split_files: split name -> split file name; the official three by default.
        """
        if not input_base:
            raise ValueError('Flickr8kExampleGen needs input_base, the Flickr8k directory.')
        super().__init__(
            input_base=input_base,
            input_config=make_input_config(split_files),
            custom_config=code_config(),
        )


def code_config() -> example_gen_pb2.CustomConfig:
    """ExampleGen's `custom_config` (an `Any`): a Struct with the code fingerprint.

    The executor does not read it; it is there for TFX's cache key, which
    covers exec properties but not the code behind the executor and driver.
    """
    fingerprint = code_fingerprint.fingerprint(executor.__name__, driver.__name__)
    packed = any_pb2.Any()
    packed.Pack(
        struct_pb2.Struct(
            fields={features.CODE_FINGERPRINT_KEY: struct_pb2.Value(string_value=fingerprint)}
        )
    )
    return example_gen_pb2.CustomConfig(custom_config=packed)
