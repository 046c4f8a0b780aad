"""Constants and tensor conversions of the TF Serving gRPC protocol.

Shared by the client (`serving.client`), the local stand-in server
(`serving.server`), the deployment files' tests and the benchmark, so that
the metadata field name and the `TensorProto` encoding are spelled once
(ports and limits, needed without TensorFlow, are in `serving.options`).
Model-specific names (signatures, inputs, outputs) live in `models.features`.
"""

from typing import Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_pb2

SIGNATURE_DEF_FIELD = 'signature_def'
"""The only `GetModelMetadataRequest.metadata_field` TF Serving supports."""

# TF error codes are numbered exactly like gRPC status codes (both come from
# the same canonical code space), so one table converts in both directions.
_GRPC_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_from_number(number: int) -> grpc.StatusCode:
    """Returns the gRPC status code with canonical number `number` (UNKNOWN if none)."""
    return _GRPC_CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def grpc_code_number(code: grpc.StatusCode) -> int:
    """Returns the canonical number of a gRPC status code (as `tensorflow.error.Code`)."""
    return code.value[0]


def string_tensor_proto(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """Builds a `DT_STRING` tensor of shape `[len(values)]`.

    Written by hand rather than with `tf.make_tensor_proto` because it is on
    every request's path and the by-hand proto avoids a NumPy object array.

    Args:
      values: the byte strings, for example encoded images.

    Returns:
      The tensor proto.
    """
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        string_val=list(values),
    )


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Converts a `TensorProto` to NumPy (strings become an object array of bytes).

    Raises:
      ValueError: the proto is malformed (its values do not fill its shape, or
        its dtype is not a TensorFlow dtype).
    """
    if proto.dtype == types_pb2.DT_STRING:
        # The fast path for the common case (encoded images): no TF call.
        shape = [dim.size for dim in proto.tensor_shape.dim]
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
        try:
            return values.reshape(shape)
        except ValueError as error:
            raise ValueError(
                f'string tensor has {len(values)} values, which does not fit its shape {shape}.'
            ) from error
    if proto.tensor_content:
        # The fast path for numeric outputs: one buffer copy, no TF call (which
        # costs ~70 us per tensor, a visible share of a small request).
        try:
            dtype = tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype
            shape = [dim.size for dim in proto.tensor_shape.dim]
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        except (TypeError, ValueError) as error:
            raise ValueError(f'malformed tensor proto: {error}') from error
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f'malformed tensor proto: {error}') from error


def ndarray_to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Converts a NumPy array (object arrays of bytes become `DT_STRING`) to a `TensorProto`."""
    if array.dtype == object:
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
            ),
            string_val=[bytes(value) for value in array.reshape(-1)],
        )
    # tensor_content holds the raw buffer in host (little-endian) order, the
    # encoding TF Serving itself uses for numeric outputs.
    return tensor_pb2.TensorProto(
        dtype=tf.dtypes.as_dtype(array.dtype).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
        tensor_content=np.ascontiguousarray(array).tobytes(),
    )


def dtype_name(dtype_enum: int) -> str:
    """`types_pb2.DT_STRING` -> `'string'`, for readable error messages."""
    try:
        return tf.dtypes.as_dtype(dtype_enum).name
    except TypeError:
        return f'dtype#{dtype_enum}'


def shape_text(shape: tensor_shape_pb2.TensorShapeProto) -> str:
    """A readable shape, `-1` printed as `None`: `[None, 20]`."""
    if shape.unknown_rank:
        return '<unknown rank>'
    return '[' + ', '.join('None' if dim.size < 0 else str(dim.size) for dim in shape.dim) + ']'


def model_spec(
    model_name: str,
    *,
    version: Optional[int] = None,
    version_label: Optional[str] = None,
    signature_name: str = '',
) -> model_pb2.ModelSpec:
    """Builds a `ModelSpec` naming a model, at most one of version / label, and a signature.

    Raises:
      ValueError: both a version and a version label are given (TF Serving
        accepts one or the other: they are a proto `oneof`).
    """
    if version is not None and version_label is not None:
        raise ValueError('give a model version or a version label, not both.')
    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    if version is not None:
        spec.version.value = int(version)
    elif version_label is not None:
        spec.version_label = version_label
    return spec
