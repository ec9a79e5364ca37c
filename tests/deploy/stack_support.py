"""The stack the tests in this folder drive: one Compose project through deploy/stack.sh, and how to talk to it.

Shared by tests/deploy/test_stack.py (a fresh stack, state that survives, backup and restore) and
tests/deploy/test_stack_replicas.py (two replicas behind the proxy); the session fixtures that bring the one
stack up and down are in tests/deploy/conftest.py, so both modules use the same stack.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import PAGE_STUDENT, REPO_ROOT

STACK_SCRIPT = REPO_ROOT / "deploy" / "stack.sh"
# A cold machine builds four stand-in images and the ExamPass image, then trains: allow for all of it.
UP_TIMEOUT_S = 3000
MODEL_NAME = "exampass-pass-classifier"
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_PIPELINE_PASSWORD",
    "MLFLOW_API_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
# What may pass from this process to the stack script: the machine, not a developer's ExamPass settings.
PASSED_THROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "XDG_CACHE_HOME",
    "EXAMPASS_STANDIN_CACHE",
    "EXAMPASS_DEBIAN_MIRROR",
    "EXAMPASS_DEBIAN_SECURITY",
    "EXAMPASS_BUILD_CA",
    "EXAMPASS_DATA_DIR",
)
TIMINGS_FILE = REPO_ROOT / "test-artifacts" / "stack-timings.json"

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ helpers
def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 2.0) -> T:
    """``probe()`` until it returns something other than None/False; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last_error = f" (last: {type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s{last_error}")
        time.sleep(every_s)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers); header names lower-cased, since nginx and uvicorn spell them differently."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own stack
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_engine() -> tuple[bool, str]:
    if shutil.which("docker") is None:
        return False, "no Docker client is installed (Debian: apt-get install docker.io docker-compose)"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return False, f"no Docker engine answers (`docker info`: {done.stderr.strip()[:200]}); start dockerd"
    return True, ""


@dataclass
class Stack:
    """One Compose project driven through deploy/stack.sh, on its own env file and host ports."""

    project: str
    env_file: Path
    log_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    feedback_token: str | None = None

    @classmethod
    def fresh(cls, project: str, folder: Path) -> Stack:
        folder.mkdir(parents=True, exist_ok=True)
        ports = {"api": free_port(), "dagster": free_port(), "mlflow": free_port()}
        return cls(project=project, env_file=folder / "stack.env", log_dir=folder, ports=ports)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            EXAMPASS_ENV_FILE=str(self.env_file),
            API_PUBLISHED_PORT=str(self.ports["api"]),
            DAGSTER_PUBLISHED_PORT=str(self.ports["dagster"]),
            MLFLOW_PUBLISHED_PORT=str(self.ports["mlflow"]),
            # The API looks for a new champion every 5 s instead of 30: readiness follows training sooner.
            EXAMPASS_MODEL_POLL_S="5",
        )
        return env

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        """deploy/stack.sh ARGS; its output also goes to a log file beside the env file, for a failed run."""
        done = subprocess.run(
            ["bash", str(STACK_SCRIPT), *args],
            cwd=REPO_ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with (self.log_dir / "stack.log").open("a") as log:
            log.write(f"$ deploy/stack.sh {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            pytest.fail(
                f"deploy/stack.sh {' '.join(args)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-4000:]}"
            )
        return done

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("compose", *args, timeout=timeout, check=check)

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def secret(self, name: str) -> str:
        values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", self.env_file.read_text(), flags=re.M))
        return values[name]

    def states(self) -> dict[str, dict[str, Any]]:
        """Service -> its container's state, health, restart policy and id, from `docker inspect`."""
        ids = self.compose("ps", "-a", "-q").stdout.split()
        assert ids, f"project {self.project} has no containers"
        inspected = json.loads(
            subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout
        )
        return {
            c["Config"]["Labels"]["com.docker.compose.service"]: {
                "status": c["State"]["Status"],
                "health": (c["State"].get("Health") or {}).get("Status"),
                "exit": c["State"]["ExitCode"],
                "restart": c["HostConfig"]["RestartPolicy"]["Name"],
                "id": c["Id"],
            }
            for c in inspected
            if c["Config"]["Labels"].get("com.docker.compose.oneoff", "False").lower() != "true"
        }

    # -- what a person sees ----------------------------------------------------------------------------
    def predict(self) -> dict[str, Any]:
        status, body, _ = http(
            "POST",
            self.url("api", "/predict"),
            json.dumps(PAGE_STUDENT).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, body
        return dict(json.loads(body))

    def champion(self) -> str:
        """@champion's version as MLflow's registry says, asked as the admin."""
        status, body, _ = http(
            "GET",
            self.url("mlflow", f"/api/2.0/mlflow/registered-models/alias?name={MODEL_NAME}&alias=champion"),
            headers=basic("admin", self.secret("MLFLOW_ADMIN_PASSWORD")),
        )
        assert status == 200, body
        return str(json.loads(body)["model_version"]["version"])

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        status, body, _ = http(
            "POST",
            self.url("dagster", "/graphql"),
            json.dumps({"query": query, "variables": variables or {}}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, body
        answer = json.loads(body)
        assert not answer.get("errors"), answer
        return dict(answer["data"])

    def runs(self) -> dict[str, dict[str, Any]]:
        """Every Dagster run: id -> job, status and tags (the run history the UI shows)."""
        data = self.graphql(
            "{ runsOrError(limit: 500) { ... on Runs { results { runId jobName status tags { key value } } } } }"
        )
        return {
            r["runId"]: {
                "job": r["jobName"],
                "status": r["status"],
                "tags": {t["key"]: t["value"] for t in r["tags"]},
            }
            for r in data["runsOrError"]["results"]
        }

    def feedback(self, token: str | None) -> int:
        prediction_id = self.predict()["prediction_id"]
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = json.dumps({"prediction_id": prediction_id, "math_score": 63}).encode()
        return http("POST", self.url("api", "/feedback"), body, headers)[0]

    def prediction_log_lines(self) -> int:
        done = self.compose(
            "exec", "-T", "api", "sh", "-c", "cat /var/lib/exampass/logs/predictions/*.jsonl | wc -l"
        )
        return int(done.stdout.strip().splitlines()[-1])

    def snapshot(self) -> dict[str, Any]:
        """The state that must outlive restarts and restores, read back through the services themselves."""
        status, body, _ = http("GET", self.url("api", "/ready"))
        assert status == 200, body
        return {
            "champion": self.champion(),
            "served": json.loads(body)["model_version"],
            "runs": {run_id: run["status"] for run_id, run in self.runs().items()},
            "log_lines": self.prediction_log_lines(),
        }


def feedback_token(stack: Stack) -> str:
    """A key with the `feedback` scope, made once by `exampass-apikey` inside the api container."""
    if stack.feedback_token is None:
        done = stack.compose(
            "exec", "-T", "api", "exampass-apikey", "create", "grades-export", "--scope", "feedback"
        )
        assert "created key 'grades-export'" in done.stdout, done.stdout + done.stderr
        stack.feedback_token = done.stdout.strip().splitlines()[-1]
    return stack.feedback_token


def assert_all_healthy(stack: Stack) -> dict[str, dict[str, Any]]:
    services = set(stack.compose("config", "--services").stdout.split())
    states = stack.states()
    assert set(states) == services, f"services without a container: {services - set(states)}"
    for name, state in states.items():
        if state["restart"] == "no":
            assert (state["status"], state["exit"]) == ("exited", 0), f"one-shot {name}: {state}"
        else:
            assert (state["status"], state["health"]) == ("running", "healthy"), f"{name}: {state}"
    return states
