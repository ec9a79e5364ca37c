"""The service as it runs: a real uvicorn process, real HTTP, concurrency, a hot swap and a SIGKILL.

Starting a server and its first model load cost many seconds of imports, so the tests that only need a serving
API share one server, each promoting the version it needs first; the test that needs a server that never had a
champion, and the one that kills its server with SIGKILL, get their own. No test depends on another's order.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_support import Registry, Server, clone_home, prediction_lines, run_server, use_home
from mlflow import MlflowClient

from exampass_api.services.model_store import NO_CHAMPION
from exampass_pipeline.contract import predlog, registry, schema

STUDENT: dict[str, Any] = {
    "gender": "male",
    "race_ethnicity": "group C",
    "parental_level_of_education": "some college",
    "lunch": "free/reduced",
    "test_preparation_course": "completed",
    "reading_score": 55,
    "writing_score": 51,
}


def _load(
    server: Server,
    records: list[dict[str, Any]],
    *,
    threads: int,
    stop: threading.Event,
    per_thread: int | None = None,
    results: list[tuple[int, int, str | None, str | None]] | None = None,
) -> tuple[list[threading.Thread], list[tuple[int, int, str | None, str | None]]]:
    """Start `threads` clients sending /predict until `stop` (or per_thread requests each).

    Each result is (thread, status, model_version, prediction_id); status -1 means the request itself failed.
    """
    out = results if results is not None else []
    lock = threading.Lock()

    def worker(t: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30.0, headers=server.headers) as client:
            i = 0
            while not stop.is_set() and (per_thread is None or i < per_thread):
                body = records[(t * 7919 + i) % len(records)]
                try:
                    response = client.post("/predict", json=body)
                    data = response.json()
                    row = (t, response.status_code, data.get("model_version"), data.get("prediction_id"))
                except (httpx.HTTPError, ValueError):
                    row = (t, -1, None, None)
                with lock:
                    out.append(row)
                i += 1

    workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    return workers, out


@dataclass
class Live:
    server: Server
    client: MlflowClient
    v1: str
    v2: str


@contextmanager
def _live(tmp_path_factory: pytest.TempPathFactory, api_registry: Registry) -> Iterator[Live]:
    """A server on a copy of the session registry with the alias removed: versions exist, none is champion."""
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("live"))
    with use_home(home) as settings:
        client = MlflowClient()
        client.delete_registered_model_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS)
        assert registry.champion_version(client) is None
        v1, v2 = api_registry.versions["logistic_regression"], api_registry.versions["hist_gradient_boosting"]
        with run_server(settings, home.parent / "logs", poll_s=0.2) as server:
            yield Live(server, client, v1, v2)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, api_registry: Registry) -> Iterator[Live]:
    """One server shared by the tests that only need it serving: each promotes the version it needs first."""
    with _live(tmp_path_factory, api_registry) as server:
        yield server


@pytest.fixture
def fresh_live(tmp_path_factory: pytest.TempPathFactory, api_registry: Registry) -> Iterator[Live]:
    """A server of its own, for the tests that need one that never had a champion, or that kill it."""
    with _live(tmp_path_factory, api_registry) as server:
        yield server


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _champion(live: Live, version: str) -> None:
    registry.record_decision(live.client, version, True, "test")
    deadline = time.monotonic() + 60
    while httpx.get(f"{live.server.url}/ready").json().get("model_version") != version:
        assert time.monotonic() < deadline, live.server.output.read_text()
        time.sleep(0.1)


def test_not_ready_until_a_champion_is_promoted(fresh_live: Live) -> None:
    live = fresh_live
    url = live.server.url
    assert httpx.get(f"{url}/health").status_code == 200
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 503 and ready.json() == {"detail": NO_CHAMPION}
    refused = httpx.post(f"{url}/predict", json=STUDENT)
    assert refused.status_code == 503 and refused.json() == {"detail": NO_CHAMPION}
    batch = httpx.post(f"{url}/predict/batch", json={"students": [STUDENT]})
    assert batch.status_code == 503
    assert prediction_lines(live.server.logs_dir) == []

    # Promoted while the server runs: picked up by the poller within a few polls, no restart.
    registry.record_decision(live.client, live.v1, True, "first champion")
    assert live.server.wait_ready()["model_version"] == live.v1
    answer = httpx.post(f"{url}/predict", json=STUDENT)
    assert answer.status_code == 200 and answer.json()["model_version"] == live.v1


def test_500_concurrent_requests_make_exactly_one_line_per_answer(
    live: Live, records: list[dict[str, Any]]
) -> None:
    _champion(live, live.v1)
    logs = live.server.logs_dir
    before = len(prediction_lines(logs))
    workers, results = _load(live.server, records, threads=10, stop=threading.Event(), per_thread=45)
    # Interleave refused requests: they must not leave lines behind.
    with httpx.Client(base_url=live.server.url, headers=live.server.headers) as client:
        refused = [client.post("/predict", json={**STUDENT, "gender": "?"}).status_code for _ in range(50)]
    for w in workers:
        w.join(timeout=60)
    assert refused == [422] * 50
    assert len(results) == 450
    assert Counter(r[1] for r in results) == {200: 450}
    lines = prediction_lines(logs)[before:]
    assert len(lines) == 450
    assert {json.loads(line)["prediction_id"] for line in lines} == {r[3] for r in results}


def test_hot_swap_under_load_fails_nothing_and_changes_the_version(
    live: Live, records: list[dict[str, Any]]
) -> None:
    _champion(live, live.v1)
    logs = live.server.logs_dir
    before = len(prediction_lines(logs))
    stop = threading.Event()
    workers, results = _load(live.server, records, threads=4, stop=stop)
    _wait(lambda: sum(r[2] == live.v1 for r in list(results)) >= 50, "answers from the old version")
    registry.record_decision(live.client, live.v2, True, "better")
    _wait(lambda: any(r[2] == live.v2 for r in list(results)), "the swap")
    # Keep the load going after the swap, until every thread has been answered by the new version.
    threads = {r[0] for r in list(results)}
    _wait(
        lambda: {r[0] for r in list(results) if r[2] == live.v2} >= threads, "every client on the new version"
    )
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert httpx.get(f"{live.server.url}/model").json()["candidate"] == "hist_gradient_boosting"

    statuses = Counter(r[1] for r in results)
    assert statuses == {200: len(results)}, statuses
    assert {r[2] for r in results} == {live.v1, live.v2}
    # Atomic swap: once a client has seen the new version it never sees the old one again.
    for t in {r[0] for r in results}:
        seen = [r[2] for r in results if r[0] == t]
        if live.v2 in seen:
            assert live.v1 not in seen[seen.index(live.v2) :]
    # One log line per 200 answer, carrying the version that answered it.
    lines = [json.loads(line) for line in prediction_lines(logs)[before:]]
    logged = {r["prediction_id"]: r["model_version"] for r in lines}
    assert len(lines) == len(results) == len(logged)
    assert all(logged[pid] == version for _, _, version, pid in results)


def test_sigkill_mid_load_leaves_only_whole_lines(fresh_live: Live, records: list[dict[str, Any]]) -> None:
    live = fresh_live
    _champion(live, live.v1)
    server = live.server
    logs = server.logs_dir
    target = len(prediction_lines(logs)) + 1500
    stop = threading.Event()
    workers, results = _load(server, records, threads=6, stop=stop)

    def batches() -> None:
        with httpx.Client(base_url=server.url, timeout=30.0, headers=server.headers) as client:
            while not stop.is_set():
                try:
                    client.post("/predict/batch", json={"students": records[:1000]})
                except httpx.HTTPError:
                    return

    batcher = threading.Thread(target=batches, daemon=True)
    batcher.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(prediction_lines(logs)) < target:
        time.sleep(0.05)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    stop.set()
    for w in [*workers, batcher]:
        w.join(timeout=30)

    lines = prediction_lines(logs)
    assert any(r[1] == 200 for r in results) and len(lines) >= target
    assert any(r[1] == -1 for r in results), "the kill should have cut requests off"
    assert all(line.endswith(b"\n") for line in lines)
    parsed = [
        predlog.read_log(path, predlog.PREDICTIONS) for path in sorted((logs / "predictions").glob("*.jsonl"))
    ]
    assert [q for p in parsed for q in p.quarantined] == []
    assert sum(len(p.records) for p in parsed) == len(lines)
    # Every answered single prediction has its line (a batch cut short may have lines without an answer).
    logged = {r["prediction_id"] for p in parsed for r in p.records}
    assert {r[3] for r in results if r[1] == 200} <= logged


def test_console_script_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from exampass_api.__main__ import main

    monkeypatch.setenv("EXAMPASS_MODEL_POLL_S", "0")
    with pytest.raises(SystemExit) as refused:
        main([])
    assert refused.value.code == 2
    monkeypatch.setenv("EXAMPASS_MODEL_POLL_S", "5")
    with pytest.raises(SystemExit):
        main(["--workers", "0"])
