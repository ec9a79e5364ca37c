"""Advice: every option is what /predict answers for the changed student, and no smaller change passes."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from api_support import OpenApp, Registry, register, use_home
from mlflow import MlflowClient

from exampass_api.scorer import compile_pipeline
from exampass_api.scorer.linear import LinearScorer
from exampass_api.services.advice import (
    ACTIONABLE,
    COURSE,
    COURSE_DONE,
    NOTHING_PASSES,
    READING,
    advise,
    sentence,
)
from exampass_api.services.model_store import Bundle
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.ml import synthetic

PROTECTED = (schema.GENDER, schema.RACE_ETHNICITY, schema.PARENTAL_EDUCATION, schema.LUNCH)


def _students(n: int, seed: int) -> list[dict[str, Any]]:
    frame = synthetic.sample(n, seed=seed)
    return [
        {f: (int(row[f]) if f in schema.NUMERIC_FEATURES else str(row[f])) for f in schema.FEATURES}
        for row in frame.to_dict("records")
    ]


def _one_point_less(student: dict[str, Any], change: dict[str, Any]) -> dict[str, Any] | None:
    """The changed student with every raised score one point lower; None for the course alone."""
    scores = [f for f in schema.NUMERIC_FEATURES if f in change]
    if not scores:
        return None
    return {**student, **change, **{f: change[f] - 1 for f in scores}}


@pytest.fixture(scope="module")
def bundles(api_registry: Registry) -> dict[str, Bundle]:
    """Every candidate family as the service would serve it (registry load + compiled scorer)."""
    out = {}
    with use_home(api_registry.settings.home):
        client = MlflowClient()
        for name, version in api_registry.versions.items():
            loaded = registry.load_version(client.get_model_version(schema.MODEL_NAME, version), client)
            out[name] = Bundle.build(loaded, compile_pipeline(loaded.pipeline))
    return out


def test_for_1000_flagged_students_every_option_is_exact_and_minimal(
    open_app: Callable[..., OpenApp],
) -> None:
    client = open_app(EXAMPASS_RATE_LIMIT_PUBLIC="1000000/minute").client
    flagged: list[dict[str, Any]] = []
    for seed in itertools.count(2026):
        batch = _students(1000, seed)
        answers = client.post("/predict/batch", json={"students": batch}).json()["predictions"]
        flagged += [s for s, a in zip(batch, answers, strict=True) if not a["predicted_pass"]]
        if len(flagged) >= 1000 or seed > 2060:
            break
    assert len(flagged) >= 1000
    checked = 0
    for student in flagged[:1000]:
        answer = client.post("/predict", json=student).json()
        assert answer["predicted_pass"] is False
        advice = answer["advice"]
        assert (advice["cheapest"] is None) == (advice["options"] == []) == (advice["note"] is not None)
        for option in advice["options"]:
            changed = {**student, **option["change"]}
            again = client.post("/predict", json=changed).json()
            assert again["pass_probability"] == option["pass_probability"]
            assert again["predicted_pass"] is True and option["predicted_pass"] is True
            below = _one_point_less(student, option["change"])
            if below is not None:
                result = client.post("/predict", json=below).json()
                assert result["predicted_pass"] is False, (student, option, below, result)
            checked += 1
    assert checked >= 1000


@pytest.mark.parametrize("candidate", ["random_forest", "hist_gradient_boosting", "score_regression"])
def test_other_model_families_get_the_smallest_passing_value_by_brute_force(
    bundles: dict[str, Bundle], candidate: str
) -> None:
    """Forests are not monotone in a score: the answer must be the first passing value, checked one by one."""
    bundle = bundles[candidate]

    def passes(s: dict[str, Any]) -> bool:
        proba, _ = bundle.scorer.explain_one(s)
        return bool(proba >= bundle.threshold_for(s))

    students = [s for s in _students(3000, 7) if not passes(s)][:60]
    assert len(students) >= 30
    for student in students:
        for option in advise(bundle, student)["options"]:
            change = option["change"]
            changed = {**student, **change}
            assert passes(changed) and option["pass_probability"] == bundle.scorer.explain_one(changed)[0]
            scores = [f for f in schema.NUMERIC_FEATURES if f in change]
            if not scores:
                continue
            rise = change[scores[0]] - student[scores[0]]
            assert all(change[f] - student[f] == rise for f in scores)
            for smaller in range(1, rise):
                assert not passes({**changed, **{f: student[f] + smaller for f in scores}})


def test_advice_never_names_gender_race_parental_education_or_lunch(bundles: dict[str, Bundle]) -> None:
    grid = itertools.product(
        *(schema.CATEGORIES[f] for f in schema.CATEGORICAL_FEATURES), [(18, 22), (45, 40)]
    )
    students = [
        dict(zip(schema.CATEGORICAL_FEATURES, cats, strict=True))
        | dict(zip(schema.NUMERIC_FEATURES, scores, strict=True))
        for *cats, scores in grid
    ]
    seen_options = 0
    for bundle in bundles.values():
        for student in students:
            advice = advise(bundle, student)
            for option in advice["options"]:
                assert set(option["change"]) <= set(ACTIONABLE)
                assert option["change"].get(COURSE, COURSE_DONE) == COURSE_DONE
                words = sentence(option, student).lower()
                assert not any(f.replace("_", " ") in words or f in words for f in PROTECTED)
                seen_options += 1
            text = json.dumps(advice)
            assert not any(f in text for f in PROTECTED)
    assert seen_options > len(students)


def test_when_nothing_in_range_passes_the_advice_says_so(
    api_registry: Registry, fitted: dict[str, Any], students: Any
) -> None:
    with use_home(api_registry.settings.home) as settings:
        version = register(
            settings,
            fitted["logistic_regression"],
            students,
            candidate="logistic_regression",
            threshold=1.0,
            promote=False,
        )
        client = MlflowClient()
        loaded = registry.load_version(client.get_model_version(schema.MODEL_NAME, version), client)
    bundle = Bundle.build(loaded, compile_pipeline(loaded.pipeline))
    advice = advise(bundle, _students(1, 3)[0])
    assert advice == {"options": [], "cheapest": None, "note": NOTHING_PASSES}


def test_only_a_flagged_student_gets_advice_and_the_log_line_is_unchanged(
    open_app: Callable[..., OpenApp],
) -> None:
    app = open_app(EXAMPASS_RATE_LIMIT_PUBLIC="1000000/minute")
    students = _students(400, 11)
    answers = app.client.post("/predict/batch", json={"students": students}).json()["predictions"]
    passing = next(s for s, a in zip(students, answers, strict=True) if a["predicted_pass"])
    failing = next(s for s, a in zip(students, answers, strict=True) if not a["predicted_pass"])
    assert "advice" not in app.client.post("/predict", json=passing).json()
    assert app.client.post("/predict", json=failing).json()["advice"]["options"] is not None
    lines = [
        json.loads(line)
        for path in sorted(app.logs.rglob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]
    singles = [line for line in lines if line["inputs"] in (passing, failing)][-2:]
    assert len(singles) == 2 and singles[0].keys() == singles[1].keys()
    assert not any("advice" in line for line in lines)


def test_a_school_that_switches_advice_off_gets_none_anywhere(open_app: Callable[..., OpenApp]) -> None:
    app = open_app(EXAMPASS_RATE_LIMIT_PUBLIC="1000000/minute", EXAMPASS_ADVICE="false")
    students = _students(400, 12)
    answers = app.client.post("/predict/batch", json={"students": students}).json()["predictions"]
    failing = next(s for s, a in zip(students, answers, strict=True) if not a["predicted_pass"])
    answer = app.client.post("/predict", json=failing).json()
    assert answer["predicted_pass"] is False and "advice" not in answer
    page = app.client.post("/page/predict", data={k: str(v) for k, v in failing.items()})
    assert page.status_code == 200 and "At risk of failing." in page.text and 'id="advice"' not in page.text
    header = ",".join(schema.FEATURES)
    row = ",".join(str(failing[f]) for f in schema.FEATURES)
    roster = app.client.post(
        "/predict/csv", content=f"{header}\r\n{row}\r\n", headers={"content-type": "text/csv"}
    )
    assert roster.status_code == 200
    cells = list(csv.DictReader(io.StringIO(roster.text)))
    assert cells[0]["predicted_pass"] == "false" and cells[0]["advice"] == ""


def test_openapi_documents_the_advice_field(open_app: Callable[..., OpenApp]) -> None:
    spec = open_app().client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    advice = components["PredictionOut"]["properties"]["advice"]
    assert "flagged" in advice["description"]
    assert {"options", "cheapest", "note"} <= components["Advice"]["properties"].keys()
    assert set(components["AdviceChange"]["properties"]) == set(ACTIONABLE)


def test_the_sentence_says_the_change_and_the_chance() -> None:
    student = {schema.READING_SCORE: 58, schema.WRITING_SCORE: 60, COURSE: "none"}
    reading = {"change": {schema.READING_SCORE: 64}, "pass_probability": 0.5512, "predicted_pass": True}
    course = {"change": {COURSE: COURSE_DONE}, "pass_probability": 0.62, "predicted_pass": True}
    both = {
        "change": {schema.READING_SCORE: 61, schema.WRITING_SCORE: 63},
        "pass_probability": 0.5,
        "predicted_pass": True,
    }
    assert (
        sentence(reading, student) == "A reading score of 64 (now 58) would raise the chance to 55 % (pass)."
    )
    assert sentence(course, student) == (
        "Completing the test preparation course would raise the chance to 62 % (pass)."
    )
    assert sentence(both, student).startswith("Raising both reading and writing by 3 points (to 61 and 63)")


def test_a_linear_scorers_closed_form_agrees_with_its_own_probability(bundles: dict[str, Bundle]) -> None:
    """The closed form's three pieces (predictor, slopes, inverse link) against explain_one's probability."""
    for name in ("logistic_regression", "score_regression"):
        scorer = bundles[name].scorer
        assert isinstance(scorer, LinearScorer), name
        for student in _students(200, 7):
            proba, _ = scorer.explain_one(student)
            eta = scorer.linear_predictor_one(student)
            if 1e-9 < proba < 1 - 1e-9:
                assert scorer.linear_predictor_for(proba) == pytest.approx(eta, rel=1e-6, abs=1e-6), name
            raised = {**student, READING: min(schema.SCORE_MAX, student[READING] + 1)}
            step = scorer.linear_predictor_one(raised) - eta
            expected = scorer.score_slopes()[READING] * (raised[READING] - student[READING])
            assert step == pytest.approx(expected, rel=1e-9, abs=1e-12), name
