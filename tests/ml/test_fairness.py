"""Fairness: the decision rule as data, the equal-opportunity fitting, and the MetricFrame assessment."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, true_negative_rate

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import EQUAL_FAIL_RECALL, GROUPS, SINGLE, DecisionRule
from exampass_pipeline.ml import fairness, modeling, synthetic

RULE = fairness.RULE_FEATURES


def _rule(features: tuple[str, ...] = RULE) -> DecisionRule:
    cells = itertools.product(*(schema.CATEGORIES[f] for f in features))
    cutoffs = {cell: round(0.40 + 0.013 * i, 4) for i, cell in enumerate(cells)}
    return DecisionRule(0.6, features, cutoffs, EQUAL_FAIL_RECALL, 0.8, "test")


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return synthetic.sample(40_000, seed=77)


@pytest.fixture(scope="module")
def model_on(students: pd.DataFrame) -> object:
    name = "score_regression"
    return modeling.fit_pipeline(modeling.build_candidates([name], seed=0)[name], students)


# --- the rule as data -------------------------------------------------------------------------------------


def test_a_rule_gives_the_same_cut_off_by_frame_record_and_code_table(population: pd.DataFrame) -> None:
    rule = _rule((schema.RACE_ETHNICITY, schema.LUNCH, schema.GENDER))  # not in schema order, on purpose
    frame = population.head(3000)
    by_frame = rule.for_frame(frame)
    by_record = np.array([rule.cutoff(r) for r in frame.to_dict("records")])
    codes = np.stack(
        [
            pd.Categorical(frame[f], categories=list(schema.CATEGORIES[f])).codes
            for f in schema.CATEGORICAL_FEATURES
        ],
        axis=1,
    )
    by_code = rule.table()[tuple(codes.T)]
    np.testing.assert_array_equal(by_frame, by_record)
    np.testing.assert_array_equal(by_frame, by_code)
    assert rule.table().shape == tuple(len(schema.CATEGORIES[f]) for f in schema.CATEGORICAL_FEATURES)
    assert len(set(by_frame.tolist())) == 20


def test_a_rule_round_trips_through_plain_data_exactly() -> None:
    rule = _rule()
    data = rule.to_dict()
    assert data["kind"] == GROUPS and len(data["cutoffs"]) == 20
    assert data["cutoffs"][0] == {
        schema.LUNCH: "standard",
        schema.GENDER: "female",
        schema.RACE_ETHNICITY: "group A",
        "threshold": 0.4,
    }
    assert DecisionRule.from_dict(data) == rule
    single = DecisionRule.single(0.63)
    assert single.kind == SINGLE and DecisionRule.from_dict(single.to_dict()) == single
    # A version logged before rules existed reads as one cut-off at its threshold.
    assert DecisionRule.from_dict(None, 0.71) == DecisionRule.single(0.71)
    assert "20 groups" in rule.summary() and "0.630" in single.summary()


def test_a_rule_refuses_what_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="cut-off"):
        DecisionRule(1.5)
    with pytest.raises(ValueError, match="categorical features"):
        DecisionRule(0.5, (schema.READING_SCORE,))
    with pytest.raises(ValueError, match="combination"):
        DecisionRule(0.5, (schema.LUNCH,), {("deluxe",): 0.5})
    with pytest.raises(ValueError, match="cut-off"):
        DecisionRule(0.5, (schema.LUNCH,), {("standard",): float("nan")})
    with pytest.raises(ValueError, match="missing column"):
        _rule().for_frame(pd.DataFrame({schema.LUNCH: ["standard"]}))
    # A value outside the schema falls back to the single cut-off instead of crashing.
    odd = pd.DataFrame(
        {schema.LUNCH: ["deluxe"], schema.GENDER: ["female"], schema.RACE_ETHNICITY: ["group A"]}
    )
    assert _rule().for_frame(odd).tolist() == [0.6]


# --- fitting --------------------------------------------------------------------------------------------


def test_fit_rule_equalises_expected_fail_recall_in_every_group(
    model_on: object, population: pd.DataFrame
) -> None:
    p = modeling.pass_probability(model_on, population)
    rule = fairness.fit_rule(p, population, RULE, fitted_on="the test population")
    assert rule.criterion == EQUAL_FAIL_RECALL and rule.fitted_on == "the test population"
    assert len(rule.cutoffs) == 20
    q, flagged = 1 - p, p < rule.for_frame(population)
    codes = population[list(RULE)].astype(str).agg("|".join, axis=1)
    recalls = [(q * flagged)[codes == c].sum() / q[codes == c].sum() for c in codes.unique()]
    assert max(recalls) - min(recalls) < 0.01  # every one of the 20 groups, not just the margins
    assert rule.target_fail_recall == pytest.approx(np.mean(recalls), abs=0.01)
    figures = fairness.expected_figures(p, population, rule)
    for feature in RULE:
        assert figures[f"expected_fail_recall_gap_{feature}"] < 0.01


def test_the_single_cut_off_maximises_expected_f1(model_on: object, population: pd.DataFrame) -> None:
    p = modeling.pass_probability(model_on, population)
    rule = fairness.fit_rule(p, population, ())
    assert rule.features == () and rule.target_fail_recall is None
    q = 1 - p

    def expected_f1(t: float) -> float:
        flagged = p < t
        return 2 * (q * flagged).sum() / (flagged.sum() + q.sum())

    grid = np.linspace(0.3, 0.9, 121)
    best = max(expected_f1(t) for t in grid)
    assert expected_f1(rule.threshold) >= best - 0.002
    # Calibrated probabilities: the F1-optimal cut-off sits at P(fail) = F1* / 2 (the ceiling benchmark).
    assert 1 - rule.threshold == pytest.approx(best / 2, abs=0.03)


def test_reference_students_come_from_the_population_model_of_the_training_rows(
    students: pd.DataFrame,
) -> None:
    reference, described = fairness.reference_students(students, n=5000, seed=1)
    assert len(reference) == 5000 and "population model refitted on 1000 training rows" in described
    assert set(reference[schema.LUNCH]) == set(schema.CATEGORIES[schema.LUNCH])
    assert reference[schema.LUNCH].eq("free/reduced").mean() == pytest.approx(0.355, abs=0.03)
    same, _ = fairness.reference_students(students, n=5000, seed=1)
    pd.testing.assert_frame_equal(reference, same)
    rows, described = fairness.reference_students(students.drop(columns=[schema.MATH_SCORE]), n=5000)
    assert len(rows) == len(students) and "training rows themselves" in described


# --- assessment -----------------------------------------------------------------------------------


def test_group_metrics_agree_with_fairlearn_and_with_counting(population: pd.DataFrame) -> None:
    frame = population.head(4000).reset_index(drop=True)
    rng = np.random.default_rng(2)
    y = frame[schema.LABEL].to_numpy()
    p = np.clip(np.where(y, 0.8, 0.3) + rng.normal(0, 0.15, len(y)), 0, 1)
    pred = p >= 0.55
    table = fairness.group_metrics(y, pred, frame[[schema.GENDER, schema.LUNCH]], p)
    assert list(table.columns) == list(fairness.GROUP_COLUMNS)
    assert list(table.index) == [
        (schema.GENDER, "female"),
        (schema.GENDER, "male"),
        (schema.LUNCH, "standard"),
        (schema.LUNCH, "free/reduced"),
    ]
    # True-negative rate with pass = 1 is the fail-class recall.
    tnr = MetricFrame(
        metrics=lambda a, b: true_negative_rate(a, b, pos_label=True),
        y_true=y,
        y_pred=pred,
        sensitive_features=frame[schema.LUNCH],
    ).by_group
    for group in schema.CATEGORIES[schema.LUNCH]:
        rows = (frame[schema.LUNCH] == group).to_numpy()
        fails, passes = rows & ~y, rows & y
        figures = table.loc[(schema.LUNCH, group)]
        assert figures["fail_recall"] == pytest.approx((~pred)[fails].mean())
        assert figures["fail_recall"] == pytest.approx(tnr[group])
        assert figures["false_alarm_rate"] == pytest.approx((~pred)[passes].mean())
        assert figures["flag_rate"] == pytest.approx((~pred)[rows].mean())
        assert figures["mean_p_fail"] == pytest.approx((1 - p)[rows].mean())
        assert figures["fail_rate"] == pytest.approx((~y)[rows].mean())
        assert figures["n"] == rows.sum() and figures["n_fail"] == fails.sum()
        assert figures["fail_recall_low"] < figures["fail_recall"] < figures["fail_recall_high"]


def test_assessment_gaps_ignore_groups_too_small_to_judge() -> None:
    frame = pd.DataFrame({schema.LUNCH: ["standard"] * 10 + ["free/reduced"] * 10})
    # standard: 6 fails, 3 caught (0.5); free/reduced: 2 fails, both caught (1.0) but too few to judge.
    y = np.array([False] * 6 + [True] * 4 + [False] * 2 + [True] * 8)
    pred = np.array([False] * 3 + [True] * 7 + [False] * 2 + [True] * 8)
    p = np.where(pred, 0.9, 0.2)
    assessment = fairness.assess(y, p, pred, frame, features=[schema.LUNCH], min_fail=5)
    assert math.isnan(assessment.gap(schema.LUNCH))
    everything = fairness.assess(y, p, pred, frame, features=[schema.LUNCH], min_fail=1)
    assert everything.gap(schema.LUNCH) == pytest.approx(0.5)
    metrics = everything.metrics()
    assert metrics["test_fail_recall_gap_lunch"] == pytest.approx(0.5)
    assert metrics["test_fail_recall_gap_max"] == pytest.approx(0.5)
    assert {"test_false_alarm_gap_lunch", "test_flag_rate_gap_lunch", "test_calibration_gap_lunch"} <= set(
        metrics
    )
    assert set(everything.metrics(prefix="day_")) == {k.replace("test_", "day_", 1) for k in metrics}
    table = everything.table()
    assert list(table[["feature", "group"]].itertuples(index=False, name=None)) == [
        (schema.LUNCH, "standard"),
        (schema.LUNCH, "free/reduced"),
    ]
    markdown = everything.markdown()
    assert "| lunch | standard | 10 | 6 | 0.50 (" in markdown and "lunch 0.50" in markdown
    assert everything.overall["fail_recall"] == pytest.approx(5 / 8)


def test_a_group_without_fails_has_no_recall_rather_than_zero() -> None:
    frame = pd.DataFrame({schema.GENDER: ["female"] * 4 + ["male"] * 4})
    y = np.array([False, False, True, True, True, True, True, True])
    pred = np.array([True, False, True, True, False, True, True, True])
    table = fairness.group_metrics(y, pred, frame, np.full(8, 0.5))
    assert table.loc[(schema.GENDER, "female"), "fail_recall"] == 0.5
    assert math.isnan(table.loc[(schema.GENDER, "male"), "fail_recall"])
    assert table.loc[(schema.GENDER, "male"), "false_alarm_rate"] == 0.25
    with pytest.raises(ValueError, match="missing column"):
        fairness.assess(y, np.full(8, 0.5), pred, frame)


def test_wilson_interval_has_its_textbook_values() -> None:
    lo, hi = fairness.wilson_interval(np.array([8]), np.array([10]))
    assert lo[0] == pytest.approx(0.4902, abs=1e-3) and hi[0] == pytest.approx(0.9433, abs=1e-3)
    lo, hi = fairness.wilson_interval(np.array([0]), np.array([0]))
    assert np.isnan(lo[0]) or lo[0] == 0.0
