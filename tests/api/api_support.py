"""Helpers shared by the API tests (fixtures are in conftest.py): data, registries, real uvicorn servers.

A registry lives in its own temp EXAMPASS_HOME; ``use_home`` points this process (the environment and MLflow's
process-global tracking URI) at it and restores both afterwards, and uvicorn subprocesses get the same
variables. New homes start from a copy of one migrated, empty MLflow database, because running MLflow's
migrations costs seconds per home on this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from support import REPO_ROOT, STATE_VARS

from exampass_api.core.keystore import create_key
from exampass_pipeline.cli.demo import free_port
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.ml import modeling

ALL_CANDIDATES = tuple(modeling.CANDIDATES)
CHAMPION_THRESHOLD = 0.6


def make_empty_registry(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def new_home(parent: Path, template: Path) -> Path:
    """A fresh EXAMPASS_HOME whose registry starts empty."""
    home = parent / "exampass"
    (home / "mlflow").mkdir(parents=True)
    shutil.copy(template, home / "mlflow" / "mlflow.db")
    return home


def clone_home(source: Path, parent: Path) -> Path:
    """A new EXAMPASS_HOME whose registry is a copy of ``source``'s (artifacts stay where they were logged).

    Registering a model costs seconds; a copied database gives a second registry with the same versions.
    """
    home = parent / "exampass"
    (home / "mlflow").mkdir(parents=True)
    shutil.copy(source / "mlflow" / "mlflow.db", home / "mlflow" / "mlflow.db")
    return home


@dataclass(frozen=True)
class OpenApp:
    """One app on the session registry: its client, its own prediction logs and its own key store."""

    client: TestClient
    logs: Path
    keys: Path


@contextlib.contextmanager
def use_home(home: Path, **extra: str) -> Iterator[Settings]:
    """Point this process's environment and MLflow at one EXAMPASS_HOME; restore everything afterwards."""
    saved = {name: os.environ.get(name) for name in STATE_VARS}
    previous_uri = mlflow.get_tracking_uri()
    try:
        for name in STATE_VARS:
            os.environ.pop(name, None)
        os.environ["EXAMPASS_HOME"] = str(home)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        os.environ.update(extra)
        settings = Settings.from_env()
        registry.configure(settings)
        yield settings
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        mlflow.set_tracking_uri(previous_uri)


def register(
    settings: Settings,
    pipeline: Any,
    students: pd.DataFrame,
    *,
    candidate: str,
    threshold: float = 0.5,
    promote: bool = True,
    rule: DecisionRule | None = None,
    card: str | None = None,
) -> str:
    """Log, register and (optionally) promote one fitted pipeline the way the training assets do.

    With ``rule`` the version carries that decision rule (its ``threshold`` wins); with ``card``, a model card.
    """
    registry.configure(settings)
    threshold = rule.threshold if rule is not None else threshold
    decision = rule if rule is not None else threshold
    metrics = modeling.evaluate(pipeline, decision, modeling.split_students(students, seed=42).test)
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        info = registry.log_model(pipeline, threshold, students.head(5), candidate=candidate, rule=rule)
        if card is not None:
            registry.log_model_card(MlflowClient(), run.info.run_id, card)
    version = str(info.registered_model_version)
    registry.record_decision(MlflowClient(), version, promote, "test")
    return version


@dataclass(frozen=True)
class Registry:
    """A temp EXAMPASS_HOME whose registry holds every candidate type; logistic regression is the champion."""

    settings: Settings
    versions: dict[str, str]  # candidate name -> registered version
    champion: str
    threshold: float


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    logs_dir: Path
    output: Path
    # A key with the predict scope: load tests authenticate like ExamPass's own clients do, so the public
    # per-address rate limit (which they would exceed in a second) does not apply to them.
    headers: dict[str, str]

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.output.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.output.read_text()}")

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/ready", timeout=5.0)
            if response.status_code == 200:
                return response.json()
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def run_server(
    settings: Settings,
    logs_dir: Path,
    *,
    poll_s: float = 0.2,
    workers: int = 1,
    extra: dict[str, str] | None = None,
) -> Iterator[Server]:
    """``python -m exampass_api`` on a free loopback port, against the given home, until the block ends.

    ``workers`` uvicorn workers; ``extra`` more EXAMPASS_* variables (e.g. a shared rate-limit storage).
    """
    port = free_port()
    keys = logs_dir.parent / f"api-keys-{port}.json"
    token = create_key(keys, "load-test", ["predict"])
    env = {
        **{k: v for k, v in os.environ.items() if k not in STATE_VARS and not k.startswith("MLFLOW_")},
        "EXAMPASS_HOME": str(settings.home),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "EXAMPASS_LOGS": str(logs_dir),
        "EXAMPASS_MODEL_POLL_S": str(poll_s),
        "EXAMPASS_API_HOST": "127.0.0.1",
        "EXAMPASS_API_PORT": str(port),
        "EXAMPASS_API_WORKERS": str(workers),
        "EXAMPASS_API_KEYS_FILE": str(keys),
        **(extra or {}),
    }
    output = logs_dir.parent / f"server-{port}.out"
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "exampass_api"],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(
        process, f"http://127.0.0.1:{port}", logs_dir, output, {"Authorization": f"Bearer {token}"}
    )
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def prediction_lines(logs_dir: Path) -> list[bytes]:
    """Every raw line of every prediction day file (raw, so a torn line would show up as such)."""
    directory = logs_dir / "predictions"
    if not directory.exists():
        return []
    return [line for path in sorted(directory.glob("*.jsonl")) for line in path.read_bytes().splitlines(True)]
