"""A local, TF-Serving-compatible gRPC server: a development and test stand-in.

PRODUCTION USES THE REAL TF SERVING (`tensorflow/serving:2.16.1`, see
`serving/deploy/`). This server exists because the `tensorflow_model_server`
binary and Docker are not available on development machines and in CI; it
implements the same gRPC API from the official `tensorflow-serving-api`
protos over the same directory layout, so the client, the tests and the
Pusher's output are exercised exactly as production uses them:

* `PredictionService.Predict` and `GetModelMetadata`, `ModelService.GetModelStatus`
  (other methods answer UNIMPLEMENTED);
* serves the latest version of `<base_path>/<integer version>/`, or a requested
  version or version label; polls the base path and hot-swaps new versions
  without failing in-flight requests (`serving.model_manager`);
* TF Serving's status codes: NOT_FOUND for an unknown model or version,
  INVALID_ARGUMENT for a wrong input name, dtype or shape and for bytes that
  are not a decodable image, FAILED_PRECONDITION when no version is loadable
  (or for an unknown signature); a bad request never takes the server down;
* limits: gRPC message size, image pixels (header-checked before decoding),
  a request deadline, concurrent RPCs; binds 127.0.0.1 by default;
* optional server-side batching of concurrent requests (`serving.batching`).
"""

import contextlib
import logging
import time
from concurrent import futures
from typing import Iterator, Mapping, Optional, Tuple

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tfx_captioning.models import features
from tfx_captioning.serving import batching as batching_lib
from tfx_captioning.serving import model_manager, protocol
from tfx_captioning.serving import servable as servable_lib
from tfx_captioning.serving.options import ServerOptions


