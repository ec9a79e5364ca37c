"""The daily model-quality report: fail-class figures, confusion and the fairness table (per group of every
categorical feature) of the day's labelled rows, under Evidently's ClassificationPreset.

The figures on top are computed here, in exampass_pipeline.ml.fairness (fairlearn's MetricFrame) and in
exampass_pipeline.monitoring.segments (the test the segment check judges by), not read back from Evidently: Evidently
cannot draw one-class days, its GroupBy gives every segment the whole-dataset value (see the package
docstring), and it knows one cut-off where the served rule may set one per group.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.ml import fairness
from exampass_pipeline.monitoring import day_sql, quality
from exampass_pipeline.monitoring.reports.page import PROBABILITY, _finite, _page, _require, _table, _write

_FAILED = "failed"
_FAIL_PROBABILITY = "fail_probability"
_PREDICTED_FAIL = "predicted_fail"
_CUT = "_cut_off"
Decision = float | np.ndarray | DecisionRule


def _cut_offs(current: pd.DataFrame, threshold: Decision) -> tuple[np.ndarray, float, str]:
    """Each row's cut-off, the single number Evidently gets, and the rule in words for the page."""
    if isinstance(threshold, DecisionRule):
        return threshold.for_frame(current), threshold.threshold, threshold.summary()
    cut = np.asarray(threshold, dtype=float)
    if cut.ndim == 0:
        cut = np.full(len(current), float(cut))
        single = float(cut[0]) if len(cut) else float(np.asarray(threshold))
        text = f"pass when P(pass) &ge; {single:.3f}"
    elif cut.shape == (len(current),):
        single = float(np.median(cut)) if len(cut) else 0.5
        text = "pass when P(pass) &ge; the cut-off served for the student's group"
    else:
        raise ValueError(f"threshold: expected one number or one per row ({len(current)}), got {cut.shape}")
    if not np.isfinite(cut).all() or (cut < 0).any() or (cut > 1).any():
        raise ValueError(f"threshold: {threshold!r} is outside [0, 1]")
    return cut, single, text


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
    """Evidently's ClassificationPreset with the served decisions as labels; its probability threshold is
    the rule's single fallback cut-off (Evidently knows one), so only its threshold-dependent figures
    computed from probabilities may differ from ours under a per-group rule."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    data = pd.DataFrame(
        {
            _FAILED: (~frame[schema.LABEL].to_numpy(dtype=bool)).astype(int),
            _FAIL_PROBABILITY: 1.0 - frame[PROBABILITY].to_numpy(dtype=float),
        }
    )
    data[_PREDICTED_FAIL] = (frame[PROBABILITY].to_numpy(dtype=float) < frame[_CUT].to_numpy()).astype(int)
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


def _overall_figures(y: np.ndarray, p: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The day's confusion counts and whole-day figures, fail as the positive class.

    Recall, precision and accuracy come from quality.group_figures so the report shows exactly what the
    quality checks judge; F1 is derived from the counts so an undefined F1 reads "n/a" instead of 0.
    """
    fails, pred_fail = ~y, ~predicted
    figures: dict[str, Any] = {
        "tp_fail": int((fails & pred_fail).sum()),
        "fn_fail": int((fails & ~pred_fail).sum()),
        "fp_fail": int((~fails & pred_fail).sum()),
        "tn_fail": int((~fails & ~pred_fail).sum()),
    }
    figures.update(quality.group_figures(y, predicted))
    figures.pop("n", None)
    figures["f1_fail"] = (
        2 * figures["tp_fail"] / (2 * figures["tp_fail"] + figures["fn_fail"] + figures["fp_fail"])
        if figures["tp_fail"] + figures["fn_fail"] + figures["fp_fail"]
        else float("nan")
    )
    figures["roc_auc"] = quality.delong_auc(y, p)[0]
    return figures


def _unscorable(n: int, n_fail: int) -> list[str]:
    """Why Evidently's classification report cannot be drawn on a day that does have labels, if it cannot."""
    problems: list[str] = []
    if n_fail == 0 or n_fail == n:
        problems.append(
            f"only {'passing' if n_fail == 0 else 'failing'} students are labelled today ({n} rows): "
            f"ROC-AUC and Evidently's classification report need both classes"
        )
    if n < 2:
        problems.append(f"{n} labelled row is too few for a classification report")
    return problems


