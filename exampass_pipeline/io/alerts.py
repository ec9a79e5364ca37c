"""Alerts: every failed check becomes a row in the warehouse and, when configured, a Slack-style webhook POST.

Free of Dagster: ``defs.resources.Alerter`` is the resource that asset checks and assets use, on top of this.

The row is the system of record, so it is written even when delivery fails; a broken webhook is recorded next
to the alert it failed to deliver and never fails the pipeline, because a monitoring outage must not stop the
data from being ingested.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

ALERTS_TABLE = "exampass.alerts"

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS exampass;
CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (
    alert_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    check_name VARCHAR,
    asset VARCHAR,
    partition_key VARCHAR,
    severity VARCHAR,
    message VARCHAR,
    figures JSON,
    delivery_status VARCHAR,
    delivery_attempts INTEGER,
    delivery_error VARCHAR
)
"""


def slack_payload(alert: dict[str, Any]) -> dict[str, Any]:
    """A body any Slack-compatible incoming webhook accepts: `text` for the notification, blocks for detail."""
    where = f" partition {alert['partition_key']}" if alert["partition_key"] else ""
    headline = f":rotating_light: ExamPass {alert['severity']}: {alert['check_name']} failed on {alert['asset']}{where}"
    figures = json.dumps(alert["figures"], indent=1, default=str)[:2500]
    return {
        "text": f"{headline}: {alert['message']}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*\n{alert['message']}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{figures}```"}},
        ],
        "exampass_alert": {k: v for k, v in alert.items() if k != "created_at"},
    }


@dataclass(frozen=True)
class Webhook:
    """Where alerts are delivered (a Slack-compatible URL; empty means record only), and how patiently."""

    url: str = ""
    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 5.0

    def deliver(self, payload: dict[str, Any]) -> tuple[str, int, str | None]:
        """POST with exponential backoff; returns (status, attempts, last error) and never raises."""
        if not self.url:
            return "not_configured", 0, None
        error: str | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            try:
                response = httpx.post(self.url, json=payload, timeout=self.timeout_s)
                if response.status_code < 300:
                    return "delivered", attempts, None
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # the receiver rejected the message itself; retrying will not help
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        return "failed", attempts, error


def new_alert(
    *,
    check_name: str,
    asset: str,
    partition_key: str | None,
    severity: str,
    message: str,
    figures: dict[str, Any],
) -> dict[str, Any]:
    return {
        "alert_id": str(uuid.uuid4()),
        "created_at": datetime.now(UTC).replace(tzinfo=None),
        "check_name": check_name,
        "asset": asset,
        "partition_key": partition_key,
        "severity": severity,
        "message": message,
        "figures": figures,
    }


def store(connection: Any, alert: dict[str, Any]) -> None:
    """Append one delivered (or undeliverable) alert to the alerts table, creating it on first use."""
    connection.execute(_DDL)
    connection.execute(
        f"INSERT INTO {ALERTS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            alert["alert_id"],
            alert["created_at"],
            alert["check_name"],
            alert["asset"],
            alert["partition_key"],
            alert["severity"],
            alert["message"],
            json.dumps(alert["figures"], default=str),
            alert["delivery_status"],
            alert["delivery_attempts"],
            alert["delivery_error"],
        ],
    )
