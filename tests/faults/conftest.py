"""Fixtures for the fault tests: one small real registry (two versions, the first the champion).

Registering costs seconds, so it happens once per session; each test serves a *copy* of it (``clone_home``),
so a test that promotes or breaks something leaves the others their own registry.
"""

from __future__ import annotations

from faults_support import FaultRegistry  # first: it puts the API tests' helpers (api_support) on the path

# isort: split
import pandas as pd
import pytest
from api_support import make_empty_registry, new_home, register, use_home
from threadpoolctl import threadpool_limits

from exampass_pipeline.ml import modeling


@pytest.fixture(scope="session")
def fault_registry(tmp_path_factory: pytest.TempPathFactory, students: pd.DataFrame) -> FaultRegistry:
    template = make_empty_registry(tmp_path_factory.mktemp("faults-mlflow-template") / "mlflow.db")
    home = new_home(tmp_path_factory.mktemp("faults-registry"), template)
    train = modeling.split_students(students, seed=42).train
    with threadpool_limits(limits=1):
        pipeline = modeling.build_candidates(["logistic_regression"], seed=42)["logistic_regression"]
        modeling.fit_pipeline(pipeline, train)
    with use_home(home) as settings:
        v1 = register(settings, pipeline, students, candidate="logistic_regression", threshold=0.6)
        v2 = register(
            settings, pipeline, students, candidate="logistic_regression", threshold=0.55, promote=False
        )
    return FaultRegistry(home, v1, v2)


def pytest_configure(config: pytest.Config) -> None:
    """``slow``: a fault test that runs the real daemon through many runs (minutes); ``-m "not slow"`` skips it."""
    config.addinivalue_line("markers", "slow: runs the real daemon through many runs; takes minutes")