def _segment_figures(
    frame: pd.DataFrame, y: np.ndarray, p: np.ndarray, predicted: np.ndarray
) -> tuple[dict[str, Any], list[list[Any]], int]:
    """The fairness table: per group of every categorical feature, the flat numbers and the table rows.

    The figures come from fairness.assess (fairlearn's MetricFrame); the gap test of each judged segment
    from quality.segment_quality, the rule the segment check applies; the per-group ROC-AUC is added here.
    """
    features = [f for f in fairness.FAIRNESS_FEATURES if f in frame.columns]
    assessment = fairness.assess(y, p, predicted, frame, features=features)
    seg = quality.segment_quality(
        frame.assign(predicted_pass=predicted),
        segments=[s for s in quality.DEFAULT_JUDGED_SEGMENTS if s in frame.columns],
        report_segments=[],
    )
    numbers: dict[str, Any] = {}
    rows: list[list[Any]] = []
    for key, fig in assessment.by_group.iterrows():
        name, group = str(key[0]), str(key[1])  # type: ignore[index]
        mask = frame[name].astype(str).to_numpy() == group
        auc = quality.delong_auc(y[mask], p[mask])[0]
        figures = {
            "n": int(fig["n"]),
            "n_fail": int(fig["n_fail"]),
            "recall_fail": fig["fail_recall"],
            "precision_fail": fig["precision_fail"],
            "accuracy": fig["accuracy"],
            "false_alarm_rate": fig["false_alarm_rate"],
            "flag_rate": fig["flag_rate"],
            "mean_p_fail": fig["mean_p_fail"],
            "fail_rate": fig["fail_rate"],
            "roc_auc": auc,
        }
        numbers.update({f"{name}={group}_{k}": v for k, v in figures.items()})
        interval = f"{fig['fail_recall_low']:.2f}-{fig['fail_recall_high']:.2f}" if fig["n_fail"] else "n/a"
        judged = fig["n_fail"] >= seg.min_fail_per_group
        rows.append(
            [name, group, figures["n"], figures["n_fail"], fig["fail_recall"], interval]
            + [fig["false_alarm_rate"], fig["flag_rate"], fig["mean_p_fail"], fig["fail_rate"], auc, judged]
        )
    for name in features:
        judged = seg.segments.get(name)
        numbers[f"{name}_recall_gap"] = judged["gap"] if judged else assessment.gap(name)
        if judged and "p_holm" in judged:
            numbers[f"{name}_recall_gap_p_holm"] = judged["p_holm"]
    numbers["segment_status"] = seg.status
    return numbers, rows, seg.min_fail_per_group


def _quality_sections(
    rule_text: str, numbers: dict[str, Any], segment_rows: list[list[Any]], min_fail_per_group: int
) -> str:
    """The ExamPass section: the decision rule in words, the summary, the confusion matrix, the segments."""
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
                numbers["n_labelled"],
                numbers["n_fail"],
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
    gaps = [
        f"{name}: gap {numbers[f'{name}_recall_gap']:.2f}"
        + (
            f", p = {numbers[f'{name}_recall_gap_p_holm']:.3f} (Holm)"
            if f"{name}_recall_gap_p_holm" in numbers
            else ""
        )
        for name in fairness.FAIRNESS_FEATURES
        if isinstance(numbers.get(f"{name}_recall_gap"), float)
        and not np.isnan(numbers[f"{name}_recall_gap"])
    ]
    return (
        f"<h2>ExamPass quality summary</h2><p class='note'>Decision rule: {rule_text}. Recall and "
        "precision are those of the <b>fail</b> class, the students who need help.</p>"
        f"{summary}<h2>Confusion matrix</h2>{confusion}"
        "<h2>Fairness: is a failing student flagged as often in every group?</h2><p class='note'>Per group "
        "(fairlearn MetricFrame): fail recall (the chance a failing student is flagged) with its 95 % "
        "Wilson interval, false alarms (passing students flagged), flag rate, and calibration (mean "
        "P(fail) against the observed fail rate). Groups with fewer than "
        f"{min_fail_per_group} failing students are not judged: their recall moves by a third with one "
        "student. The segment check warns only on a gap that is significant (permutation test, Holm) and "
        f"large. {html.escape('; '.join(gaps))}.</p>"
        + _table(
            [
                "feature",
                "group",
                "n",
                "fails",
                "fail recall",
                "95 % interval",
                "false alarms",
                "flag rate",
                "mean P(fail)",
                "fail rate",
                "ROC-AUC",
                "judged",
            ],
            segment_rows,
            left=2,
        )
    )


