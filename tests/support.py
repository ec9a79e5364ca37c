"""What every test folder shares: where the repository and the Kaggle file are, and the system-deps rule.

Importable as ``support`` from any test module: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from exampass_pipeline.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = (REPO_ROOT / ".." / "shared" / "data" / "StudentsPerformance.csv").resolve()
INSTALL_HINT = "run `bash .ci/system-deps.sh` as root to install it"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(ok: bool, reason: str) -> None:
    """Fail in CI, skip elsewhere: a missing system dependency must never pass silently where it matters."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this is a failure, not a skip; {INSTALL_HINT})")
    pytest.skip(f"{reason}; {INSTALL_HINT}")


def require_real_csv() -> Path:
    if not REAL_CSV.exists():
        pytest.fail(f"the Kaggle file is expected at {REAL_CSV}")
    return REAL_CSV


def load_script(relative: str) -> ModuleType:
    """A script of the repository that is not in a package (benchmarks/, deploy/), imported by its path."""
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every variable that moves ExamPass state or serving: a test pointing a process at a temp home clears them all,
# so nothing leaks in from a developer's shell.
STATE_VARS = (
    "EXAMPASS_HOME",
    "EXAMPASS_DATA",
    "EXAMPASS_DUCKDB",
    "EXAMPASS_LOGS",
    "EXAMPASS_REPORTS",
    "EXAMPASS_ALERT_WEBHOOK",
    "EXAMPASS_API_HOST",
    "EXAMPASS_API_PORT",
    "EXAMPASS_API_WORKERS",
    "EXAMPASS_MODEL_POLL_S",
    "DAGSTER_HOME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
)


def point_at_home(mp: pytest.MonkeyPatch, home: Path, **extra: str) -> Settings:
    """This process's settings, all under ``home`` (Dagster home included), plus ``extra`` variables."""
    from exampass_pipeline.resources import Thresholds, threshold_env_var

    for name in (*STATE_VARS, *(threshold_env_var(field) for field in Thresholds.model_fields)):
        mp.delenv(name, raising=False)
    mp.setenv("EXAMPASS_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    for name, value in extra.items():
        mp.setenv(name, value)
    return Settings.from_env()
