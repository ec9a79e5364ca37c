"""Fixtures for the prediction service tests: real data, every real candidate, one real MLflow registry.

Training and registering are the slow parts, so they happen once per session; helpers live in api_support.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from api_support import (
    ALL_CANDIDATES,
    CHAMPION_THRESHOLD,
    OpenApp,
    Registry,
    make_empty_registry,
    new_home,
    register,
    use_home,
)
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_limits

from exampass_api.app import create_app
from exampass_pipeline.contract import schema
from exampass_pipeline.ml import modeling


@pytest.fixture(scope="session")
def records(students: pd.DataFrame) -> list[dict[str, Any]]:
    """Every row of the real file as an API request body (plain ints and strings)."""
    return [
        {k: (int(v) if k in schema.NUMERIC_FEATURES else str(v)) for k, v in row.items()}
        for row in students[list(schema.FEATURES)].to_dict("records")
    ]


@pytest.fixture(scope="session")
def fitted(students: pd.DataFrame) -> dict[str, Any]:
    """Every candidate the training asset can choose (modeling.CANDIDATES), fitted once on the train split."""
    train = modeling.split_students(students, seed=42).train
    with threadpool_limits(limits=1):
        candidates = modeling.build_candidates(ALL_CANDIDATES, seed=42)
        for pipeline in candidates.values():
            modeling.fit_pipeline(pipeline, train)
    return candidates


@pytest.fixture(scope="session")
def empty_registry_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow sqlite file to copy into each new home."""
    return make_empty_registry(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")


@pytest.fixture(scope="session")
def api_registry(
    tmp_path_factory: pytest.TempPathFactory,
    fitted: dict[str, Any],
    empty_registry_db: Path,
    students: pd.DataFrame,
) -> Registry:
    """Every candidate registered once; logistic regression promoted. Enter ``use_home`` to talk to it."""
    home = new_home(tmp_path_factory.mktemp("api-registry"), empty_registry_db)
    versions: dict[str, str] = {}
    with use_home(home) as settings:
        versions["logistic_regression"] = register(
            settings,
            fitted["logistic_regression"],
            students,
            candidate="logistic_regression",
            threshold=CHAMPION_THRESHOLD,
        )
        for name in ALL_CANDIDATES:
            if name != "logistic_regression":
                versions[name] = register(settings, fitted[name], students, candidate=name, promote=False)
    return Registry(settings, versions, versions["logistic_regression"], CHAMPION_THRESHOLD)


@pytest.fixture
def open_app(api_registry: Registry, tmp_path: Path) -> Iterator[Callable[..., OpenApp]]:
    """Open apps with extra settings per call (e.g. EXAMPASS_PUBLIC_PREDICT=false); all closed after the test."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(base_url: str = "http://testserver", **extra: str) -> OpenApp:
            nonlocal count
            logs, keys = tmp_path / f"logs{count}", tmp_path / f"keys{count}" / "api_keys.json"
            count += 1
            env = {"EXAMPASS_LOGS": str(logs), "EXAMPASS_API_KEYS_FILE": str(keys), **extra}
            settings = stack.enter_context(use_home(api_registry.settings.home, **env))
            client = stack.enter_context(TestClient(create_app(settings), base_url=base_url))
            return OpenApp(client, logs, keys)

        yield make
