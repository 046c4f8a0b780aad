"""Versions of one model under a TF Serving base path: discovery, policy, hot swap.

The layout is TF Serving's: `<base_path>/<integer version>/saved_model.pb`;
any other entry (for example the Pusher's temporary directory before its
atomic rename) is ignored. A poller thread rescans the base path, loads newly
wanted versions *beside* the current ones, replays their warmup requests, and
only then replaces the immutable snapshot that requests read. A request that
already took a servable from the old snapshot finishes on it, so a hot swap
never fails an in-flight request.

This is part of a development stand-in; production serves the same directory
with the real TF Serving (see `serving/deploy/`).
"""

import dataclasses
import logging
import os
import threading
from typing import Dict, List, Mapping, Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from tfx_captioning.serving import servable as servable_lib
from tfx_captioning.serving import tf_serving_config

State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """What `GetModelStatus` reports for one version.

    Attributes:
      version: the version number.
      state: a `ModelVersionStatus.State` value (LOADING, AVAILABLE, END, ...).
      error_code: OK, or why the version failed to load.
      error_message: the load error, '' when OK.
    """

    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ''


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """The servables requests may use; replaced whole, never mutated."""

    servables: Mapping[int, servable_lib.Servable]

    @property
    def latest(self) -> Optional[servable_lib.Servable]:
        return self.servables[max(self.servables)] if self.servables else None


def list_versions(base_path: str) -> List[int]:
    """Integer-named version directories under `base_path`, ascending ([] if it is missing)."""
    if not tf.io.gfile.isdir(base_path):
        return []
    versions = []
    for entry in tf.io.gfile.listdir(base_path):
        name = entry.rstrip('/')
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions)


def wanted_versions(
    available: List[int], policy: Optional[tf_serving_config.ServableVersionPolicy]
) -> List[int]:
    """Applies a TF Serving version policy to the versions on disk.

    Args:
      available: versions present, ascending.
      policy: `latest {num_versions}`, `all {}` or `specific {versions}`;
        None means TF Serving's default, the latest one.

    Returns:
      The versions to keep loaded, ascending.
    """
    choice = policy.WhichOneof('policy_choice') if policy is not None else None
    if choice == 'all':
        return list(available)
    if choice == 'specific':
        return sorted(set(available) & set(policy.specific.versions))
    num_versions = max(policy.latest.num_versions, 1) if choice == 'latest' else 1
    return available[-num_versions:]


