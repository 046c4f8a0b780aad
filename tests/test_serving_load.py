"""Reliability under load over real gRPC on loopback: concurrency, batching, hot swap.

8 clients x 50 requests of mixed valid images (one to three per request):
zero errors, and every caption equals what the same SavedModel says
in-process. A new version published during load (temporary directory, then
rename, as the Pusher does) is picked up with no failed request.
"""

import itertools
import os
import threading
import time
from typing import Dict, List

import pytest

from tfx_captioning.pipeline import configs
from tfx_captioning.serving import batching
from tfx_captioning.serving import client as client_lib
from tfx_captioning.serving.fixture_model import (
    fixture_in_process_captions,
    fixture_serving_images,
    publish_fixture_version,
)

pytestmark = pytest.mark.timeout(300)

_CLIENTS = 8
_REQUESTS_PER_CLIENT = 50


def _request_plan(names: List[str], client_index: int) -> List[List[str]]:
    """Deterministic mixed requests: rotating images, 1, 2 or 3 images per request."""
    rotation = itertools.cycle(
        names[client_index % len(names) :] + names[: client_index % len(names)]
    )
    return [
        [next(rotation) for _ in range(1 + (request % 3 == 2) + (request % 5 == 4))]
        for request in range(_REQUESTS_PER_CLIENT)
    ]


def _run_clients(target: str, images: Dict[str, bytes], on_progress=None, until_version=None):
    """Runs the clients; returns per-client lists of (names, result or error).

    Each client sends `_REQUESTS_PER_CLIENT` requests; with `until_version`,
    it then keeps going (up to a time limit) until it has been answered by
    that version, so a test never depends on how fast a version loads.
    """
    names = sorted(images)
    outcomes = [[] for _ in range(_CLIENTS)]
    completed = itertools.count(1)
    give_up_at = time.monotonic() + 120

    def needs_more(client_outcomes) -> bool:
        if len(client_outcomes) < _REQUESTS_PER_CLIENT:
            return True
        if until_version is None or time.monotonic() > give_up_at:
            return False
        return not any(
            getattr(outcome, 'version', None) == until_version for _, outcome in client_outcomes
        )

    def run(client_index: int) -> None:
        plan = itertools.cycle(_request_plan(names, client_index))
        with client_lib.CaptionClient(target, timeout_s=30) as client:
            while needs_more(outcomes[client_index]):
                request_names = next(plan)
                try:
                    outcome = client.caption([images[name] for name in request_names])
                except client_lib.CaptionClientError as error:
                    outcome = error
                outcomes[client_index].append((request_names, outcome))
                if on_progress is not None:
                    on_progress(next(completed))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not any(thread.is_alive() for thread in threads), 'clients did not finish in time'
    return outcomes


def _check_outcomes(outcomes, expected_by_version: Dict[int, Dict[str, str]]):
    """Asserts no errors and in-process-equal captions; returns the versions each client saw."""
    errors = [
        outcome for client in outcomes for _, outcome in client if isinstance(outcome, Exception)
    ]
    assert errors == [], f'{len(errors)} failed requests, first: {errors[:3]}'
    assert all(len(client) >= _REQUESTS_PER_CLIENT for client in outcomes)
    versions_per_client = []
    for client in outcomes:
        versions = []
        for names, result in client:
            expected = expected_by_version[result.version]
            assert [caption.text for caption in result.captions] == [expected[n] for n in names]
            versions.append(result.version)
        versions_per_client.append(versions)
    return versions_per_client


@pytest.fixture(scope='module')
def images():
    return fixture_serving_images()


@pytest.fixture(scope='module')
def expected_captions(fixture_caption_models, images):
    """version number -> image name -> in-process caption, for the two fixture versions."""
    names = sorted(images)
    return {
        version: dict(
            zip(names, fixture_in_process_captions(model_dir, [images[n] for n in names]))
        )
        for version, model_dir in (
            (1, fixture_caption_models['picture']),
            (2, fixture_caption_models['photo']),
        )
    }


@pytest.mark.parametrize(
    'batching_options',
    [None, batching.BatchingOptions(max_batch_size=8, batch_timeout_s=0.002)],
    ids=['unbatched', 'batched'],
)
def test_concurrent_load_has_no_errors_and_in_process_captions(
    fixture_model_base_path, start_caption_server, images, expected_captions, batching_options
):
    caption_server = start_caption_server(fixture_model_base_path, batching=batching_options)
    started = time.monotonic()
    outcomes = _run_clients(caption_server.target, images)
    elapsed = time.monotonic() - started
    versions = _check_outcomes(outcomes, expected_captions)
    assert {version for client in versions for version in client} == {1}
    print(f'{_CLIENTS}x{_REQUESTS_PER_CLIENT} requests in {elapsed:.1f} s')


def test_hot_swap_during_load_fails_no_request(
    tmp_path, fixture_caption_models, start_caption_server, images, expected_captions
):
    base_path = str(tmp_path / configs.MODEL_NAME)
    publish_fixture_version(fixture_caption_models['picture'], base_path, 1)
    caption_server = start_caption_server(base_path, poll_interval_s=0.05)
    # Staged beside the base path, so publishing is one rename (what the Pusher does).
    staging = str(tmp_path / 'staging')
    staged = publish_fixture_version(fixture_caption_models['photo'], staging, 2)
    published = threading.Event()

    def publish_midway(completed: int) -> None:
        if completed == _CLIENTS * _REQUESTS_PER_CLIENT // 5 and not published.is_set():
            os.rename(staged, os.path.join(base_path, '2'))
            published.set()

    outcomes = _run_clients(
        caption_server.target, images, on_progress=publish_midway, until_version=2
    )
    assert published.is_set()
    versions = _check_outcomes(outcomes, expected_captions)
    seen = {version for client in versions for version in client}
    assert seen == {1, 2}, 'the new version was not picked up during the load'
    for client_versions in versions:
        # Per client the swap is one-way: once it has seen version 2, never version 1 again.
        first_new = client_versions.index(2) if 2 in client_versions else len(client_versions)
        assert set(client_versions[first_new:]) <= {2}
    states = {state.version: state.state for state in _status(caption_server.target)}
    assert states == {2: 'AVAILABLE', 1: 'END'}


def _status(target: str):
    with client_lib.CaptionClient(target) as client:
        return client.status()
