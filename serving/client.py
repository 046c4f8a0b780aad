"""Client library for the captioning model behind TF Serving's gRPC API.

Works against the real TF Serving (production) and the local stand-in
(`serving.server`) alike: it only uses the official `tensorflow-serving-api`
stubs.

    with CaptionClient('localhost:8500') as client:
        result = client.caption([open('photo.jpg', 'rb').read()])
        print(result.version, result.captions[0].text)
        beam = client.caption([...], signature=features.BEAM_SIGNATURE)  # + log_prob

Every call has a deadline. Calls that fail with UNAVAILABLE (server not up
yet, restarting, connection dropped, batch queue full) are retried with
exponential backoff and jitter; Predict, GetModelMetadata and GetModelStatus
are all read-only, so a retry can never apply anything twice. Other failures
are not retried: they raise `CaptionClientError` carrying the gRPC code and
the server's message.
"""

import dataclasses
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfx_captioning.models import features
from tfx_captioning.serving import protocol
from tfx_captioning.serving.options import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET

_Response = TypeVar('_Response')


class CaptionClientError(Exception):
    """A failed call: which RPC, the gRPC status code and the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, message: str, attempts: int = 1):
        retried = f' (after {attempts} attempts)' if attempts > 1 else ''
        super().__init__(f'{method} failed{retried}: {code.name}: {message}')
        self.method = method
        self.code = code
        self.message = message
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE.

    Attributes:
      max_attempts: attempts in all, the first included (1 disables retries).
      initial_backoff_s: wait before the first retry.
      multiplier: each later wait is this many times longer...
      max_backoff_s: ...up to this.
      jitter: each wait is scaled by a random factor in [1 - jitter, 1 + jitter],
        so that clients that failed together do not retry together.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    multiplier: float = 2.0
    max_backoff_s: float = 3.0
    jitter: float = 0.2

    def validate(self) -> None:
        """Raises ValueError for a setting out of range."""
        if self.max_attempts < 1:
            raise ValueError(f'max_attempts must be >= 1, got {self.max_attempts}.')
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError('backoff times must be >= 0.')
        if self.multiplier < 1:
            raise ValueError(f'multiplier must be >= 1, got {self.multiplier}.')
        if not 0 <= self.jitter < 1:
            raise ValueError(f'jitter must be in [0, 1), got {self.jitter}.')

    def backoff_s(self, retry_number: int) -> float:
        """The wait before retry `retry_number` (1-based), jitter included."""
        base = min(
            self.initial_backoff_s * self.multiplier ** (retry_number - 1), self.max_backoff_s
        )
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclasses.dataclass(frozen=True)
class Caption:
    """One image's caption.

    Attributes:
      text: the words, space separated, no special tokens.
      token_ids: the generated ids (`<end>` included), padding removed.
      length: the number of words in `text`.
      log_prob: the sequence's summed log-probability, from signatures that
        return it (beam search); None otherwise.
    """

    text: str
    token_ids: Tuple[int, ...]
    length: int
    log_prob: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    """Captions of one request and the model version that produced them."""

    model_name: str
    version: int
    captions: List[Caption]


@dataclasses.dataclass(frozen=True)
class TensorSummary:
    """A signature input or output: dtype name and shape (None for unknown dims)."""

    dtype: str
    shape: Optional[Tuple[Optional[int], ...]]


@dataclasses.dataclass(frozen=True)
class SignatureSummary:
    """A signature's inputs and outputs by alias."""

    inputs: Dict[str, TensorSummary]
    outputs: Dict[str, TensorSummary]


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What GetModelMetadata says about one version."""

    model_name: str
    version: int
    signatures: Dict[str, SignatureSummary]


@dataclasses.dataclass(frozen=True)
class VersionState:
    """One version's entry of GetModelStatus.

    Attributes:
      version: the version number.
      state: 'AVAILABLE', 'LOADING', 'END', ...
      error_code: 'OK', or the load error's code name.
      error_message: the load error, '' when OK.
    """

    version: int
    state: str
    error_code: str
    error_message: str


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _summarise(tensor_info: meta_graph_pb2.TensorInfo) -> TensorSummary:
    shape = tensor_info.tensor_shape
    dims = (
        None
        if shape.unknown_rank
        else tuple(None if dim.size < 0 else dim.size for dim in shape.dim)
    )
    return TensorSummary(dtype=protocol.dtype_name(tensor_info.dtype), shape=dims)


class CaptionClient:
    """Calls Predict / GetModelMetadata / GetModelStatus for one model over one channel.

    Thread-safe: one client can serve many threads (gRPC channels multiplex).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        model_name: str = features.MODEL_NAME,
        *,
        timeout_s: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """Opens a channel (lazily: nothing connects until the first call).

        Args:
          target: `host:port` of TF Serving or the stand-in.
          model_name: the served model name.
          timeout_s: deadline of each attempt of each call.
          retry: backoff for UNAVAILABLE (default `RetryPolicy()`).
          max_message_bytes: largest request or response.
          sleep: the backoff wait; tests replace it.
        """
        if timeout_s <= 0:
            raise ValueError(f'timeout_s must be > 0, got {timeout_s}.')
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.retry.validate()
        self._sleep = sleep
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ('grpc.max_send_message_length', max_message_bytes),
                ('grpc.max_receive_message_length', max_message_bytes),
                # A channel that failed to connect fails calls fast until its own
                # reconnect backoff (1 s growing to 120 s by default) expires, so
                # our retries would not reach a server that came back. Tie the
                # channel's reconnect schedule to the retry policy instead.
                ('grpc.initial_reconnect_backoff_ms', _milliseconds(self.retry.initial_backoff_s)),
                ('grpc.min_reconnect_backoff_ms', _milliseconds(self.retry.initial_backoff_s)),
                ('grpc.max_reconnect_backoff_ms', _milliseconds(self.retry.max_backoff_s)),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> 'CaptionClient':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- Calls -----------------------------------------------------------------------

    def _call(self, method: str, rpc: Callable[..., _Response], request) -> _Response:
        """Calls `rpc` with a deadline, retrying UNAVAILABLE with backoff.

        Raises:
          CaptionClientError: the call failed with another code, or still
            failed with UNAVAILABLE after the last attempt.
        """
        attempt = 1
        while True:
            try:
                return rpc(request, timeout=self.timeout_s)
            except grpc.RpcError as error:
                code = error.code()
                if code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retry.max_attempts:
                    raise CaptionClientError(method, code, error.details() or '', attempt) from None
            self._sleep(self.retry.backoff_s(attempt))
            attempt += 1

    def predict(
        self,
        inputs: Dict[str, tensor_pb2.TensorProto],
        *,
        signature_name: str = features.SERVING_SIGNATURE,
        version: Optional[int] = None,
        version_label: Optional[str] = None,
        output_filter: Sequence[str] = (),
    ) -> predict_pb2.PredictResponse:
        """Raw Predict on any signature.

        Args:
          inputs: input alias -> tensor proto.
          signature_name: the signature to run.
          version: a specific version (default: the latest).
          version_label: a version label from the server config (instead of `version`).
          output_filter: return only these outputs (default: all).

        Returns:
          The PredictResponse.

        Raises:
          CaptionClientError: the server refused or failed the call.
        """
        request = predict_pb2.PredictRequest(
            model_spec=protocol.model_spec(
                self.model_name,
                version=version,
                version_label=version_label,
                signature_name=signature_name,
            ),
            output_filter=list(output_filter),
        )
        for alias, proto in inputs.items():
            request.inputs[alias].CopyFrom(proto)
        return self._call('Predict', self._predictions.Predict, request)

    def caption(
        self,
        images: Sequence[bytes],
        *,
        version: Optional[int] = None,
        version_label: Optional[str] = None,
        signature: str = features.SERVING_SIGNATURE,
    ) -> CaptionResult:
        """Captions encoded images (JPEG, PNG, GIF, BMP) in one request.

        Args:
          images: the encoded image files' bytes, as read from disk.
          version: a specific version (default: the latest).
          version_label: a version label (instead of `version`).
          signature: a signature taking `features.IMAGE_BYTES_INPUT`: the
            greedy `SERVING_SIGNATURE` (default) or the beam search's
            `BEAM_SIGNATURE`, which also returns each caption's log-probability.

        Returns:
          One caption per image, in order, and the version that answered.

        Raises:
          ValueError: no images.
          CaptionClientError: the server refused or failed the call.
        """
        if not images:
            raise ValueError('caption() needs at least one image.')
        response = self.predict(
            {features.IMAGE_BYTES_INPUT: protocol.string_tensor_proto(images)},
            signature_name=signature,
            version=version,
            version_label=version_label,
        )
        try:
            texts = protocol.tensor_proto_to_ndarray(response.outputs[features.CAPTION_OUTPUT])
            token_ids = protocol.tensor_proto_to_ndarray(
                response.outputs[features.TOKEN_IDS_OUTPUT]
            )
            lengths = protocol.tensor_proto_to_ndarray(response.outputs[features.LENGTH_OUTPUT])
            log_probs = (
                protocol.tensor_proto_to_ndarray(response.outputs[features.LOG_PROB_OUTPUT])
                if features.LOG_PROB_OUTPUT in response.outputs
                else [None] * len(texts)
            )
        except (KeyError, ValueError) as error:
            raise CaptionClientError(
                'Predict',
                grpc.StatusCode.INTERNAL,
                f'the response is not a caption response ({error!r}); '
                f'outputs were {sorted(response.outputs)}',
            ) from None
        captions = []
        for text, ids, length, log_prob in zip(texts, np.asarray(token_ids), lengths, log_probs):
            kept = [int(token) for token in ids]
            while kept and kept[-1] == features.PAD_ID:
                kept.pop()
            captions.append(
                Caption(
                    text=bytes(text).decode('utf-8'),
                    token_ids=tuple(kept),
                    length=int(length),
                    log_prob=None if log_prob is None else float(log_prob),
                )
            )
        return CaptionResult(
            model_name=response.model_spec.name,
            version=response.model_spec.version.value,
            captions=captions,
        )

    def metadata(
        self, *, version: Optional[int] = None, version_label: Optional[str] = None
    ) -> ModelMetadata:
        """The served version's signatures (inputs and outputs, dtypes, shapes).

        Raises:
          CaptionClientError: the server refused or failed the call.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=protocol.model_spec(
                self.model_name, version=version, version_label=version_label
            ),
            metadata_field=[protocol.SIGNATURE_DEF_FIELD],
        )
        response = self._call('GetModelMetadata', self._predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[protocol.SIGNATURE_DEF_FIELD].Unpack(signature_map)
        signatures = {
            name: SignatureSummary(
                inputs={alias: _summarise(info) for alias, info in signature_def.inputs.items()},
                outputs={alias: _summarise(info) for alias, info in signature_def.outputs.items()},
            )
            for name, signature_def in signature_map.signature_def.items()
        }
        return ModelMetadata(
            model_name=response.model_spec.name,
            version=response.model_spec.version.value,
            signatures=signatures,
        )

    def status(
        self, *, version: Optional[int] = None, version_label: Optional[str] = None
    ) -> List[VersionState]:
        """Each known version's state, as GetModelStatus reports it.

        Raises:
          CaptionClientError: the server refused or failed the call.
        """
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=protocol.model_spec(
                self.model_name, version=version, version_label=version_label
            )
        )
        response = self._call('GetModelStatus', self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            VersionState(
                version=entry.version,
                state=states.Name(entry.state),
                error_code=protocol.grpc_code_from_number(entry.status.error_code).name,
                error_message=entry.status.error_message,
            )
            for entry in response.model_version_status
        ]
