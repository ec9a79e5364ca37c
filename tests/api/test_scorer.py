"""The compiled scorer against MLflow pyfunc, and its explanations against the models they explain."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from api_support import ALL_CANDIDATES, Registry, use_home
from mlflow import MlflowClient
from scipy.special import expit, logit, ndtr
from sklearn.compose import ColumnTransformer
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from exampass_api import scorer as sc
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.ml import modeling

FEATURES = list(schema.FEATURES)
EXPECTED_KIND = {
    "score_regression": "score",
    "logistic_regression": "linear",
    "random_forest": "forest",
    "hist_gradient_boosting": "boosting",
    "stump_forest": "forest",
}


@pytest.fixture(scope="module")
def compiled(api_registry: Registry) -> dict[str, tuple[Any, sc.Scorer, Any]]:
    """name -> (pyfunc model, compiled scorer of the registry-loaded pipeline, that pipeline), via MLflow."""
    out = {}
    with use_home(api_registry.settings.home), pytest.MonkeyPatch.context() as mp:
        # Only here: pyfunc refuses skops models without it. The service loads via registry.load_version.
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        client = MlflowClient()
        for name, version in api_registry.versions.items():
            pyfunc = mlflow.pyfunc.load_model(f"models:/{schema.MODEL_NAME}/{version}")
            loaded = registry.load_version(client.get_model_version(schema.MODEL_NAME, version), client)
            assert loaded.candidate == name
            out[name] = (pyfunc, sc.compile_pipeline(loaded.pipeline), loaded.pipeline)
    return out


def test_every_candidate_type_is_registered() -> None:
    # If training gains a candidate type, this file must learn it too (and the scorer may need to).
    assert set(ALL_CANDIDATES) == set(EXPECTED_KIND)


@pytest.mark.parametrize("name", ALL_CANDIDATES)
def test_compiled_probabilities_equal_pyfunc_on_every_row(
    name: str, compiled: dict[str, Any], students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    pyfunc, scorer, _ = compiled[name]
    assert scorer.kind == EXPECTED_KIND[name], "the fast path must be used, not the Pipeline fallback"
    expected = np.asarray(pyfunc.predict(students[FEATURES]))[:, 1]
    codes, nums = sc.encode(records)
    batch_p, batch_c = scorer.explain(codes, nums)
    one = [scorer.explain_one(r) for r in records]
    one_p = np.array([p for p, _ in one])
    one_c = np.array([c for _, c in one])
    assert len(expected) == len(records) == 1000
    np.testing.assert_allclose(scorer.predict_proba(codes, nums), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(batch_p, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(one_p, expected, rtol=0, atol=1e-9)
    # The one-row path and the array path explain identically.
    np.testing.assert_allclose(one_c, batch_c, rtol=0, atol=1e-9)


def test_linear_contributions_are_the_exact_log_odds_decomposition(
    compiled: dict[str, Any], students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    _, scorer, pipeline = compiled["logistic_regression"]
    codes, nums = sc.encode(records)
    proba, contrib = scorer.explain(codes, nums)
    decision = pipeline.decision_function(students[FEATURES])
    # Reference student: numeric at the training mean, categories averaged uniformly -> the mean log-odds
    # over every category combination with both scores at the scaler's mean.
    scaler = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    grid = pd.MultiIndex.from_product([schema.CATEGORIES[c] for c in schema.CATEGORICAL_FEATURES]).to_frame(
        index=False, name=list(schema.CATEGORICAL_FEATURES)
    )
    for i, name in enumerate(schema.NUMERIC_FEATURES):
        grid[name] = scaler.mean_[i]
    reference = pipeline.decision_function(grid[FEATURES]).mean()
    assert scorer.reference_log_odds == pytest.approx(reference, abs=1e-9)
    np.testing.assert_allclose(contrib.sum(axis=1), decision - reference, atol=1e-9)
    np.testing.assert_allclose(proba, expit(decision), atol=1e-12)
    # Each score's contribution is its coefficient times its standardised distance from the mean.
    coef = pipeline.named_steps["model"].coef_[0]
    columns = list(pipeline.named_steps["preprocess"].get_feature_names_out())
    for i, name in enumerate(schema.NUMERIC_FEATURES):
        w = coef[columns.index(f"numeric__{name}")]
        z = (students[name].to_numpy() - scaler.mean_[i]) / scaler.scale_[i]
        np.testing.assert_allclose(contrib[:, len(schema.CATEGORICAL_FEATURES) + i], w * z, atol=1e-9)


def _saabas_by_hand(tree: Any, X32: np.ndarray, column_feature: np.ndarray) -> np.ndarray:
    """Path attribution recomputed from sklearn's public decision_path, node values and parents."""
    t = tree.tree_
    value = t.value[:, 0, 1] / t.value[:, 0, :].sum(axis=1)
    paths = tree.decision_path(X32)
    out = np.zeros((X32.shape[0], len(schema.FEATURES)))
    for row in range(X32.shape[0]):
        nodes = paths.indices[paths.indptr[row] : paths.indptr[row + 1]]
        for parent, child in zip(nodes[:-1], nodes[1:], strict=True):
            out[row, column_feature[t.feature[parent]]] += value[child] - value[parent]
    return out


