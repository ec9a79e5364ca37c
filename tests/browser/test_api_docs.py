"""The API's /docs page, used as a person would: it renders with no network, and "Try it out" predicts.

FastAPI's stock /docs pulls Swagger UI from a CDN, which leaves a blank page on an offline or filtered school
network. This test runs the real `exampass-api` server on a trained @champion and blocks every request that
leaves the machine, so a page that still depends on a CDN fails here instead of in a classroom.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest
from support import REPO_ROOT as REPO

LOOPBACK = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def trained_home(
    tmp_path_factory: pytest.TempPathFactory,
    students: pd.DataFrame,
    child_env: Callable[..., dict[str, str]],
) -> Iterator[Path]:
    """An EXAMPASS_HOME whose MLflow registry holds a @champion, registered through the registry contract.

    A logistic regression fitted on the Kaggle file is logged and promoted exactly as the training asset does
    (registry.log_model + record_decision), minus candidate selection and MLflow's slow requirement
    inference: this test is about the page, and the API cannot tell the difference.
    """
    import mlflow
    from mlflow import MlflowClient

    from exampass_pipeline import modeling, registry, schema
    from exampass_pipeline.settings import Settings

    home = tmp_path_factory.mktemp("api-docs") / "exampass"
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("EXAMPASS_", "MLFLOW_", "DAGSTER_HOME")):
                mp.delenv(key)
        for key, value in child_env(home).items():
            mp.setenv(key, value)
        settings = Settings.from_env()
        experiment_id = registry.configure(settings)
        pipeline = modeling.build_candidates(["logistic_regression"], seed=0)["logistic_regression"]
        pipeline.fit(students[list(schema.FEATURES)], students[schema.LABEL].astype(int))
        try:
            with mlflow.start_run(experiment_id=experiment_id):
                info = registry.log_model(pipeline, 0.5, students, candidate="logistic_regression")
            registry.record_decision(
                MlflowClient(), str(info.registered_model_version), True, "registered by the browser test"
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)
    yield home


def test_docs_render_offline_and_try_it_out_predicts(
    trained_home: Path,
    servers: Callable[..., Any],
    page: Any,
    port: Callable[[], int],
    child_env: Callable[..., dict[str, str]],
    snap: Callable[..., Path],
) -> None:
    api_port = port()
    env = child_env(trained_home, EXAMPASS_API_HOST="127.0.0.1", EXAMPASS_API_PORT=str(api_port))
    api = servers("exampass-api", [str(Path(sys.executable).with_name("exampass-api"))], env)
    base = f"http://127.0.0.1:{api_port}"
    api.wait_http(f"{base}/ready", timeout_s=120)

    # The container HEALTHCHECK script, run against this real server, agrees that it is healthy.
    probe = subprocess.run(
        [sys.executable, str(REPO / "docker" / "healthcheck.py")],
        env={**os.environ, "EXAMPASS_ROLE": "api", "EXAMPASS_API_PORT": str(api_port)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr

    outside: list[str] = []

    def offline(route: Any) -> None:
        """Refuse anything not on loopback, and remember it: the page must not need it."""
        host = urlparse(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto(f"{base}/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "ExamPass" in page.locator(".swagger-ui .info .title").inner_text()

    operation = page.locator(
        ".opblock-post", has=page.locator(".opblock-summary-path", has_text=re.compile(r"^/predict$"))
    )
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    body = operation.locator("textarea.body-param__text")
    example = json.loads(body.input_value())
    assert set(example) >= {"gender", "reading_score", "writing_score"}, "the example student is pre-filled"
    operation.get_by_role("button", name="Execute").click()

    response = operation.locator(".live-responses-table .response").first
    response.wait_for()
    assert response.locator(".response-col_status").inner_text().strip() == "200"
    answer = json.loads(response.locator(".response-col_description pre").first.inner_text())
    response.scroll_into_view_if_needed()
    snap(page, "api-docs-try-it-out")

    assert 0.0 <= answer["pass_probability"] <= 1.0
    assert isinstance(answer["predicted_pass"], bool)
    assert answer["model_version"]
    assert answer["explanation"], "the answer explains itself"
    assert not outside, f"/docs tried to reach the network: {outside}"

    # The prediction the person just made is in the log that monitoring reads.
    day_file = trained_home / "logs" / "predictions" / f"{datetime.now(UTC).date().isoformat()}.jsonl"
    logged = [json.loads(line) for line in day_file.read_text().splitlines()]
    mine = [r for r in logged if r["prediction_id"] == answer["prediction_id"]]
    assert len(mine) == 1
    assert mine[0]["inputs"] == example
    assert mine[0]["pass_probability"] == pytest.approx(answer["pass_probability"])
