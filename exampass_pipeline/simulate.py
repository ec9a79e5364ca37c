"""``exampass-simulate``: synthetic students driving the system, live or as made-up history.

Two ways in, because monitoring needs both:

* ``--api URL`` sends students to a running prediction service and reports their true maths score back, so the
  whole live path (validation, scoring, the prediction log, feedback) is exercised exactly as a client would.
* ``--write-logs`` writes *past* days straight into the JSON-lines logs, through the same ``PredictionLog``
  writer the API uses and with probabilities from the real ``@champion`` model, so weeks of history (and a
  drift that starts on a chosen day) exist in seconds instead of weeks. Feedback is stamped 0 to
  ``--feedback-delay-days`` days after its prediction and therefore lands in the feedback file of that later
  day, which is how late labels arrive in production.

Each simulated day draws from its own random stream derived from ``(seed, day)``: re-running an overlapping
range with the same seed makes the same students for the same day. Prediction ids are always fresh UUIDs, so
writing the same days twice never produces two predictions with one id.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exampass_pipeline import schema, synthetic
from exampass_pipeline.predlog import PredictionLog
from exampass_pipeline.settings import Settings

NO_CHAMPION = "no champion model registered yet: materialize the training assets"
MAX_FEEDBACK_DELAY_DAYS = 7  # the monitoring join looks this far ahead for a day's feedback
MAX_BATCH = 1000  # the API's /predict/batch limit
_DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class DaySummary:
    """What one simulated day holds: its predictions, its labels, and the lines in its feedback file."""

    day: date
    scenario: str
    rows: int
    feedback_given: int  # predictions of this day that received feedback (on this day or later)
    feedback_lines: int  # feedback lines written into this day's feedback file (for this or earlier days)
    predicted_pass_rate: float
    mean_pass_probability: float
    true_pass_rate: float


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


def history_days(end: date, days: int) -> list[date]:
    """The ``days`` consecutive UTC days ending on ``end`` (inclusive), oldest first."""
    if days < 1:
        raise ValueError(f"days: must be at least 1, got {days}")
    return [end - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def _check_common(scenario: str, feedback_rate: float) -> None:
    if scenario not in synthetic.SCENARIOS:
        raise ValueError(
            f"scenario: unknown scenario {scenario!r}; allowed: {', '.join(synthetic.SCENARIOS)}"
        )
    if not 0.0 <= feedback_rate <= 1.0:
        raise ValueError(f"feedback_rate: must be between 0 and 1, got {feedback_rate}")


def _day_rng(root: np.random.SeedSequence, day: date) -> np.random.Generator:
    """One stream per (seed, day): the students of a day do not depend on which other days were simulated."""
    return np.random.default_rng(np.random.SeedSequence(entropy=root.entropy, spawn_key=(day.toordinal(),)))


def _inputs(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-native feature values (str and int), as an API client would send them."""
    return {name: str(row[name]) if name in schema.CATEGORIES else int(row[name]) for name in schema.FEATURES}


def _feedback_count(n: int, rate: float) -> int:
    return int(round(n * rate))


# A prediction line (time, inputs, pass probability, predicted pass, id); a feedback line (time, id, maths).
_Prediction = tuple[datetime, dict[str, Any], float, bool, str]
_Feedback = tuple[datetime, str, int]


def _simulate_day(
    rng: np.random.Generator,
    model: Any,
    day: date,
    day_scenario: str,
    rows: int,
    feedback_rate: float,
    feedback_delay_days: float,
) -> tuple[list[_Prediction], list[_Feedback], dict[str, Any]]:
    """One day's scored students, the feedback they will get, and the day's summary figures.

    Every draw comes from the day's own stream in a fixed order (students, times, who gets feedback, delays),
    so the same seed gives the same day whichever other days are simulated with it.
    """
    students = synthetic.sample(int(rows), seed=int(rng.integers(2**63)), scenario=day_scenario)
    proba = np.asarray(model.pipeline.predict_proba(students[list(schema.FEATURES)])[:, 1], dtype=float)
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise ValueError(f"model version {model.version} returned pass probabilities outside 0..1 on {day}")
    predicted = proba >= float(model.threshold)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    offsets = np.sort(rng.integers(0, _DAY_US, size=len(students)))
    stamps = [start + timedelta(microseconds=int(us)) for us in offsets]
    ids = [str(uuid.uuid4()) for _ in range(len(students))]
    predictions: list[_Prediction] = [
        (stamps[i], _inputs(row), float(proba[i]), bool(predicted[i]), ids[i])
        for i, row in enumerate(students.to_dict("records"))
    ]
    chosen = rng.choice(len(students), size=_feedback_count(len(students), feedback_rate), replace=False)
    delays = rng.uniform(0.0, feedback_delay_days * _DAY_US, size=len(chosen))
    math = students[schema.MATH_SCORE].to_numpy()
    feedback: list[_Feedback] = [
        (stamps[i] + timedelta(microseconds=int(delay)), ids[i], int(math[i]))
        for i, delay in zip(chosen, delays, strict=True)
    ]
    info = {
        "day": day,
        "scenario": day_scenario,
        "rows": len(students),
        "feedback_given": len(chosen),
        "predicted_pass_rate": float(predicted.mean()),
        "mean_pass_probability": float(proba.mean()),
        "true_pass_rate": float(students[schema.LABEL].mean()),
    }
    return predictions, feedback, info


