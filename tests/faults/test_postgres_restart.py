"""Postgres restarted under the production instance (deploy/dagster.yaml) while the webserver and daemon run.

A database restart (a minor upgrade, a failover, a container rebuild) drops every connection. Promised: the
webserver and the daemon recover by themselves, without being restarted: GraphQL answers from storage again,
and every daemon's heartbeat is written again after the restart.
Real parts: our own PostgreSQL cluster (initdb + pg_ctl on a free loopback port; the shared server on 5432 is
never touched), stopped with a fast shutdown and started again on the same port and data directory;
`dagster-webserver` and `dagster-daemon run` on the repository's workspace with deploy/dagster.yaml.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from api_support import use_home
from faults_support import BIN, REPO, Daemon, OwnPostgres, own_postgres, running_daemon, tail, wait_for

from exampass_pipeline.cli.demo import free_port

START_WITHIN_S = 600.0  # webserver and daemon each import Dagster, MLflow, Evidently on 2 busy cores
RECOVER_WITHIN_S = 300.0  # the daemon writes heartbeats every 30 s; some threads back off after an error
RUNS_QUERY = "{ runsOrError { __typename ... on Runs { results { runId } } } }"


def _runs_answer(url: str) -> str:
    """What GraphQL says about the runs: ``Runs`` when storage answered, else the error's type or text."""
    try:
        response = httpx.post(f"{url}/graphql", json={"query": RUNS_QUERY}, timeout=10)
    except httpx.HTTPError as exc:
        return f"http error: {exc!r}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    body: dict[str, Any] = response.json()
    if body.get("errors"):
        return f"graphql errors: {body['errors']}"
    return str(body["data"]["runsOrError"]["__typename"])


def _heartbeats(dagster_home: Path) -> dict[str, float]:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return {name: beat.timestamp for name, beat in instance.get_daemon_heartbeats().items()}


def _beat_since(dagster_home: Path, daemons: set[str], since: float) -> dict[str, float] | None:
    with contextlib.suppress(Exception):  # storage not answering yet counts as "not yet"
        beats = _heartbeats(dagster_home)
        if daemons <= {name for name, ts in beats.items() if ts > since}:
            return beats
    return None


def _alive(*processes: Daemon) -> bool:
    for process in processes:
        assert process.alive(), f"{process.argv[0]} exited:\n{tail(process.log)}"
    return True


def test_webserver_and_daemon_recover_from_a_postgres_restart_without_restarting(tmp_path: Path) -> None:
    home = tmp_path / "exampass"
    (home / "mlflow").mkdir(parents=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    webserver_argv = [str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml")]
    webserver_argv += ["-h", "127.0.0.1", "-p", str(port)]
    with own_postgres() as pg:
        pg.create_database("dagster")
        extra = {"DAGSTER_HOME": str(dagster_home), **pg.dagster_env("dagster", home / "dagster-storage")}
        with use_home(home, **extra):
            env = dict(os.environ)
            with dg.DagsterInstance.from_config(str(dagster_home)):
                pass  # the schema, made once before two processes race to make it
            with (
                running_daemon(env, tmp_path / "daemon.log") as daemon,
                running_daemon(env, tmp_path / "webserver.log", webserver_argv) as webserver,
            ):
                pids = (daemon.process and daemon.process.pid, webserver.process and webserver.process.pid)
                wait_for(
                    lambda: _alive(daemon, webserver) and _runs_answer(url) == "Runs",
                    f"the webserver to answer from Postgres\n{tail(webserver.log)}",
                    START_WITHIN_S,
                    every_s=1.0,
                )
                before = wait_for(
                    lambda: _alive(daemon, webserver) and _heartbeats(dagster_home),
                    f"the daemon's first heartbeats\n{tail(daemon.log)}",
                    START_WITHIN_S,
                    every_s=1.0,
                )
                _restart(pg, url, daemon, webserver)
                restarted = time.time()
                wait_for(
                    lambda: _alive(daemon, webserver) and _runs_answer(url) == "Runs",
                    f"GraphQL to answer again after the restart\n{tail(webserver.log)}",
                    RECOVER_WITHIN_S,
                    every_s=1.0,
                )
                after = wait_for(
                    lambda: _alive(daemon, webserver) and _beat_since(dagster_home, set(before), restarted),
                    f"every daemon {sorted(before)} to beat again after the restart\n{tail(daemon.log)}",
                    RECOVER_WITHIN_S,
                    every_s=2.0,
                )
                assert (
                    daemon.process and daemon.process.pid,
                    webserver.process and webserver.process.pid,
                ) == pids
    assert set(after) >= set(before)


def _restart(pg: OwnPostgres, url: str, daemon: Daemon, webserver: Daemon) -> None:
    """Stop Postgres, see the webserver lose it (so the outage was real), start it on the same port and data."""
    pg.stop()
    answer = wait_for(
        lambda: _alive(daemon, webserver) and (a := _runs_answer(url)) != "Runs" and a,
        "the webserver to notice that Postgres is down",
        60,
        every_s=0.5,
    )
    assert "Runs" != answer
    pg.start()
