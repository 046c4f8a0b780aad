"""Reads TF Serving's text-proto configuration files with the real proto schemas.

The same two files configure the production `tensorflow_model_server` and the
local stand-in server (`serving.server`):

* `models.config`: a `tensorflow.serving.ModelServerConfig` (the
  `--model_config_file` flag): model name, base path, version policy, labels.
* `batching_parameters.txt`: a `tensorflow.serving.BatchingParameters` (the
  `--batching_parameters_file` flag).

`ModelServerConfig` ships in the `tensorflow-serving-api` wheel. The wheel does
not ship `session_bundle_config_pb2` (the module of `BatchingParameters`), so
this module rebuilds that message from its official definition in
`tensorflow_serving/servables/tensorflow/session_bundle_config.proto`: same
package, names, field numbers and types, for the fields that have been stable
across releases (1-7). A file using a field outside that subset fails to parse
here, which is the safe direction: it is checked rather than ignored.
"""

import functools
from typing import Type

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

ServableVersionPolicy = (
    file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
)

_BATCHING_PROTO_FILE = 'tensorflow_serving/servables/tensorflow/session_bundle_config.proto'
_BATCHING_MESSAGE = 'tensorflow.serving.BatchingParameters'

# (name, number, wrapper type) of the optional scalar fields, as in the official proto.
_BATCHING_WRAPPED_FIELDS = (
    ('max_batch_size', 1, '.google.protobuf.Int64Value'),
    ('batch_timeout_micros', 2, '.google.protobuf.Int64Value'),
    ('max_enqueued_batches', 3, '.google.protobuf.Int64Value'),
    ('num_batch_threads', 4, '.google.protobuf.Int64Value'),
    ('thread_pool_name', 5, '.google.protobuf.StringValue'),
)


def read_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a `models.config` file (text `ModelServerConfig`).

    Args:
      path: the file, as passed to `tensorflow_model_server --model_config_file`.

    Returns:
      The parsed config.

    Raises:
      ValueError: the file is not a valid text `ModelServerConfig`.
    """
    with open(path, encoding='utf-8') as config_file:
        text = config_file.read()
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f'{path} is not a valid ModelServerConfig text proto: {error}') from error


def find_model_config(
    config: model_server_config_pb2.ModelServerConfig, model_name: str
) -> model_server_config_pb2.ModelConfig:
    """Returns the `model_config_list` entry named `model_name`.

    Raises:
      ValueError: there is no model config list, or no entry of that name.
    """
    if config.WhichOneof('config') != 'model_config_list':
        raise ValueError('the model server config has no model_config_list.')
    names = []
    for model_config in config.model_config_list.config:
        if model_config.name == model_name:
            return model_config
        names.append(model_config.name)
    raise ValueError(f'model {model_name!r} is not in the model config list (it has {names}).')


@functools.cache
def batching_parameters_class() -> Type[message.Message]:
    """Returns the `tensorflow.serving.BatchingParameters` message class.

    Uses the official generated module when it is importable, otherwise builds
    the class from the descriptor described in the module docstring, in a
    private descriptor pool so that it can never clash with a real one.
    """
    try:
        from tensorflow_serving.servables.tensorflow import (  # noqa: PLC0415
            session_bundle_config_pb2,
        )

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=_BATCHING_PROTO_FILE,
        package='tensorflow.serving',
        syntax='proto3',
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )
    message_proto = file_proto.message_type.add(name='BatchingParameters')
    field = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in _BATCHING_WRAPPED_FIELDS:
        message_proto.field.add(
            name=name,
            number=number,
            label=field.LABEL_OPTIONAL,
            type=field.TYPE_MESSAGE,
            type_name=type_name,
        )
    message_proto.field.add(
        name='allowed_batch_sizes', number=6, label=field.LABEL_REPEATED, type=field.TYPE_INT64
    )
    message_proto.field.add(
        name='pad_variable_length_inputs',
        number=7,
        label=field.LABEL_OPTIONAL,
        type=field.TYPE_BOOL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName(_BATCHING_MESSAGE)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def parse_batching_parameters(text: str) -> message.Message:
    """Parses the text of a batching parameters file.

    Raises:
      ValueError: the text is not a valid text `BatchingParameters`.
    """
    try:
        return text_format.Parse(text, batching_parameters_class()())
    except text_format.ParseError as error:
        raise ValueError(f'not a valid BatchingParameters text proto: {error}') from error


def read_batching_parameters(path: str) -> message.Message:
    """Parses a `batching_parameters.txt` file (text `BatchingParameters`).

    Raises:
      ValueError: the file is not a valid text `BatchingParameters`.
    """
    with open(path, encoding='utf-8') as parameters_file:
        text = parameters_file.read()
    try:
        return parse_batching_parameters(text)
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from error
