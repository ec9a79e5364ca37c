"""Browser tests: real servers on free loopback ports, driven through Debian's Chromium by Playwright.

Never downloads a browser: Playwright's Python wheel ships only its driver, and Chromium comes from Debian
(`/usr/bin/chromium`, installed by .ci/system-deps.sh). Every test starts its own servers in subprocesses
with a private EXAMPASS_HOME, so a test sees exactly what a person would after a fresh install. Screenshots go
to test-artifacts/ (git-ignored) for a human to look at when a run fails.

Missing Chromium or PostgreSQL fails under CI=true and skips, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support import REPO_ROOT as REPO
from support import STATE_VARS, data_csv, load_script, require

from exampass_pipeline.cli.demo import free_port

# Chromium's path and flags, and the readiness probe, are the screenshot tool's: one browser set-up.
_SCREENSHOTS = load_script("deploy/screenshots.py")
CHROMIUM: Path = _SCREENSHOTS.CHROMIUM
CHROMIUM_ARGS: list[str] = _SCREENSHOTS.CHROMIUM_ARGS
http_ok: Callable[[str], bool] = _SCREENSHOTS.http_ok
ARTIFACTS = REPO / "test-artifacts"
BIN = Path(sys.executable).parent


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """The parent environment minus any ExamPass/Dagster/MLflow setting, plus a private home and the data."""
    env = {k: v for k, v in os.environ.items() if k not in STATE_VARS}
    env.update(
        {
            "EXAMPASS_HOME": str(home),
            "EXAMPASS_DATA": str(data_csv()),
            "DAGSTER_HOME": str(home / "dagster"),
            "PYTHONUNBUFFERED": "1",
            # The servers' own console scripts (dagster, mlflow, ...) first, as in the image.
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        }
    )
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------- servers
@dataclass
class Server:
    """One real server process in its own process group, with its output in a log file for post-mortems."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise AssertionError(f"{self.name} not ready ({what}) after {timeout_s:.0f}s:\n{self.log_tail()}")

    def wait_http(self, url: str, timeout_s: float = 90) -> None:
        self.wait_until(lambda: http_ok(url), timeout_s, f"GET {url} -> 2xx")

    def stop(self) -> None:
        """SIGTERM to the group we started (the server and the workers it forked), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; all of them are stopped at teardown, last started first."""
    started: list[Server] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> Server:
        server = Server(name, argv, env, tmp_path / "logs" / f"{name}.log").start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


# --------------------------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Any]:
    require(CHROMIUM.exists(), f"Chromium is not installed at {CHROMIUM} (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright Python package is not installed (pip install playwright)")
        raise
    with sync_playwright() as driver:
        yield driver


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Remember each phase's outcome on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"exampass_{report.when}", report)
    return report


@pytest.fixture()
def page(playwright_driver: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh Chromium profile per test (first-visit dialogs and all), 1440x900 like a laptop screen.

    When the test fails, what the browser showed at that moment is saved as test-artifacts/NAME-failure.png.
    """
    context = playwright_driver.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1440, "height": 900},
    )
    context.set_default_timeout(30_000)
    current = context.pages[0] if context.pages else context.new_page()
    try:
        yield current
    finally:
        outcome = getattr(request.node, "exampass_call", None)
        if outcome is not None and outcome.failed:
            try:
                screenshot(current, f"{request.node.name}-failure")
            except Exception:  # noqa: BLE001 - a broken page must not hide the real failure
                pass
        context.close()


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture(scope="session")
def snap() -> Callable[..., Path]:
    """screenshot(page, name): save what the browser shows under test-artifacts/NAME.png."""
    return screenshot


@pytest.fixture(scope="session")
def port() -> Callable[[], int]:
    """free_port(): a free loopback TCP port."""
    return free_port


@pytest.fixture(scope="session")
def child_env() -> Callable[..., dict[str, str]]:
    """base_env(home, **extra): a server's environment with a private EXAMPASS_HOME and the Kaggle data."""
    return base_env


# -------------------------------------------------------------------------------------------- api
@pytest.fixture(scope="session")
def trained_home(
    tmp_path_factory: pytest.TempPathFactory,
    students: pd.DataFrame,
    child_env: Callable[..., dict[str, str]],
) -> Iterator[Path]:
    """An EXAMPASS_HOME whose MLflow registry holds a @champion, registered through the registry contract.

    A logistic regression fitted on the Kaggle file is logged and promoted exactly as the training asset does
    (registry.log_model + record_decision), minus candidate selection and MLflow's slow requirement
    inference: these tests are about pages, and the API cannot tell the difference. Shared by the session:
    servers started on it write their logs under their own EXAMPASS_LOGS when a test needs to count lines.
    """
    import mlflow
    from mlflow import MlflowClient

    from exampass_pipeline.contract import registry, schema
    from exampass_pipeline.contract.settings import Settings
    from exampass_pipeline.ml import modeling

    home = tmp_path_factory.mktemp("trained") / "exampass"
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("EXAMPASS_", "MLFLOW_", "DAGSTER_HOME")):
                mp.delenv(key)
        for key, value in child_env(home).items():
            mp.setenv(key, value)
        settings = Settings.from_env()
        experiment_id = registry.configure(settings)
        pipeline = modeling.build_candidates(["logistic_regression"], seed=0)["logistic_regression"]
        pipeline.fit(students[list(schema.FEATURES)], students[schema.LABEL].astype(int))
        try:
            with mlflow.start_run(experiment_id=experiment_id):
                test = modeling.split_students(students, seed=42).test
                mlflow.log_metrics(modeling.evaluate(pipeline, 0.5, test))  # the page's footer shows them
                info = registry.log_model(pipeline, 0.5, students, candidate="logistic_regression")
            registry.record_decision(
                MlflowClient(), str(info.registered_model_version), True, "registered by the browser test"
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)
    yield home


# -------------------------------------------------------------------------------------------- postgres
@dataclass(frozen=True)
class PgDatabase:
    host: str
    port: int
    user: str
    password: str
    name: str

    def dagster_env(self, storage_dir: Path) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_POSTGRES_HOST": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "DAGSTER_POSTGRES_DB": self.name,
            "DAGSTER_STORAGE_DIR": str(storage_dir),
        }


@pytest.fixture()
def dagster_pg_database() -> Iterator[PgDatabase]:
    """A fresh database on the loopback Postgres (see .ci/system-deps.sh) for one Dagster instance."""
    try:
        import psycopg2
    except ImportError:
        require(False, "psycopg2 is not installed in the virtualenv (pip install psycopg2-binary)")
        raise
    host = os.environ.get("EXAMPASS_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("EXAMPASS_PG_PORT", "5432"))
    user = os.environ.get("EXAMPASS_PG_USER", "exampass")
    password = os.environ.get("EXAMPASS_PG_PASSWORD", "exampass")
    try:
        admin = psycopg2.connect(
            host=host, port=port, user=user, password=password, dbname="postgres", connect_timeout=5
        )
    except psycopg2.OperationalError as exc:
        require(False, f"PostgreSQL is not reachable at {host}:{port} as {user}: {exc}".strip())
        raise
    admin.autocommit = True
    name = f"exampass_test_ui_{uuid.uuid4().hex[:10]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield PgDatabase(host, port, user, password, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def deploy_dagster_home(home: Path) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, the file the image bakes in."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    return dagster_home


@pytest.fixture()
def deploy_home() -> Callable[[Path], Path]:
    """deploy_dagster_home(home): make HOME/dagster a DAGSTER_HOME holding deploy/dagster.yaml."""
    return deploy_dagster_home
