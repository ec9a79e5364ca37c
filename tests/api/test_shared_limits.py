"""Rate limits shared through a real redis-server: two API processes spend one limit, and Redis down is a 503.

Two ``exampass-api`` processes (as two replicas behind the proxy would be) point EXAMPASS_RATE_LIMIT_STORAGE
at one redis-server on loopback. Requests alternate between them, so a per-process count would allow each
limit twice. Then Redis is stopped (the real process, SIGTERM) and the guarded routes must fail closed with a
reason, never a 500 and never an answer that was not counted, and recover once Redis is back.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from api_support import Registry, Server, clone_home, prediction_lines, run_server, use_home

from exampass_pipeline.cli.demo import free_port

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server missing: .ci/system-deps.sh")

STUDENT: dict[str, Any] = {
    "gender": "male",
    "race_ethnicity": "group D",
    "parental_level_of_education": "bachelor's degree",
    "lunch": "standard",
    "test_preparation_course": "completed",
    "reading_score": 77,
    "writing_score": 80,
}


class RedisProcess:
    """A throw-away redis-server on a free loopback port, no persistence; stoppable and restartable."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        cmd = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(
            [*cmd, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer within 30 s"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def flush(self) -> None:
        redis.Redis(port=self.port, socket_timeout=1).flushall()


@dataclass
class Pair:
    redis: RedisProcess
    servers: tuple[Server, Server]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, api_registry: Registry) -> Iterator[Pair]:
    store = RedisProcess(tmp_path_factory.mktemp("redis"))
    store.start()
    uri = f"redis://127.0.0.1:{store.port}/0?socket_timeout=1&socket_connect_timeout=1"
    limits = {
        "EXAMPASS_RATE_LIMIT_STORAGE": uri,
        "EXAMPASS_RATE_LIMIT_PUBLIC": "5/minute",
        "EXAMPASS_RATE_LIMIT_KEYED": "4/minute",
    }
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("shared-limits"))
    try:
        with (
            use_home(home) as settings,
            run_server(settings, home.parent / "logs-a", extra=limits) as a,
            run_server(settings, home.parent / "logs-b", extra=limits) as b,
        ):
            a.wait_ready()
            b.wait_ready()
            yield Pair(store, (a, b))
    finally:
        store.stop()


def _alternate(pair: Pair, count: int, *, keyed: bool) -> list[int]:
    statuses = []
    for i in range(count):
        server = pair.servers[i % 2]
        headers = server.headers if keyed else {}
        statuses.append(httpx.post(f"{server.url}/predict", json=STUDENT, headers=headers).status_code)
    return statuses


def test_two_processes_spend_one_public_limit(pair: Pair) -> None:
    pair.redis.flush()
    statuses = _alternate(pair, 12, keyed=False)
    assert statuses == [200] * 5 + [429] * 7  # 5 a minute in all, not 5 per process


def test_two_processes_spend_one_keyed_limit(pair: Pair) -> None:
    # Both key stores hold a key named "load-test": the keyed limit counts per key name, across processes.
    pair.redis.flush()
    statuses = _alternate(pair, 10, keyed=True)
    assert statuses == [200] * 4 + [429] * 6


def test_redis_down_fails_closed_with_a_reason_then_recovers(pair: Pair) -> None:
    a, b = pair.servers
    before = len(prediction_lines(a.logs_dir)) + len(prediction_lines(b.logs_dir))
    pair.redis.stop()
    try:
        for server in pair.servers:
            for headers in ({}, server.headers):
                refused = httpx.post(f"{server.url}/predict", json=STUDENT, headers=headers, timeout=10)
                assert refused.status_code == 503, refused.text
                assert "rate limits unavailable" in refused.json()["detail"]
                assert refused.headers["retry-after"] == "5"
            # Unguarded routes keep answering, so the outage shows without the limiter.
            assert httpx.get(f"{server.url}/health").status_code == 200
            assert httpx.get(f"{server.url}/ready").status_code == 200
        assert len(prediction_lines(a.logs_dir)) + len(prediction_lines(b.logs_dir)) == before
    finally:
        pair.redis.start()
    pair.redis.flush()
    assert _alternate(pair, 2, keyed=False) == [200, 200]
