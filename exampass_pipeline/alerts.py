"""Alerts: every failed check becomes a row in the warehouse and, when configured, a Slack-style webhook POST.

The row is the system of record, so it is written even when delivery fails; a broken webhook is recorded next
to the alert it failed to deliver and never fails the pipeline, because a monitoring outage must not stop the
data from being ingested.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import httpx
from dagster_duckdb import DuckDBResource

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


class Alerter(dg.ConfigurableResource):
    """Records alerts and delivers them; webhook_url empty means record only."""

    webhook_url: str = ""
    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 5.0

    def deliver(self, payload: dict[str, Any]) -> tuple[str, int, str | None]:
        """POST with exponential backoff; returns (status, attempts, last error) and never raises."""
        if not self.webhook_url:
            return "not_configured", 0, None
        error: str | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            try:
                response = httpx.post(self.webhook_url, json=payload, timeout=self.timeout_s)
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

    def raise_alert(
        self,
        warehouse: DuckDBResource,
        *,
        check_name: str,
        asset: str,
        partition_key: str | None,
        severity: str,
        message: str,
        figures: dict[str, Any],
        log: Any = None,
    ) -> dict[str, Any]:
        alert: dict[str, Any] = {
            "alert_id": str(uuid.uuid4()),
            "created_at": datetime.now(UTC).replace(tzinfo=None),
            "check_name": check_name,
            "asset": asset,
            "partition_key": partition_key,
            "severity": severity,
            "message": message,
            "figures": figures,
        }
        status, attempts, error = self.deliver(slack_payload(alert))
        alert.update(delivery_status=status, delivery_attempts=attempts, delivery_error=error)
        with warehouse.get_connection() as conn:
            conn.execute(_DDL)
            conn.execute(
                f"INSERT INTO {ALERTS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    alert["alert_id"],
                    alert["created_at"],
                    check_name,
                    asset,
                    partition_key,
                    severity,
                    message,
                    json.dumps(figures, default=str),
                    status,
                    attempts,
                    error,
                ],
            )
        if log is not None:
            note = f"alert {check_name} ({severity}) recorded; webhook: {status}"
            (log.warning if status == "failed" else log.info)(note + (f" ({error})" if error else ""))
        return alert
