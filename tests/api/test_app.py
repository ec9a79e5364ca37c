"""Every endpoint and every bad-input case, through FastAPI's TestClient against a real MLflow registry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from api_support import Registry, new_home, prediction_lines, use_home
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from exampass_api.app import api_routes, create_app
from exampass_api.core.keystore import create_key
from exampass_api.core.routing import ApiRoute
from exampass_api.schemas import MAX_BATCH, MAX_STUDENT_BYTES
from exampass_api.services.model_store import NO_CHAMPION
from exampass_pipeline.contract import predlog, registry, schema

FEATURES = list(schema.FEATURES)
STUDENT: dict[str, Any] = {
    "gender": "female",
    "race_ethnicity": "group B",
    "parental_level_of_education": "bachelor's degree",
    "lunch": "standard",
    "test_preparation_course": "none",
    "reading_score": 72,
    "writing_score": 74,
}


@pytest.fixture(scope="module")
def served(
    api_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path, str]]:
    """The app on the session registry, with its own logs dir and key store, so lines belong to this module.

    The anonymous limit is raised: this module sends a few hundred requests from one address to test what a
    prediction answers, and test_security.py tests the limits themselves.
    """
    logs = tmp_path_factory.mktemp("testclient-logs")
    keys = logs.parent / "api_keys.json"
    env = {
        "EXAMPASS_LOGS": str(logs),
        "EXAMPASS_API_KEYS_FILE": str(keys),
        "EXAMPASS_RATE_LIMIT_PUBLIC": "100000/minute",
    }
    with use_home(api_registry.settings.home, **env) as s:
        token = create_key(keys, "grades-export", ["feedback"])
        with TestClient(create_app(s)) as client:
            yield client, logs, token


@pytest.fixture
def feedback(served: tuple[TestClient, Path, str]) -> Any:
    """POST /feedback as the module's feedback client (the endpoint needs a key with that scope)."""
    client, _, token = served
    return lambda body: client.post("/feedback", json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def client(served: tuple[TestClient, Path, str]) -> TestClient:
    return served[0]


@pytest.fixture
def lines(served: tuple[TestClient, Path, str]) -> Any:
    return lambda: prediction_lines(served[1])


@pytest.fixture(scope="module")
def champion(api_registry: Registry) -> registry.LoadedModel:
    with use_home(api_registry.settings.home):
        client = MlflowClient()
        return registry.load_version(
            client.get_model_version(schema.MODEL_NAME, api_registry.champion), client
        )


def test_predict_answers_from_the_champion_and_logs_one_line(
    client: TestClient, lines: Any, champion: registry.LoadedModel
) -> None:
    before = len(lines())
    response = client.post("/predict", json=STUDENT)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = champion.pipeline.predict_proba(pd.DataFrame([STUDENT])[FEATURES])[0, 1]
    assert body["pass_probability"] == pytest.approx(expected, abs=1e-9)
    assert body["predicted_pass"] is (body["pass_probability"] >= champion.threshold)
    assert body["model_version"] == champion.version
    uuid.UUID(body["prediction_id"])
    explanation = body["explanation"]
    assert 3 <= len(explanation) <= 7
    magnitudes = [abs(e["contribution"]) for e in explanation]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert all(e["value"] == STUDENT[e["feature"]] for e in explanation)

    new = lines()[before:]
    assert len(new) == 1
    record = json.loads(new[0])
    assert record["prediction_id"] == body["prediction_id"]
    assert record["inputs"] == STUDENT
    assert record["pass_probability"] == body["pass_probability"]
    assert record["predicted_pass"] == body["predicted_pass"]
    assert record["model_version"] == champion.version
    assert datetime.fromisoformat(record["timestamp"]).tzinfo is not None


def test_explanation_is_the_linear_models_own_decomposition(
    client: TestClient, champion: registry.LoadedModel
) -> None:
    # Changing only the writing score moves only writing_score's contribution, by coef * delta / scale.
    low = client.post("/predict", json={**STUDENT, "writing_score": 40}).json()
    high = client.post("/predict", json={**STUDENT, "writing_score": 90}).json()
    pipeline = champion.pipeline
    scaler = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    columns = list(pipeline.named_steps["preprocess"].get_feature_names_out())
    coef = pipeline.named_steps["model"].coef_[0][columns.index("numeric__writing_score")]
    by_feature = [{e["feature"]: e["contribution"] for e in r["explanation"]} for r in (low, high)]
    delta = by_feature[1]["writing_score"] - by_feature[0]["writing_score"]
    assert delta == pytest.approx(coef * 50 / scaler.scale_[1], abs=1e-9)
    for name in set(by_feature[0]) & set(by_feature[1]) - {"writing_score"}:
        assert by_feature[0][name] == pytest.approx(by_feature[1][name], abs=1e-12)


def test_routes_that_read_their_own_body_skip_fastapis_handler(client: TestClient) -> None:
    """The hot routes take only (request, caller): ApiRoute calls them directly after the guard."""
    direct = {
        (route.path, method)
        for route in api_routes()
        if isinstance(route, ApiRoute) and route._direct_call() is not None
        for method in route.methods
    }
    assert {("/predict", "POST"), ("/predict/batch", "POST"), ("/predict/csv", "POST")} <= direct
    assert ("/feedback", "POST") not in direct  # a body parameter: FastAPI validates it


def test_whole_number_floats_are_scores(client: TestClient) -> None:
    response = client.post("/predict", json={**STUDENT, "reading_score": 72.0})
    assert response.status_code == 200
    assert (
        response.json()["pass_probability"]
        == client.post("/predict", json=STUDENT).json()["pass_probability"]
    )


def _raw(text: str) -> tuple[bytes, str]:
    return text.encode(), "application/json"


_ALLOWED_GENDER = ["female", "male"]
# (case id, body, content type, status, field named in detail, allowed values that must be listed)
BAD_INPUTS: list[tuple[str, Any, str | None, int, str, list[str] | None]] = [
    ("unknown-category", {**STUDENT, "gender": "f"}, None, 422, "gender", _ALLOWED_GENDER),
    ("wrong-case", {**STUDENT, "lunch": "Standard"}, None, 422, "lunch", ["standard", "free/reduced"]),
    ("category-as-number", {**STUDENT, "race_ethnicity": 3}, None, 422, "race_ethnicity", ["group A"]),
    (
        "missing-field",
        {k: v for k, v in STUDENT.items() if k != "writing_score"},
        None,
        422,
        "writing_score",
        None,
    ),
    ("extra-field", {**STUDENT, "shoe_size": 42}, None, 422, "shoe_size", FEATURES),
    ("label-as-feature", {**STUDENT, "math_score": 80}, None, 422, "math_score", FEATURES),
    ("score-as-string", {**STUDENT, "reading_score": "72"}, None, 422, "reading_score", None),
    ("score-as-bool", {**STUDENT, "reading_score": True}, None, 422, "reading_score", None),
    ("score-null", {**STUDENT, "reading_score": None}, None, 422, "reading_score", None),
    ("score-fraction", {**STUDENT, "writing_score": 72.5}, None, 422, "writing_score", None),
    ("score-above", {**STUDENT, "writing_score": 101}, None, 422, "writing_score", None),
    ("score-below", {**STUDENT, "reading_score": -1}, None, 422, "reading_score", None),
    ("score-huge", {**STUDENT, "reading_score": 10**30}, None, 422, "reading_score", None),
    ("nan", _raw(json.dumps({**STUDENT, "reading_score": float("nan")})), "json", 422, "reading_score", None),
    (
        "infinity",
        _raw(json.dumps({**STUDENT, "writing_score": float("inf")})),
        "json",
        422,
        "writing_score",
        None,
    ),
    (
        "-infinity",
        _raw(json.dumps({**STUDENT, "writing_score": float("-inf")})),
        "json",
        422,
        "writing_score",
        None,
    ),
    ("empty-body", _raw(""), "json", 422, "body", FEATURES),
    ("malformed-json", _raw('{"gender": "female",'), "json", 422, "body", None),
    ("array-body", _raw(json.dumps([STUDENT])), "json", 422, "body", FEATURES),
    ("null-body", _raw("null"), "json", 422, "body", FEATURES),
    ("not-utf8", (b'{"gender": "f\xffmale"}', "application/json"), "raw", 422, "body", None),
    ("nested-100k-deep", _raw("[" * 100_000 + "]" * 100_000), "json", 422, "body", None),
    ("huge-category", {**STUDENT, "gender": "x" * 100_000}, None, 422, "gender", _ALLOWED_GENDER),
    ("text-plain", (json.dumps(STUDENT).encode(), "text/plain"), "raw", 415, "Content-Type", None),
    ("form", (b"gender=female", "application/x-www-form-urlencoded"), "raw", 415, "Content-Type", None),
    ("no-content-type", (json.dumps(STUDENT).encode(), None), "raw", 415, "Content-Type", None),
]


def _send(client: TestClient, path: str, body: Any, mode: str | None) -> Any:
    if mode is None:
        return client.post(path, json=body)
    content, content_type = body
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("case", "body", "mode", "status", "field", "allowed"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_with_the_field_and_reason_and_not_logged(
    client: TestClient,
    lines: Any,
    case: str,
    body: Any,
    mode: str | None,
    status: int,
    field: str,
    allowed: Any,
) -> None:
    before = len(lines())
    response = client.post("/predict", json=body) if mode is None else _send(client, "/predict", body, mode)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and field in detail
    if status == 422:
        reasons = [e for e in response.json()["errors"] if e["field"] == field]
        assert reasons and all(e["reason"] for e in reasons)
    for value in allowed or []:
        assert repr(value) in detail or value in detail
    assert len(lines()) == before


def test_reasons_say_what_is_wrong(client: TestClient) -> None:
    def detail(body: dict[str, Any]) -> str:
        return client.post("/predict", json=body).json()["detail"]

    assert "unknown category 'f'" in detail({**STUDENT, "gender": "f"})
    assert "outside 0-100" in detail({**STUDENT, "writing_score": 101})
    assert "not a whole number" in detail({**STUDENT, "writing_score": 72.5})
    assert "is a string" in detail({**STUDENT, "reading_score": "72"})
    assert "missing" in detail({k: v for k, v in STUDENT.items() if k != "lunch"})
    assert "unexpected field" in detail({**STUDENT, "shoe_size": 1})
    assert "label" in detail({**STUDENT, "math_score": 80})
    nan = client.post(
        "/predict", content=b'{"reading_score": NaN}', headers={"content-type": "application/json"}
    )
    assert "not a finite number" in nan.json()["detail"]


def test_batch_answers_in_order_and_logs_each_student(
    client: TestClient, lines: Any, records: list[dict[str, Any]], champion: registry.LoadedModel
) -> None:
    batch = records[:MAX_BATCH]
    before = len(lines())
    response = client.post("/predict/batch", json={"students": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    predictions = body["predictions"]
    assert body["model_version"] == champion.version
    assert len(predictions) == len(batch)
    expected = champion.pipeline.predict_proba(pd.DataFrame(batch)[FEATURES])[:, 1]
    np.testing.assert_allclose([p["pass_probability"] for p in predictions], expected, atol=1e-9)
    assert [p["predicted_pass"] for p in predictions] == [bool(p >= champion.threshold) for p in expected]
    # Same explanation as the one-student endpoint gives for the same student.
    single = client.post("/predict", json=batch[7]).json()["explanation"]
    assert [(e["feature"], e["value"]) for e in predictions[7]["explanation"]] == [
        (e["feature"], e["value"]) for e in single
    ]
    assert [e["contribution"] for e in predictions[7]["explanation"]] == pytest.approx(
        [e["contribution"] for e in single], abs=1e-9
    )
    new = [json.loads(line) for line in lines()[before:]]
    assert len(new) == len(batch) + 1
    assert [r["prediction_id"] for r in new[: len(batch)]] == [p["prediction_id"] for p in predictions]
    assert [r["inputs"] for r in new[: len(batch)]] == batch
    assert len({p["prediction_id"] for p in predictions}) == len(batch)


def test_one_student_body_over_a_megabyte_is_413_and_nothing_logged(client: TestClient, lines: Any) -> None:
    before = len(lines())
    blob = client.post("/predict", json={**STUDENT, "padding": "x" * (MAX_STUDENT_BYTES + 1)})
    assert blob.status_code == 413
    assert str(MAX_STUDENT_BYTES) in blob.json()["detail"] and "/predict" in blob.json()["detail"]
    # Streamed without a Content-Length, it is cut off while reading.
    chunks = iter([json.dumps(STUDENT).encode()[:-1], b', "padding": "', b"x" * MAX_STUDENT_BYTES, b'"}'])
    streamed = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert len(lines()) == before


def test_batch_over_the_limit_is_413_with_the_limit_and_nothing_logged(
    client: TestClient, lines: Any, records: list[dict[str, Any]]
) -> None:
    before = len(lines())
    over = client.post("/predict/batch", json={"students": (records * 2)[: MAX_BATCH + 1]})
    assert over.status_code == 413
    assert str(MAX_BATCH) in over.json()["detail"]
    # 100,000 (invalid) students: refused on the count, without validating any of them.
    huge = client.post("/predict/batch", json={"students": [{"x": 1}] * 100_000})
    assert huge.status_code == 413
    assert "100000" in huge.json()["detail"] and str(MAX_BATCH) in huge.json()["detail"]
    # A body too big to be 1000 students is refused from its size alone.
    blob = client.post("/predict/batch", json={"students": [STUDENT], "padding": "x" * 3_000_000})
    assert blob.status_code == 413
    assert str(MAX_BATCH) in blob.json()["detail"]
    assert len(lines()) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"students": []}, "students"),
        ({"students": [STUDENT, STUDENT, {**STUDENT, "gender": "x"}]}, "students[2].gender"),
        ({"students": [STUDENT, {**STUDENT, "reading_score": 101}]}, "students[1].reading_score"),
        ({"pupils": [STUDENT]}, "students"),
        ({"students": STUDENT}, "students"),
        ([STUDENT], "body"),
    ],
)
def test_bad_batches_are_422_and_nothing_is_logged(
    client: TestClient, lines: Any, body: Any, field: str
) -> None:
    before = len(lines())
    response = client.post("/predict/batch", json=body)
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    assert field in response.json()["detail"]
    assert len(lines()) == before


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/feedback"])
def test_absurdly_nested_json_is_422_on_every_endpoint_and_nothing_is_logged(
    client: TestClient, lines: Any, served: tuple[TestClient, Path, str], path: str
) -> None:
    logs = served[1]
    before = len(lines()), sorted(p.stat().st_size for p in logs.rglob("*.jsonl"))
    auth = {"Authorization": f"Bearer {served[2]}"} if path == "/feedback" else {}
    for body in ("[" * 5_000 + "]" * 5_000, '{"students": ' + "[" * 100_000 + "]" * 100_000 + "}"):
        response = client.post(
            path, content=body.encode(), headers={"content-type": "application/json", **auth}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"] == [
            {"field": "body", "reason": "JSON nested too deeply; send a flat JSON object per student"}
        ]
    assert (len(lines()), sorted(p.stat().st_size for p in logs.rglob("*.jsonl"))) == before