class ModelManager:
    """Loads, serves and hot-swaps the versions of one model directory."""

    def __init__(
        self,
        model_name: str,
        base_path: str,
        *,
        version_policy: Optional[tf_serving_config.ServableVersionPolicy] = None,
        version_labels: Optional[Mapping[str, int]] = None,
        limits: Optional[servable_lib.ImageLimits] = None,
        warmup: bool = True,
        max_load_attempts: int = 5,
    ):
        """Creates the manager; nothing is loaded until `poll_once` or `start_polling`.

        Args:
          model_name: the name clients ask for.
          base_path: the directory holding integer version directories.
          version_policy: which versions to keep loaded (default: the latest).
          version_labels: label -> version, as in a `ModelConfig`.
          limits: image limits for warmup requests.
          warmup: replay each version's warmup requests before serving it.
          max_load_attempts: polls that may retry a failing version before it
            is given up (END with its error), like TF Serving's load retries.
        """
        if max_load_attempts < 1:
            raise ValueError(f'max_load_attempts must be >= 1, got {max_load_attempts}.')
        self.model_name = model_name
        self.base_path = base_path
        self._policy = version_policy
        self._labels = dict(version_labels or {})
        self._limits = limits
        self._warmup = warmup
        self._max_load_attempts = max_load_attempts
        self._snapshot = _Snapshot(servables={})
        self._statuses: Dict[int, VersionStatus] = {}
        self._load_attempts: Dict[int, int] = {}
        self._last_error = ''
        # One poll at a time; requests never take this lock, they read `_snapshot`.
        self._poll_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- Loading -----------------------------------------------------------------

    def _set_status(self, status: VersionStatus) -> None:
        with self._status_lock:
            self._statuses[status.version] = status

    def poll_once(self) -> bool:
        """Rescans the base path, loads wanted versions, unloads unwanted ones.

        Returns:
          True if the set of served versions changed.
        """
        with self._poll_lock:
            current = self._snapshot.servables
            wanted = wanted_versions(list_versions(self.base_path), self._policy)
            servables = {version: current[version] for version in wanted if version in current}
            attempted = False
            for version in wanted:
                if version not in servables:
                    attempted |= self._load_attempts.get(version, 0) < self._max_load_attempts
                    loaded = self._try_load(version)
                    if loaded is not None:
                        servables[version] = loaded
            if not servables and current:
                # Availability first: with nothing new loadable, keep serving what works.
                if attempted:  # Log once per failed attempt, not on every poll.
                    logging.warning(
                        '%s: no wanted version loaded (%s); keeping versions %s.',
                        self.model_name,
                        self._last_error,
                        sorted(current),
                    )
                return False
            for version in set(current) - set(servables):
                self._set_status(VersionStatus(version, State.END))
            changed = set(servables) != set(current)
            if changed:
                # The swap: one reference assignment, atomic for readers.
                self._snapshot = _Snapshot(servables=servables)
                logging.info('%s: serving versions %s.', self.model_name, sorted(servables))
            return changed

    def _try_load(self, version: int) -> Optional[servable_lib.Servable]:
        """Loads one version, recording LOADING / AVAILABLE / the error; None on failure."""
        attempts = self._load_attempts.get(version, 0)
        if attempts >= self._max_load_attempts:
            return None
        self._load_attempts[version] = attempts + 1
        self._set_status(VersionStatus(version, State.LOADING))
        path = os.path.join(self.base_path, str(version))
        try:
            loaded = servable_lib.load_servable(
                self.model_name, version, path, limits=self._limits, warmup=self._warmup
            )
        except Exception as error:  # noqa: BLE001 - any load failure must leave the server up.
            message = f'version {version} at {path} failed to load: {error}'
            self._last_error = message
            logging.error('%s: %s', self.model_name, message)
            given_up = self._load_attempts[version] >= self._max_load_attempts
            self._set_status(
                VersionStatus(
                    version,
                    State.END if given_up else State.START,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    message,
                )
            )
            return None
        self._load_attempts.pop(version, None)
        self._set_status(VersionStatus(version, State.AVAILABLE))
        return loaded

    def start_polling(self, interval_s: float) -> None:
        """Polls the base path every `interval_s` seconds in a daemon thread."""
        if interval_s <= 0:
            raise ValueError(f'poll interval must be > 0, got {interval_s}.')
        if self._thread is not None:
            return

        def poll_forever() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll_once()
                except Exception:  # noqa: BLE001 - a bad poll must not end polling.
                    logging.exception('%s: polling %s failed.', self.model_name, self.base_path)

        self._thread = threading.Thread(
            target=poll_forever, name=f'poll-{self.model_name}', daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops polling (a load in progress finishes first, up to `timeout_s`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    # --- Serving -----------------------------------------------------------------

    @property
    def served_versions(self) -> List[int]:
        """Versions requests can use now, ascending."""
        return sorted(self._snapshot.servables)

    def resolve(
        self, version: Optional[int] = None, version_label: Optional[str] = None
    ) -> servable_lib.Servable:
        """Returns the servable a request asked for (latest when neither is given).

        Raises:
          ServingError: INVALID_ARGUMENT for an unknown label (TF Serving's
            code), NOT_FOUND for a version that is not loaded,
            FAILED_PRECONDITION when no version is loadable at all.
        """
        snapshot = self._snapshot
        if version_label is not None:
            if version_label not in self._labels:
                raise servable_lib.ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'Unrecognized servable version label: {version_label}',
                )
            version = self._labels[version_label]
        if not snapshot.servables:
            reason = self._last_error or f'no version directory under {self.base_path}'
            raise servable_lib.ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'no version of model {self.model_name} is loadable: {reason}',
            )
        if version is None:
            return snapshot.latest
        if version not in snapshot.servables:
            raise servable_lib.ServingError(
                grpc.StatusCode.NOT_FOUND,
                f'Servable not found for request: Specific({self.model_name}, {version}); '
                f'loaded versions: {sorted(snapshot.servables)}',
            )
        return snapshot.servables[version]

    def statuses(
        self, version: Optional[int] = None, version_label: Optional[str] = None
    ) -> List[VersionStatus]:
        """Version states for `GetModelStatus`, newest first.

        Raises:
          ServingError: INVALID_ARGUMENT for an unknown label, NOT_FOUND when
            the version (or any version, if none is given) was never seen.
        """
        if version_label is not None:
            if version_label not in self._labels:
                raise servable_lib.ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f'Unrecognized servable version label: {version_label}',
                )
            version = self._labels[version_label]
        with self._status_lock:
            statuses = dict(self._statuses)
        if version is not None:
            if version not in statuses:
                raise servable_lib.ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f'Could not find version {version} of model {self.model_name}',
                )
            return [statuses[version]]
        if not statuses:
            raise servable_lib.ServingError(
                grpc.StatusCode.NOT_FOUND,
                f'Could not find any versions of model {self.model_name}',
            )
        return [statuses[number] for number in sorted(statuses, reverse=True)]
