"""The prediction log's disk fills up under a running API, then space comes back.

The API's log directory is a real 64 KiB tmpfs. Filling it with a file makes the kernel refuse the log's
writes (first a short write at the page boundary, then ENOSPC). Promised: /predict answers 503 with the
reason (never a 500, never an answer that was not logged), no torn or partial line stays in the log, and when
the filler is deleted the next request is answered and logged, with no restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Server, clone_home, prediction_lines, run_server, use_home
from faults_support import FaultRegistry, fill, small_tmpfs, wait_for
from support import PAGE_STUDENT

from exampass_pipeline.contract.logfile import LogUnavailable, write_line

MAX_REQUESTS_TO_FILL = 200  # the last page of the day file takes at most 4096 / ~300 bytes = 14 more lines


def _predict(server: Server, client: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = client.post(f"{server.url}/predict", json=PAGE_STUDENT, headers=server.headers)
    return response.status_code, response.json()


def _assert_whole_lines(logs: Path, answered: list[str]) -> None:
    """Every line parses and ends with a newline, and the log holds exactly the answered predictions."""
    lines = prediction_lines(logs)
    for line in lines:
        assert line.endswith(b"\n"), f"torn line left in the log: {line[:80]!r}"
        json.loads(line)
    assert [json.loads(line)["prediction_id"] for line in lines] == answered


def test_full_log_disk_is_a_503_with_a_reason_and_logging_resumes_by_itself(
    fault_registry: FaultRegistry, tmp_path: Path
) -> None:
    home = clone_home(fault_registry.home, tmp_path)
    with (
        small_tmpfs(tmp_path / "logs") as logs,
        use_home(home) as settings,
        run_server(settings, logs) as server,
        httpx.Client(timeout=30) as client,
    ):
        assert server.wait_ready()["model_version"] == fault_registry.v1
        status, body = _predict(server, client)
        assert status == 200, body
        answered = [body["prediction_id"]]

        filler = fill(logs)
        statuses: list[int] = []
        refusal: dict[str, Any] = {}
        for _ in range(MAX_REQUESTS_TO_FILL):
            status, body = _predict(server, client)
            statuses.append(status)
            if status == 200:
                answered.append(body["prediction_id"])
                continue
            assert status == 503, (status, body, server.output.read_text()[-2000:])
            refusal = body
            break
        assert refusal, f"the log never filled up after {MAX_REQUESTS_TO_FILL} requests"
        assert "prediction log" in refusal["detail"] and "no space left" in refusal["detail"], refusal
        for _ in range(3):  # still full: still refused, still nothing logged
            assert _predict(server, client)[0] == 503
        _assert_whole_lines(logs, answered)

        filler.unlink()

        def answered_again() -> dict[str, Any] | None:
            status, body = _predict(server, client)
            assert status in (200, 503), body
            return body if status == 200 else None

        answered.append(
            wait_for(answered_again, "a /predict answer once the filler is deleted", 30)["prediction_id"]
        )
        _assert_whole_lines(logs, answered)
        assert server.process.poll() is None


def test_a_short_write_is_cut_back_and_the_log_resumes_whole(tmp_path: Path) -> None:
    """The writer itself on a full tmpfs: the bytes that fitted are removed, so no torn line is left.

    A first short line takes one page; after the filler takes the rest, a longer line fits only partly
    into that page, which is exactly the short write a full disk gives.
    """
    first = b'{"n":1}\n'
    long = (json.dumps({"pad": "x" * 6000}) + "\n").encode()
    with small_tmpfs(tmp_path / "logs", size="16k") as logs:
        path = logs / "day.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            write_line(fd, first, logs)
            filler = fill(logs)
            with pytest.raises(LogUnavailable, match=r"short write \(\d+ of \d+ bytes, cut back\)"):
                write_line(fd, long, logs)
            assert path.read_bytes() == first
            with pytest.raises(LogUnavailable, match="no space left"):
                write_line(fd, long, logs)
            assert path.read_bytes() == first
            filler.unlink()
            write_line(fd, long, logs)
            assert path.read_bytes() == first + long
        finally:
            os.close(fd)