def test_a_huge_rejected_value_is_not_echoed_back_whole(client: TestClient) -> None:
    response = client.post(
        "/predict", json={**STUDENT, "gender": "x" * 100_000, "reading_score": "9" * 5_000}
    )
    assert response.status_code == 422
    assert len(response.content) < 2_000
    reasons = {e["field"]: e["reason"] for e in response.json()["errors"]}
    assert reasons["gender"].startswith("unknown category 'xxxxx") and "...x'" in reasons["gender"]
    assert reasons["reading_score"].endswith("...9' is a string; send a whole number")


def test_batch_non_finite_score_names_the_field(client: TestClient) -> None:
    body = b'{"students": [{"reading_score": Infinity}]}'
    response = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "students[0].reading_score: inf is not a finite number" in response.json()["detail"]
    malformed = client.post(
        "/predict/batch", content=b'{"students": [', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["detail"]
    wrong_type = client.post("/predict/batch", content=b"{}", headers={"content-type": "text/csv"})
    assert wrong_type.status_code == 415


def test_feedback_is_recorded_for_monitoring(
    client: TestClient, served: tuple[TestClient, Path, str], feedback: Any
) -> None:
    prediction = client.post("/predict", json=STUDENT).json()
    response = feedback({"prediction_id": prediction["prediction_id"], "math_score": 47})
    assert response.status_code == 202
    assert response.json() == {
        "status": "recorded",
        "prediction_id": prediction["prediction_id"],
        "math_score": 47,
        "pass_math": False,
    }
    today = datetime.now(UTC).date()
    records = predlog.read_day(served[1], predlog.FEEDBACK, today).records
    assert records[-1]["prediction_id"] == prediction["prediction_id"]
    assert records[-1]["math_score"] == 47
    assert records[-1]["client"] == "grades-export"
    joined = predlog.day_batch(served[1], today).frame.set_index("prediction_id")
    assert bool(joined.loc[prediction["prediction_id"], schema.LABEL]) is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prediction_id": "not-a-uuid", "math_score": 50}, "prediction_id"),
        ({"prediction_id": str(uuid.uuid4()), "math_score": 101}, "math_score"),
        ({"prediction_id": str(uuid.uuid4()), "math_score": 49.5}, "math_score"),
        ({"prediction_id": str(uuid.uuid4())}, "math_score"),
        ({"prediction_id": str(uuid.uuid4()), "math_score": 50, "extra": 1}, "extra"),
    ],
)
def test_bad_feedback_is_422_and_not_recorded(
    served: tuple[TestClient, Path, str], feedback: Any, body: dict[str, Any], field: str
) -> None:
    directory = served[1] / predlog.FEEDBACK
    before = sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.jsonl"))
    response = feedback(body)
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.jsonl")) == before


