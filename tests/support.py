"""What every test folder shares: where the repository and the Kaggle file are, and the system-deps rule.

Importable as ``support`` from any test module: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import pytest

from exampass_pipeline.contract.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
# The student the page tests (TestClient and Chromium) enter: near the pass line, so the answer has reasons.
PAGE_STUDENT: Final[dict[str, Any]] = {
    "gender": "male",
    "race_ethnicity": "group C",
    "parental_level_of_education": "high school",
    "lunch": "free/reduced",
    "test_preparation_course": "none",
    "reading_score": 55,
    "writing_score": 50,
}
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


def _find_real_csv() -> Path | None:
    """The Kaggle file, found the way `make run` finds it: EXAMPASS_DATA, then data/, then ../shared/data/."""
    candidates = [
        os.environ.get("EXAMPASS_DATA", "").strip(),
        REPO_ROOT / "data" / "StudentsPerformance.csv",
        REPO_ROOT / ".." / "shared" / "data" / "StudentsPerformance.csv",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


# Resolved once, at collection, before any test moves EXAMPASS_DATA.
REAL_CSV = _find_real_csv()
SYNTHETIC_ROWS = 1000
SYNTHETIC_SEED = 20261201


def require_real_csv() -> Path:
    """For tests whose subject *is* the real file: skip without it (fail under CI, where it must be there)."""
    if REAL_CSV is None:
        reason = "the Kaggle StudentsPerformance.csv is not on this machine and this test is about that file"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the real file is required)")
        pytest.skip(reason)
    return REAL_CSV


@functools.cache
def data_csv() -> Path:
    """The data every data-driven test uses: the real file, else a seeded synthetic sample in Kaggle format.

    Under CI the real file is required, so CI keeps testing on real data; a fresh clone without it still gets
    a passing suite on students from exampass_pipeline/ml/synthetic.py (the pytest header says which).
    """
    if REAL_CSV is not None:
        return REAL_CSV
    if in_ci():
        pytest.fail("CI=true: the Kaggle file is required (EXAMPASS_DATA, data/ or ../shared/data/)")
    from exampass_pipeline.contract import schema
    from exampass_pipeline.ml import synthetic

    frame = synthetic.sample(SYNTHETIC_ROWS, seed=SYNTHETIC_SEED)[list(schema.COLUMNS)]
    published = {ours: theirs for theirs, ours in schema.KAGGLE_HEADER.items()}
    path = Path(tempfile.mkdtemp(prefix="exampass-test-data-")) / "StudentsPerformance.csv"
    frame.rename(columns=published).to_csv(path, index=False)
    return path


def data_description() -> str:
    if REAL_CSV is not None:
        return f"exampass data: the Kaggle file at {REAL_CSV}"
    return (
        f"exampass data: NO Kaggle file found (EXAMPASS_DATA, data/, ../shared/data/): data-driven tests run on "
        f"a seeded synthetic sample of {SYNTHETIC_ROWS} students; tests about the real file skip"
    )


def load_script(relative: str) -> ModuleType:
    """A script of the repository that is not in a package (benchmarks/, deploy/), imported by its path."""
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_variables() -> tuple[str, ...]:
    """Every variable ExamPass reads (the Settings model is the only reader), so a test can clear them all."""
    from exampass_pipeline.contract.settings import env_var

    return tuple(env_var(name, field) for name, field in Settings.model_fields.items())


# Cleared by tests that point a process at a temp home, so nothing leaks in from a developer's shell.
STATE_VARS = settings_variables()


def point_at_home(mp: pytest.MonkeyPatch, home: Path, **extra: str) -> Settings:
    """This process's settings, all under ``home`` (Dagster home included), plus ``extra`` variables."""
    for name in STATE_VARS:
        mp.delenv(name, raising=False)
    mp.setenv("EXAMPASS_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    for name, value in extra.items():
        mp.setenv(name, value)
    return Settings.from_env()
