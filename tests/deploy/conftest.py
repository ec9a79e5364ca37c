"""Fixtures for the deployment tests: the deploy files, docker-compose, and a loopback Postgres.

The system pieces (docker-compose, PostgreSQL) come from Debian via .ci/system-deps.sh. When one is missing
the tests FAIL under CI=true, so a broken CI image can never turn into a green run that tested nothing; on a
developer machine they skip and say which command installs the missing piece.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from stack_support import TIMINGS_FILE, UP_TIMEOUT_S, Stack, docker_engine
from support import REPO_ROOT as REPO
from support import require


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def compose_bin() -> str:
    path = shutil.which("docker-compose")
    require(path is not None, "docker-compose (Debian package docker-compose 1.29) is not installed")
    assert path is not None
    return path


ENV_EXAMPLE = REPO / ".env.example"


def compose_environment(**overrides: str) -> dict[str, str]:
    """A clean environment for docker-compose: this machine's variables must not stand in for the file's."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL"}}
    env.update(overrides)
    return env


class Compose(Protocol):
    def __call__(
        self, *args: str, env_file: Path = ..., **overrides: str
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def compose(compose_bin: str) -> Compose:
    """Runs `docker-compose --env-file F -f docker-compose.yml ARGS`; variables in ``overrides`` beat the file.

    The env file is always explicit (default: the committed .env.example): a developer's own git-ignored `.env`
    must never decide a test.
    """

    def run(*args: str, env_file: Path = ENV_EXAMPLE, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [compose_bin, "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=compose_environment(**overrides),
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def compose_config(compose: Compose) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it: anchors merged, variables interpolated, paths absolute.

    Assertions run against this rather than the raw YAML so they judge what Compose would actually start. The
    variables are the committed .env.example and nothing else, so the documented defaults are under test.
    """
    done = compose("config")
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


# -------------------------------------------------------------------------------------------- Postgres
@dataclass(frozen=True)
class PgServer:
    """The loopback PostgreSQL that .ci/system-deps.sh starts, with the role it creates (CREATEDB)."""

    host: str
    port: int
    user: str
    password: str

    def url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def dagster_env(self, db: str, storage_dir: Path) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads, pointed at this server."""
        return {
            "DAGSTER_POSTGRES_HOST": self.host,
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "DAGSTER_POSTGRES_DB": db,
            "DAGSTER_STORAGE_DIR": str(storage_dir),
        }

    def connect(self, db: str = "postgres") -> Any:
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db,
            connect_timeout=5,
        )


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    server = PgServer(
        host=os.environ.get("EXAMPASS_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("EXAMPASS_PG_PORT", "5432")),
        user=os.environ.get("EXAMPASS_PG_USER", "exampass"),
        password=os.environ.get("EXAMPASS_PG_PASSWORD", "exampass"),
    )
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - the dependency is declared; this only explains a broken venv
        require(False, "psycopg2 is not installed in the virtualenv (pip install psycopg2-binary)")
        raise
    try:
        server.connect().close()
    except psycopg2.OperationalError as exc:
        require(
            False,
            f"PostgreSQL is not reachable at {server.host}:{server.port} as {server.user}: {exc}".strip(),
        )
    return server


@pytest.fixture()
def pg_databases(pg_server: PgServer) -> Iterator[dict[str, str]]:
    """Two fresh databases (dagster, mlflow) for one test, dropped afterwards whatever happened.

    Fresh per test so a run never sees the history of an earlier one; separate because Dagster and MLflow both
    own a table called `runs`.
    """
    suffix = uuid.uuid4().hex[:10]
    names = {"dagster": f"exampass_test_dagster_{suffix}", "mlflow": f"exampass_test_mlflow_{suffix}"}
    admin = pg_server.connect()
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# ------------------------------------------------------------------------ the one stack the stack tests share
@pytest.fixture(scope="session")
def timings() -> Iterator[dict[str, float]]:
    """Wall-clock figures of this run (docs/deployment.md quotes them), written to test-artifacts/."""
    figures: dict[str, float] = {}
    yield figures
    if figures:
        TIMINGS_FILE.parent.mkdir(exist_ok=True)
        TIMINGS_FILE.write_text(json.dumps(figures, indent=1) + "\n")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Iterator[Stack]:
    ok, reason = docker_engine()
    require(ok, reason)
    name = f"exampass-test-{uuid.uuid4().hex[:8]}"
    the_stack = Stack.fresh(name, tmp_path_factory.mktemp("stack"))
    try:
        started = time.monotonic()
        the_stack.run("up", timeout=UP_TIMEOUT_S)
        timings["stack_up_s"] = round(time.monotonic() - started, 1)
        yield the_stack
    finally:
        the_stack.run("down", "--volumes", timeout=600, check=False)


@pytest.fixture(scope="session")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second, empty project for the restore; removed with its volumes at the end."""
    the_stack = Stack.fresh(
        f"exampass-test-{uuid.uuid4().hex[:8]}-restored", tmp_path_factory.mktemp("restored")
    )
    try:
        yield the_stack
    finally:
        the_stack.run("down", "--volumes", timeout=600, check=False)