def test_health_ready_and_model_describe_the_champion(
    client: TestClient, api_registry: Registry, champion: registry.LoadedModel
) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {
        "status": "ready",
        "model_version": champion.version,
        "registry": "ok",
        "key_store": "ok",
    }
    model = client.get("/model").json()
    with use_home(api_registry.settings.home):
        version = MlflowClient().get_model_version(schema.MODEL_NAME, champion.version)
        run_metrics = MlflowClient().get_run(version.run_id).data.metrics
    assert model["name"] == schema.MODEL_NAME
    assert model["alias"] == schema.CHAMPION_ALIAS
    assert model["version"] == champion.version
    assert model["run_id"] == version.run_id
    assert model["threshold"] == api_registry.threshold
    assert model["candidate"] == "logistic_regression"
    assert model["scorer"] == "linear"
    assert datetime.fromisoformat(model["trained_at"]) == datetime.fromtimestamp(
        version.creation_timestamp / 1000, UTC
    )
    assert set(model["test_metrics"]) == set(schema.TEST_METRICS)
    assert model["test_metrics"] == {k: pytest.approx(run_metrics[k]) for k in schema.TEST_METRICS}
    assert model["explanation"]["units"] == "log-odds"
    # Registered with one cut-off: /model says so, and there is no card to link.
    assert model["decision"]["kind"] == "single_threshold" and model["decision"]["cutoffs"] == []


