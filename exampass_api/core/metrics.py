"""``GET /metrics``: what the service did, in the Prometheus text format (the ``prometheus-client`` library).

What is counted, and where, so the hot path pays a few counter increments and nothing else:

* requests by route, method and status, and their latency (``routing.ApiRoute`` times every request in the
  request path it already runs; no middleware);
* requests refused at the boundary by status (401, 403, 429, 503 from the guard; 415 for a wrong media
  type), and rate-limited ones by kind of caller;
* predictions by model version and verdict, counted where they are logged (``MeteredLog``): an answered
  prediction is a logged one, so the two never disagree;
* model swaps, and the version each worker serves as a gauge (``MeteredModelStore``, at the swap).

Several workers (``EXAMPASS_API_WORKERS`` > 1) each count in their own process. ``exampass-api`` then gives
them one ``PROMETHEUS_MULTIPROC_DIR`` (made and emptied by ``metrics_dir`` before this module is imported: the
library opens its file when a metric is created), the library writes every value to a memory-mapped file
there, and whichever worker answers a scrape adds up all the files, so the counts are the service's, not one
worker's. The served-version gauge is reported per worker (a ``pid`` label) so a scrape shows a worker still
on an older version; a worker that stops cleanly removes its gauge.
The metrics are created once per process (the library's registry refuses a second metric of one name), so
apps built in one process, as tests do, share them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from exampass_api.core.metrics_dir import MULTIPROC_ENV
from exampass_api.services.model_store import ModelStore
from exampass_pipeline.contract.predlog import PredictionLog
from exampass_pipeline.contract.settings import Settings

# A /predict answer takes a few hundred microseconds, a 10,000-row roster seconds: the buckets span both.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

REQUESTS = Counter(
    "exampass_http_requests", "Requests answered, by route, method and status.", ["route", "method", "status"]
)
LATENCY = Histogram(
    "exampass_http_request_duration_seconds",
    "Time from routing to the answer, by route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
REFUSED = Counter(
    "exampass_http_refused",
    "Requests refused before their body was read (401, 403, 415, 429, 503), by route and status.",
    ["route", "status"],
)
RATE_LIMITED = Counter(
    "exampass_rate_limited", "Requests refused for a spent rate limit, by kind of caller.", ["caller"]
)
PREDICTIONS = Counter(
    "exampass_predictions",
    "Predictions answered (and logged), by model version and verdict.",
    ["model_version", "verdict"],
)
SWAPS = Counter("exampass_model_swaps", "Times a worker loaded a new champion version (its first included).")
SERVED = Gauge(
    "exampass_model_version_served",
    "The registry version each worker serves (0: none loaded yet).",
    multiprocess_mode="liveall",
)


class Meter:
    """One per app: records each request's outcome. Label children are cached, so a request costs two dict
    lookups and the increments (``labels()`` validates and locks on every call)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    def request(self, route: str, method: str, status: int, started: float) -> None:
        """One answered request to ``route``, begun at ``started`` (``time.perf_counter()``)."""
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = REQUESTS.labels(route, method, str(status))
        counter.inc()
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = LATENCY.labels(route)
        histogram.observe(time.perf_counter() - started)

    def refused(self, route: str, status: int, *, keyed: bool | None = None) -> None:
        """A request refused before its body was read; ``keyed`` says who spent a rate limit (429)."""
        REFUSED.labels(route, str(status)).inc()
        if status == 429:
            RATE_LIMITED.labels("keyed" if keyed else "public").inc()


class MeteredLog(PredictionLog):
    """The app's prediction log, counting each prediction by version and verdict once it is written.

    It writes through the log it wraps (same appenders, same records), so the log's format and its
    one-write-per-record rule are untouched; a write that fails raises before anything is counted.
    """

    def __init__(self, inner: PredictionLog) -> None:  # no base __init__: it shares inner's files
        self.inner = inner
        self.predictions = inner.predictions
        self.feedback = inner.feedback

    def log_prediction(
        self,
        inputs: Mapping[str, Any],
        pass_probability: float,
        predicted_pass: bool,
        model_version: str,
        *,
        client: str,
        prediction_id: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        record = self.inner.log_prediction(
            inputs,
            pass_probability,
            predicted_pass,
            model_version,
            client=client,
            prediction_id=prediction_id,
            at=at,
        )
        PREDICTIONS.labels(str(model_version), "pass" if predicted_pass else "fail").inc()
        return record

    def log_predictions(
        self,
        inputs: Iterable[Mapping[str, Any]],
        pass_probabilities: Iterable[float],
        predicted_passes: Iterable[bool],
        model_version: str,
        prediction_ids: Iterable[str],
        at: datetime,
        *,
        client: str,
    ) -> None:
        decisions = [bool(d) for d in predicted_passes]
        self.inner.log_predictions(
            inputs, pass_probabilities, decisions, model_version, prediction_ids, at, client=client
        )
        passed = sum(decisions)
        if passed:
            PREDICTIONS.labels(str(model_version), "pass").inc(passed)
        if len(decisions) - passed:
            PREDICTIONS.labels(str(model_version), "fail").inc(len(decisions) - passed)

    def log_feedback(
        self, prediction_id: str, math_score: int, *, client: str, at: datetime | None = None
    ) -> dict[str, Any]:
        return self.inner.log_feedback(prediction_id, math_score, client=client, at=at)

    def close(self) -> None:
        self.inner.close()


class MeteredModelStore(ModelStore):
    """The model store, counting swaps and setting this worker's served-version gauge when one happens."""

    def refresh(self) -> bool:
        swapped = super().refresh()
        if swapped and self.bundle is not None:
            SWAPS.inc()
            SERVED.set(_numeric(self.bundle.version))
        return swapped


def _numeric(version: str) -> float:
    """MLflow's registry versions are integers; anything else shows as -1 rather than failing a swap."""
    try:
        return float(int(version))
    except ValueError:
        return -1.0


def exposition() -> bytes:
    """Every metric of the service: all workers' files in multi-process mode, else this process's registry
    (which also has the library's process and platform collectors)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_stopped() -> None:
    """A worker shutting down cleanly takes its served-version gauge out of the scrape."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def meter_for(settings: Settings) -> Meter | None:
    """The app's meter, or None when EXAMPASS_METRICS=false (then nothing is counted)."""
    return Meter() if settings.metrics else None


router = APIRouter(tags=["operations"])

METRICS_OFF: Final = b'{"detail":"metrics are off (EXAMPASS_METRICS=false)"}'


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "The Prometheus text format."}},
    summary="Metrics for Prometheus",
)
async def metrics(request: Request) -> Response:
    """Requests, latency, refusals, predictions by version and verdict, swaps and the served version,
    added up over every worker of this server."""
    if request.app.state.meter is None:
        return Response(METRICS_OFF, 404, media_type="application/json")
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
