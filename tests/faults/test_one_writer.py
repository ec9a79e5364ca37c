"""A CLI training run and a daemon-launched run start at once against the same DuckDB file.

DuckDB admits one writer process. The daemon's queue runs one run at a time, but `exampass-train`
materializes in its own process, outside the queue; both take the warehouse's WriterLock (an exclusive
``flock`` held for the whole run), so the second waits for the first. Promised: neither fails, and they
never write at the same time. So that both really meet the lock however their start-up times fall (a fast
training is shorter than a process's imports), the test holds the same lock as a third writer until both
runs say they wait, then lets go.
Real parts: `dagster-daemon run` on the repository's workspace (the queued run coordinator and the default
run launcher, each run its own process), `dagster job launch` to enqueue, `exampass-train` as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
from api_support import clone_home, use_home
from faults_support import BIN, REPO, FaultRegistry, running_daemon, tail, wait_for

from exampass_pipeline.io.warehouse import WriterLock

RUNS_DONE_WITHIN_S = 900.0  # two trainings one after the other, plus the daemon's start, on 2 busy cores
FAST = json.dumps({"ops": {"pass_classifier": {"config": {"candidate_set": "fast"}}}})


def _runs(dagster_home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return list(instance.get_runs())


def _all_finished(dagster_home: Path, count: int) -> list[dg.DagsterRun] | None:
    runs = _runs(dagster_home)
    done = [run for run in runs if run.is_finished]
    return runs if len(runs) == count and len(done) == count else None


def _waiting(dagster_home: Path) -> list[dg.DagsterRun] | None:
    """Both runs, once each has said in its own log that it waits for the warehouse."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = list(instance.get_runs())
        said = [
            any("waiting for the warehouse" in entry.user_message for entry in instance.all_logs(run.run_id))
            for run in runs
        ]
    return runs if len(runs) == 2 and all(said) else None


def _writing_span(dagster_home: Path, run_id: str) -> tuple[float, float]:
    """From the run's first step start to its last step end: the lock is taken before and released after."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        steps = [
            entry.timestamp
            for entry in instance.all_logs(run_id)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type
            in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS)
        ]
    assert steps, f"run {run_id} executed no step"
    return min(steps), max(steps)


def test_a_cli_run_and_a_daemon_run_started_together_both_succeed(
    fault_registry: FaultRegistry, tmp_path: Path, data_file: Path
) -> None:
    home = clone_home(fault_registry.home, tmp_path)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    _runs(dagster_home)  # creates the instance's tables once, before two processes race to create them
    # A third writer holds the real lock while both runs start, so both meet it however the start-up times fall;
    # once both wait, it lets go and the two runs must sort themselves out through the lock alone.
    gate = WriterLock(str(home / "warehouse.duckdb"))
    gate.acquire("the test, until both runs wait", 10, print)
    with use_home(home, EXAMPASS_DATA=str(data_file), DAGSTER_HOME=str(dagster_home)):
        env = dict(os.environ)
        with running_daemon(env, tmp_path / "daemon.log") as daemon:
            launched = subprocess.run(
                [str(BIN / "dagster"), "job", "launch", "-w", str(REPO / "workspace.yaml")]
                + ["-j", "training_job", "--config-json", FAST],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert launched.returncode == 0, launched.stdout + launched.stderr
            (queued,) = _runs(dagster_home)
            cli_log = tmp_path / "train.log"
            with cli_log.open("wb") as out:
                cli = subprocess.Popen(
                    [str(BIN / "exampass-train"), "--candidate-set", "fast"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for(
                    lambda: daemon.alive() and cli.poll() is None and _waiting(dagster_home),
                    f"both runs to wait for the warehouse\n{tail(tmp_path / 'daemon.log')}\n{tail(cli_log)}",
                    RUNS_DONE_WITHIN_S,
                    every_s=1.0,
                )
            finally:
                gate.release()
            assert cli.wait(RUNS_DONE_WITHIN_S) == 0, tail(cli_log)
            runs = wait_for(
                lambda: daemon.alive() and _all_finished(dagster_home, 2),
                f"both runs to finish\n{tail(tmp_path / 'daemon.log')}",
                RUNS_DONE_WITHIN_S,
                every_s=1.0,
            )
    statuses = {run.run_id: run.status for run in runs}
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses
    first, second = sorted(_writing_span(dagster_home, run.run_id) for run in runs)
    assert first[1] <= second[0], f"the two runs wrote at the same time: {first} and {second}"
