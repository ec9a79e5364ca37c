"""Live traffic: synthetic students sent to a running API, and their true outcomes reported back.

``exampass-simulate --api URL`` (see ``simulate``) calls ``drive_api``; so do the demo and the benchmarks.
It is an ordinary HTTP client: it authenticates with a key like any other, and counts refusals as a real
client population would meet them, instead of stopping at the first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import synthetic

MAX_BATCH = 1000  # the API's /predict/batch limit


def check_common(scenario: str, feedback_rate: float) -> None:
    if scenario not in synthetic.SCENARIOS:
        raise ValueError(
            f"scenario: unknown scenario {scenario!r}; allowed: {', '.join(synthetic.SCENARIOS)}"
        )
    if not 0.0 <= feedback_rate <= 1.0:
        raise ValueError(f"feedback_rate: must be between 0 and 1, got {feedback_rate}")


def inputs_of(row: Mapping[Any, Any]) -> dict[str, Any]:
    """JSON-native feature values (str and int), as an API client would send them."""
    return {name: str(row[name]) if name in schema.CATEGORIES else int(row[name]) for name in schema.FEATURES}


def feedback_count(n: int, rate: float) -> int:
    return int(round(n * rate))


@dataclass
class ApiSummary:
    """The outcome of driving a live API: counts, versions that answered, latency and the first failure."""

    url: str
    scenario: str
    predictions: int = 0
    feedback: int = 0
    errors: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    model_versions: dict[str, int] = field(default_factory=dict)
    predicted_pass_rate: float = float("nan")
    true_pass_rate: float = float("nan")
    latency_ms_p50: float = float("nan")
    latency_ms_p95: float = float("nan")
    prediction_ids: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        """Count an HTTP error; the first one is kept, with its body, to say what went wrong."""
        self.errors += 1
        self.first_error = self.first_error or message

    def record_answers(self, answered: list[tuple[int, dict[str, Any]]], math: np.ndarray) -> None:
        self.predictions = len(answered)
        for _, pred in answered:
            version = str(pred.get("model_version"))
            self.model_versions[version] = self.model_versions.get(version, 0) + 1
        self.prediction_ids = [str(pred["prediction_id"]) for _, pred in answered]
        if answered:
            self.predicted_pass_rate = float(np.mean([bool(p["predicted_pass"]) for _, p in answered]))
            self.true_pass_rate = float(np.mean([schema.pass_math(math[i]) for i, _ in answered]))


def _error_text(method: str, path: str, response: Any) -> str:
    body = response.text[:300].replace("\n", " ")
    return f"{method} {path} -> HTTP {response.status_code}: {body}"


def _score_batches(
    http: Any, base: str, payloads: list[dict[str, Any]], summary: ApiSummary, progress: bool
) -> tuple[list[tuple[int, dict[str, Any]]], list[float]]:
    """POST /predict/batch in chunks of MAX_BATCH; (student index, prediction) per answered student."""
    answered: list[tuple[int, dict[str, Any]]] = []
    latencies: list[float] = []
    chunks = [range(i, min(i + MAX_BATCH, len(payloads))) for i in range(0, len(payloads), MAX_BATCH)]
    with tqdm(total=len(payloads), desc="predict/batch", unit="student", disable=not progress) as bar:
        for chunk in chunks:
            t0 = time.perf_counter()
            response = http.post(f"{base}/predict/batch", json={"students": [payloads[i] for i in chunk]})
            latencies.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                summary.fail(_error_text("POST", "/predict/batch", response))
            else:
                preds = response.json().get("predictions", [])
                if len(preds) != len(chunk):
                    summary.fail(f"POST /predict/batch -> {len(preds)} predictions for {len(chunk)} students")
                else:
                    answered.extend(zip(chunk, preds, strict=True))
            bar.update(len(chunk))
    return answered, latencies


def _score_one_by_one(
    http: Any, base: str, payloads: list[dict[str, Any]], summary: ApiSummary, progress: bool
) -> tuple[list[tuple[int, dict[str, Any]]], list[float]]:
    answered: list[tuple[int, dict[str, Any]]] = []
    latencies: list[float] = []
    for i, payload in enumerate(tqdm(payloads, desc="predict", unit="student", disable=not progress)):
        t0 = time.perf_counter()
        response = http.post(f"{base}/predict", json=payload)
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            summary.fail(_error_text("POST", "/predict", response))
        else:
            answered.append((i, response.json()))
    return answered, latencies


def _report_outcomes(
    http: Any,
    base: str,
    answered: list[tuple[int, dict[str, Any]]],
    math: np.ndarray,
    chosen: np.ndarray,
    summary: ApiSummary,
    progress: bool,
) -> None:
    for j in tqdm(sorted(chosen), desc="feedback", unit="label", disable=not progress):
        i, pred = answered[j]
        body = {"prediction_id": pred["prediction_id"], "math_score": int(math[i])}
        response = http.post(f"{base}/feedback", json=body)
        if response.status_code >= 300:
            summary.fail(_error_text("POST", "/feedback", response))
        else:
            summary.feedback += 1


def drive_api(
    url: str,
    n: int,
    scenario: str = "none",
    feedback_rate: float = 1.0,
    seed: int | None = None,
    batch: bool = False,
    *,
    api_key: str | None = None,
    client: Any | None = None,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> ApiSummary:
    """Send ``n`` synthetic students to ``{url}/predict`` (or ``/predict/batch``), then their true maths score
    to ``{url}/feedback`` for a ``feedback_rate`` share of the answered predictions.

    ``api_key`` is sent as ``Authorization: Bearer`` on every request, as any client would: /feedback needs
    one with the ``feedback`` scope. HTTP errors are counted (the first one is kept with its body) and the run
    goes on, as a real client population would; an API that cannot be reached at all raises
    ``ConnectionError``. ``client`` may be any ``httpx.Client`` (e.g. FastAPI's ``TestClient``); by default
    one is created and closed here.
    """
    import httpx

    check_common(scenario, feedback_rate)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n: must be a whole number of at least 1, got {n!r}")
    base = url.rstrip("/")
    rng = np.random.default_rng(seed)
    students = synthetic.sample(int(n), seed=int(rng.integers(2**63)), scenario=scenario)
    payloads = [inputs_of(row) for row in students.to_dict("records")]
    math = students[schema.MATH_SCORE].to_numpy()
    summary = ApiSummary(url=base, scenario=scenario)
    own = client is None
    http: Any = httpx.Client(timeout=timeout_s) if client is None else client
    if api_key:
        http.headers["Authorization"] = f"Bearer {api_key}"
    started = time.perf_counter()
    try:
        score = _score_batches if batch else _score_one_by_one
        answered, latencies = score(http, base, payloads, summary, progress)
        summary.record_answers(answered, math)
        chosen = rng.choice(len(answered), size=feedback_count(len(answered), feedback_rate), replace=False)
        _report_outcomes(http, base, answered, math, chosen, summary, progress)
    except httpx.TransportError as exc:
        raise ConnectionError(f"cannot reach the API at {base}: {exc}") from exc
    finally:
        summary.elapsed_s = time.perf_counter() - started
        if own:
            http.close()
    if latencies:
        summary.latency_ms_p50 = float(np.percentile(latencies, 50))
        summary.latency_ms_p95 = float(np.percentile(latencies, 95))
    return summary