@contextlib.contextmanager
def _grpc_errors(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Turns any failure into a gRPC status, so no request can end the server."""
    try:
        yield
    except servable_lib.ServingError as error:
        context.abort(error.code, error.message)
    except Exception as error:  # noqa: BLE001 - report, never crash the handler thread.
        logging.exception('%s failed unexpectedly.', method)
        context.abort(grpc.StatusCode.INTERNAL, f'{method} failed: {error}')


def _version_choice(spec: model_pb2.ModelSpec) -> Tuple[Optional[int], Optional[str]]:
    """(version, label) requested by a ModelSpec; both None for the latest."""
    choice = spec.WhichOneof('version_choice')
    if choice == 'version':
        return spec.version.value, None
    if choice == 'version_label':
        return None, spec.version_label
    return None, None


class _Servicers(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """Implements the TF Serving RPCs over a set of model managers."""

    def __init__(
        self,
        managers: Mapping[str, model_manager.ModelManager],
        options: ServerOptions,
        batcher: Optional[batching_lib.Batcher],
    ):
        self._managers = managers
        self._options = options
        self._batcher = batcher

    def _manager(self, spec: model_pb2.ModelSpec) -> model_manager.ModelManager:
        if not spec.name:
            raise servable_lib.ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec')
        if spec.name not in self._managers:
            raise servable_lib.ServingError(
                grpc.StatusCode.NOT_FOUND,
                f'Servable not found for request: Latest({spec.name}); '
                f'served models: {sorted(self._managers)}',
            )
        return self._managers[spec.name]

    def _remaining_s(self, context: grpc.ServicerContext, started: float) -> float:
        """Time left under both the client's deadline and the server's request timeout."""
        remaining = self._options.request_timeout_s - (time.monotonic() - started)
        client_remaining = context.time_remaining()
        if client_remaining is not None:
            remaining = min(remaining, client_remaining)
        if remaining <= 0:
            raise servable_lib.ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED, 'request deadline passed before the model ran.'
            )
        return remaining

    # --- PredictionService -----------------------------------------------------------

    def Predict(  # noqa: N802 - the gRPC method name.
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        """Runs a signature (default `serving_default`) on the request's inputs."""
        started = time.monotonic()
        with _grpc_errors(context, 'Predict'):
            spec = request.model_spec
            servable = self._manager(spec).resolve(*_version_choice(spec))
            signature_name = spec.signature_name or features.SERVING_SIGNATURE
            prepared = servable.prepare_inputs(
                signature_name, request.inputs, self._options.image_limits
            )
            output_keys = servable.output_keys(signature_name, request.output_filter)
            remaining = self._remaining_s(context, started)
            if self._batcher is not None:
                outputs = self._batcher.run(
                    servable,
                    signature_name,
                    prepared,
                    output_keys,
                    remaining,
                    on_cancel=context.add_callback,
                )
            else:
                outputs = servable.run(signature_name, prepared.arrays, output_keys)
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(
                protocol.model_spec(
                    servable.name, version=servable.version, signature_name=signature_name
                )
            )
            for alias, array in outputs.items():
                response.outputs[alias].CopyFrom(protocol.ndarray_to_tensor_proto(array))
            return response

    def GetModelMetadata(  # noqa: N802 - the gRPC method name.
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Returns the signature defs of the requested (default: latest) version."""
        with _grpc_errors(context, 'GetModelMetadata'):
            if not request.metadata_field:
                raise servable_lib.ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    'GetModelMetadataRequest must specify at least one metadata_field',
                )
            unsupported = [
                field for field in request.metadata_field if field != protocol.SIGNATURE_DEF_FIELD
            ]
            if unsupported:
                raise servable_lib.ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'Metadata field {unsupported[0]} is not supported',
                )
            spec = request.model_spec
            servable = self._manager(spec).resolve(*_version_choice(spec))
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.CopyFrom(
                protocol.model_spec(servable.name, version=servable.version)
            )
            response.metadata[protocol.SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

    # --- ModelService --------------------------------------------------------------

    def GetModelStatus(  # noqa: N802 - the gRPC method name.
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Reports each known version's state (LOADING, AVAILABLE, END) and load error."""
        with _grpc_errors(context, 'GetModelStatus'):
            spec = request.model_spec
            statuses = self._manager(spec).statuses(*_version_choice(spec))
            response = get_model_status_pb2.GetModelStatusResponse()
            for status in statuses:
                entry = response.model_version_status.add(
                    version=status.version, state=status.state
                )
                entry.status.error_code = protocol.grpc_code_number(status.error_code)
                entry.status.error_message = status.error_message
            return response


class CaptionServer:
    """The stand-in server: model managers + gRPC server + optional batcher.

    Use as a context manager, or call `start()` / `stop()`:

        with CaptionServer.for_model(MODEL_NAME, base_path, ServerOptions(port=0)) as server:
            client = CaptionClient(server.target)
    """

    def __init__(
        self,
        managers: Mapping[str, model_manager.ModelManager],
        options: Optional[ServerOptions] = None,
    ):
        """Creates a server for already constructed model managers (see `for_model`)."""
        if not managers:
            raise ValueError('the server needs at least one model.')
        self.options = options or ServerOptions()
        self.options.validate()
        self.managers = dict(managers)
        self._batcher: Optional[batching_lib.Batcher] = None
        self._server: Optional[grpc.Server] = None
        self.port: Optional[int] = None

    @classmethod
    def for_model(
        cls,
        model_name: str,
        base_path: str,
        options: Optional[ServerOptions] = None,
        *,
        version_policy=None,
        version_labels: Optional[Mapping[str, int]] = None,
    ) -> 'CaptionServer':
        """A server for one model directory (like `--model_name --model_base_path`)."""
        options = options or ServerOptions()
        manager = model_manager.ModelManager(
            model_name,
            base_path,
            version_policy=version_policy,
            version_labels=version_labels,
            limits=options.image_limits,
            warmup=options.warmup,
        )
        return cls({model_name: manager}, options)

    @classmethod
    def for_model_config(
        cls,
        config: model_server_config_pb2.ModelServerConfig,
        options: Optional[ServerOptions] = None,
        *,
        base_path_overrides: Optional[Mapping[str, str]] = None,
    ) -> 'CaptionServer':
        """A server for every model of a `models.config` (like `--model_config_file`).

        Args:
          config: the parsed model server config.
          options: server options.
          base_path_overrides: model name -> local base path, to serve a
            production config (whose base paths are container paths) locally.
        """
        options = options or ServerOptions()
        overrides = dict(base_path_overrides or {})
        if config.WhichOneof('config') != 'model_config_list':
            raise ValueError('the model server config has no model_config_list.')
        managers = {}
        for model_config in config.model_config_list.config:
            managers[model_config.name] = model_manager.ModelManager(
                model_config.name,
                overrides.pop(model_config.name, model_config.base_path),
                version_policy=(
                    model_config.model_version_policy
                    if model_config.HasField('model_version_policy')
                    else None
                ),
                version_labels=dict(model_config.version_labels),
                limits=options.image_limits,
                warmup=options.warmup,
            )
        if overrides:
            raise ValueError(
                f'base path overrides for models not in the config: {sorted(overrides)}'
            )
        return cls(managers, options)

    @property
    def target(self) -> str:
        """`host:port` for clients (valid after `start`)."""
        return f'{self.options.host}:{self.port}'

    def start(self) -> int:
        """Loads the initial versions, starts polling and the gRPC server.

        Like TF Serving, the port opens only after the first load attempt, so a
        client that connects finds the model ready. A model with no loadable
        version yet still starts: requests get FAILED_PRECONDITION until a
        version appears.

        Returns:
          The bound port.

        Raises:
          RuntimeError: the port cannot be bound.
        """
        for manager in self.managers.values():
            manager.poll_once()
            manager.start_polling(self.options.poll_interval_s)
        if self.options.batching is not None:
            self._batcher = batching_lib.Batcher(self.options.batching)
        limit = self.options.max_message_bytes
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.options.max_workers, thread_name_prefix='caption-grpc'
            ),
            options=[
                ('grpc.max_receive_message_length', limit),
                ('grpc.max_send_message_length', limit),
                # Without this, gRPC on Linux lets a second server share the
                # port silently; a clash must be an error.
                ('grpc.so_reuseport', 0),
            ],
            maximum_concurrent_rpcs=self.options.max_concurrent_rpcs,
        )
        servicers = _Servicers(self.managers, self.options, self._batcher)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicers, self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicers, self._server)
        address = f'{self.options.host}:{self.options.port}'
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f'cannot bind {address}: {error}') from error
        if not self.port:
            # Older gRPC releases return 0 instead of raising.
            self.stop()
            raise RuntimeError(f'cannot bind {address}.')
        self._server.start()
        logging.info(
            'TF-Serving-compatible stand-in listening on %s (models %s).',
            self.target,
            {name: manager.served_versions for name, manager in self.managers.items()},
        )
        return self.port

    def stop(self, grace_s: float = 1.0) -> None:
        """Stops accepting requests, lets running ones finish for `grace_s`, stops threads."""
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 5)
            self._server = None
        if self._batcher is not None:
            self._batcher.stop()
            self._batcher = None
        for manager in self.managers.values():
            manager.stop()

    def wait(self) -> None:
        """Blocks until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> 'CaptionServer':
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
