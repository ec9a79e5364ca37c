"""The MLflow server is down when a retrain starts, or stops while it runs.

Training materializes in process (as `exampass-train` does) against a real `mlflow server`. Promised: the
run fails within five minutes (MLflow's HTTP retries are bounded, registry.HTTP_RETRY_POLICY) with a message
naming MLflow, no version becomes champion, and a rerun once MLflow is back succeeds.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from api_support import make_empty_registry, use_home
from faults_support import MlflowServer, wait_for
from mlflow import MlflowClient

from exampass_pipeline.cli.runs import materialize_training
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings

FAIL_WITHIN_S = 300.0


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every failure message of the run (step and run failures), with their causes."""
    texts = []
    for event in result.all_events:
        if event.event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            error = getattr(event.event_specific_data, "error", None)
            texts.append(error.to_string() if error is not None else str(event.message))
    return "\n".join(texts)


def _champion(server: MlflowServer) -> str | None:
    version = registry.champion_version(MlflowClient(tracking_uri=server.url))
    return None if version is None else str(version.version)


def _run_count(client: MlflowClient) -> int:
    experiment = client.get_experiment_by_name(registry.EXPERIMENT_NAME)
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


def _versions(server: MlflowServer) -> set[str]:
    found = MlflowClient(tracking_uri=server.url).search_model_versions(f"name = '{schema.MODEL_NAME}'")
    return {str(v.version) for v in found}


@pytest.fixture
def served(tmp_path: Path, data_file: Path) -> Iterator[tuple[MlflowServer, Settings]]:
    """A running mlflow server with an empty store, and a home whose tracking URI is that server."""
    backend = make_empty_registry(tmp_path / "server-mlflow.db")
    server = MlflowServer(tmp_path, backend)
    server.start()
    home = tmp_path / "exampass"
    home.mkdir()
    try:
        with use_home(home, MLFLOW_TRACKING_URI=server.url, EXAMPASS_DATA=str(data_file)) as settings:
            settings.ensure_dirs()
            yield server, settings
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)


def _train(settings: Settings) -> tuple[dg.ExecuteInProcessResult, float]:
    started = time.monotonic()
    with dg.instance_for_test() as instance:
        result = materialize_training(instance, settings, candidate_set="fast")
    return result, time.monotonic() - started


def test_training_with_mlflow_down_fails_naming_mlflow_and_a_rerun_works(
    served: tuple[MlflowServer, Settings],
) -> None:
    server, settings = served
    server.stop()
    result, took = _train(settings)
    assert not result.success
    assert took < FAIL_WITHIN_S, f"the run took {took:.0f} s to fail"
    assert "mlflow" in _failure_text(result).lower(), _failure_text(result)

    server.start()
    assert _champion(server) is None
    result, _ = _train(settings)
    assert result.success, _failure_text(result)
    assert _champion(server) is not None


def test_mlflow_stopping_mid_training_fails_the_run_and_keeps_the_champion(
    served: tuple[MlflowServer, Settings],
) -> None:
    server, settings = served
    result, _ = _train(settings)
    assert result.success, _failure_text(result)
    champion = _champion(server)
    assert champion is not None
    before = _versions(server)

    outcome: list[tuple[dg.ExecuteInProcessResult, float]] = []
    training = threading.Thread(target=lambda: outcome.append(_train(settings)), daemon=True)
    client = MlflowClient(tracking_uri=server.url)
    runs_before = _run_count(client)
    training.start()
    # Stop MLflow once the retrain has started talking to it: its MLflow run exists.
    wait_for(
        lambda: _run_count(client) > runs_before,
        "the retrain's MLflow run to start",
        FAIL_WITHIN_S,
        every_s=0.2,
    )
    server.stop()
    training.join(FAIL_WITHIN_S + 60)
    assert outcome, "the retrain did not finish"
    result, took = outcome[0]
    assert not result.success, "the retrain succeeded although MLflow stopped under it"
    assert took < FAIL_WITHIN_S + 60
    assert "mlflow" in _failure_text(result).lower(), _failure_text(result)

    server.start()
    assert _champion(server) == champion, "a version became champion while MLflow was down"
    new = _versions(server) - before
    result, _ = _train(settings)
    assert result.success, _failure_text(result)
    assert _champion(server) not in new, "a version from the failed run became champion"
