"""The registry contract: versions load with skops and our allow-list, also those logged before the move."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from support import point_at_home

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.ml import modeling, synthetic

OLD_MODULE = "exampass_pipeline.score_model"
NEW_MODULE = "exampass_pipeline.contract.score_model"


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    settings = point_at_home(monkeypatch, tmp_path / "home")
    registry.configure(settings)
    return MlflowClient()


def _score_pipeline() -> object:
    train = synthetic.sample(600, seed=3)
    pipeline = modeling.build_candidates(["score_regression"], seed=0)["score_regression"]
    return modeling.fit_pipeline(pipeline, train)


def _as_before_the_move(model_dir: Path) -> int:
    """Rewrite the skops file's class paths to the module the score model had before the packages moved, as a
    version registered then carries them; returns how many references were rewritten."""
    skops_file = next(model_dir.glob("*.skops"))
    rewritten = model_dir / "rewritten.skops"
    count = 0
    with zipfile.ZipFile(skops_file) as src, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            count += data.count(NEW_MODULE.encode())
            dst.writestr(item, data.replace(NEW_MODULE.encode(), OLD_MODULE.encode()))
    shutil.move(rewritten, skops_file)
    return count


def test_a_version_registered_before_the_packages_moved_still_loads(
    tracking: MlflowClient, tmp_path: Path
) -> None:
    pipeline = _score_pipeline()
    example = synthetic.sample(20, seed=4)
    with mlflow.start_run():
        info = registry.log_model(pipeline, 0.6, example, candidate="score_regression", register=False)
    model_dir = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    assert _as_before_the_move(model_dir) >= 1, "the skops file names the score model's module"
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="old_model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/old_model", schema.MODEL_NAME)

    loaded = registry.load_version(tracking.get_model_version(schema.MODEL_NAME, version.version), tracking)
    students = synthetic.sample(200, seed=5)
    assert type(loaded.pipeline.steps[-1][1]).__module__ == NEW_MODULE  # one class, whichever path named it
    np.testing.assert_array_equal(loaded.pass_probability(students), pipeline.predict_proba(students)[:, 1])
    assert loaded.threshold == 0.6


def test_only_mlflows_not_found_means_no_champion(tracking: MlflowClient) -> None:
    assert registry.champion_version(tracking) is None  # no model at all
    tracking.create_registered_model(schema.MODEL_NAME)
    assert registry.champion_version(tracking) is None  # a model, no alias
    assert registry.find_version(tracking, "7") is None


def test_an_unreachable_registry_is_an_error_not_an_empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(registry.RegistryError, match="MLflow registry error while reading @champion"):
        registry.champion_version(client)
    with pytest.raises(registry.RegistryError, match="MLflow registry error while reading version 3"):
        registry.find_version(client, "3")
