"""A training run SIGKILLed mid-way, while the API serves the champion from the same registry.

`exampass-train` runs as its own process and is killed with SIGKILL the moment its new model version appears
in the registry: registered, but not yet judged (the evaluation step writes the verdict, and moves the alias,
last). Promised: the half-finished version is never served (the alias does not move, the API keeps answering
with the old champion), and the next run succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from api_support import clone_home, run_server, use_home
from faults_support import FaultRegistry, tail, wait_for
from mlflow import MlflowClient
from support import PAGE_STUDENT

from exampass_pipeline.contract import registry, schema

TRAIN_TIMEOUT_S = 600.0
TRAIN = str(Path(sys.executable).with_name("exampass-train"))


def _versions(client: MlflowClient) -> dict[str, dict[str, str]]:
    found = client.search_model_versions(f"name = '{schema.MODEL_NAME}'")
    return {str(v.version): dict(v.tags) for v in found}


def _train(log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [TRAIN, "--candidate-set", "fast"], env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT
        )


def test_a_sigkilled_training_run_serves_nothing_half_registered_and_the_next_run_succeeds(
    fault_registry: FaultRegistry, tmp_path: Path, data_file: Path
) -> None:
    home = clone_home(fault_registry.home, tmp_path)
    with (
        use_home(home, EXAMPASS_DATA=str(data_file)) as settings,
        run_server(settings, tmp_path / "logs") as api,
    ):
        assert api.wait_ready()["model_version"] == fault_registry.v1
        client = MlflowClient()
        known = set(_versions(client))
        log = tmp_path / "train.log"
        process = _train(log)
        try:
            new = wait_for(
                lambda: set(_versions(client)) - known or process.poll() is not None,
                f"the run to register a version\n{tail(log)}",
                TRAIN_TIMEOUT_S,
                every_s=0.05,
            )
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed\n{tail(log)}"
        assert isinstance(new, set)
        (killed,) = new

        after = registry.champion_version(client)
        assert after is not None and str(after.version) == fault_registry.v1, "the alias moved"
        assert "champion_decision" not in _versions(client)[killed], "killed too late: the run was judged"
        ready = httpx.get(f"{api.url}/ready", timeout=10).json()
        assert ready["model_version"] == fault_registry.v1, ready
        answer = httpx.post(f"{api.url}/predict", json=PAGE_STUDENT, headers=api.headers, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == fault_registry.v1

        rerun = _train(log)
        assert rerun.wait(TRAIN_TIMEOUT_S) == 0, tail(log)
        champion = registry.champion_version(client)
        assert champion is not None and str(champion.version) != killed, (
            "the killed run's version was promoted"
        )
        expected = str(champion.version)
        wait_for(
            lambda: httpx.get(f"{api.url}/ready", timeout=10).json().get("model_version") == expected,
            "the API to serve the champion after the rerun",
            60,
        )
