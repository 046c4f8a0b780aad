"""One loaded SavedModel version of the local stand-in server, and request validation.

Generic over any SavedModel with signatures: inputs are checked against the
`SignatureDef`s read from `saved_model.pb` (names, dtypes, shapes), exactly the
contract TF Serving enforces. The one model-specific rule is for the encoded
image input (`features.IMAGE_BYTES_INPUT`): every image's header is read
(format and dimensions, no pixel decoding) before the model runs, so a
decompression bomb or a non-image is refused with `INVALID_ARGUMENT` without
spending memory on it.

This is part of a development stand-in; production serves the same directory
with the real TF Serving (see `serving/deploy/`).
"""

import dataclasses
import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tfx_captioning.models import features, image_files, tf_errors
from tfx_captioning.serving import protocol
from tfx_captioning.serving.options import ImageLimits

_SAVED_MODEL_FILE = 'saved_model.pb'
_INIT_OP_SIGNATURE = '__saved_model_init_op'
"""A SavedModel-internal entry of the signature map that TF Serving never exposes."""

MAX_WARMUP_RECORDS = 1000
"""TF Serving replays at most this many warmup records; so does the stand-in."""


class ServingError(Exception):
    """A request failure with the gRPC status code TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f'{code.name}: {message}')
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class PreparedInputs:
    """Request inputs that passed validation, ready to run (or to merge into a batch).

    Attributes:
      arrays: input alias -> NumPy array (strings as object arrays of bytes).
      rows: the shared size of dimension 0 of every input (the batch size),
        or None when the inputs have no common batch dimension.
    """

    arrays: Mapping[str, np.ndarray]
    rows: Optional[int]


def check_image(data: bytes, limits: ImageLimits) -> None:
    """Refuses an encoded image the serving graph cannot or should not decode.

    The shared header check (`models.image_files.check_image`): the same
    formats and the same kind of limit as the graph, read in plain Python in
    microseconds, so bad images are answered before they reach the model or
    a merged batch.

    Raises:
      ServingError: INVALID_ARGUMENT, with the one-line reason every runtime
        gives: empty, an unsupported format, a header cut short, or more
        pixels than `limits.max_image_pixels`.
    """
    try:
        image_files.check_image(data, limits.max_image_pixels)
    except image_files.ImageError as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error


def read_signature_defs(path: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """Reads the serving signatures of the SavedModel at `path` from `saved_model.pb`.

    Raises:
      ValueError: there is no `saved_model.pb`, or it has no serving signature.
    """
    pb_path = os.path.join(path, _SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(pb_path):
        raise ValueError(f'{path} has no {_SAVED_MODEL_FILE}.')
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(tf.io.gfile.GFile(pb_path, 'rb').read())
    if not saved_model.meta_graphs:
        raise ValueError(f'{pb_path} has no meta graph.')
    signature_defs = {
        name: signature_def
        for name, signature_def in saved_model.meta_graphs[0].signature_def.items()
        if name != _INIT_OP_SIGNATURE
    }
    if not signature_defs:
        raise ValueError(f'{pb_path} has no serving signature.')
    return signature_defs


class Servable:
    """One loaded version: its signature defs and callable signature functions.

    Immutable after construction and safe to call from many threads, so the
    manager can swap versions by replacing a reference while requests that
    already hold this object finish on it.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
        loaded: tf.Module,
    ):
        """Wraps an already loaded SavedModel; use `load_servable` to build one."""
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = dict(signature_defs)
        # Holding the loaded object keeps its variables alive as long as the servable.
        self._loaded = loaded
        missing = sorted(set(self.signature_defs) - set(loaded.signatures.keys()))
        if missing:
            raise ValueError(
                f'{path}: signatures {missing} are in saved_model.pb but not loadable.'
            )
        self._functions = {name: loaded.signatures[name] for name in self.signature_defs}

    def signature_def(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        """Returns a signature by name ('' means `serving_default`).

        Raises:
          ServingError: FAILED_PRECONDITION if the model has no such signature
            (TF Serving's code for an unknown signature key).
        """
        name = signature_name or features.SERVING_SIGNATURE
        if name not in self.signature_defs:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{name}" not found; the model has '
                f'{sorted(self.signature_defs)}.',
            )
        return self.signature_defs[name]

    def prepare_inputs(
        self,
        signature_name: str,
        inputs: Mapping[str, tensor_pb2.TensorProto],
        limits: ImageLimits,
    ) -> PreparedInputs:
        """Validates request inputs against the signature and converts them to NumPy.

        Args:
          signature_name: the requested signature ('' for the default).
          inputs: the request's input alias -> tensor map.
          limits: image limits, applied to `features.IMAGE_BYTES_INPUT`.

        Returns:
          The converted inputs and their batch size.

        Raises:
          ServingError: INVALID_ARGUMENT for missing or extra inputs, a wrong
            dtype or shape, a malformed tensor, an empty batch, or a bad
            image; FAILED_PRECONDITION for an
            unknown signature.
        """
        signature_def = self.signature_def(signature_name)
        expected = set(signature_def.inputs)
        sent = set(inputs)
        if sent != expected:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'input size does not match signature: {len(sent)}!={len(expected)} '
                f'len({sorted(sent)}) != len({sorted(expected)}). '
                f'Sent extra: {sorted(sent - expected)}. '
                f'Missing but required: {sorted(expected - sent)}.',
            )
        arrays = {}
        for alias, proto in inputs.items():
            arrays[alias] = self._convert_input(alias, proto, signature_def.inputs[alias])
        # Batch size = the shared size of dimension 0. Inputs without one (a
        # scalar, or sizes that differ) are legal for TF Serving; such a
        # request simply runs alone, never merged into a batch.
        sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
        batch_size = sizes.pop() if len(sizes) == 1 else None
        if batch_size == 0:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, 'empty request: the inputs hold no examples.'
            )
        image_input = arrays.get(features.IMAGE_BYTES_INPUT)
        if image_input is not None and image_input.dtype == object:
            for data in image_input.reshape(-1):
                check_image(data, limits)
        return PreparedInputs(arrays=arrays, rows=batch_size)

    @staticmethod
    def _convert_input(
        alias: str, proto: tensor_pb2.TensorProto, tensor_info: meta_graph_pb2.TensorInfo
    ) -> np.ndarray:
        """Checks one input's dtype and shape against its `TensorInfo`, then converts it."""
        if proto.dtype != tensor_info.dtype:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'input {alias!r} must be {protocol.dtype_name(tensor_info.dtype)}, '
                f'got {protocol.dtype_name(proto.dtype)}.',
            )
        expected_shape = tensor_info.tensor_shape
        sent_dims = [dim.size for dim in proto.tensor_shape.dim]
        if not expected_shape.unknown_rank:
            expected_dims = [dim.size for dim in expected_shape.dim]
            compatible = len(sent_dims) == len(expected_dims) and all(
                want < 0 or want == got for want, got in zip(expected_dims, sent_dims)
            )
            if not compatible:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'input {alias!r} must have shape {protocol.shape_text(expected_shape)}, '
                    f'got {protocol.shape_text(proto.tensor_shape)}.',
                )
        try:
            return protocol.tensor_proto_to_ndarray(proto)
        except ValueError as error:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f'input {alias!r}: {error}'
            ) from error

    def output_keys(self, signature_name: str, output_filter: Sequence[str]) -> Tuple[str, ...]:
        """The outputs to return: all of the signature's, or the requested subset.

        Raises:
          ServingError: INVALID_ARGUMENT for an output the signature lacks.
        """
        outputs = self.signature_def(signature_name).outputs
        if not output_filter:
            return tuple(sorted(outputs))
        unknown = sorted(set(output_filter) - set(outputs))
        if unknown:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'output tensor alias not found in signature: {unknown}; '
                f'outputs are {sorted(outputs)}.',
            )
        return tuple(sorted(set(output_filter)))

    def run(
        self,
        signature_name: str,
        arrays: Mapping[str, np.ndarray],
        output_keys: Sequence[str],
    ) -> Dict[str, np.ndarray]:
        """Runs a signature on validated inputs.

        Returns:
          output alias -> NumPy array, for `output_keys`.

        Raises:
          ServingError: the TF runtime failed; its canonical code is kept
            (an undecodable image is INVALID_ARGUMENT).
        """
        function = self._functions[signature_name or features.SERVING_SIGNATURE]
        tensors = {
            alias: tf.constant(array, dtype=tf.string if array.dtype == object else None)
            for alias, array in arrays.items()
        }
        try:
            outputs = function(**tensors)
        except tf.errors.OpError as error:
            raise ServingError(
                protocol.grpc_code_from_number(error.error_code),
                tf_errors.clean_tf_error_message(error.message),
            ) from error
        return {key: outputs[key].numpy() for key in output_keys}


