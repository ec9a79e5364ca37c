"""`exampass-demo`: the monitoring story in one command, on a fresh EXAMPASS_HOME.

train -> serve -> three ordinary days and two days of a lunch shift -> monitoring -> alert -> sensor ->
retrain -> the gate -> the API hot-swaps. Every step uses the product's own code paths (the same writer as the
API, the same Dagster assets, the real sensor), so the demo doubles as the end-to-end test's script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import httpx

from exampass_pipeline.cli import simulate, simulate_api
from exampass_pipeline.cli.runs import (
    instance_for,
    materialize_monitoring,
    materialize_training,
    quiet_beta_warnings,
)
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.ml import synthetic

# The client name the demo's outcomes are attributed to, as a school's grade export would be.
DEMO_CLIENT = "demo-school"


class WebhookReceiver:
    """A local Slack-style endpoint, so the demo shows the alert arriving without any outside service."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProcess:
    """The real `exampass-api` in its own process, polling the registry every second."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **env,
            "EXAMPASS_API_PORT": str(self.port),
            "EXAMPASS_API_HOST": "127.0.0.1",
            "EXAMPASS_MODEL_POLL_S": env.get("EXAMPASS_MODEL_POLL_S", "1"),
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exampass_api"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout_s: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self.model()
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API at {self.url} was not ready within {timeout_s}s")

    def model(self) -> dict[str, Any]:
        info: dict[str, Any] = httpx.get(f"{self.url}/model", timeout=5).json()
        return info

    def wait_version(self, version: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.model()
            if str(info.get("version")) == version:
                return info
            time.sleep(0.3)
        raise TimeoutError(f"the API did not switch to version {version} within {timeout_s}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class DayOutcome:
    day: date
    scenario: str
    rows: int
    checks: dict[str, bool]


@dataclass
class Story:
    """What happened at each step, for the person watching and for the end-to-end test."""

    settings: Settings
    first_version: str = ""
    days: list[DayOutcome] = field(default_factory=list)
    alerts: list[tuple[str, str, str, str]] = field(default_factory=list)
    webhook_bodies: list[dict[str, Any]] = field(default_factory=list)
    run_requests: list[dg.RunRequest] = field(default_factory=list)
    retrain_run_id: str = ""
    retrain_success: bool = False
    new_version: str = ""
    decision: str = ""
    reason: str = ""
    production_rows_in_training: int = 0
    served_version_before: str = ""
    served_version_after: str = ""
    api_predictions: int = 0
    steps: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.steps.append(text)
        print(text, flush=True)


def _evaluate_sensor(instance: dg.DagsterInstance, settings: Settings) -> list[dg.RunRequest]:
    from exampass_pipeline.defs.resources import Thresholds
    from exampass_pipeline.defs.sensors import retrain_on_failed_checks

    thresholds = Thresholds(**settings.thresholds())
    context = dg.build_sensor_context(instance=instance, resources={"thresholds": thresholds})
    result = retrain_on_failed_checks(context)
    return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []


@dataclass(frozen=True)
class Scenario:
    """What the demo simulates: ordinary days, then days of one drift scenario."""

    normal_days: int = 3
    drift_days: int = 2
    rows_per_day: int = 200
    scenario: str = "lunch_shift"
    seed: int = 7
    end: date | None = None


def run_story(
    settings: Settings,
    *,
    normal_days: int = 3,
    drift_days: int = 2,
    rows_per_day: int = 200,
    scenario: str = "lunch_shift",
    seed: int = 7,
    end: date | None = None,
) -> Story:
    plan = Scenario(normal_days, drift_days, rows_per_day, scenario, seed, end)
    story = Story(settings)
    started = time.monotonic()
    receiver = WebhookReceiver()
    os.environ["EXAMPASS_ALERT_WEBHOOK"] = receiver.url
    os.environ["EXAMPASS_RETRAIN_COOLDOWN_S"] = "0"
    settings = Settings.from_env()
    story.settings = settings
    instance = instance_for(settings)
    api: ApiProcess | None = None
    try:
        champion = _train(story, instance, settings)
        api = _serve(story, settings, plan.seed)
        summaries = _simulate(story, settings, champion, plan)
        _monitor(story, instance, settings, summaries, receiver)
        _retrain(story, instance, settings, api)
        story.say(
            f"Reports: {settings.reports_dir / 'drift'} and {settings.reports_dir / 'quality'}; "
            f"warehouse: {settings.duckdb_path}; MLflow: {settings.mlflow_tracking_uri}"
        )
        story.say(f"Done in {time.monotonic() - started:.0f}s.")
        return story
    finally:
        if api is not None:
            api.stop()
        receiver.close()


def _train(story: Story, instance: dg.DagsterInstance, settings: Settings) -> registry.LoadedModel:
    story.say(f"1. training on {settings.data_path} ...")
    trained = materialize_training(instance, settings)
    if not trained.success:
        raise RuntimeError("training failed; see the Dagster run " + trained.run_id)
    registry.configure(settings)
    champion = registry.load_champion()
    assert champion is not None
    story.first_version = champion.version
    story.say(
        f"   champion is version {champion.version} ({champion.candidate}), "
        f"test ROC-AUC {champion.metrics.get('test_roc_auc', float('nan')):.3f}"
    )
    return champion


def _create_key(name: str, scope: str) -> str:
    """A key made the way an operator makes one, with ``exampass-apikey`` (the pipeline never opens the API's
    key store itself); its last line of output is the token."""
    done = subprocess.run(
        [sys.executable, "-m", "exampass_api.cli", "create", name, "--scope", scope],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"exampass-apikey create {name} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout.strip().splitlines()[-1]


def _serve(story: Story, settings: Settings, seed: int) -> ApiProcess:
    """The real API process, and a school's grade export reporting outcomes with its own feedback key."""
    story.say("2. starting the prediction API; a school gets a feedback key (exampass-apikey) ...")
    token = _create_key(DEMO_CLIENT, "feedback")
    api = ApiProcess(dict(os.environ), settings.home / "api.log")
    story.served_version_before = str(api.wait_ready()["version"])
    live = simulate_api.drive_api(api.url, 20, seed=seed, progress=False, api_key=token)
    if live.errors:
        raise RuntimeError(f"the live API refused the demo's requests: {live.first_error}")
    story.api_predictions = live.predictions
    story.say(
        f"   {api.url} serves version {story.served_version_before}; {live.predictions} live predictions, "
        f"{live.feedback} outcomes reported by key '{DEMO_CLIENT}'"
    )
    return api


