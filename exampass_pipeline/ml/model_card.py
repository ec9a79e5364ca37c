"""The model card: a Markdown page logged with every registered version (``registry.log_model_card``).

It follows the sections of Mitchell et al. (2019), "Model Cards for Model Reporting", as the Hugging Face
model card template arranges them: model details, intended use and out-of-scope use, factors, data,
metrics overall and per group, the fairness criterion with its measured trade-offs, caveats. ``render``
only formats the figures it is given (this version's test metrics and fairness assessment, the expected
figures of the rules compared when it was trained) plus the benchmark figures below, so the card never
computes anything a reviewer cannot trace to an MLflow metric or to ``make bench-model``. No dagster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.ml.fairness import Assessment

CANDIDATE_TEXT = {
    "score_regression": (
        "least squares on the maths score (one-hot categories, standardised reading and writing scores), read "
        "out as P(maths >= 50) under a normal predictive distribution: P(pass) = Phi((expected maths - 49.5) "
        "/ sigma)"
    ),
    "logistic_regression": "logistic regression on soft pass/fail targets derived from the maths score",
    "random_forest": "a random forest on soft pass/fail targets",
    "hist_gradient_boosting": "histogram gradient boosting (depth 2, monotone in the scores) on soft targets",
    "stump_forest": "a deliberately weak forest of stumps (used to show the champion gate rejecting it)",
}
METRIC_TEXT = {
    "test_roc_auc": "ROC-AUC",
    "test_f1_fail": "F1 (fail)",
    "test_recall_fail": "recall (fail): share of failing students flagged",
    "test_precision_fail": "precision (fail): share of flagged students who fail",
    "test_balanced_accuracy": "balanced accuracy",
    "test_accuracy": "accuracy",
    "test_brier": "Brier score (probability error, lower is better)",
}
COMPARISON_TEXT = {
    "expected_f1_fail": "expected F1 (fail)",
    "expected_fail_recall": "expected fail recall",
    "expected_flag_rate": "share flagged",
    **{f"expected_fail_recall_gap_{f}": f"fail-recall gap, {f}" for f in schema.CATEGORICAL_FEATURES},
}

# The measured trade-offs (docs/model.md, "Fairness"): `make bench-model`, 20 seeded 70/10/20 splits of the
# Kaggle file (test figures: mean over splits; gaps: pooled over the 20 test parts) and 100,000 new students
# drawn from exampass_pipeline.ml.synthetic (mean over the 20 models). Update both places together.
BENCHMARK_HEADER = (
    "decision",
    "ROC-AUC (file)",
    "F1 fail (file)",
    "F1 fail (population)",
    "fail-recall gap lunch / gender / race (population)",
    "same gaps, pooled test rows of the file",
)
BENCHMARK_ROWS: tuple[tuple[str, ...], ...] = (
    (
        "**served: cut-off per lunch x gender x race/ethnicity**",
        "0.973",
        "0.728",
        "0.745",
        "0.010 / 0.010 / 0.032",
        "0.008 / 0.213 / 0.301",
    ),
    (
        "same model, cut-off per lunch x gender (race not used)",
        "0.973",
        "0.741",
        "0.747",
        "0.010 / 0.011 / 0.121",
        "0.030 / 0.202 / 0.251",
    ),
    (
        "same model, one cut-off for everybody",
        "0.973",
        "0.746",
        "0.759",
        "0.103 / 0.054 / 0.118",
        "0.203 / 0.314 / 0.220",
    ),
    (
        "same model, cut-off per combination of all five categorical features",
        "0.973",
        "0.714",
        "0.741",
        "0.009 / 0.009 / 0.032",
        "0.015 / 0.215 / 0.308",
    ),
    (
        "unawareness: no gender or race/ethnicity as inputs, one cut-off",
        "0.940",
        "0.654",
        "0.630",
        "0.228 / 0.409 / 0.121",
        "0.241 / 0.349 / 0.350",
    ),
)
BENCHMARK_TRADEOFFS = "\n".join(
    ["| " + " | ".join(BENCHMARK_HEADER) + " |", "|---" * len(BENCHMARK_HEADER) + "|"]
    + ["| " + " | ".join(row) + " |" for row in BENCHMARK_ROWS]
)
BENCHMARK_NOTE = (
    "Population: 100,000 new students from the population model of exampass_pipeline.ml.synthetic. On a second "
    "population whose maths is the file's least-squares fit plus the file's noise, the served rule reaches "
    "ROC-AUC 0.975 and F1 (fail) 0.777 with gaps 0.009 / 0.010 / 0.034. "
    "The file holds 135 failing students; pooled over 20 splits each is counted about four times, so its "
    "gaps are those of a few dozen students per group. The same served procedure run on 10 independent "
    "1,000-student files from the population model gave pooled gaps (5th-95th percentile) of 0.01-0.18 "
    "(lunch), 0.01-0.11 (gender) and 0.12-0.29 (race/ethnicity): a single file cannot show a gap below "
    "about 0.1 for five race/ethnicity groups, even when the rule is fair in the population."
)


def _number(value: float | None, digits: int = 3) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def _details(
    version: str, candidate: str, rule: DecisionRule, trained_at: str | None, run_id: str | None
) -> str:
    lines = [
        f"# Model card: {schema.MODEL_NAME}, version {version}",
        "",
        "## Model details",
        "",
        f"- **What it predicts:** whether a student passes the maths exam (maths score >= {schema.PASS_MARK}), "
        "from gender, race/ethnicity (anonymised groups A-E), parental level of education, lunch (standard or "
        "free/reduced: a proxy for family income), test preparation course, and the reading and writing scores.",
        f"- **Model:** `{candidate}`: {CANDIDATE_TEXT.get(candidate, candidate)}. Chosen by 5-fold "
        "cross-validated log loss on train + validation, then refitted on both.",
        f"- **Output:** a calibrated probability of passing, and the flag *at risk* (`predicted_pass` false). "
        f"Decision rule: {rule.summary()}.",
        f"- **Trained:** {trained_at or 'see the MLflow run'}; MLflow run `{run_id or 'n/a'}`.",
        "- **Explanations:** per feature, exact; for the score model in maths points of expected score "
        "against a reference student (GET /model says which).",
    ]
    return "\n".join(lines)


def _uses() -> str:
    return "\n".join(
        [
            "## Intended use",
            "",
            "- Deciding which students a teacher or tutor should offer extra help in maths, ahead of the exam.",
            "- A prompt for a conversation between staff and a student: the flag is advice to people, who decide.",
            "- Monitoring, per group, whether the flag catches failing students alike.",
            "",
            "## Out-of-scope use",
            "",
            "- Grading, admission, streaming or any decision that withholds an opportunity from a student.",
            "- Predicting an individual's exact maths score, or anything other than the pass mark of 50.",
            "- Any use of the race/ethnicity or lunch groups beyond this flag's cut-offs and its monitoring.",
            "- Populations unlike the training data (other exams, other grading, other countries) without "
            "re-validating on labelled students of that population.",
            "- Acting on the flag without a person in the loop.",
        ]
    )


def _data(n_train: int | None, n_test: int | None, data_source: str) -> str:
    return "\n".join(
        [
            "## Factors",
            "",
            "Groups assessed: gender, race/ethnicity, parental level of education, lunch, test preparation "
            "course. The decision rule sets one cut-off per lunch x gender x race/ethnicity group.",
            "",
            "## Data and its known limits",
            "",
            f"- Source: {data_source}. Train + validation: {n_train if n_train is not None else 'n/a'} rows; "
            f"test: {n_test if n_test is not None else 'n/a'} rows (a seeded, stratified 70/10/20 split).",
            '- The Kaggle "Students Performance in Exams" file is itself **synthetic** (generated data, 1,000 '
            "rows, 13.5 % fails): one population, no time, no school, race/ethnicity groups with no stated "
            "meaning. Figures here describe that population and nothing wider.",
            "- About 135 failing students in the whole file, about 27 in a test split: per-group figures on a "
            "test split carry wide intervals (shown).",
            "- The rule's cut-offs are computed from the model's own probabilities over 100,000 students drawn "
            "from a population model refitted on the training rows: no labels, and no test rows, are used.",
        ]
    )


def _metrics(test_metrics: Mapping[str, float], assessment: Assessment | None) -> str:
    lines = [
        "## Metrics",
        "",
        "On this version's test split, under the served rule:",
        "",
        "| metric | value |",
    ]
    lines.append("|---|---|")
    for key in schema.TEST_METRICS:
        if key in test_metrics:
            lines.append(f"| {METRIC_TEXT.get(key, key)} | {_number(float(test_metrics[key]))} |")
    if assessment is not None:
        lines += ["", "### Per group (test split)", "", assessment.markdown()]
    return "\n".join(lines)


def _fairness(rule: DecisionRule, comparison: pd.DataFrame | None) -> str:
    uses_race = schema.RACE_ETHNICITY in rule.features
    lines = [
        "## Fairness criterion",
        "",
        "**Equal opportunity for the outcome that matters: a failing student is flagged as often whatever "
        "their group.** The flag is the decision `predicted_pass = false`; with pass = 1 this is "
        "true-negative-rate parity (fairlearn's `true_negative_rate`), not true-positive-rate parity.",
        "",
        f"- How: {rule.summary()}. Each cut-off gives its group the same *expected* fail recall"
        + (f" ({rule.target_fail_recall:.2f})" if rule.target_fail_recall is not None else "")
        + ", computed from the model's calibrated probabilities; that common recall is the one with the "
        "largest expected F1 (fail). The rule is deterministic: the same student always gets the same answer.",
        "- The probability served is the model's own, calibrated, and the same for every group; only the "
        "cut-off that turns it into a flag differs. Two students with the same probability can therefore "
        "get different flags when they belong to different groups.",
    ]
    if uses_race:
        lines.append(
            "- **This rule uses race/ethnicity to set thresholds.** Without it (cut-offs per lunch x gender "
            "only), failing students of group E, whose expected maths is highest, are flagged markedly less "
            "often than those of group A (population gap 0.12, measured below). The model itself uses "
            "race/ethnicity as an input too; removing it (and gender) is worse on every count (below)."
        )
    if comparison is not None and not comparison.empty:
        columns = [c for c in COMPARISON_TEXT if c in comparison.columns]
        lines += [
            "",
            "### Trade-offs for this version (expected, on its reference sample; no labels)",
            "",
            "| rule | " + " | ".join(COMPARISON_TEXT[c] for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, row in comparison.iterrows():
            lines.append(f"| {name} | " + " | ".join(_number(float(row[c])) for c in columns) + " |")
    lines += ["", "### Trade-offs measured (`make bench-model`)", "", BENCHMARK_TRADEOFFS, "", BENCHMARK_NOTE]
    return "\n".join(lines)


def _advice() -> str:
    """Why a section of its own: advice reads like a recipe, and the card must say it is an association."""
    return "\n".join(
        [
            "## What the advice is and is not",
            "",
            "- **What it is:** for a flagged student, `POST /predict` (and the page, and the roster's `advice` "
            "column) lists the smallest changes to the three inputs a school can act on (completing the test "
            "preparation course, the reading score, the writing score, and an equal rise of both, alone and "
            "with the course) that this version's own scorer and the student's own cut-off turn into a pass. "
            "Each comes with the pass probability `/predict` answers for the changed student, exactly.",
            "- **What it is not:** a promise about one student, or a cause: an association in past data. It "
            "says what this model learned "
            "from past students: students like this one, with those scores or that course, passed more often. "
            "Tutoring that raises a reading score may not raise a maths score, and the course's association "
            "may partly reflect who chooses to take it.",
            "- **Never advice:** gender, race/ethnicity, parental level of education and lunch are never "
            "changed. Because the cut-offs are set per group for equal opportunity, two students with the same "
            "scores in different groups can get different advice; that follows from the rule, not from a "
            "changed group.",
            "- **Nothing passes:** when no change within the valid range (0-100) passes, the answer says so. "
            "The student still needs a person's help; the model cannot point to a lever.",
        ]
    )


def _caveats() -> str:
    return "\n".join(
        [
            "## Caveats and recommendations",
            "",
            "- Equal opportunity costs accuracy: 0.004-0.014 F1 (fail) in the populations measured against one "
            "cut-off for everybody, because some students are flagged at a different probability than the "
            "F1-best.",
            "- The cut-offs hold for the population the model was trained on. A new school, a new mix of "
            "students or a change in grading moves them: the daily `segment_quality` check compares fail "
            "recall between groups (permutation test, Holm-adjusted, plus a minimum gap) and every retrain "
            "refits the rule.",
            "- A day holds about 27 failing students; a gap below about 0.3 on one day is usually noise, and "
            "the check only warns when it is not.",
            "- Groups A-E are anonymised labels of a synthetic file; lunch is a proxy for income. Neither "
            "should be read as a cause.",
        ]
    )


def render(
    *,
    version: str,
    candidate: str,
    rule: DecisionRule,
    test_metrics: Mapping[str, float],
    assessment: Assessment | None = None,
    rule_comparison: pd.DataFrame | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    data_source: str = "the Kaggle file (EXAMPASS_DATA)",
    trained_at: str | None = None,
    run_id: str | None = None,
) -> str:
    """The model card of one version, as Markdown.

    ``test_metrics``: schema.TEST_METRICS of this version under its rule (``modeling.evaluate``);
    ``assessment``: ``fairness.assess`` on the same test split; ``rule_comparison``: the expected figures of
    the rules compared at training (``LoadedModel.rule_comparison`` / ``Selection.rule_comparison``).
    """
    parts = [
        _details(version, candidate, rule, trained_at, run_id),
        _uses(),
        _data(n_train, n_test, data_source),
        _metrics(test_metrics, assessment),
        _fairness(rule, rule_comparison),
        _advice(),
        _caveats(),
        "Format: Mitchell et al. (2019), *Model Cards for Model Reporting*; sections as in the Hugging Face "
        "model card template.",
    ]
    return "\n\n".join(parts) + "\n"