def test_score_contributions_are_the_exact_decomposition_of_the_expected_maths_score(
    compiled: dict[str, Any], students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    _, scorer, pipeline = compiled["score_regression"]
    assert scorer.units == "maths points" and scorer.reference_log_odds is None
    codes, nums = sc.encode(records)
    proba, contrib = scorer.explain(codes, nums)
    model = pipeline.named_steps["model"]
    mu = model.predict_score(pipeline.named_steps["preprocess"].transform(students[FEATURES]))
    # Reference student as for the logistic model: scores at the training mean, categories uniform.
    scaler = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    grid = pd.MultiIndex.from_product([schema.CATEGORIES[c] for c in schema.CATEGORICAL_FEATURES]).to_frame(
        index=False, name=list(schema.CATEGORICAL_FEATURES)
    )
    for i, name in enumerate(schema.NUMERIC_FEATURES):
        grid[name] = scaler.mean_[i]
    reference = model.predict_score(pipeline.named_steps["preprocess"].transform(grid[FEATURES])).mean()
    assert scorer.reference_value == pytest.approx(reference, abs=1e-9)
    np.testing.assert_allclose(contrib.sum(axis=1), mu - reference, atol=1e-9)
    np.testing.assert_allclose(proba, ndtr((mu - 49.5) / model.scale_), atol=1e-12)
    # A student's lunch contribution is the lunch coefficient in points, centred over the two lunches.
    columns = list(pipeline.named_steps["preprocess"].get_feature_names_out())
    lunch = [model.coef_[columns.index(f"categorical__lunch_{c}")] for c in schema.CATEGORIES["lunch"]]
    free = [i for i, r in enumerate(records) if r["lunch"] == "free/reduced"]
    assert contrib[free, schema.FEATURES.index("lunch")] == pytest.approx(lunch[1] - np.mean(lunch))
    info = scorer.reference()
    assert info["pass_mark"] == 49.5 and info["sigma"] == model.scale_


def test_forest_contributions_follow_each_trees_decision_path(
    compiled: dict[str, Any], students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    _, scorer, pipeline = compiled["random_forest"]
    rows = slice(0, 40)
    X32 = pipeline.named_steps["preprocess"].transform(students[FEATURES].iloc[rows]).astype(np.float32)
    forest = pipeline.named_steps["model"]
    by_hand = sum(_saabas_by_hand(t, X32, scorer.design.column_feature) for t in forest.estimators_) / len(
        forest.estimators_
    )
    proba, contrib = scorer.explain(*sc.encode(records[rows]))
    # Rescaled to log-odds by one factor per row: same direction, same ranking, sums to the logit change.
    eps = 0.5 / len(forest.estimators_)
    target = logit(np.clip(proba, eps, 1 - eps)) - scorer.reference_log_odds
    np.testing.assert_allclose(contrib.sum(axis=1), target, atol=1e-9)
    moved = np.abs(by_hand.sum(axis=1)) > 1e-9
    factor = target[moved] / by_hand[moved].sum(axis=1)
    assert (factor > 0).all()
    np.testing.assert_allclose(contrib[moved], by_hand[moved] * factor[:, None], atol=1e-9)


def test_boosting_contributions_add_up_to_the_models_raw_score(
    compiled: dict[str, Any], students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    _, scorer, pipeline = compiled["hist_gradient_boosting"]
    _, contrib = scorer.explain(*sc.encode(records))
    raw = pipeline.decision_function(students[FEATURES])
    np.testing.assert_allclose(contrib.sum(axis=1), raw - scorer.reference_log_odds, atol=1e-9)
    # The scores are monotone-constrained in this model: a higher reading score never lowers its credit.
    low, high = dict(records[0], reading_score=30), dict(records[0], reading_score=95)
    reading = schema.FEATURES.index(schema.READING_SCORE)
    assert scorer.explain_one(high)[1][reading] >= scorer.explain_one(low)[1][reading]


def test_stump_contributions_only_name_features_the_stumps_split_on(
    compiled: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    _, scorer, pipeline = compiled["stump_forest"]
    used = {
        int(scorer.design.column_feature[t.tree_.feature[0]])
        for t in pipeline.named_steps["model"].estimators_
        if t.tree_.node_count > 1
    }
    _, contrib = scorer.explain(*sc.encode(records))
    credited = set(np.flatnonzero(np.abs(contrib).sum(axis=0) > 0).tolist())
    assert credited and credited <= used


def _pipeline(estimator: Any, encoder: OneHotEncoder | None = None) -> Pipeline:
    encoder = encoder or OneHotEncoder(
        categories=[list(schema.CATEGORIES[c]) for c in schema.CATEGORICAL_FEATURES], handle_unknown="ignore"
    )
    return Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        ("cat", encoder, list(schema.CATEGORICAL_FEATURES)),
                        ("num", StandardScaler(), ["reading_score", "writing_score"]),
                    ]
                ),
            ),
            ("model", estimator),
        ]
    )


