"""The retraining defences on real data: the trusted set, screening, the client test, the cap and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.ml import dataset, gate, modeling, synthetic, trust


def production(
    n: int, seed: int, scenario: str = "none", clients: tuple[str, ...] = ("a", "b", "c")
) -> pd.DataFrame:
    """Honest labelled production rows from the synthetic population, shared out among ``clients``."""
    rows = synthetic.sample(n, seed=seed, scenario=scenario)
    rows[dataset.CLIENT_COLUMN] = [clients[i % len(clients)] for i in range(n)]
    rows["partition_date"] = pd.Timestamp("2026-11-20").date()
    rows["prediction_id"] = [f"p{seed}-{i}" for i in range(n)]
    return rows


def lies(n: int, seed: int, client: str, shift: float, group: str = "group E") -> pd.DataFrame:
    """A campaign: ``group``'s students reported ``shift`` maths points off their true score."""
    rows = production(12 * n, seed, clients=(client,))
    rows = rows[rows[schema.RACE_ETHNICITY] == group].head(n).copy()
    rows[schema.MATH_SCORE] = np.clip(rows[schema.MATH_SCORE] + shift, 0, 100).round().astype(int)
    rows[schema.LABEL] = rows[schema.MATH_SCORE] >= schema.PASS_MARK
    return rows


@pytest.fixture(scope="module")
def plausibility(students: pd.DataFrame) -> trust.PlausibilityModel:
    return trust.PlausibilityModel.fit(trust.plausibility_rows(students))


def test_the_trusted_set_is_the_same_curated_rows_whatever_production_adds(students: pd.DataFrame) -> None:
    alone = trust.split_by_source(students, seed=1)
    extra = dataset.clean_students(production(400, 3), "production")
    grown = trust.split_by_source(pd.concat([students, extra], ignore_index=True), seed=7)
    assert trust.is_curated(grown.trusted).all()
    pd.testing.assert_frame_equal(alone.trusted, grown.trusted)
    assert (~trust.is_curated(grown.splits.test)).sum() == modeling.split_sizes(400)["test"]
    assert grown.trusted.index.isin(grown.splits.test.index).all()
    assert not grown.trusted.index.isin(grown.splits.train.index).any()
    sizes = {k: len(getattr(grown.splits, k)) for k in ("train", "validation", "test")}
    assert sizes == trust.expected_sizes(pd.concat([students, extra], ignore_index=True))


def test_only_curated_rows_may_teach_plausibility(students: pd.DataFrame) -> None:
    mixed = pd.concat([students, dataset.clean_students(production(50, 4), "production")], ignore_index=True)
    with pytest.raises(ValueError, match="only curated rows"):
        trust.PlausibilityModel.fit(mixed)


def test_gross_lies_are_quarantined_and_honest_reports_are_not(plausibility: trust.PlausibilityModel) -> None:
    honest = production(3000, 5)
    screened = trust.screen(honest, plausibility, width=4.0)
    assert len(screened.quarantined) <= 3, "an honest report is outside 4 sd about once in 16,000"
    campaign = lies(100, 6, "attacker", shift=-45)
    caught = trust.screen(campaign, plausibility, width=4.0)
    assert len(caught.quarantined) >= 95
    reason = caught.quarantined["reason"].iloc[0]
    assert "sd below" in reason and "plausible: within 4 sd" in reason
    counts = trust.quarantine_counts(campaign, caught.quarantined)
    assert counts.loc[0, "client"] == "attacker" and counts.loc[0, "implausible_share"] >= 0.95


def test_a_client_telling_plausible_lies_disagrees_with_the_others(
    plausibility: trust.PlausibilityModel,
) -> None:
    campaign = lies(80, 7, "attacker", shift=-12)  # each lie alone looks plausible (~2 sd)
    assert len(trust.screen(campaign, plausibility, width=4.0).quarantined) < 10
    rows = pd.concat([production(900, 8), campaign], ignore_index=True)
    biases = trust.biased_clients(rows, plausibility, alpha=0.01, min_rows=20, min_gap=0.5)
    assert biases and {b.client for b in biases} == {"attacker"}
    assert any(b.segment in ("all students", "race_ethnicity=group E") for b in biases)
    kept = trust.screen_clients(rows, plausibility, biases)
    assert (kept.kept[dataset.CLIENT_COLUMN] == "attacker").sum() == 0
    assert "the other clients report" in kept.quarantined["reason"].iloc[0]


