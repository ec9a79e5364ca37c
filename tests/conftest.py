"""Shared fixtures: a fresh EXAMPASS_HOME per test, and the real Kaggle file from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from exampass_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = (REPO_ROOT / ".." / "shared" / "data" / "StudentsPerformance.csv").resolve()


@pytest.fixture(scope="session")
def real_csv() -> Path:
    if not REAL_CSV.exists():
        pytest.fail(f"the Kaggle file is expected at {REAL_CSV}")
    return REAL_CSV


@pytest.fixture
def exampass_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_csv: Path) -> Settings:
    """Point every setting at a temp dir: its own Dagster home, MLflow sqlite store, DuckDB file and logs."""
    home = tmp_path / "exampass"
    monkeypatch.setenv("EXAMPASS_HOME", str(home))
    monkeypatch.setenv("EXAMPASS_DATA", str(real_csv))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "EXAMPASS_DUCKDB", "EXAMPASS_LOGS",
                 "EXAMPASS_REPORTS", "EXAMPASS_ALERT_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    settings.ensure_dirs()
    return settings
