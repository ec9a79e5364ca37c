"""The model card: every section of the template, this version's own figures, and the race/ethnicity notice."""

from __future__ import annotations

import pandas as pd
import pytest

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.ml import fairness, model_card, modeling

SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Out-of-scope use",
    "## Factors",
    "## Data and its known limits",
    "## Metrics",
    "### Per group (test split)",
    "## Fairness criterion",
    "### Trade-offs for this version",
    "### Trade-offs measured",
    "## What the advice is and is not",
    "## Caveats and recommendations",
)


@pytest.fixture(scope="module")
def served(students: pd.DataFrame) -> tuple[modeling.Selection, modeling.Splits]:
    parts = modeling.split_students(students, seed=42)
    selection = modeling.train_and_select(
        parts.train, parts.validation, candidate_set="fast", seed=42, reference_rows=30_000
    )
    return selection, parts


def test_the_card_has_every_section_and_this_versions_figures(
    served: tuple[modeling.Selection, modeling.Splits],
) -> None:
    selection, parts = served
    metrics = modeling.evaluate(selection.pipeline, selection.rule, parts.test)
    p = modeling.pass_probability(selection.pipeline, parts.test)
    assessment = fairness.assess(
        parts.test[schema.LABEL], p, p >= selection.rule.for_frame(parts.test), parts.test
    )
    card = model_card.render(
        version="12",
        candidate=selection.name,
        rule=selection.rule,
        test_metrics=metrics,
        assessment=assessment,
        rule_comparison=selection.rule_comparison,
        n_train=800,
        n_test=200,
        run_id="abc123",
    )
    for section in SECTIONS:
        assert section in card, section
    assert card.startswith(f"# Model card: {schema.MODEL_NAME}, version 12")
    assert f"| ROC-AUC | {metrics['test_roc_auc']:.3f} |" in card
    assert f"| F1 (fail) | {metrics['test_f1_fail']:.3f} |" in card
    assert "**This rule uses race/ethnicity to set thresholds.**" in card
    assert "true-negative-rate parity" in card and "least squares on the maths score" in card
    assert "| per lunch x gender x race/ethnicity |" in card and "| single threshold |" in card
    assert "| lunch | free/reduced |" in card  # the per-group table
    assert "unawareness" in card and "synthetic" in card
    advice = card.split("## What the advice is and is not")[1].split("\n## ")[0]
    assert "**What it is not:** a promise about one student" in advice
    assert "an association in past data" in advice
    assert "never changed" in advice and "passed more often" in advice


def test_a_single_cut_off_card_makes_no_race_notice_and_survives_missing_figures() -> None:
    card = model_card.render(
        version="3", candidate="logistic_regression", rule=DecisionRule.single(0.62), test_metrics={}
    )
    assert "uses race/ethnicity to set thresholds" not in card
    assert "### Per group" not in card and "### Trade-offs for this version" not in card
    assert "pass when P(pass) >= 0.620" in card and "### Trade-offs measured" in card
