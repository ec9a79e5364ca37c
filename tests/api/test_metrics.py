"""GET /metrics against a real uvicorn with two workers: the counts are the service's, not one worker's.

Each worker counts in its own process; ``exampass-api`` gives them one PROMETHEUS_MULTIPROC_DIR and whichever
worker answers a scrape adds up every worker's files. Every request here opens a new connection, so the kernel
spreads them (and the scrapes) over both workers; a scrape that reported only its own worker would miss the
other's requests and the assertions on exact totals would fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import Registry, Server, clone_home, run_server, use_home
from prometheus_client.parser import text_string_to_metric_families

STUDENT: dict[str, Any] = {
    "gender": "female",
    "race_ethnicity": "group B",
    "parental_level_of_education": "high school",
    "lunch": "standard",
    "test_preparation_course": "none",
    "reading_score": 70,
    "writing_score": 68,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, api_registry: Registry) -> Iterator[Server]:
    """Two workers on a copy of the session registry; anonymous callers limited to 3 a minute."""
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("metrics"))
    with (
        use_home(home) as settings,
        run_server(
            settings, home.parent / "logs", workers=2, extra={"EXAMPASS_RATE_LIMIT_PUBLIC": "3/minute"}
        ) as live,
    ):
        live.wait_ready()
        yield live


def samples(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape, parsed with the client library's own parser: (sample name, labels) -> value."""
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def served_workers(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    """pid -> the version that worker serves, from the per-worker gauge."""
    return {
        dict(labels)["pid"]: v
        for (name, labels), v in scrape.items()
        if name == "exampass_model_version_served"
    }


def test_both_workers_report_their_served_version_in_one_scrape(
    server: Server, api_registry: Registry
) -> None:
    # A worker that has not loaded its first model yet reports 0; both load the champion within seconds.
    deadline = time.monotonic() + 60
    while sorted((workers := served_workers(samples(server))).values()) != [float(api_registry.champion)] * 2:
        assert time.monotonic() < deadline, f"{workers} after 60 s:\n{server.output.read_text()}"
        time.sleep(0.2)
    assert value(samples(server), "exampass_model_swaps_total") >= 2  # each worker's first load


def test_counts_add_up_across_workers(server: Server, api_registry: Registry) -> None:
    before = samples(server)
    route = {"route": "/predict", "method": "POST"}
    answered = [httpx.post(f"{server.url}/predict", json=STUDENT, headers=server.headers) for _ in range(40)]
    assert [r.status_code for r in answered] == [200] * 40
    verdicts = {"pass" if r.json()["predicted_pass"] else "fail" for r in answered}
    bad = [httpx.post(f"{server.url}/predict", json={**STUDENT, "gender": "?"}, headers=server.headers)]
    assert bad[0].status_code == 422

    # Every scrape, whichever worker answers it, sees every worker's requests.
    for _ in range(6):
        after = samples(server)
        grew = value(after, "exampass_http_requests_total", **route, status="200") - value(
            before, "exampass_http_requests_total", **route, status="200"
        )
        assert grew == 40
        assert (
            value(after, "exampass_http_requests_total", **route, status="422")
            - value(before, "exampass_http_requests_total", **route, status="422")
            == 1
        )
        predicted = sum(
            value(after, "exampass_predictions_total", model_version=api_registry.champion, verdict=v)
            - value(before, "exampass_predictions_total", model_version=api_registry.champion, verdict=v)
            for v in ("pass", "fail")
        )
        assert predicted == 40  # the refused one is neither logged nor counted as a prediction
        assert (verdicts == {"pass"}) == (
            value(after, "exampass_predictions_total", model_version=api_registry.champion, verdict="fail")
            == value(
                before, "exampass_predictions_total", model_version=api_registry.champion, verdict="fail"
            )
        )
        latency = value(after, "exampass_http_request_duration_seconds_count", route="/predict") - value(
            before, "exampass_http_request_duration_seconds_count", route="/predict"
        )
        assert latency == 41


def test_rate_limited_requests_are_counted_as_refused(server: Server) -> None:
    before = samples(server)
    # Anonymous: 3 a minute per worker (memory storage), so 2 workers allow at most 6; 12 must see refusals.
    statuses = [httpx.post(f"{server.url}/predict", json=STUDENT).status_code for _ in range(12)]
    refused = statuses.count(429)
    assert refused >= 6 and set(statuses) <= {200, 429}
    after = samples(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("exampass_http_refused_total", route="/predict", status="429") == refused
    assert grew("exampass_rate_limited_total", caller="public") == refused
    assert grew("exampass_http_requests_total", route="/predict", method="POST", status="429") == refused


def test_metrics_off_means_no_endpoint(
    tmp_path_factory: pytest.TempPathFactory, api_registry: Registry
) -> None:
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("metrics-off"))
    with (
        use_home(home) as settings,
        run_server(settings, home.parent / "logs", extra={"EXAMPASS_METRICS": "false"}) as live,
    ):
        response = httpx.get(f"{live.url}/metrics")
        assert response.status_code == 404
        assert "EXAMPASS_METRICS=false" in response.json()["detail"]


def test_a_configured_metrics_dir_that_does_not_exist_yet_is_made_before_any_metric(
    tmp_path_factory: pytest.TempPathFactory, api_registry: Registry
) -> None:
    """Compose's setting: PROMETHEUS_MULTIPROC_DIR names a directory no one has made, one worker.

    prometheus-client opens a file there when a metric is created; when the entry point imported the metrics
    at its top, every container crashed at start with FileNotFoundError. Counts land in that directory."""
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("metrics-dir"))
    metrics_dir = home.parent / "not-made-yet" / "metrics"
    with (
        use_home(home) as settings,
        run_server(
            settings, home.parent / "logs", extra={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        ) as live,
    ):
        live.wait_ready()
        assert httpx.post(f"{live.url}/predict", json=STUDENT, timeout=10.0).status_code == 200
        scrape = samples(live)
        assert (
            value(scrape, "exampass_http_requests_total", route="/predict", method="POST", status="200") == 1
        )
        assert any(metrics_dir.glob("counter_*.db")), "the counts live in the configured directory"
