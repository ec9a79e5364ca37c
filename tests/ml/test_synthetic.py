"""The synthetic students must be indistinguishable enough from the real ones, and each scenario must move
exactly what it claims. Compared against the real Kaggle file in ../shared/data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import synthetic
from exampass_pipeline.ml.dataset import read_students_csv

N = 5000
SEED = 20240601


@pytest.fixture(scope="module")
def real(real_csv: Path) -> pd.DataFrame:
    """The real file (``real_csv`` from conftest.py: ../shared/data/StudentsPerformance.csv)."""
    frame = read_students_csv(real_csv)
    frame[schema.LABEL] = frame[schema.MATH_SCORE] >= schema.PASS_MARK
    return frame


@pytest.fixture(scope="module")
def samples() -> dict[str, pd.DataFrame]:
    """One large sample per scenario, same seed, so differences come from the scenario alone."""
    return {name: synthetic.sample(N, seed=SEED, scenario=name) for name in synthetic.SCENARIOS}


def _share(frame: pd.DataFrame, feature: str, level: str) -> float:
    return float((frame[feature] == level).mean())


def _one_hot(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[list(schema.SCORES)].astype(float)
    for name, levels in schema.CATEGORIES.items():
        for level in levels:
            out[f"{name}={level}"] = (frame[name] == level).astype(float)
    return out


def _discriminator_auc(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Cross-validated ROC-AUC of a random forest told to separate ``a`` from ``b``: 0.5 means it cannot."""
    x = pd.concat([_one_hot(a), _one_hot(b)], ignore_index=True)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    clf = RandomForestClassifier(n_estimators=100, min_samples_leaf=5, n_jobs=2, random_state=0)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(clf, x, y, cv=cv, scoring="roc_auc").mean())


def test_sample_has_schema_columns_types_and_consistent_label(samples):
    frame = samples["none"]
    assert list(frame.columns) == [*schema.COLUMNS, schema.LABEL]
    assert len(frame) == N
    for name, levels in schema.CATEGORIES.items():
        assert set(frame[name]) <= set(levels), name
    for name in schema.SCORES:
        assert frame[name].dtype == np.int64
        assert frame[name].between(schema.SCORE_MIN, schema.SCORE_MAX).all()
    assert frame[schema.LABEL].dtype == bool
    assert (frame[schema.LABEL] == frame[schema.MATH_SCORE].map(schema.pass_math)).all()
    # Every row is a valid record by the shared schema rule.
    assert all(
        not schema.validate_record(rec, require_math=True) for rec in frame.head(200).to_dict("records")
    )


def test_category_shares_match_real(real, samples):
    for name, levels in schema.CATEGORIES.items():
        for level in levels:
            assert abs(_share(samples["none"], name, level) - _share(real, name, level)) <= 0.03, (
                name,
                level,
            )


def test_score_distribution_matches_real(real, samples):
    synth = samples["none"]
    for name in schema.SCORES:
        assert abs(synth[name].mean() - real[name].mean()) <= 2.0, name
        assert abs(synth[name].std() - real[name].std()) <= 2.0, name
    assert abs(synth[schema.LABEL].mean() - real[schema.LABEL].mean()) <= 0.02
    corr_real = real[list(schema.SCORES)].corr().to_numpy()
    corr_synth = synth[list(schema.SCORES)].corr().to_numpy()
    assert np.abs(corr_real - corr_synth).max() <= 0.05


def test_classifier_cannot_tell_real_from_synthetic(real):
    synth = synthetic.sample(len(real), seed=SEED + 1)
    assert _discriminator_auc(real, synth) <= 0.65


def test_discriminator_has_power_on_a_broken_sample(real):
    """The same discriminator spots a sample whose reading score lost its link to the other scores, so the
    AUC bound above is a real test and not a classifier too weak to see anything."""
    broken = synthetic.sample(len(real), seed=SEED + 1)
    broken[schema.READING_SCORE] = np.random.default_rng(0).permutation(
        broken[schema.READING_SCORE].to_numpy()
    )
    assert _discriminator_auc(real, broken) >= 0.7


