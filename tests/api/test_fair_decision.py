"""The equal-opportunity rule through the API: stored with the version, described by /model, applied by
/predict and /predict/batch exactly as the pipeline applies it, and the model card at /model/card."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from api_support import Registry, clone_home, prediction_lines, register, use_home
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from exampass_api.app import create_app
from exampass_api.routes.ops import NO_CARD
from exampass_api.scorer import compile_pipeline, encode
from exampass_api.services.model_store import Bundle
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.ml import fairness, modeling, synthetic

CARD = "# Model card: test\n\nIntended use: a test.\n"


@pytest.fixture(scope="module")
def fair_rule(fitted: dict[str, Any]) -> Any:
    reference = synthetic.sample(20_000, seed=5)
    p = modeling.pass_probability(fitted["score_regression"], reference)
    return fairness.fit_rule(p, reference, fairness.RULE_FEATURES, fitted_on="20000 test students")


@pytest.fixture(scope="module")
def fair_app(
    api_registry: Registry,
    fitted: dict[str, Any],
    fair_rule: Any,
    students: pd.DataFrame,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, registry.LoadedModel, Path]]:
    """A copy of the session registry where the score model, with its rule and a card, is the champion."""
    home = clone_home(api_registry.settings.home, tmp_path_factory.mktemp("fair"))
    logs = home / "fair-logs"
    with use_home(home, EXAMPASS_LOGS=str(logs)) as settings:
        version = register(
            settings,
            fitted["score_regression"],
            students,
            candidate="score_regression",
            rule=fair_rule,
            card=CARD,
        )
        client = MlflowClient()
        loaded = registry.load_version(client.get_model_version(schema.MODEL_NAME, version), client)
        with TestClient(create_app(settings)) as app:
            yield app, loaded, logs


def test_the_rule_round_trips_through_the_registry(fair_app: Any, fair_rule: Any) -> None:
    _, loaded, _ = fair_app
    assert loaded.decision == fair_rule
    assert loaded.threshold == fair_rule.threshold
    assert registry.load_model_card(loaded.run_id) == CARD


def test_model_describes_the_rule_and_links_the_card(fair_app: Any, fair_rule: Any) -> None:
    app, loaded, _ = fair_app
    model = app.get("/model").json()
    assert model["version"] == loaded.version and model["scorer"] == "score"
    assert model["explanation"]["units"] == "maths points"
    assert model["explanation"]["reference_value"] > 40 and model["explanation"]["reference_log_odds"] is None
    decision = model["decision"]
    assert decision["kind"] == "group_thresholds" and decision["uses_race_ethnicity"] is True
    assert decision["features"] == list(fairness.RULE_FEATURES)
    assert decision["target_fail_recall"] == fair_rule.target_fail_recall
    assert len(decision["cutoffs"]) == 20
    first = decision["cutoffs"][0]
    key = tuple(first[f] for f in fairness.RULE_FEATURES)
    assert first["threshold"] == fair_rule.cutoffs[key]
    assert model["model_card"] == "/model/card"
    card = app.get("/model/card")
    assert card.status_code == 200 and card.text == CARD
    assert card.headers["content-type"].startswith("text/markdown")


def test_predictions_apply_the_same_cut_offs_as_the_pipeline(
    fair_app: Any, records: list[dict[str, Any]], students: pd.DataFrame
) -> None:
    app, loaded, logs = fair_app
    expected_p = loaded.pass_probability(students)
    expected = loaded.predicted_pass(students)
    cut = loaded.thresholds(students)
    assert len(set(cut.tolist())) == 20
    answers = []
    for start in range(0, len(records), 500):
        response = app.post("/predict/batch", json={"students": records[start : start + 500]})
        assert response.status_code == 200
        answers += response.json()["predictions"]
    np.testing.assert_allclose([a["pass_probability"] for a in answers], expected_p, rtol=0, atol=1e-12)
    assert [a["predicted_pass"] for a in answers] == expected.tolist()
    # Students whose probability sits between the single cut-off and their group's: the rule decides.
    differs = np.flatnonzero((expected_p >= loaded.threshold) != expected)
    assert len(differs) > 0
    for i in [*differs[:20], 0, 1, 2]:
        one = app.post("/predict", json=records[i]).json()
        assert one["predicted_pass"] is bool(expected[i]), records[i]
    logged = [line for line in prediction_lines(logs)]
    assert len(logged) >= len(records)


def test_the_bundle_and_the_loaded_model_agree_on_every_record(
    fair_app: Any, records: list[dict[str, Any]], students: pd.DataFrame
) -> None:
    _, loaded, _ = fair_app
    bundle = Bundle.build(loaded, compile_pipeline(loaded.pipeline))
    codes, _ = encode(records)
    np.testing.assert_array_equal(bundle.thresholds(codes), loaded.thresholds(students))
    assert [bundle.threshold_for(r) for r in records] == loaded.thresholds(students).tolist()
    assert "model_card" not in bundle.info  # built without a card


def test_a_version_without_a_card_says_so(api_registry: Registry, tmp_path: Path) -> None:
    with use_home(api_registry.settings.home) as settings, TestClient(create_app(settings)) as app:
        model = app.get("/model").json()
        assert "model_card" not in model or model["model_card"] is None
        assert model["decision"]["kind"] == "single_threshold"
        assert model["decision"]["fallback_threshold"] == api_registry.threshold
        response = app.get("/model/card")
        assert response.status_code == 404 and response.json() == {"detail": NO_CARD}
