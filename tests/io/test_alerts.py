"""Alerts reach a real local HTTP receiver, are retried, and are recorded even when delivery fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from exampass_pipeline.defs.resources import Alerter
from exampass_pipeline.io.alerts import ALERTS_TABLE, slack_payload


class Receiver:
    """A webhook endpoint that records bodies and answers with a scripted list of status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"nope")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses or []))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _alert(alerter: Alerter, db: Path) -> dict[str, Any]:
    return alerter.raise_alert(
        DuckDBResource(database=str(db)),
        check_name="no_data_drift",
        asset="drift_report",
        partition_key="2026-11-20",
        severity="ERROR",
        message="lunch drifted (adjusted p=0.0001)",
        figures={"n_current": 120, "drifted_columns": "lunch"},
    )


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db)) as conn:
        return conn.execute(
            "SELECT check_name, partition_key, severity, delivery_status, delivery_attempts, figures "
            f"FROM {ALERTS_TABLE}"
        ).fetchall()


def test_delivered_to_receiver_and_recorded(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = receiver_factory()
    db = tmp_path / "w.duckdb"
    alert = _alert(Alerter(webhook_url=receiver.url), db)
    assert alert["delivery_status"] == "delivered"
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert "no_data_drift" in body["text"] and "2026-11-20" in body["text"]
    assert body["blocks"][0]["type"] == "section"
    rows = _rows(db)
    assert rows[0][:5] == ("no_data_drift", "2026-11-20", "ERROR", "delivered", 1)
    assert json.loads(rows[0][5])["n_current"] == 120


def test_retried_with_backoff_until_delivered(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = receiver_factory([503, 500])
    alert = _alert(Alerter(webhook_url=receiver.url, backoff_s=0.01), tmp_path / "w.duckdb")
    assert alert["delivery_status"] == "delivered"
    assert alert["delivery_attempts"] == 3
    assert len(receiver.bodies) == 3


def test_failed_delivery_is_recorded_not_raised(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = receiver_factory([500] * 10)
    db = tmp_path / "w.duckdb"
    alert = _alert(Alerter(webhook_url=receiver.url, retries=2, backoff_s=0.01), db)
    assert alert["delivery_status"] == "failed"
    assert "HTTP 500" in alert["delivery_error"]
    assert _rows(db)[0][3:5] == ("failed", 3)


def test_unreachable_webhook_is_recorded(tmp_path: Path, receiver_factory: Any) -> None:
    receiver = receiver_factory()
    url = receiver.url
    receiver.close()
    alert = _alert(Alerter(webhook_url=url, retries=1, backoff_s=0.01, timeout_s=1), tmp_path / "w.duckdb")
    assert alert["delivery_status"] == "failed"
    assert alert["delivery_error"]


def test_without_webhook_the_alert_is_only_recorded(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    assert _alert(Alerter(), db)["delivery_status"] == "not_configured"
    assert len(_rows(db)) == 1


def test_payload_is_slack_compatible() -> None:
    payload = slack_payload(
        {
            "check_name": "c",
            "asset": "a",
            "partition_key": None,
            "severity": "WARN",
            "message": "m",
            "figures": {},
        }
    )
    assert isinstance(payload["text"], str) and payload["text"].endswith(": m")
    assert all(block["text"]["type"] == "mrkdwn" for block in payload["blocks"])
