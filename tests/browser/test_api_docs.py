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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from support import REPO_ROOT as REPO

LOOPBACK = {"127.0.0.1", "localhost"}


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