def test_docs_work_offline_with_an_example_for_every_endpoint(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in docs.text
        served = client.get(f"/static-offline-docs/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    redoc = client.get("/redoc")
    assert "/static-offline-docs/redoc.standalone.js" in redoc.text
    assert client.get("/static-offline-docs/redoc.standalone.js").status_code == 200

    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def has_example(content: dict[str, Any]) -> bool:
        """A JSON body's example lives on its schema; a CSV body's on the media type itself."""
        media = content.get("application/json") or content["text/csv"]
        ref_or_schema = media.get("schema", {})
        target = (
            schemas[ref_or_schema["$ref"].rsplit("/", 1)[1]] if "$ref" in ref_or_schema else ref_or_schema
        )
        return bool(target.get("examples") or target.get("example") or media.get("example"))

    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if "requestBody" in operation:
                assert has_example(operation["requestBody"]["content"]), (path, method)
            ok = next(code for code in operation["responses"] if code.startswith("2"))
            content = operation["responses"][ok]["content"]
            if "application/json" not in content and "text/csv" not in content:
                # /model/card answers Markdown, /metrics Prometheus' text format; nothing else is not JSON.
                expected = "text/plain" if path == "/metrics" else "text/markdown"
                assert [media.split(";")[0] for media in content] == [expected], (path, method)
                continue
            assert has_example(content), (path, method)
    assert set(spec["paths"]) >= {
        "/predict",
        "/predict/batch",
        "/predict/csv",
        "/feedback",
        "/health",
        "/ready",
        "/model",
        "/model/card",
    }
    assert "/" not in spec["paths"] and not any(p.startswith("/page/") for p in spec["paths"])
    csv_errors = spec["paths"]["/predict/csv"]["post"]["responses"]
    assert all(
        list(csv_errors[code]["content"]) == ["application/json"] for code in ("401", "413", "415", "422")
    )
    student = schemas["StudentIn"]["properties"]
    assert student["gender"]["enum"] == list(schema.CATEGORIES["gender"])
    assert student["reading_score"]["minimum"] == 0 and student["reading_score"]["maximum"] == 100


def test_without_a_champion_predictions_are_503_and_nothing_is_logged(
    tmp_path: Path, empty_registry_db: Path
) -> None:
    home = new_home(tmp_path, empty_registry_db)
    with use_home(home) as settings, TestClient(create_app(settings)) as client:
        for method, path, body in (
            ("get", "/ready", None),
            ("get", "/model", None),
            ("post", "/predict", STUDENT),
            ("post", "/predict/batch", {"students": [STUDENT]}),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 503, path
            assert response.json() == {"detail": NO_CHAMPION}
        assert client.get("/health").status_code == 200
        # Bad input is still judged as bad input, not as "no model".
        assert client.post("/predict", json={**STUDENT, "gender": "x"}).status_code == 422
    assert prediction_lines(settings.logs_dir) == []
