"""The daily data-drift report: Evidently's DataDriftPreset under ExamPass's own drift verdict.

The verdict on top is the one the alert follows (exampass_pipeline.monitoring.drift, Holm-corrected); Evidently's
uncorrected per-column colours sit below it, so a reader sees why one red column need not mean drift.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from exampass_pipeline.contract import schema
from exampass_pipeline.monitoring import day_sql, drift
from exampass_pipeline.monitoring.reports.page import (
    PROBABILITY,
    _finite,
    _page,
    _require,
    _status,
    _table,
    _write,
)


def _evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> tuple[Any, dict[str, Any]]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in columns if c not in schema.CATEGORIES]
    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=[c for c in columns if c in schema.CATEGORIES]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(columns=columns)]).run(
            Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
        )
    return snapshot, snapshot.dict()


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    html_path: Path,
    *,
    decisions: Sequence[drift.DriftDecision] = (),
    day_rows: int | None = None,
) -> dict[str, float | int]:
    """Evidently data drift of the day's inputs and predicted probabilities against the training split.

    ``reference``/``current`` need schema.FEATURES; ``pass_probability`` is compared too when both have it.
    ``decisions`` are the checks' verdicts to show on top (e.g. prediction drift); without any, the data
    drift verdict is computed here so the page always carries ExamPass's reading next to Evidently's.

    ``day_rows``: the size of the whole day when ``current`` is a sample of it (``day_sql.sample``); the
    page then says so above the verdict and in Evidently's note, since its pictures are of the sample.

    Returns flat numbers: Evidently's share and count of drifted columns, its dataset-drift flag (its default
    rule: at least half the columns), and per column the drift score and detected flag.
    """
    _require(reference, schema.FEATURES, "reference")
    _require(current, schema.FEATURES, "current")
    columns = list(schema.FEATURES)
    if PROBABILITY in reference.columns and PROBABILITY in current.columns:
        columns.append(PROBABILITY)
    if not decisions:
        decisions = [drift.data_drift(reference, current)]
    numbers: dict[str, Any] = {"n_reference": len(reference), "n_current": len(current)}
    total = len(current) if day_rows is None else int(day_rows)
    drawn = day_sql.sample_note(len(current), total)
    if total > len(current):
        numbers["n_day"] = total

    verdicts = "".join(
        f"<p>{_status(d.status)} <b>{html.escape(d.method)}</b>: {html.escape(d.reason)}</p>"
        for d in decisions
    )
    rows = []
    for d in decisions:
        for name, col in d.columns.items():
            rows.append(
                [name, col["test"], col["statistic"], col["p_value"], col["adjusted_p_value"], col["drifted"]]
            )
    sections = (
        "<h2>ExamPass drift verdict</h2>"
        + (f"<p class='note'>{html.escape(drawn)}</p>" if total > len(current) else "")
        + verdicts
        + _table(["column", "test", "statistic", "p-value", "adjusted p-value", "drifted"], rows, left=2)
        + "<p class='note'>The alert follows this verdict: per-column tests combined with weighted Holm so "
        "that a healthy day raises a false alarm at most 5 % of the time. Evidently's per-column colours "
        "below use p &lt; 0.05 per column without correction, so one red column on a healthy day is "
        "expected now and then.</p>"
    )

    evidently_html: str | None = None
    if len(current) == 0:
        note = "No predictions were logged for this day, so there is nothing to compare with the reference."
        numbers["evidently_available"] = 0
    else:
        try:
            snapshot, result = _evidently_drift(reference, current, columns)
        except Exception as exc:  # noqa: BLE001 - any Evidently failure becomes a page that says so
            note = f"Evidently could not compute data drift for this day: {type(exc).__name__}: {exc}"
            numbers["evidently_available"] = 0
        else:
            numbers["evidently_available"] = 1
            note = (
                f"Evidently DataDriftPreset with its default per-column tests, {len(current)} current vs "
                f"{len(reference)} reference rows. {drawn}"
            )
            evidently_html = snapshot.get_html_str(as_iframe=False)
            numbers.update(_evidently_numbers(result, len(columns)))
    _write(Path(html_path), _page("ExamPass drift report", sections, evidently_html, note))
    return _finite(numbers)


def _evidently_numbers(result: dict[str, Any], n_columns: int) -> dict[str, float | int]:
    """Evidently's own reading, flattened: share and count of drifted columns, per column score and flag.

    Its dataset-drift flag is recomputed with its default rule (at least half the columns drifted) when the
    snapshot carries no count metric, so the figure is there whichever metrics this Evidently version emits.
    """
    numbers: dict[str, float | int] = {}
    n_drifted = 0
    for metric in result["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            numbers["evidently_drift_share"] = float(metric["value"]["share"])
            numbers["evidently_drifted_columns"] = float(metric["value"]["count"])
        elif kind.endswith("ValueDrift"):
            column, score = config["column"], float(metric["value"])
            method, threshold = str(config.get("method", "")), float(config.get("threshold", 0.05))
            detected = score < threshold if "p_value" in method else score >= threshold
            n_drifted += int(detected)
            numbers[f"{column}_drift_score"] = score
            numbers[f"{column}_drift_detected"] = int(detected)
    share = numbers.get("evidently_drift_share", n_drifted / n_columns)
    numbers["evidently_dataset_drift"] = int(share >= 0.5)
    return numbers
