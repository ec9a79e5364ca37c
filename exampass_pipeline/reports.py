"""Daily Evidently reports as standalone HTML files, plus the flat numbers the DuckDB trend tables keep.

Each file is Evidently's own self-contained dashboard (its JavaScript is inlined, so it opens offline) with an
ExamPass section on top that says what the *checks* decided and why. That section matters: Evidently colours
a column red at p < 0.05 without any multiple-testing correction, so on a healthy day one of the seven
features is often red while ExamPass's drift rule (exampass_pipeline.drift) correctly says "no drift". A
reader needs both side by side.

Days Evidently cannot describe (no rows, no labels, a single class) still get a file that says why, rather
than an exception that would fail the daily run and leave a gap in the report folder.

Evidently 0.7.23 notes, verified against the installed package:
* ``Snapshot.save_html`` silently writes nothing when given a ``pathlib.Path``; we render with
  ``get_html_str(as_iframe=False)`` and write the file ourselves, atomically.
* ``GroupBy(<classification metric>, column)`` returns the whole-dataset value for every group, and the
  classification presets raise ``KeyError`` when a batch holds one class; so per-segment figures come from
  ``quality.segment_quality`` (the same definitions the segment check judges by) and are rendered here.
* With both ``prediction_labels`` and ``prediction_probas`` set, Evidently derives labels from the
  probabilities at ``probas_threshold`` (``>=``), ignoring the label column; we feed it the fail probability
  and the threshold translated to the fail side, nudged so that a student exactly at the pass threshold
  counts as "pass", as the served rule does.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exampass_pipeline import drift, quality, schema

PROBABILITY = "pass_probability"
_FAILED = "failed"
_FAIL_PROBABILITY = "fail_probability"
_PREDICTED_FAIL = "predicted_fail"

_STYLE = """
<style>
  .exampass { font-family: -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 16px 24px; color: #222; }
  .exampass h1 { font-size: 22px; margin: 0 0 8px 0; }
  .exampass h2 { font-size: 17px; margin: 18px 0 6px 0; }
  .exampass table { border-collapse: collapse; margin: 6px 0 12px 0; font-size: 13px; }
  .exampass th, .exampass td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
  .exampass th { background: #f3f3f3; }
  .exampass td.l, .exampass th.l { text-align: left; }
  .exampass .pass { color: #1b7f3b; font-weight: 600; }
  .exampass .fail { color: #b3261e; font-weight: 600; }
  .exampass .warn { color: #a15c00; font-weight: 600; }
  .exampass .note { color: #555; font-size: 13px; max-width: 1000px; }
</style>
"""


# -----------------------------------------------------------------------------------------------------------
# HTML helpers
# -----------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i < left else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='l'>{_fmt(v)}</td>" if i < left else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status(status: str) -> str:
    return f"<span class='{html.escape(status)}'>{html.escape(status.upper())}</span>"


def _page(title: str, sections: str, evidently_html: str | None, evidently_note: str) -> str:
    """Our section on top of Evidently's standalone page, or a plain page when Evidently drew nothing."""
    ours = (
        f"<div class='exampass'><h1>{html.escape(title)}</h1>{sections}"
        f"<h2>Evidently</h2><p class='note'>{html.escape(evidently_note)}</p></div>"
    )
    if evidently_html and "<body>" in evidently_html:
        page = (
            evidently_html.replace("<head>", "<head>" + _STYLE, 1)
            if "<head>" in evidently_html
            else evidently_html
        )
        return page.replace("<body>", "<body>" + ours, 1)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
        f"<body>{ours}</body></html>"
    )


def _write(path: Path, text: str) -> None:
    """Write via a temp file and rename: a reader (or a crash) never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # mkstemp made it 0600: reports show students' data, so they stay owner-only
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(numbers: dict[str, Any]) -> dict[str, float | int]:
    """Numbers only, NaN dropped: a metric that does not exist on a day is absent from the trend, not NaN."""
    out: dict[str, float | int] = {}
    for key, value in numbers.items():
        if isinstance(value, bool | np.bool_):
            out[key] = int(value)
        elif isinstance(value, int | np.integer):
            out[key] = int(value)
        elif isinstance(value, float | np.floating) and not math.isnan(value):
            out[key] = float(value)
    return out


def _require(frame: pd.DataFrame, columns: Sequence[str], which: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{which}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{which}: missing column(s) {', '.join(missing)}")


# -----------------------------------------------------------------------------------------------------------
# Drift report
# -----------------------------------------------------------------------------------------------------------


def _evidently_drift(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[Any, dict]:
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
) -> dict[str, float | int]:
    """Evidently data drift of the day's inputs and predicted probabilities against the training split.

    ``reference``/``current`` need schema.FEATURES; ``pass_probability`` is compared too when both have it.
    ``decisions`` are the checks' verdicts to show on top (e.g. prediction drift); without any, the data
    drift verdict is computed here so the page always carries ExamPass's reading next to Evidently's.

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
                f"{len(reference)} reference rows."
            )
            evidently_html = snapshot.get_html_str(as_iframe=False)
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
            share = numbers.get("evidently_drift_share", n_drifted / len(columns))
            numbers["evidently_dataset_drift"] = int(share >= 0.5)
    _write(Path(html_path), _page("ExamPass drift report", sections, evidently_html, note))
    return _finite(numbers)


# -----------------------------------------------------------------------------------------------------------
# Quality report
# -----------------------------------------------------------------------------------------------------------


def _labelled(current: pd.DataFrame) -> pd.DataFrame:
    """The rows with a known outcome, with pass_math derived from math_score where only the score is there."""
    _require(current, [PROBABILITY], "current")
    if schema.LABEL not in current.columns and schema.MATH_SCORE not in current.columns:
        raise ValueError(f"current: missing column(s) {schema.LABEL} or {schema.MATH_SCORE}; one is needed")
    frame = current.copy()
    if schema.LABEL not in frame.columns:
        frame[schema.LABEL] = frame[schema.MATH_SCORE].map(
            lambda s: pd.NA if pd.isna(s) else schema.pass_math(s)
        )
    frame = frame[frame[schema.LABEL].notna()].copy()
    frame[schema.LABEL] = frame[schema.LABEL].astype(bool)
    probs = pd.to_numeric(frame[PROBABILITY], errors="coerce")
    bad = probs.isna() | (probs < 0) | (probs > 1)
    if bad.any():
        raise ValueError(
            f"current.{PROBABILITY}: {frame[PROBABILITY][bad].iloc[0]!r} is not a probability in [0, 1]"
        )
    frame[PROBABILITY] = probs.astype(float)
    return frame


def _evidently_quality(frame: pd.DataFrame, threshold: float) -> tuple[Any, dict[str, float]]:
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    data = pd.DataFrame(
        {
            _FAILED: (~frame[schema.LABEL].to_numpy(dtype=bool)).astype(int),
            _FAIL_PROBABILITY: 1.0 - frame[PROBABILITY].to_numpy(dtype=float),
        }
    )
    data[_PREDICTED_FAIL] = (frame[PROBABILITY].to_numpy(dtype=float) < threshold).astype(int)
    definition = DataDefinition(
        classification=[
            BinaryClassification(
                target=_FAILED,
                prediction_labels=_PREDICTED_FAIL,
                prediction_probas=_FAIL_PROBABILITY,
                pos_label=1,
            )
        ],
        categorical_columns=[_FAILED, _PREDICTED_FAIL],
        numerical_columns=[_FAIL_PROBABILITY],
    )
    # Evidently predicts "fail" when fail_probability >= t; ours is pass_probability < threshold. The nudge
    # makes a student exactly at the threshold "pass" on both sides.
    fail_threshold = float(np.nextafter(1.0 - threshold, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([ClassificationPreset(probas_threshold=fail_threshold)]).run(
            Dataset.from_pandas(data, data_definition=definition), None
        )
    values: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        kind = str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]
        if isinstance(metric["value"], int | float | np.floating):
            values[kind] = float(metric["value"])
    return snapshot, values


def quality_report(current: pd.DataFrame, threshold: float, html_path: Path) -> dict[str, float | int]:
    """Evidently classification quality of the day's labelled rows, with "fail" as the positive class.

    ``current`` needs ``pass_probability`` and ``pass_math`` (or ``math_score``); rows without a label are
    ignored; the segment columns (gender, lunch, race_ethnicity) are used when present. The decision is
    recomputed as ``pass_probability >= threshold``, the served rule. Returns flat numbers: accuracy, ROC-AUC,
    fail-class recall/precision/F1, the confusion counts, and per segment group n, n_fail, recall_fail,
    precision_fail, accuracy and roc_auc (as ``gender=female_recall_fail``).
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold: {threshold!r} is outside [0, 1]")
    frame = _labelled(current)
    y = frame[schema.LABEL].to_numpy(dtype=bool)
    p = frame[PROBABILITY].to_numpy(dtype=float)
    predicted = p >= threshold
    n, n_fail = int(y.size), int((~y).sum())
    numbers: dict[str, Any] = {
        "threshold": float(threshold),
        "n_labelled": n,
        "n_fail": n_fail,
        "n_pass": n - n_fail,
    }
    problems: list[str] = []
    sections = ""
    evidently_html: str | None = None

    if n == 0:
        problems.append(
            "no labelled rows for this day yet (feedback arrives after the exam): nothing to score"
        )
    else:
        fails, pred_fail = ~y, ~predicted
        numbers.update(
            {
                "tp_fail": int((fails & pred_fail).sum()),
                "fn_fail": int((fails & ~pred_fail).sum()),
                "fp_fail": int((~fails & pred_fail).sum()),
                "tn_fail": int((~fails & ~pred_fail).sum()),
            }
        )
        numbers.update(quality.group_figures(y, predicted))
        numbers.pop("n", None)
        numbers["f1_fail"] = (
            2 * numbers["tp_fail"] / (2 * numbers["tp_fail"] + numbers["fn_fail"] + numbers["fp_fail"])
            if numbers["tp_fail"] + numbers["fn_fail"] + numbers["fp_fail"]
            else float("nan")
        )
        numbers["roc_auc"] = quality.delong_auc(y, p)[0]
        if n_fail == 0 or n_fail == n:
            problems.append(
                f"only {'passing' if n_fail == 0 else 'failing'} students are labelled today ({n} rows): "
                f"ROC-AUC and Evidently's classification report need both classes"
            )
        if n < 2:
            problems.append(f"{n} labelled row is too few for a classification report")

        seg = quality.segment_quality(
            frame.assign(predicted_pass=predicted), segments=[], report_segments=schema.SEGMENTS
        )
        rows = []
        for name, info in seg.segments.items():
            values = frame[name].astype(str).to_numpy()
            for group, fig in info["groups"].items():
                mask = values == group
                auc = quality.delong_auc(y[mask], p[mask])[0]
                for key in ("n", "n_fail", "recall_fail", "precision_fail", "accuracy"):
                    numbers[f"{name}={group}_{key}"] = fig[key]
                numbers[f"{name}={group}_roc_auc"] = auc
                rows.append(
                    [
                        name,
                        group,
                        fig["n"],
                        fig["n_fail"],
                        fig["recall_fail"],
                        fig["precision_fail"],
                        fig["accuracy"],
                        auc,
                        fig["judged"],
                    ]
                )
            numbers[f"{name}_recall_gap"] = info["gap"]
        summary = _table(
            [
                "labelled rows",
                "fails",
                "accuracy",
                "ROC-AUC",
                "recall (fail)",
                "precision (fail)",
                "F1 (fail)",
            ],
            [
                [
                    n,
                    n_fail,
                    numbers["accuracy"],
                    numbers["roc_auc"],
                    numbers["recall_fail"],
                    numbers["precision_fail"],
                    numbers["f1_fail"],
                ]
            ],
            left=0,
        )
        confusion = _table(
            ["actual \\ predicted", "fail", "pass"],
            [
                ["fail", numbers["tp_fail"], numbers["fn_fail"]],
                ["pass", numbers["fp_fail"], numbers["tn_fail"]],
            ],
        )
        sections = (
            "<h2>ExamPass quality summary</h2><p class='note'>Decision rule: pass when pass probability "
            f"&ge; {threshold:.3f}. Recall and precision are those of the <b>fail</b> class, the students "
            f"who need help.</p>{summary}<h2>Confusion matrix</h2>{confusion}"
            "<h2>Per-segment quality</h2><p class='note'>Fail-class recall per group; groups with fewer "
            f"than {seg.min_fail_per_group} failing students are too small to judge (their recall moves by "
            "a third with one student).</p>"
            + _table(
                [
                    "segment",
                    "group",
                    "n",
                    "fails",
                    "recall (fail)",
                    "precision (fail)",
                    "accuracy",
                    "ROC-AUC",
                    "enough fails to judge",
                ],
                rows,
                left=2,
            )
        )

    if not problems:
        try:
            snapshot, values = _evidently_quality(frame, float(threshold))
        except Exception as exc:  # noqa: BLE001 - any Evidently failure becomes a page that says so
            problems.append(
                f"Evidently could not compute classification quality: {type(exc).__name__}: {exc}"
            )
        else:
            evidently_html = snapshot.get_html_str(as_iframe=False)
            for key, name in (
                ("Accuracy", "accuracy"),
                ("Recall", "recall_fail"),
                ("Precision", "precision_fail"),
                ("RocAuc", "roc_auc"),
                ("F1Score", "f1_fail"),
            ):
                if key in values:
                    numbers[f"evidently_{name}"] = values[key]
    numbers["evidently_available"] = int(evidently_html is not None)
    if problems:
        note = "Not drawn: " + "; ".join(problems) + "."
        sections = "".join(f"<p class='warn'>{html.escape(p_)}</p>" for p_ in problems) + sections
    else:
        note = (
            f"Evidently ClassificationPreset on {n} labelled rows; positive class = fail (label 1), "
            f"probability = 1 - pass probability."
        )
    _write(Path(html_path), _page("ExamPass quality report", sections, evidently_html, note))
    return _finite(numbers)
