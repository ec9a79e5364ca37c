"""Loading, polling and refusing: what the model store does when the registry changes under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from api_support import Registry, clone_home, use_home
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from exampass_api.services.model_store import NO_CHAMPION, ModelStore
from exampass_pipeline.contract import registry, schema


def _register_unservable(students: pd.DataFrame) -> str:
    """A model whose encoder never saw 'group A' and refuses unknown categories: it cannot serve every request."""
    without_a = students[students[schema.RACE_ETHNICITY] != "group A"]
    pipeline = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        (
                            "categorical",
                            OneHotEncoder(handle_unknown="error"),
                            list(schema.CATEGORICAL_FEATURES),
                        ),
                        ("numeric", StandardScaler(), list(schema.NUMERIC_FEATURES)),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    ).fit(without_a[list(schema.FEATURES)], without_a[schema.LABEL])
    with mlflow.start_run():
        info = registry.log_model(pipeline, 0.5, without_a.head(5), candidate="unservable")
    version = str(info.registered_model_version)
    registry.record_decision(MlflowClient(), version, True, "test")
    return version


def test_a_version_that_cannot_serve_never_replaces_the_champion(
    api_registry: Registry, tmp_path: Path, students: pd.DataFrame
) -> None:
    home = clone_home(api_registry.settings.home, tmp_path)
    with use_home(home) as settings:
        store = ModelStore(settings, poll_s=60)
        assert store.refresh_safely() is True
        assert store.bundle is not None and store.bundle.version == api_registry.champion
        serving = store.bundle

        broken = _register_unservable(students)
        assert str(registry.champion_version().version) == broken  # type: ignore[union-attr]
        assert store.refresh_safely() is False
        assert store.bundle is serving  # untouched: still answering with the old champion
        assert store.last_error is None  # something is served, so /ready stays 200
        # Backed off: the next poll does not download the broken version again.
        retry_at, delay = store._retry[broken]
        assert delay == 60 and store.refresh_safely() is False and store._retry[broken][0] == retry_at

        # A fresh process with only the broken champion: not ready, and it says why.
        fresh = ModelStore(settings, poll_s=60)
        assert fresh.refresh_safely() is False
        assert fresh.bundle is None
        reason = fresh.unavailable_reason
        assert reason.startswith(NO_CHAMPION) and "group A" in reason and "ModelNotServable" in reason

        # Promoting a good version again is picked up at the next poll.
        registry.record_decision(MlflowClient(), api_registry.versions["random_forest"], True, "fixed")
        assert fresh.refresh_safely() is True
        assert fresh.bundle is not None and fresh.bundle.model.candidate == "random_forest"
        assert fresh.unavailable_reason == NO_CHAMPION and fresh.last_error is None


def test_bad_poll_interval_is_refused(api_registry: Registry) -> None:
    with pytest.raises(ValueError, match="EXAMPASS_MODEL_POLL_S"):
        ModelStore(api_registry.settings, poll_s=0)


def test_the_served_bundle_describes_its_version(api_registry: Registry, tmp_path: Path) -> None:
    home = clone_home(api_registry.settings.home, tmp_path)
    with use_home(home) as settings:
        store = ModelStore(settings, poll_s=60)
        assert store.refresh_safely()
        info: dict[str, Any] = store.bundle.info  # type: ignore[union-attr]
    assert info["version"] == api_registry.champion
    assert info["threshold"] == api_registry.threshold
    assert info["scorer"] == "linear"
    assert set(info["test_metrics"]) == set(schema.TEST_METRICS)