def _simulate(
    story: Story, settings: Settings, champion: registry.LoadedModel, plan: Scenario
) -> list[simulate.DaySummary]:
    last = plan.end or (datetime.now(UTC).date() - timedelta(days=1))
    days = simulate.history_days(last, plan.normal_days + plan.drift_days)
    story.say(
        f"3. simulating {plan.normal_days} ordinary days then {plan.drift_days} days of {plan.scenario} "
        f"({days[0]} .. {days[-1]}, {plan.rows_per_day} students a day, with feedback) ..."
    )
    return simulate.write_history(
        settings.logs_dir,
        champion,
        days,
        plan.rows_per_day,
        plan.scenario,
        days[plan.normal_days],
        feedback_rate=1.0,
        feedback_delay_days=0,
        seed=plan.seed,
        progress=False,
    )


def _monitor(
    story: Story,
    instance: dg.DagsterInstance,
    settings: Settings,
    summaries: list[simulate.DaySummary],
    receiver: WebhookReceiver,
) -> None:
    story.say("4. materializing the monitoring partitions ...")
    for summary in summaries:
        result = materialize_monitoring(instance, settings, summary.day.isoformat())
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        story.days.append(DayOutcome(summary.day, summary.scenario, summary.rows, checks))
        verdict = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in sorted(checks.items()))
        story.say(f"   {summary.day} [{summary.scenario:11s}] {verdict}")
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as conn:
        story.alerts = conn.execute(
            "SELECT check_name, partition_key, severity, delivery_status FROM exampass.alerts ORDER BY created_at"
        ).fetchall()
    story.webhook_bodies = list(receiver.bodies)
    story.say(
        f"5. {len(story.alerts)} alert(s) recorded in DuckDB exampass.alerts; "
        f"the webhook received {len(story.webhook_bodies)}"
    )


def _retrain(story: Story, instance: dg.DagsterInstance, settings: Settings, api: ApiProcess) -> None:
    from exampass_pipeline.defs.jobs import RETRAIN

    story.run_requests = _evaluate_sensor(instance, settings)
    story.say(
        f"6. the sensor retrain_on_failed_checks requested {len(story.run_requests)} run(s)"
        + (f": {story.run_requests[0].run_key}" if story.run_requests else "")
    )
    if not story.run_requests:
        return
    retrain = materialize_training(
        instance, settings, selection=RETRAIN, tags=dict(story.run_requests[0].tags)
    )
    story.retrain_run_id = retrain.run_id
    story.retrain_success = retrain.success
    for event in retrain.get_asset_materialization_events():
        meta = event.materialization.metadata
        if event.asset_key == dg.AssetKey("model_evaluation"):
            story.new_version = str(meta["model_version"].value)
            story.decision = str(meta["decision"].value)
            story.reason = str(meta["reason"].value)
        if event.asset_key == dg.AssetKey("students"):
            by_source = meta["rows_by_source"].value
            assert isinstance(by_source, dict)
            story.production_rows_in_training = int(by_source.get("production", 0))
    story.say(
        f"7. retrained on {story.production_rows_in_training} labelled production rows: version "
        f"{story.new_version} {story.decision} ({story.reason})"
    )
    expected = story.new_version if story.decision == "promoted" else story.served_version_before
    story.served_version_after = str(api.wait_version(expected)["version"])
    story.say(f"8. the API now serves version {story.served_version_after} (no restart)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ExamPass monitoring story end to end.")
    parser.add_argument(
        "--scenario", default="lunch_shift", choices=[s for s in synthetic.SCENARIOS if s != "none"]
    )
    parser.add_argument("--rows-per-day", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rows_per_day < 1:
        parser.error(f"--rows-per-day: must be at least 1, got {args.rows_per_day}")
    quiet_beta_warnings()
    settings = Settings.for_command(parser)
    story = run_story(settings, scenario=args.scenario, rows_per_day=args.rows_per_day, seed=args.seed)
    return 0 if story.retrain_success else 1