def _write_logs(
    logs_dir: Path, model: Any, predictions: list[_Prediction], feedback: list[_Feedback], progress: bool
) -> None:
    """Append every line through PredictionLog, the API's own writer, so the files are exactly what it writes."""
    log = PredictionLog(Path(logs_dir))
    try:
        with tqdm(
            total=len(predictions) + len(feedback), desc="writing logs", unit="line", disable=not progress
        ) as bar:
            for at, inputs, proba_i, predicted_i, pid in predictions:
                log.log_prediction(inputs, proba_i, predicted_i, model.version, prediction_id=pid, at=at)
                bar.update()
            for at, pid, math_score in feedback:
                log.log_feedback(pid, math_score, at=at)
                bar.update()
    finally:
        log.close()


def write_history(
    logs_dir: Path,
    model: Any,
    days: Sequence[date],
    rows_per_day: int = 200,
    scenario: str = "none",
    drift_start: date | None = None,
    feedback_rate: float = 1.0,
    feedback_delay_days: float = 2,
    seed: int | None = None,
    *,
    progress: bool = True,
) -> list[DaySummary]:
    """Write predictions (and late feedback) for past ``days`` into the logs under ``logs_dir``.

    ``model`` is a ``registry.LoadedModel`` (anything with ``pipeline``, ``threshold`` and ``version``).
    Days before ``drift_start`` use the ``none`` scenario, the others ``scenario``; without ``drift_start``
    every day uses ``scenario``. Everything is generated and scored before the first line is written, so a
    bad argument or a model that cannot score leaves the logs untouched.
    """
    _check_common(scenario, feedback_rate)
    if not days:
        raise ValueError("days: at least one day is needed")
    if len(set(days)) != len(days):
        raise ValueError("days: each day may appear only once")
    if isinstance(rows_per_day, bool) or int(rows_per_day) != rows_per_day or rows_per_day < 1:
        raise ValueError(f"rows_per_day: must be a whole number of at least 1, got {rows_per_day!r}")
    if not 0 <= feedback_delay_days <= MAX_FEEDBACK_DELAY_DAYS:
        raise ValueError(
            f"feedback_delay_days: must be between 0 and {MAX_FEEDBACK_DELAY_DAYS}, got {feedback_delay_days}"
        )
    days = sorted(days)
    root = np.random.SeedSequence(seed)
    predictions: list[_Prediction] = []
    feedback: list[_Feedback] = []
    per_day: list[dict[str, Any]] = []

    for day in tqdm(days, desc="simulating days", unit="day", disable=not progress):
        day_scenario = "none" if drift_start is not None and day < drift_start else scenario
        day_predictions, day_feedback, info = _simulate_day(
            _day_rng(root, day), model, day, day_scenario, rows_per_day, feedback_rate, feedback_delay_days
        )
        predictions += day_predictions
        feedback += day_feedback
        per_day.append(info)

    # Feedback is written in time order, so every day file reads as it would have been appended live.
    feedback.sort(key=lambda item: item[0])
    _write_logs(logs_dir, model, predictions, feedback, progress)

    lines_per_day: dict[date, int] = {}
    for at, _, _ in feedback:
        lines_per_day[at.date()] = lines_per_day.get(at.date(), 0) + 1
    return [DaySummary(**info, feedback_lines=lines_per_day.get(info["day"], 0)) for info in per_day]


def _error_text(method: str, path: str, response: Any) -> str:
    body = response.text[:300].replace("\n", " ")
    return f"{method} {path} -> HTTP {response.status_code}: {body}"