def _evidently_part(frame: pd.DataFrame, threshold: float) -> tuple[str | None, dict[str, float], list[str]]:
    """Evidently's dashboard HTML and headline figures, or the reason it failed as a problem for the page.

    Any Evidently failure becomes a line on the page instead of an exception, so a daily run never leaves a
    gap in the report folder because of the report library.
    """
    try:
        snapshot, values = _evidently_quality(frame, float(threshold))
    except Exception as exc:  # noqa: BLE001 - any Evidently failure becomes a page that says so
        return None, {}, [f"Evidently could not compute classification quality: {type(exc).__name__}: {exc}"]
    evidently_html = snapshot.get_html_str(as_iframe=False)
    numbers: dict[str, float] = {}
    for key, name in (
        ("Accuracy", "accuracy"),
        ("Recall", "recall_fail"),
        ("Precision", "precision_fail"),
        ("RocAuc", "roc_auc"),
        ("F1Score", "f1_fail"),
    ):
        if key in values:
            numbers[f"evidently_{name}"] = values[key]
    return evidently_html, numbers, []


def quality_report(
    current: pd.DataFrame, threshold: Decision, html_path: Path, *, evidently_rows: int | None = None
) -> dict[str, float | int]:
    """Evidently classification quality of the day's labelled rows, with "fail" as the positive class.

    ``current`` needs ``pass_probability`` and ``pass_math`` (or ``math_score``); rows without a label are
    ignored; the categorical features are used when present. ``threshold`` is the served decision: the
    model's ``DecisionRule`` (``LoadedModel.decision``), one cut-off, or one per row of ``current``; the
    decision is recomputed as ``pass_probability >= cut-off``. Returns flat numbers: accuracy, ROC-AUC,
    fail-class recall/precision/F1, the confusion counts, and per group n, n_fail, recall_fail,
    precision_fail, accuracy, false_alarm_rate, flag_rate, mean_p_fail, fail_rate and roc_auc (as
    ``gender=female_recall_fail``), with each feature's ``_recall_gap``.

    ``evidently_rows``: Evidently draws its dashboard from a seeded sample of at most that many labelled rows
    (its cost grows with the rows; ``day_sql`` says why 20,000 is enough to draw); the ExamPass figures and
    every number returned except the ``evidently_*`` ones are computed on all labelled rows.
    """
    cut, single, rule_text = _cut_offs(current, threshold)
    frame = _labelled(current.assign(**{_CUT: cut}))
    y = frame[schema.LABEL].to_numpy(dtype=bool)
    p = frame[PROBABILITY].to_numpy(dtype=float)
    predicted = p >= frame[_CUT].to_numpy(dtype=float)
    n, n_fail = int(y.size), int((~y).sum())
    numbers: dict[str, Any] = {
        "threshold": float(single),
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
        numbers.update(_overall_figures(y, p, predicted))
        problems += _unscorable(n, n_fail)
        segment_numbers, segment_rows, min_fail_per_group = _segment_figures(frame, y, p, predicted)
        numbers.update(segment_numbers)
        sections = _quality_sections(rule_text, numbers, segment_rows, min_fail_per_group)

    drawn = frame
    if evidently_rows is not None and n > evidently_rows:
        drawn = frame.sample(n=evidently_rows, random_state=day_sql.SAMPLE_SEED)
    if not problems:
        evidently_html, evidently_numbers, problems = _evidently_part(drawn, single)
        numbers.update(evidently_numbers)
    numbers["evidently_available"] = int(evidently_html is not None)
    if problems:
        note = "Not drawn: " + "; ".join(problems) + "."
        sections = "".join(f"<p class='warn'>{html.escape(p_)}</p>" for p_ in problems) + sections
    else:
        note = (
            f"Evidently ClassificationPreset on {len(drawn)} labelled rows; positive class = fail (label 1), "
            f"probability = 1 - pass probability. {day_sql.sample_note(len(drawn), n, 'labelled rows')}"
        )
        if len(drawn) < n:
            sections = (
                f"<p class='note'>{html.escape(day_sql.sample_note(len(drawn), n, 'labelled rows'))}</p>"
                + sections
            )
    _write(Path(html_path), _page("ExamPass quality report", sections, evidently_html, note))
    return _finite(numbers)
