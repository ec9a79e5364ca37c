"""The MLflow server stops while the API serves, then comes back on the same port with the same backend.

Promised: /predict keeps answering with the champion already loaded, /ready stays 200 (the API can serve) and
its body says the registry is unreachable; a version promoted after MLflow returns is served without
restarting the API.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
from api_support import Server, clone_home, run_server, use_home
from faults_support import FaultRegistry, running_mlflow, wait_for
from mlflow import MlflowClient
from support import PAGE_STUDENT

from exampass_pipeline.contract import registry

UNREACHABLE_WITHIN_S = 120.0  # a refresh waits out the bounded HTTP retries (registry.HTTP_RETRY_POLICY)


def _ready(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/ready", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _registry_problem(server: Server) -> dict[str, Any] | None:
    """/ready's body once it reports a registry problem (it must stay 200 meanwhile), else None."""
    body = _ready(server)
    return body if body["registry"] != "ok" else None


def _predicted_version(server: Server) -> str:
    response = httpx.post(f"{server.url}/predict", json=PAGE_STUDENT, headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def test_api_serves_through_an_mlflow_outage_and_follows_a_promotion_after_it(
    fault_registry: FaultRegistry, tmp_path: Path
) -> None:
    home = clone_home(fault_registry.home, tmp_path)
    backend = tmp_path / "server-mlflow.db"
    shutil.copy(home / "mlflow" / "mlflow.db", backend)
    with running_mlflow(tmp_path, backend) as mlflow_server:
        with (
            use_home(home, MLFLOW_TRACKING_URI=mlflow_server.url) as settings,
            run_server(settings, tmp_path / "logs", poll_s=0.2) as api,
        ):
            assert api.wait_ready()["model_version"] == fault_registry.v1
            assert _ready(api)["registry"] == "ok"

            mlflow_server.stop()
            body = wait_for(
                lambda: _registry_problem(api),
                "/ready to report the stopped registry",
                UNREACHABLE_WITHIN_S,
                every_s=0.5,
            )
            assert body["registry"].startswith("unreachable"), body
            assert "MLflow" in body["registry"], body
            assert body["model_version"] == fault_registry.v1
            for _ in range(5):
                assert _predicted_version(api) == fault_registry.v1

            mlflow_server.start()
            registry.record_decision(
                MlflowClient(tracking_uri=mlflow_server.url), fault_registry.v2, True, "fault test"
            )
            wait_for(
                lambda: _ready(api)["model_version"] == fault_registry.v2,
                "the API to serve the version promoted after MLflow returned",
                UNREACHABLE_WITHIN_S,
                every_s=0.2,
            )
            assert _ready(api)["registry"] == "ok"
            assert _predicted_version(api) == fault_registry.v2
            assert api.process.poll() is None