def drive_api(
    url: str,
    n: int,
    scenario: str = "none",
    feedback_rate: float = 1.0,
    seed: int | None = None,
    batch: bool = False,
    *,
    client: Any | None = None,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> ApiSummary:
    """Send ``n`` synthetic students to ``{url}/predict`` (or ``/predict/batch``), then their true maths score
    to ``{url}/feedback`` for a ``feedback_rate`` share of the answered predictions.

    HTTP errors are counted (the first one is kept with its body) and the run goes on, as a real client
    population would; an API that cannot be reached at all raises ``ConnectionError``. ``client`` may be any
    ``httpx.Client`` (e.g. FastAPI's ``TestClient``); by default one is created and closed here.
    """
    import httpx

    _check_common(scenario, feedback_rate)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n: must be a whole number of at least 1, got {n!r}")
    base = url.rstrip("/")
    rng = np.random.default_rng(seed)
    students = synthetic.sample(int(n), seed=int(rng.integers(2**63)), scenario=scenario)
    payloads = [_inputs(row) for row in students.to_dict("records")]
    math = students[schema.MATH_SCORE].to_numpy()
    summary = ApiSummary(url=base, scenario=scenario)
    latencies: list[float] = []
    answered: list[tuple[int, dict[str, Any]]] = []  # (student index, prediction)

    def fail(message: str) -> None:
        summary.errors += 1
        summary.first_error = summary.first_error or message

    own = client is None
    http = httpx.Client(timeout=timeout_s) if own else client
    started = time.perf_counter()
    try:
        if batch:
            chunks = [range(i, min(i + MAX_BATCH, len(payloads))) for i in range(0, len(payloads), MAX_BATCH)]
            bar = tqdm(total=len(payloads), desc="predict/batch", unit="student", disable=not progress)
            for chunk in chunks:
                t0 = time.perf_counter()
                response = http.post(f"{base}/predict/batch", json={"students": [payloads[i] for i in chunk]})
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    fail(_error_text("POST", "/predict/batch", response))
                else:
                    preds = response.json().get("predictions", [])
                    if len(preds) != len(chunk):
                        fail(f"POST /predict/batch -> {len(preds)} predictions for {len(chunk)} students")
                    else:
                        answered.extend(zip(chunk, preds, strict=True))
                bar.update(len(chunk))
            bar.close()
        else:
            for i, payload in enumerate(tqdm(payloads, desc="predict", unit="student", disable=not progress)):
                t0 = time.perf_counter()
                response = http.post(f"{base}/predict", json=payload)
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status_code != 200:
                    fail(_error_text("POST", "/predict", response))
                else:
                    answered.append((i, response.json()))

        summary.predictions = len(answered)
        for _, pred in answered:
            version = str(pred.get("model_version"))
            summary.model_versions[version] = summary.model_versions.get(version, 0) + 1
        summary.prediction_ids = [str(pred["prediction_id"]) for _, pred in answered]
        if answered:
            summary.predicted_pass_rate = float(np.mean([bool(p["predicted_pass"]) for _, p in answered]))
            summary.true_pass_rate = float(np.mean([schema.pass_math(math[i]) for i, _ in answered]))

        chosen = rng.choice(len(answered), size=_feedback_count(len(answered), feedback_rate), replace=False)
        for j in tqdm(sorted(chosen), desc="feedback", unit="label", disable=not progress):
            i, pred = answered[j]
            body = {"prediction_id": pred["prediction_id"], "math_score": int(math[i])}
            response = http.post(f"{base}/feedback", json=body)
            if response.status_code >= 300:
                fail(_error_text("POST", "/feedback", response))
            else:
                summary.feedback += 1
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


def day_arg(text: str) -> date:
    """argparse type for a calendar day: a typo becomes a usage error naming the argument, not a traceback."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _number_between(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    """argparse type for a number in [low, high]; the error names the bounds (and their unit)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low:g} and {high:g}{unit}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exampass-simulate",
        description="Drive ExamPass with synthetic students: live through the API, or as past days of logs.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--api", metavar="URL", help="base URL of a running API, e.g. http://127.0.0.1:8000")
    mode.add_argument(
        "--write-logs",
        action="store_true",
        help="write past days of prediction/feedback logs, scored by @champion",
    )
    parser.add_argument("--scenario", choices=synthetic.SCENARIOS, default="none", help="drift scenario")
    parser.add_argument(
        "--feedback-rate",
        type=_number_between(0.0, 1.0),
        default=1.0,
        help="share of predictions that get feedback",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh randomness)")
    api = parser.add_argument_group("--api mode")
    api.add_argument(
        "-n", "--students", type=_positive_int, default=200, help="students to send (default 200)"
    )
    api.add_argument("--batch", action="store_true", help=f"use POST /predict/batch, {MAX_BATCH} per request")
    logs = parser.add_argument_group("--write-logs mode")
    logs.add_argument("--days", type=_positive_int, default=7, help="number of days (default 7)")
    logs.add_argument(
        "--end-date", type=day_arg, default=None, help="last day, YYYY-MM-DD (default: yesterday UTC)"
    )
    logs.add_argument(
        "--rows-per-day", type=_positive_int, default=200, help="predictions per day (default 200)"
    )
    logs.add_argument(
        "--drift-start", type=day_arg, default=None, help="first day of the scenario; earlier days use 'none'"
    )
    logs.add_argument(
        "--feedback-delay-days",
        type=_number_between(0.0, MAX_FEEDBACK_DELAY_DAYS, " days"),
        default=2.0,
        help=f"labels come 0..N days after a prediction (default 2, max {MAX_FEEDBACK_DELAY_DAYS})",
    )
    logs.add_argument(
        "--logs-dir", type=Path, default=None, help="default: EXAMPASS_LOGS or $EXAMPASS_HOME/logs"
    )
    return parser


