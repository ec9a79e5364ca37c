"""Evidently reports for real: standalone HTML a person can open, numbers for the trend tables, and a page
that explains itself on days Evidently cannot draw (no rows, no labels, one class)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import EQUAL_FAIL_RECALL, DecisionRule
from exampass_pipeline.ml import modeling, synthetic
from exampass_pipeline.monitoring import drift, reports


@pytest.fixture(scope="module")
def setup(students: pd.DataFrame) -> dict:
    parts = modeling.split_students(students, seed=3)
    model = modeling.CANDIDATES["logistic_regression"](0).fit(
        parts.train[list(schema.FEATURES)], parts.train[schema.LABEL]
    )
    reference = parts.train.copy()
    reference["pass_probability"] = modeling.pass_probability(model, reference)
    # A day of poorer students: the lunch shift the drift report must show.
    day = synthetic.sample(250, seed=12, scenario="lunch_shift")
    day["pass_probability"] = modeling.pass_probability(model, day)
    day["predicted_pass"] = day["pass_probability"] >= 0.6
    return {"reference": reference, "day": day, "threshold": 0.6}


def _text(path: Path) -> str:
    assert path.is_file() and path.stat().st_size > 0
    return path.read_text(encoding="utf-8")


def test_drift_report_writes_html_and_returns_numbers(setup: dict, tmp_path: Path) -> None:
    html_path = tmp_path / "drift" / "2026-01-02.html"
    numbers = reports.drift_report(setup["reference"], setup["day"], html_path)
    page = _text(html_path)
    assert "ExamPass drift verdict" in page and "Evidently" in page
    assert "drawDashboard" in page  # Evidently's own standalone dashboard is embedded
    assert "lunch" in page
    assert numbers["n_current"] == 250 and numbers["evidently_available"] == 1
    for column in [*schema.FEATURES, "pass_probability"]:
        assert 0.0 <= numbers[f"{column}_drift_score"] <= 1.0
        assert numbers[f"{column}_drift_detected"] in (0, 1)
    assert numbers["lunch_drift_detected"] == 1  # 70 % free/reduced lunch against ~35 %
    assert numbers["evidently_drift_share"] == pytest.approx(
        sum(numbers[f"{c}_drift_detected"] for c in [*schema.FEATURES, "pass_probability"]) / 8
    )
    # Evidently's lunch p-value is its own (goodness of fit), yet it agrees with ours on this clear shift.
    ours = drift.data_drift(setup["reference"], setup["day"])
    assert schema.LUNCH in ours.drifted_columns
    assert all(isinstance(v, int | float) for v in numbers.values())


def test_drift_report_shows_the_checks_verdicts_it_is_given(setup: dict, tmp_path: Path) -> None:
    verdict = drift.prediction_drift(setup["reference"]["pass_probability"], setup["day"]["pass_probability"])
    html_path = tmp_path / "tiny.html"
    numbers = reports.drift_report(setup["reference"], setup["day"].iloc[:3], html_path, decisions=[verdict])
    page = _text(html_path)
    assert verdict.reason.split(":")[0] in page  # the given decision, not a recomputed one
    assert numbers["n_current"] == 3  # a tiny batch still gets its page and numbers


def test_drift_report_on_an_empty_day_says_why(setup: dict, tmp_path: Path) -> None:
    html_path = tmp_path / "empty.html"
    numbers = reports.drift_report(setup["reference"], setup["day"].iloc[:0], html_path)
    page = _text(html_path)
    assert "No predictions were logged for this day" in page
    assert numbers == {"n_reference": len(setup["reference"]), "n_current": 0, "evidently_available": 0}


def test_quality_report_matches_the_metrics_and_evidently(setup: dict, tmp_path: Path) -> None:
    day, threshold = setup["day"], setup["threshold"]
    html_path = tmp_path / "quality.html"
    numbers = reports.quality_report(day, threshold, html_path)
    page = _text(html_path)
    for section in (
        "ExamPass quality summary",
        "Confusion matrix",
        "Fairness: is a failing student",
        "drawDashboard",
    ):
        assert section in page
    expected = modeling.classification_metrics(day[schema.LABEL], day["pass_probability"], threshold)
    for key in ("accuracy", "roc_auc", "recall_fail", "precision_fail", "f1_fail"):
        assert numbers[key] == pytest.approx(expected[key])
        # Evidently computed the same figure with fail as its positive class and our threshold translated.
        assert numbers[f"evidently_{key}"] == pytest.approx(expected[key])
    assert numbers["tp_fail"] + numbers["fn_fail"] == numbers["n_fail"] == int((~day[schema.LABEL]).sum())
    assert sum(numbers[k] for k in ("tp_fail", "fn_fail", "fp_fail", "tn_fail")) == 250
    for segment in schema.SEGMENTS:
        group_sizes = [v for k, v in numbers.items() if k.startswith(f"{segment}=") and k.endswith("_n")]
        assert sum(group_sizes) == 250
        assert re.search(rf"<td class='l'>{segment}</td>", page)
    standard = day[day[schema.LUNCH] == "standard"]
    fails = ~standard[schema.LABEL]
    caught = (standard["pass_probability"] < threshold)[fails].mean()
    assert numbers["lunch=standard_recall_fail"] == pytest.approx(caught)
    passes = standard[schema.LABEL]
    assert numbers["lunch=standard_false_alarm_rate"] == pytest.approx(
        (standard["pass_probability"] < threshold)[passes].mean()
    )
    assert numbers["lunch=standard_mean_p_fail"] == pytest.approx((1 - standard["pass_probability"]).mean())
    assert "lunch_recall_gap" in numbers and "parental_level_of_education_recall_gap" in numbers


def test_quality_report_applies_a_per_group_rule(setup: dict, tmp_path: Path) -> None:
    day = setup["day"]
    cells = {("standard",): 0.75, ("free/reduced",): 0.45}
    rule = DecisionRule(0.6, (schema.LUNCH,), cells, EQUAL_FAIL_RECALL, 0.8)
    numbers = reports.quality_report(day, rule, tmp_path / "rule.html")
    cut = rule.for_frame(day)
    expected = modeling.classification_metrics(day[schema.LABEL], day["pass_probability"], cut)
    for key in ("recall_fail", "precision_fail", "f1_fail"):
        assert numbers[key] == pytest.approx(expected[key])
    # The same numbers from the cut-offs themselves, one per row.
    assert reports.quality_report(day, cut, tmp_path / "rows.html")["recall_fail"] == numbers["recall_fail"]
    page = _text(tmp_path / "rule.html")
    assert (
        "cut-off of the student&#x27;s lunch group" in page or "cut-off of the student's lunch group" in page
    )
    with pytest.raises(ValueError, match="one per row"):
        reports.quality_report(day, cut[:-1], tmp_path / "bad.html")


def test_quality_report_without_labels_says_why(setup: dict, tmp_path: Path) -> None:
    pending = setup["day"].drop(columns=[schema.LABEL]).assign(math_score=float("nan"))
    html_path = tmp_path / "nolabels.html"
    numbers = reports.quality_report(pending, setup["threshold"], html_path)
    assert "no labelled rows for this day" in _text(html_path)
    assert numbers["n_labelled"] == 0 and numbers["evidently_available"] == 0


def test_quality_report_with_one_class_says_why(setup: dict, tmp_path: Path) -> None:
    day = setup["day"]
    passing = day[day[schema.LABEL]]
    html_path = tmp_path / "oneclass.html"
    numbers = reports.quality_report(passing, setup["threshold"], html_path)
    page = _text(html_path)
    assert "only passing students are labelled today" in page
    assert numbers["n_fail"] == 0 and "roc_auc" not in numbers and numbers["evidently_available"] == 0
    assert numbers["accuracy"] == pytest.approx((passing["pass_probability"] >= setup["threshold"]).mean())


def test_quality_report_refuses_bad_input(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass_probability"):
        reports.quality_report(setup["day"].drop(columns=["pass_probability"]), 0.5, tmp_path / "x.html")
    with pytest.raises(ValueError, match="threshold"):
        reports.quality_report(setup["day"], 1.5, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()  # nothing half-written


def test_quality_report_draws_evidently_from_a_sample_and_scores_every_row(
    setup: dict, tmp_path: Path
) -> None:
    day, threshold = setup["day"], setup["threshold"]
    whole = reports.quality_report(day, threshold, tmp_path / "whole.html")
    drawn = reports.quality_report(day, threshold, tmp_path / "drawn.html", evidently_rows=120)
    page = _text(tmp_path / "drawn.html")
    assert f"seeded random sample of 120 of the day&#x27;s {len(day)} labelled rows" in page
    assert "drawDashboard" in page
    ours = {k: v for k, v in whole.items() if not k.startswith("evidently_")}
    assert {k: v for k, v in drawn.items() if not k.startswith("evidently_")} == ours
    assert "sample" not in _text(tmp_path / "whole.html").split("<h2>Evidently")[0]
