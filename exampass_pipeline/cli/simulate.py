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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exampass_pipeline.cli.simulate_api import (
    MAX_BATCH,
    check_common,
    drive_api,
    feedback_count,
    inputs_of,
)
from exampass_pipeline.contract import schema
from exampass_pipeline.contract.predlog import PredictionLog
from exampass_pipeline.contract.settings import Settings, restrict_new_files
from exampass_pipeline.ml import synthetic

NO_CHAMPION = "no champion model registered yet: materialize the training assets"
MAX_FEEDBACK_DELAY_DAYS = 7  # the monitoring join looks this far ahead for a day's feedback
# The schools whose grade exports report outcomes in simulated history: several independent clients, as in
# production, each attributed its own students (round robin within a day).
SCHOOLS: tuple[str, ...] = ("school-1", "school-2", "school-3")
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


def history_days(end: date, days: int) -> list[date]:
    """The ``days`` consecutive UTC days ending on ``end`` (inclusive), oldest first."""
    if days < 1:
        raise ValueError(f"days: must be at least 1, got {days}")
    return [end - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def _day_rng(root: np.random.SeedSequence, day: date) -> np.random.Generator:
    """One stream per (seed, day): the students of a day do not depend on which other days were simulated."""
    return np.random.default_rng(np.random.SeedSequence(entropy=root.entropy, spawn_key=(day.toordinal(),)))


# A prediction line (time, inputs, pass probability, predicted pass, id); a feedback line (time, id, maths).
_Prediction = tuple[datetime, dict[str, Any], float, bool, str, str]  # ..., prediction id, client
_Feedback = tuple[datetime, str, int, str]  # time, prediction id, maths score, client


def _simulate_day(
    rng: np.random.Generator,
    model: Any,
    day: date,
    day_scenario: str,
    rows: int,
    feedback_rate: float,
    feedback_delay_days: float,
    clients: Sequence[str] = SCHOOLS,
) -> tuple[list[_Prediction], list[_Feedback], dict[str, Any]]:
    """One day's scored students, the feedback they will get, and the day's summary figures.

    Every draw comes from the day's own stream in a fixed order (students, times, who gets feedback, delays),
    so the same seed gives the same day whichever other days are simulated with it.
    """
    students = synthetic.sample(int(rows), seed=int(rng.integers(2**63)), scenario=day_scenario)
    proba = np.asarray(model.pipeline.predict_proba(students[list(schema.FEATURES)])[:, 1], dtype=float)
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise ValueError(f"model version {model.version} returned pass probabilities outside 0..1 on {day}")
    # The served decision: a registry.LoadedModel applies its rule (per-group cut-offs); a bare stand-in with
    # only ``threshold`` gets that one cut-off.
    cut = model.thresholds(students) if hasattr(model, "thresholds") else float(model.threshold)
    predicted = proba >= cut
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    offsets = np.sort(rng.integers(0, _DAY_US, size=len(students)))
    stamps = [start + timedelta(microseconds=int(us)) for us in offsets]
    ids = [str(uuid.uuid4()) for _ in range(len(students))]
    school = [clients[i % len(clients)] for i in range(len(students))]
    predictions: list[_Prediction] = [
        (stamps[i], inputs_of(row), float(proba[i]), bool(predicted[i]), ids[i], school[i])
        for i, row in enumerate(students.to_dict("records"))
    ]
    chosen = rng.choice(len(students), size=feedback_count(len(students), feedback_rate), replace=False)
    delays = rng.uniform(0.0, feedback_delay_days * _DAY_US, size=len(chosen))
    math = students[schema.MATH_SCORE].to_numpy()
    feedback: list[_Feedback] = [
        (stamps[i] + timedelta(microseconds=int(delay)), ids[i], int(math[i]), school[i])
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
            for at, inputs, proba_i, predicted_i, pid, client in predictions:
                log.log_prediction(
                    inputs, proba_i, predicted_i, model.version, prediction_id=pid, client=client, at=at
                )
                bar.update()
            for at, pid, math_score, client in feedback:
                log.log_feedback(pid, math_score, client=client, at=at)
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
    clients: Sequence[str] = SCHOOLS,
    progress: bool = True,
) -> list[DaySummary]:
    """Write predictions (and late feedback) for past ``days`` into the logs under ``logs_dir``.

    ``model`` is a ``registry.LoadedModel`` (or anything with ``pipeline``, ``threshold`` and ``version``;
    with ``thresholds(frame)`` too, that decides instead of the one ``threshold``).
    Each day's students are shared out among ``clients``, who send their predictions and report outcomes.
    Days before ``drift_start`` use the ``none`` scenario, the others ``scenario``; without ``drift_start``
    every day uses ``scenario``. Everything is generated and scored before the first line is written, so a
    bad argument or a model that cannot score leaves the logs untouched.
    """
    check_common(scenario, feedback_rate)
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
            _day_rng(root, day),
            model,
            day,
            day_scenario,
            rows_per_day,
            feedback_rate,
            feedback_delay_days,
            clients,
        )
        predictions += day_predictions
        feedback += day_feedback
        per_day.append(info)

    # Feedback is written in time order, so every day file reads as it would have been appended live.
    feedback.sort(key=lambda item: item[0])
    _write_logs(logs_dir, model, predictions, feedback, progress)

    lines_per_day: dict[date, int] = {}
    for at, *_ in feedback:
        lines_per_day[at.date()] = lines_per_day.get(at.date(), 0) + 1
    return [DaySummary(**info, feedback_lines=lines_per_day.get(info["day"], 0)) for info in per_day]


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
    settings = Settings.for_command(parser)

    if args.api:
        if args.drift_start is not None or args.end_date is not None:
            parser.error("--drift-start and --end-date apply to --write-logs only")
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        if api_key is None and args.feedback_rate > 0:
            print(
                "warning: EXAMPASS_API_KEY is not set, so /feedback will refuse the outcomes; create a key with "
                "`exampass-apikey create simulator --scope feedback` and export its token",
                file=sys.stderr,
            )
        try:
            result = drive_api(
                args.api,
                args.students,
                args.scenario,
                args.feedback_rate,
                args.seed,
                batch=args.batch,
                api_key=api_key,
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

    from exampass_pipeline.contract import registry

    restrict_new_files()
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
    print(f"model version {model.version} ({model.candidate}), {model.decision.summary()}")
    _print_history(summaries, logs_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