def test_other_estimators_are_served_through_the_pipeline_with_occlusion(
    students: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    pipeline = _pipeline(GaussianNB()).fit(students[FEATURES], students[schema.LABEL])
    scorer = sc.compile_pipeline(pipeline)
    assert scorer.kind == "pipeline"
    sample = records[:30]
    proba, contrib = scorer.explain(*sc.encode(sample))
    np.testing.assert_allclose(proba, pipeline.predict_proba(students[FEATURES].head(30))[:, 1], atol=1e-12)
    # gender's occlusion, by hand: the row's log-odds minus the mean log-odds over both genders.
    frame = students[FEATURES].head(30)
    base = logit(np.clip(pipeline.predict_proba(frame)[:, 1], 1e-6, 1 - 1e-6))
    swapped = [
        logit(np.clip(pipeline.predict_proba(frame.assign(gender=g))[:, 1], 1e-6, 1 - 1e-6))
        for g in schema.CATEGORIES["gender"]
    ]
    np.testing.assert_allclose(contrib[:, 0], base - np.mean(swapped, axis=0), atol=1e-9)


def test_encoder_that_refuses_a_valid_category_is_not_servable(students: pd.DataFrame) -> None:
    without_a = students[students["race_ethnicity"] != "group A"]
    pipeline = _pipeline(
        modeling.build_candidates(["logistic_regression"], 0)["logistic_regression"][-1],
        OneHotEncoder(handle_unknown="error"),
    )
    pipeline.fit(without_a[FEATURES], without_a[schema.LABEL])
    with pytest.raises(sc.ModelNotServable, match="race_ethnicity.*'group A'"):
        sc.compile_pipeline(pipeline)


def test_top_contributions_are_sorted_by_magnitude_and_keep_the_sent_values(
    records: list[dict[str, Any]],
) -> None:
    contributions = [0.1, -2.0, 0.0, 1.5, -0.3, 0.7, -0.05]
    top = sc.top_contributions(records[0], contributions, 3)
    assert [t["feature"] for t in top] == [schema.FEATURES[1], schema.FEATURES[3], schema.FEATURES[5]]
    assert [t["contribution"] for t in top] == [-2.0, 1.5, 0.7]
    assert all(t["value"] == records[0][t["feature"]] for t in top)
