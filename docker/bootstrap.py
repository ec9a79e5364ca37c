"""One-shot for a fresh stack: train the first champion through Dagster's run queue, then exit.

`make run` trains with `exampass-train --if-no-champion` before it starts anything. In the Compose stack the
same must happen with nobody acting, but not in-process: the code location's runs, the nightly schedule and
the retraining sensor all write the one DuckDB file, and DuckDB admits one writer. So this script asks the
webserver (GraphQL `launchRun`, through dagster-graphql's client) to *queue* `training_job`; the daemon starts
it when the queue allows (`max_concurrent_runs: 1`, deploy/dagster.yaml), and it executes in dagster-code like
every other run, visible in the UI's run history.

Idempotent, so it can run on every `docker compose up`:
  - a champion exists in MLflow            -> exit 0 at once;
  - a training run is already queued/going -> wait for that one instead of queueing a second;
  - otherwise                              -> queue one and wait for it.
Exit 0 once `exampass-pass-classifier@champion` exists; 1 if the run failed or the gate promoted nothing.

It reads MLflow with the API's READ-only login (it only needs to see the alias) and talks to Dagster over
HTTP only. Settings: EXAMPASS_WEBSERVER_HOST/PORT (dagster-webserver:3000), EXAMPASS_CODE_LOCATION
(exampass), EXAMPASS_BOOTSTRAP_JOB (training_job), EXAMPASS_BOOTSTRAP_TIMEOUT_S (3600), and MLflow's own
MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

# The registry contract (docs/architecture.md, "Contracts to keep stable"); spelled out here rather than
# imported so this one-shot does not depend on where the package keeps its schema module.
MODEL_NAME = "exampass-pass-classifier"
CHAMPION_ALIAS = "champion"
BOOTSTRAP_TAG = ("exampass/launched-by", "bootstrap")
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")

T = TypeVar("T")

RUNS_QUERY = """
query TrainingRuns($filter: RunsFilter!) {
  runsOrError(filter: $filter, limit: 5) {
    __typename
    ... on Runs { results { runId status } }
    ... on PythonError { message }
  }
}
"""


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def retry(what: str, call: Callable[[], T], deadline: float, pause_s: float = 3.0) -> T:
    """``call()`` until it answers: right after `up` the webserver may still be loading the code location."""
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - any failure to reach a service just means "not yet"
            if time.monotonic() > deadline:
                raise SystemExit(f"[bootstrap] gave up on {what}: {exc}") from exc
            say(
                f"{what}: not yet ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
            )
            time.sleep(pause_s)


def champion_version() -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version)
    except MlflowException as exc:
        # RESOURCE_DOES_NOT_EXIST: no alias (or no model) yet. Anything else (401, 500) is a real error.
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise


def in_flight_run(url: str, job: str) -> str | None:
    """The newest training run that is queued or executing, so a re-run never queues a duplicate."""
    body = {"query": RUNS_QUERY, "variables": {"filter": {"pipelineName": job, "statuses": list(IN_FLIGHT)}}}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the stack's own webserver
        answer = json.load(response)
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL: {answer['errors'][0].get('message')}")
    runs = answer["data"]["runsOrError"]
    if runs["__typename"] != "Runs":
        raise RuntimeError(f"runsOrError: {runs.get('message', runs['__typename'])}")
    return runs["results"][0]["runId"] if runs["results"] else None


def main() -> int:
    from dagster_graphql import DagsterGraphQLClient

    host = os.environ.get("EXAMPASS_WEBSERVER_HOST", "dagster-webserver")
    port = int(os.environ.get("EXAMPASS_WEBSERVER_PORT", "3000"))
    location = os.environ.get("EXAMPASS_CODE_LOCATION", "exampass")
    job = os.environ.get("EXAMPASS_BOOTSTRAP_JOB", "training_job")
    deadline = time.monotonic() + float(os.environ.get("EXAMPASS_BOOTSTRAP_TIMEOUT_S", "3600"))

    existing = retry("MLflow", champion_version, deadline)
    if existing is not None:
        say(f"{MODEL_NAME}@{CHAMPION_ALIAS} is version {existing}: nothing to do")
        return 0

    client = retry("the Dagster webserver", lambda: DagsterGraphQLClient(host, port_number=port), deadline)
    run_id = retry("the run queue", lambda: in_flight_run(f"http://{host}:{port}/graphql", job), deadline)
    if run_id is not None:
        say(f"no champion yet; {job} run {run_id} is already queued or running: waiting for it")
    else:
        run_id = retry(
            f"queueing {job}",
            lambda: client.submit_job_execution(
                job, repository_location_name=location, tags=dict([BOOTSTRAP_TAG])
            ),
            deadline,
        )
        say(f"no champion yet: queued {job} as run {run_id} (the daemon starts it when the queue allows)")

    last = ""
    started = time.monotonic()
    while True:
        status = retry("the run's status", lambda: client.get_run_status(run_id).value, deadline)
        if status != last:
            say(f"run {run_id}: {status} after {time.monotonic() - started:.0f} s")
            last = status
        if status not in IN_FLIGHT and status != "CANCELING":
            break
        if time.monotonic() > deadline:
            say(f"run {run_id} still {status} at the deadline")
            return 1
        time.sleep(5)
    if status != "SUCCESS":
        say(
            f"run {run_id} ended {status}: see it in the Dagster UI (Runs) or `docker compose logs dagster-code`"
        )
        return 1
    version = retry("MLflow", champion_version, deadline)
    if version is None:
        say(
            f"run {run_id} succeeded but the gate promoted no champion: see model_evaluation in the Dagster UI"
        )
        return 1
    say(f"{MODEL_NAME}@{CHAMPION_ALIAS} is version {version}; the API loads it within EXAMPASS_MODEL_POLL_S")
    return 0


if __name__ == "__main__":
    sys.exit(main())