def _print_history(summaries: list[DaySummary], logs_dir: Path) -> None:
    print(f"wrote {sum(s.rows for s in summaries)} predictions for {len(summaries)} day(s) to {logs_dir}")
    header = ("day", "scenario", "rows", "labelled", "feedback lines", "pred. pass")
    print("{:<10}  {:<13}  {:>6}  {:>8}  {:>14}  {:>10}".format(*header))
    for s in summaries:
        print(
            f"{s.day.isoformat():<10}  {s.scenario:<13}  {s.rows:>6}  {s.feedback_given:>8}  "
            f"{s.feedback_lines:>14}  {s.predicted_pass_rate:>10.1%}"
        )
    later = sum(s.feedback_given for s in summaries) - sum(s.feedback_lines for s in summaries)
    if later:
        print(
            f"{later} feedback line(s) went to the files of days after {summaries[-1].day}: "
            "labels arriving late, possibly dated after today"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.api:
        if args.drift_start is not None or args.end_date is not None:
            parser.error("--drift-start and --end-date apply to --write-logs only")
        try:
            result = drive_api(
                args.api, args.students, args.scenario, args.feedback_rate, args.seed, batch=args.batch
            )
        except ConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        versions = ", ".join(f"v{v}: {c}" for v, c in sorted(result.model_versions.items())) or "none"
        print(
            f"{result.predictions} predictions ({versions}), {result.feedback} feedback, "
            f"{result.errors} errors in {result.elapsed_s:.1f}s; latency p50 {result.latency_ms_p50:.1f} ms, "
            f"p95 {result.latency_ms_p95:.1f} ms; predicted pass {result.predicted_pass_rate:.1%}, "
            f"true pass {result.true_pass_rate:.1%}"
        )
        if result.first_error:
            print(f"first error: {result.first_error}", file=sys.stderr)
        return 1 if result.errors else 0

    from exampass_pipeline import registry

    settings = Settings.from_env()
    logs_dir = args.logs_dir or settings.logs_dir
    end = args.end_date or (datetime.now(UTC).date() - timedelta(days=1))
    days = history_days(end, args.days)
    if args.drift_start is not None and not days[0] <= args.drift_start <= days[-1]:
        print(
            f"warning: --drift-start {args.drift_start} is outside {days[0]}..{days[-1]}; "
            f"every day uses {'none' if args.drift_start > days[-1] else args.scenario}",
            file=sys.stderr,
        )
    try:
        registry.configure(settings)
        model = registry.load_champion()
    except Exception as exc:  # the tracking store is missing, locked or unreadable: say so, do not trace
        print(
            f"error: cannot load the champion model from {settings.mlflow_tracking_uri}: {exc}",
            file=sys.stderr,
        )
        return 2
    if model is None:
        print(NO_CHAMPION, file=sys.stderr)
        return 2
    summaries = write_history(
        logs_dir,
        model,
        days,
        args.rows_per_day,
        args.scenario,
        args.drift_start,
        args.feedback_rate,
        args.feedback_delay_days,
        args.seed,
    )
    print(f"model version {model.version} ({model.candidate}), threshold {model.threshold:.3f}")
    _print_history(summaries, logs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
