"""Shared fixtures: a fresh EXAMPASS_HOME per test, and the real Kaggle file from ../shared."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from support import data_csv, data_description, point_at_home, require_real_csv

from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.ml import dataset


def pytest_report_header() -> str:
    return data_description()


@pytest.fixture(scope="session")
def real_csv() -> Path:
    """Only for tests about the Kaggle file itself; they skip without it (and fail under CI)."""
    return require_real_csv()


@pytest.fixture(scope="session")
def data_file() -> Path:
    """The data the suite runs on: the Kaggle file, or a seeded synthetic sample when it is absent."""
    return data_csv()


@pytest.fixture(scope="session")
def students(data_file: Path) -> pd.DataFrame:
    """The data file through the pipeline's own reader: typed columns, pass_math, source "kaggle".

    Shared read-only by the whole session; a test that needs to change it takes a copy.
    """
    return dataset.clean_students(dataset.read_students_csv(data_file), source="kaggle")


@pytest.fixture
def exampass_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_file: Path) -> Settings:
    """Point every setting at a temp dir: its own Dagster home, MLflow sqlite store, DuckDB file and logs."""
    settings = point_at_home(monkeypatch, tmp_path / "exampass", EXAMPASS_DATA=str(data_file))
    settings.ensure_dirs()
    return settings


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> Path:
    """One real training run (the quick `fast` candidate set) shared by the monitoring tests.

    Returns the EXAMPASS_HOME it trained in; tests copy its warehouse and point MLflow at its registry, so
    they get a champion and the stored splits without paying for training each time.
    """
    import dagster as dg

    from exampass_pipeline.cli.runs import materialize_training

    home = tmp_path_factory.mktemp("trained") / "exampass"
    with pytest.MonkeyPatch.context() as mp:
        settings = point_at_home(mp, home, EXAMPASS_DATA=str(data_file))
        with dg.instance_for_test() as instance:
            result = materialize_training(instance, settings, candidate_set="fast")
        assert result.success, "training for the shared monitoring fixture failed"
    return home


@pytest.fixture
def monitoring_home(
    exampass_home: Settings, trained_store: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A fresh home whose warehouse holds the trained splits and whose MLflow registry has a champion."""
    import shutil

    shutil.copy(trained_store / "warehouse.duckdb", exampass_home.duckdb_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained_store / 'mlflow' / 'mlflow.db'}")
    return Settings.from_env()


@pytest.fixture
def write_days(monitoring_home: Settings) -> Callable[[list[date], str, int], None]:
    """Write labelled history for ``days`` through the simulator, scored by the shared champion."""
    from exampass_pipeline.cli import simulate
    from exampass_pipeline.contract import registry

    def write(days: list[date], scenario: str, seed: int) -> None:
        registry.configure(monitoring_home)
        simulate.write_history(
            monitoring_home.logs_dir,
            registry.load_champion(),
            days,
            200,
            scenario,
            feedback_rate=1.0,
            feedback_delay_days=0,
            seed=seed,
            progress=False,
        )

    return write