def test_same_seed_same_sample_and_different_seed_differs():
    a = synthetic.sample(500, seed=11, scenario="lunch_shift")
    b = synthetic.sample(500, seed=11, scenario="lunch_shift")
    c = synthetic.sample(500, seed=12, scenario="lunch_shift")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_lunch_shift_moves_lunch_share_and_scores_with_it(samples):
    base, shifted = samples["none"], samples["lunch_shift"]
    assert abs(_share(shifted, schema.LUNCH, "free/reduced") - 0.70) <= 0.04
    assert abs(_share(base, schema.LUNCH, "free/reduced") - 0.355) <= 0.03
    for name in schema.SCORES:
        assert shifted[name].mean() < base[name].mean() - 1.5, name
    assert shifted[schema.LABEL].mean() < base[schema.LABEL].mean() - 0.02
    # Scores stay conditional on lunch: within a lunch group the scenario changes nothing.
    for level in schema.CATEGORIES[schema.LUNCH]:
        m_base = base.loc[base[schema.LUNCH] == level, schema.MATH_SCORE].mean()
        m_shift = shifted.loc[shifted[schema.LUNCH] == level, schema.MATH_SCORE].mean()
        assert abs(m_base - m_shift) <= 1.5, level
    # Other factors keep their mix.
    for level in schema.CATEGORIES[schema.GENDER]:
        assert abs(_share(shifted, schema.GENDER, level) - _share(base, schema.GENDER, level)) <= 0.03


def test_prep_collapse_removes_completed_prep(samples):
    base, collapsed = samples["none"], samples["prep_collapse"]
    assert _share(collapsed, schema.TEST_PREP, "completed") == 0.0
    assert _share(base, schema.TEST_PREP, "completed") > 0.3
    assert collapsed[schema.WRITING_SCORE].mean() < base[schema.WRITING_SCORE].mean() - 2.0
    assert collapsed[schema.LABEL].mean() < base[schema.LABEL].mean()


def test_score_decline_lowers_every_score_by_about_five_and_the_pass_rate(samples):
    base, declined = samples["none"], samples["score_decline"]
    for name in schema.SCORES:
        drop = base[name].mean() - declined[name].mean()
        assert 4.0 <= drop <= 6.0, (name, drop)
    assert declined[schema.LABEL].mean() < base[schema.LABEL].mean() - 0.04
    for name, levels in schema.CATEGORIES.items():
        for level in levels:
            assert abs(_share(declined, name, level) - _share(base, name, level)) <= 0.03, (name, level)


def test_new_school_changes_race_and_parental_mix_only(real, samples):
    school = samples["new_school"]
    for feature, shares in synthetic.NEW_SCHOOL_MIX.items():
        moved = 0.0
        for level, share in shares.items():
            assert abs(_share(school, feature, level) - share) <= 0.03, (feature, level)
            moved += abs(_share(school, feature, level) - _share(real, feature, level))
        assert moved >= 0.3, feature  # total variation distance from the real mix is large
    for feature in (schema.GENDER, schema.LUNCH, schema.TEST_PREP):
        for level in schema.CATEGORIES[feature]:
            assert abs(_share(school, feature, level) - _share(real, feature, level)) <= 0.03


def test_unknown_scenario_and_bad_n_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="scenario") as info:
        synthetic.sample(10, scenario="pandemic")
    for name in synthetic.SCENARIOS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="n: must be a non-negative integer"):
        synthetic.sample(-1)
    assert len(synthetic.sample(0, seed=1)) == 0


def test_params_for_another_schema_are_refused():
    params = synthetic.load_params()
    params["categories"][schema.LUNCH] = ["standard", "free"]
    with pytest.raises(ValueError, match="lunch"):
        synthetic.sample(10, params=params)


def test_load_params_returns_an_independent_copy():
    first = synthetic.load_params()
    first["intercept"][0] = -1000.0
    assert synthetic.load_params()["intercept"][0] != -1000.0
    assert synthetic.sample(200, seed=3)[schema.MATH_SCORE].mean() > 40


def _assert_close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-5), (path, a, b)
    else:
        assert a == b, path


def test_committed_params_are_fitted_from_the_real_file(real):
    _assert_close(synthetic.load_params(), synthetic.fit_params(real))


def test_fit_cli_regenerates_the_committed_json(real_csv, tmp_path):
    out = tmp_path / "params.json"
    assert synthetic.main(["fit", str(real_csv), "--out", str(out)]) == 0
    _assert_close(json.loads(out.read_text()), synthetic.load_params())
    assert synthetic.main(["fit", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2


def test_committed_json_holds_summaries_not_rows():
    text = synthetic.PARAMS_PATH.read_text()
    assert len(re.findall(r"group [A-E]", text)) <= 10
    assert len(text) < 20_000
    params = json.loads(text)
    assert params["n_rows"] >= 1000
    for name, levels in schema.CATEGORIES.items():
        assert math.isclose(sum(params["marginals"][name]), 1.0, abs_tol=1e-5), name
        assert len(params["effects"][name]) == len(levels)


def test_fit_params_refuses_bad_tables(real):
    with pytest.raises(ValueError, match="missing column"):
        synthetic.fit_params(real.drop(columns=[schema.LUNCH]))
    bad = real.copy()
    bad.loc[0, schema.GENDER] = "unknown"
    with pytest.raises(ValueError, match="gender: unknown category 'unknown'"):
        synthetic.fit_params(bad)
