"""Everything ExamPass creates under EXAMPASS_HOME is owner-only: files 0600, folders 0700.

The logs, the warehouse, the reports, the key store and the MLflow store all hold students' backgrounds.
The test starts from a permissive umask (022, the usual default) so that it is the product, not the test
process, that makes the files private.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from exampass_api.app import create_app
from exampass_api.core.keystore import create_key
from exampass_pipeline.cli import simulate
from exampass_pipeline.cli.runs import materialize_monitoring, materialize_training
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import Settings


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_everything_under_the_home_is_owner_only(exampass_home: Settings, permissive_umask: None) -> None:
    home = exampass_home.home
    home.chmod(0o755)  # as an older version, or another tool, may have left it
    day = datetime.now(UTC).date() - timedelta(days=1)
    with dg.instance_for_test() as instance:
        assert materialize_training(instance, exampass_home, candidate_set="fast").success
        registry.configure(exampass_home)
        simulate.write_history(
            exampass_home.logs_dir, registry.load_champion(), [day], 60, seed=1, feedback_delay_days=0,
            progress=False,
        )  # fmt: skip
        assert materialize_monitoring(instance, exampass_home, day.isoformat()).success
    token = create_key(exampass_home.api_keys_file, "grades-export", ["feedback"])
    with TestClient(create_app(exampass_home)) as client:
        student = {
            "gender": "female", "race_ethnicity": "group A", "parental_level_of_education": "high school",
            "lunch": "standard", "test_preparation_course": "none", "reading_score": 60, "writing_score": 61,
        }  # fmt: skip
        pid = client.post("/predict", json=student).json()["prediction_id"]
        headers = {"Authorization": f"Bearer {token}"}
        assert (
            client.post(
                "/feedback", json={"prediction_id": pid, "math_score": 58}, headers=headers
            ).status_code
            == 202
        )

    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    loose: list[str] = []
    seen = {"files": 0, "dirs": 0}
    for path in [*home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        seen["dirs" if path.is_dir() else "files"] += 1
        if mode & 0o077:
            loose.append(f"{oct(mode)} {path.relative_to(home)}")
    assert not loose, "readable by others:\n" + "\n".join(loose)
    # The walk really covered the parts the issue names.
    names = {p.name for p in home.rglob("*")}
    assert {"warehouse.duckdb", "mlflow.db", "api_keys.json"} <= names
    assert any(p.suffix == ".jsonl" for p in home.rglob("*")) and any(
        p.suffix == ".html" for p in home.rglob("*")
    )
    assert seen["files"] > 20 and seen["dirs"] > 5