def test_a_change_every_client_sees_is_not_a_bias(plausibility: trust.PlausibilityModel) -> None:
    rows = production(900, 9, scenario="harder_exam")
    assert trust.biased_clients(rows, plausibility, alpha=0.01, min_rows=20, min_gap=0.5) == []
    honest = production(900, 10)
    assert trust.biased_clients(honest, plausibility, alpha=0.01, min_rows=20, min_gap=0.5) == []


def test_the_cap_keeps_each_client_within_its_share(students: pd.DataFrame) -> None:
    big = dataset.clean_students(production(900, 11, clients=("loud",)), "production")
    small = dataset.clean_students(production(100, 12, clients=("quiet",)), "production")
    table = pd.concat([students, big, small], ignore_index=True)
    capped = trust.cap_clients(table, max_share=0.25, seed=0)
    share = (capped.table[dataset.CLIENT_COLUMN] == "loud").mean()
    assert share <= 0.25 and share > 0.24
    assert set(capped.capped) == {"loud"}
    assert (capped.table[dataset.CLIENT_COLUMN] == "quiet").sum() == 100
    assert trust.is_curated(capped.table).sum() == len(students)
    assert "loud: 900 ->" in trust.describe_cap(capped.capped, 0.25)


# ----------------------------------------------------------------------------------------------------- gate
def fit(table: pd.DataFrame, version: str) -> registry.LoadedModel:
    parts = trust.split_by_source(table, seed=42)
    with threadpool_limits(limits=1):
        chosen = modeling.train_and_select(parts.splits.train, parts.splits.validation, candidate_set="fast")
    return registry.LoadedModel(chosen.pipeline, chosen.threshold, version, None, chosen.name, None)


@pytest.fixture(scope="module")
def champion(students: pd.DataFrame) -> registry.LoadedModel:
    return fit(students, "1")


def judge(
    students: pd.DataFrame,
    champion: registry.LoadedModel,
    extra: pd.DataFrame,
    plausibility: trust.PlausibilityModel,
) -> gate.GateDecision:
    table = pd.concat([students, dataset.clean_students(extra, "production")], ignore_index=True)
    parts = trust.split_by_source(table, seed=42)
    candidate = fit(table, "2")
    return gate.decide(
        candidate,
        champion,
        parts.splits.test,
        parts.trusted,
        table[~trust.is_curated(table)],
        plausibility,
        gate.bounds_from(Settings.from_env()),
    )


def test_an_honest_retrain_is_promoted(
    students: pd.DataFrame, champion: registry.LoadedModel, plausibility: trust.PlausibilityModel
) -> None:
    decision = judge(students, champion, production(600, 13, scenario="lunch_shift"), plausibility)
    assert decision.status == "promoted", decision.reason
    assert {c.name for c in decision.comparisons} == {gate.CURRENT, gate.TRUSTED}
    assert set(decision.metrics()) >= {"gate_trusted_roc_auc_candidate", "gate_max_probability_shift"}


def test_a_campaign_against_one_group_is_held_for_approval(
    students: pd.DataFrame, champion: registry.LoadedModel, plausibility: trust.PlausibilityModel
) -> None:
    """The lies skip screening here on purpose: the gate itself must see the group move."""
    campaign = lies(300, 14, "attacker", shift=-12)
    decision = judge(students, champion, pd.concat([production(300, 15), campaign]), plausibility)
    assert decision.status == "pending_approval", decision.reason
    moved = {f"{s.feature}={s.value}" for s in decision.moved}
    assert "race_ethnicity=group E" in moved
    assert "exampass-approve 2" in decision.reason
    assert decision.corroborated_by["race_ethnicity=group E"] == ["attacker"], (
        "only the liar agrees with itself"
    )


def test_a_harder_exam_seen_by_several_clients_is_let_through(
    students: pd.DataFrame, champion: registry.LoadedModel, plausibility: trust.PlausibilityModel
) -> None:
    decision = judge(students, champion, production(900, 16, scenario="harder_exam"), plausibility)
    assert decision.moved, "a harder exam changes what the model says"
    assert decision.status == "promoted", decision.reason
    assert all(len(v) >= 3 for v in decision.corroborated_by.values())
    lonely = judge(
        students,
        champion,
        production(900, 17, scenario="harder_exam", clients=("only-school",)),
        plausibility,
    )
    assert lonely.status == "pending_approval", "one client cannot corroborate itself"
