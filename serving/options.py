"""Settings of the serving command lines, client and stand-in server, without TensorFlow.

`caption-server --help` and `caption-client --help` show these defaults, so
they live apart from the modules that import TensorFlow and gRPC: a usage
error or a help screen answers at once.
"""

import dataclasses
from typing import Optional

from google.protobuf import message

from tfx_captioning.models import features

GRPC_PORT = 8500
"""TF Serving's default gRPC port (`--port`)."""

REST_PORT = 8501
"""TF Serving's default REST port (`--rest_api_port`)."""

LOOPBACK_HOST = '127.0.0.1'
"""The stand-in server binds here by default: it is a development tool, not a public service."""

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Default gRPC message limit for both ends: a few dozen photos per request, not unbounded."""

DEFAULT_TARGET = f'localhost:{GRPC_PORT}'
"""Where the client looks for TF Serving (or the stand-in) by default."""


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """Limits on each encoded image of the image input, checked on its header only.

    Attributes:
      max_image_pixels: largest width x height accepted; by default the
        limit every runtime shares (`features.MAX_IMAGE_PIXELS`), which the
        serving graph enforces too, so the server refuses early exactly what
        the model would refuse.
        A lower value protects a smaller replica.
    """

    max_image_pixels: int = features.MAX_IMAGE_PIXELS

    def validate(self) -> None:
        """Raises ValueError if a limit is not positive."""
        if self.max_image_pixels < 1:
            raise ValueError(f'max_image_pixels must be >= 1, got {self.max_image_pixels}.')


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """How concurrent requests are merged.

    Attributes:
      max_batch_size: most rows (images) in one model call.
      batch_timeout_s: longest a batch waits for more tasks after its first.
      max_enqueued_batches: queue bound, in batches of `max_batch_size` rows;
        beyond it a request is refused with UNAVAILABLE, as TF Serving does,
        so overload sheds load instead of growing latency without bound.
      num_batch_threads: batches run in parallel.
    """

    max_batch_size: int = 8
    batch_timeout_s: float = 0.002
    max_enqueued_batches: int = 100
    num_batch_threads: int = 1

    def validate(self) -> None:
        """Raises ValueError for an option out of range."""
        if self.max_batch_size < 1:
            raise ValueError(f'max_batch_size must be >= 1, got {self.max_batch_size}.')
        if self.batch_timeout_s < 0:
            raise ValueError(f'batch_timeout_s must be >= 0, got {self.batch_timeout_s}.')
        if self.max_enqueued_batches < 1:
            raise ValueError(f'max_enqueued_batches must be >= 1, got {self.max_enqueued_batches}.')
        if self.num_batch_threads < 1:
            raise ValueError(f'num_batch_threads must be >= 1, got {self.num_batch_threads}.')

    @classmethod
    def from_batching_parameters(cls, parameters: message.Message) -> 'BatchingOptions':
        """Reads a `tensorflow.serving.BatchingParameters` proto; unset fields keep our defaults."""
        defaults = cls()

        def field(name: str, default):
            return getattr(parameters, name).value if parameters.HasField(name) else default

        options = cls(
            max_batch_size=int(field('max_batch_size', defaults.max_batch_size)),
            batch_timeout_s=field('batch_timeout_micros', defaults.batch_timeout_s * 1e6) / 1e6,
            max_enqueued_batches=int(field('max_enqueued_batches', defaults.max_enqueued_batches)),
            num_batch_threads=int(field('num_batch_threads', defaults.num_batch_threads)),
        )
        options.validate()
        return options


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Network, limit and batching settings of the stand-in server.

    Attributes:
      host: interface to bind; loopback by default because this is a
        development server with no authentication.
      port: gRPC port; 0 picks a free one (read it from `CaptionServer.port`).
      max_message_bytes: largest request or response; bigger requests get
        RESOURCE_EXHAUSTED from gRPC before any of our code runs.
      request_timeout_s: the most time a request may take on the server; a
        shorter client deadline wins. A model call already running is not
        interrupted (TensorFlow cannot preempt it); the deadline is enforced
        before it starts and while it waits for a batch.
      poll_interval_s: how often the base path is rescanned for versions
        (TF Serving's `--file_system_poll_wait_seconds`).
      max_workers: gRPC handler threads (with batching, each waiting request
        holds one, so keep it at least twice `max_batch_size`).
      max_concurrent_rpcs: beyond this, gRPC answers RESOURCE_EXHAUSTED.
      image_limits: checks on each encoded image.
      batching: merge concurrent requests; None serves each request alone.
      warmup: replay each version's warmup requests before serving it.
    """

    host: str = LOOPBACK_HOST
    port: int = GRPC_PORT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    request_timeout_s: float = 30.0
    poll_interval_s: float = 1.0
    max_workers: int = 32
    max_concurrent_rpcs: int = 256
    image_limits: ImageLimits = dataclasses.field(default_factory=ImageLimits)
    batching: Optional[BatchingOptions] = None
    warmup: bool = True

    def validate(self) -> None:
        """Raises ValueError for an option out of range."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f'port must be in [0, 65535], got {self.port}.')
        for name in ('max_message_bytes', 'max_workers', 'max_concurrent_rpcs'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
        for name in ('request_timeout_s', 'poll_interval_s'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}.')
        self.image_limits.validate()
        if self.batching is not None:
            self.batching.validate()