def _replay_warmup(servable: Servable, limits: ImageLimits) -> int:
    """Replays `assets.extra/tf_serving_warmup_requests` like TF Serving does at load.

    Warming up traces and allocates before the version takes traffic, so the
    first real request after a hot swap is not the slow one.

    Returns:
      the number of requests replayed.

    Raises:
      ServingError or ValueError: a warmup request fails (TF Serving then
        refuses to load the version, and so does the stand-in).
    """
    warmup_path = os.path.join(
        servable.path, features.WARMUP_REQUESTS_DIR, features.WARMUP_REQUESTS_FILE
    )
    if not tf.io.gfile.exists(warmup_path):
        return 0
    replayed = 0
    for record in tf.data.TFRecordDataset(warmup_path).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof('log_type') != 'predict_log':
            # Only Predict is served by the stand-in; TF Serving would replay the others.
            logging.warning('%s: skipping a non-Predict warmup record.', warmup_path)
            continue
        request = log.predict_log.request
        signature_name = request.model_spec.signature_name
        prepared = servable.prepare_inputs(signature_name, request.inputs, limits)
        servable.run(
            signature_name,
            prepared.arrays,
            servable.output_keys(signature_name, request.output_filter),
        )
        replayed += 1
    return replayed


def load_servable(
    name: str,
    version: int,
    path: str,
    *,
    limits: Optional[ImageLimits] = None,
    warmup: bool = True,
) -> Servable:
    """Loads one SavedModel version and replays its warmup requests.

    Args:
      name: the model name it is served under.
      version: its version number (the directory name).
      path: the version directory.
      limits: image limits for the warmup requests (defaults otherwise).
      warmup: replay `assets.extra/tf_serving_warmup_requests` if present.

    Returns:
      The loaded servable.

    Raises:
      ValueError, ServingError or a TensorFlow error: the version cannot be loaded.
    """
    signature_defs = read_signature_defs(path)
    servable = Servable(name, version, path, signature_defs, tf.saved_model.load(path))
    if warmup:
        replayed = _replay_warmup(servable, limits or ImageLimits())
        logging.info('%s version %d: replayed %d warmup requests.', name, version, replayed)
    return servable
