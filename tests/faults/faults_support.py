"""Real processes to make fail: an `mlflow server` that can be stopped and started again, a tmpfs to fill.

The API itself runs through the API tests' own helper (``api_support.run_server``: ``python -m exampass_api``
under uvicorn on a free loopback port), so a fault test exercises exactly the process the API tests do.
Nothing here imitates a failure: a stopped server refuses connections, a full tmpfs returns ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

# The API tests' helpers (registries, real uvicorn servers) are reused, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from exampass_pipeline.cli.demo import free_port  # noqa: E402

START_TIMEOUT_S = 180.0  # mlflow server imports for many seconds on a busy 2-core machine


@dataclass(frozen=True)
class FaultRegistry:
    """An EXAMPASS_HOME with ``v1`` behind @champion and ``v2`` registered but not promoted."""

    home: Path
    v1: str
    v2: str


def wait_for(
    condition: Callable[[], Any], what: str, timeout_s: float = 60.0, *, every_s: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class MlflowServer:
    """`mlflow server` on one loopback port and one sqlite backend, stoppable and restartable in place.

    The backend may be a copy of a registry written through sqlite: its artifacts keep their local paths,
    which every client on this machine reads directly (``--no-serve-artifacts``).
    """

    def __init__(self, root: Path, backend: Path, port: int | None = None) -> None:
        self.root = root
        self.backend = backend
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"mlflow-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)),
            *("--workers", "1", "--backend-store-uri", f"sqlite:///{self.backend}"),
            *("--default-artifact-root", str(self.root / "artifacts"), "--no-serve-artifacts"),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(
            self._healthy, f"mlflow server on {self.url}\n{tail(self.log)}", START_TIMEOUT_S, every_s=0.25
        )

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited with {self.process.returncode}:\n{tail(self.log)}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        return False

    def stop(self) -> None:
        """The whole process group (the server runs uvicorn workers as children); then the port is free."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        wait_for(self._refused, f"port {self.port} to refuse connections", 30)

    def _refused(self) -> bool:
        try:
            httpx.get(f"{self.url}/health", timeout=1)
        except httpx.HTTPError:
            return True
        return False


@contextlib.contextmanager
def running_mlflow(root: Path, backend: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(root, backend)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory``: a real file system that really fills up.

    Mounting needs root (or CAP_SYS_ADMIN); without it the test is skipped with that reason.
    """
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file in ``directory`` until its file system refuses another byte (ENOSPC)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0")
    return filler


BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


class Daemon:
    """`dagster-daemon run` on the repository's workspace, against the instance in ``env["DAGSTER_HOME"]``.

    With ``argv``, another long-running Dagster process on the same terms (the webserver).
    """

    def __init__(self, env: dict[str, str], log: Path, argv: list[str] | None = None) -> None:
        self.env = env
        self.log = log
        self.argv = argv or [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def running_daemon(env: dict[str, str], log: Path, argv: list[str] | None = None) -> Iterator[Daemon]:
    daemon = Daemon(env, log, argv)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


PG_BIN = Path("/usr/lib/postgresql")


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster of our own (initdb in a temp dir, its own loopback port): ours to stop and start.

    The system server on 5432 is shared and never touched. The cluster runs as the ``postgres`` user when we
    are root (the server refuses to run as root); trust authentication on loopback, so any password works.
    """

    root: Path
    port: int
    user: str = "exampass"

    @classmethod
    def create(cls) -> OwnPostgres:
        versions = sorted(PG_BIN.glob("*/bin/initdb"))
        if not versions:
            pytest.skip("PostgreSQL server binaries are not installed (Debian package postgresql)")
        root = Path(tempfile.mkdtemp(prefix="exampass-faults-pg-"))
        server = cls(root, free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        server._as_owner(
            str(versions[-1]), "-D", str(root / "data"), "-U", server.user, "--auth=trust", "--no-sync"
        )
        return server

    def _as_owner(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}\n{tail(self.log)}"
        return done

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def _pg_ctl(self, *args: str) -> None:
        pg_ctl = str(sorted(PG_BIN.glob("*/bin/pg_ctl"))[-1])
        self._as_owner(pg_ctl, "-D", str(self.root / "data"), "-l", str(self.log), "-w", "-t", "120", *args)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._pg_ctl("-o", options, "start")

    def stop(self) -> None:
        """A fast shutdown: the server drops every connection, as a restart in production does."""
        self._pg_ctl("-m", "fast", "stop")

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def dagster_env(self, db: str, storage_dir: Path) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads, pointed at this cluster."""
        return {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": self.user,
            "DAGSTER_POSTGRES_PASSWORD": "unused-with-trust",
            "DAGSTER_POSTGRES_DB": db,
            "DAGSTER_STORAGE_DIR": str(storage_dir),
        }

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(AssertionError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres.create()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
