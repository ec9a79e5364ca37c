"""The trust boundary, through the real app and a real key store: who may write, who may score, how often.

Each test gets its own key store and logs folder on the session registry, and a fresh app, because the
behaviours under test (public predict, rate limits) are app settings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import OpenApp, Registry, prediction_lines, use_home
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies

from exampass_api import cli as apikey
from exampass_api.app import create_app
from exampass_api.core.keystore import CHECK_INTERVAL_S, KeyStoreError, create_key
from exampass_pipeline.contract import predlog

STUDENT: dict[str, Any] = {
    "gender": "male",
    "race_ethnicity": "group C",
    "parental_level_of_education": "some college",
    "lunch": "free/reduced",
    "test_preparation_course": "completed",
    "reading_score": 55,
    "writing_score": 51,
}


class Api:
    """One app on its own key store and logs: the client, the store path, and helpers to read the logs."""

    def __init__(self, client: TestClient, keys: Path, logs: Path) -> None:
        self.client, self.keys, self.logs = client, keys, logs

    def key(self, name: str, *scopes: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_key(self.keys, name, list(scopes))}"}

    def lines(self, kind: str = predlog.PREDICTIONS) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for p in sorted((self.logs / kind).glob("*.jsonl"))
            for line in p.read_text().splitlines()
        ]

    def feedback(self, headers: dict[str, str], prediction_id: str | None = None, score: int = 44) -> Any:
        if prediction_id is None:
            prediction_id = self.client.post("/predict", json=STUDENT).json()["prediction_id"]
        body = {"prediction_id": prediction_id, "math_score": score}
        return self.client.post("/feedback", json=body, headers=headers)


@pytest.fixture
def make_api(open_app: Callable[..., OpenApp]) -> Callable[..., Api]:
    """Start the app with extra settings (e.g. EXAMPASS_PUBLIC_PREDICT=false); closed after the test."""

    def make(**extra: str) -> Api:
        app = open_app(**extra)
        return Api(app.client, app.keys, app.logs)

    return make


def test_feedback_needs_a_key_with_the_feedback_scope(make_api: Callable[..., Api]) -> None:
    api = make_api()
    before = len(api.lines(predlog.FEEDBACK))
    anonymous = api.feedback({})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "feedback" in anonymous.json()["detail"]
    unknown = api.feedback({"Authorization": "Bearer xp_0123456789ab_" + "A" * 43})
    assert unknown.status_code == 401 and 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    predict_only = api.feedback(api.key("kiosk", "predict"))
    assert predict_only.status_code == 403
    assert "lacks the 'feedback' scope" in predict_only.json()["detail"]
    assert 'error="insufficient_scope"' in predict_only.headers["WWW-Authenticate"]
    assert len(api.lines(predlog.FEEDBACK)) == before, "a refused request must never be logged"

    accepted = api.feedback(api.key("grades-export", "feedback"))
    assert accepted.status_code == 202
    admin = api.feedback(api.key("ops", "admin"))
    assert admin.status_code == 202, "admin holds every scope"
    assert [r["client"] for r in api.lines(predlog.FEEDBACK)] == ["grades-export", "ops"]


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Token xp_0123456789ab_xyz",
        "bearer\tnot-a-token",
        "Bearer xp_0123456789ab_" + "é" * 43,
        "Bearer " + "x" * 20_000,
    ],
)
def test_a_malformed_authorization_header_is_401_with_a_reason(
    make_api: Callable[..., Api], header: str
) -> None:
    api = make_api()
    response = api.client.post(
        "/feedback",
        content=json.dumps(
            {"prediction_id": "3f1c2a9e-8d4b-4e7a-9c55-0b6f4d2e7a10", "math_score": 40}
        ).encode(),
        headers={
            "Authorization": header.encode("utf-8"),
            "content-type": "application/json",
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not api.lines(predlog.FEEDBACK)


def test_predictions_are_public_by_default_and_name_their_client(make_api: Callable[..., Api]) -> None:
    api = make_api()
    assert api.client.post("/predict", json=STUDENT).status_code == 200
    keyed = api.key("teacher-portal", "predict")
    assert api.client.post("/predict", json=STUDENT, headers=keyed).status_code == 200
    batch = api.client.post("/predict/batch", json={"students": [STUDENT, STUDENT]}, headers=keyed)
    assert batch.status_code == 200
    assert [r["client"] for r in api.lines()] == [
        "public",
        "teacher-portal",
        "teacher-portal",
        "teacher-portal",
    ]
    wrong = api.client.post("/predict", json=STUDENT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401, "a token that is sent is judged, even where none is needed"


def test_private_predict_needs_the_predict_scope(make_api: Callable[..., Api]) -> None:
    api = make_api(EXAMPASS_PUBLIC_PREDICT="false")
    for path, body in (("/predict", STUDENT), ("/predict/batch", {"students": [STUDENT]})):
        assert api.client.post(path, json=body).status_code == 401
        assert (
            api.client.post(path, json=body, headers=api.key(f"fb{len(path)}", "feedback")).status_code == 403
        )
        assert (
            api.client.post(path, json=body, headers=api.key(f"pr{len(path)}", "predict")).status_code == 200
        )
    assert api.client.get("/health").status_code == 200
    assert api.client.get("/ready").status_code == 200
    assert api.client.get("/model").status_code == 200
    assert api.client.get("/openapi.json").status_code == 200


def test_revoked_and_rotated_keys_are_refused_within_seconds(
    make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = make_api()
    monkeypatch.setenv("EXAMPASS_API_KEYS_FILE", str(api.keys))
    headers = api.key("grades-export", "feedback")
    assert api.feedback(headers).status_code == 202
    assert apikey.main(["rotate", "grades-export"]) == 0
    new_token = capsys.readouterr().out.strip().splitlines()[-1]
    new_headers = {"Authorization": f"Bearer {new_token}"}
    assert _eventually(lambda: api.feedback(headers).status_code == 401)
    assert api.feedback(new_headers).status_code == 202
    assert apikey.main(["revoke", "grades-export"]) == 0
    started = time.monotonic()
    assert _eventually(lambda: api.feedback(new_headers).status_code == 401)
    assert time.monotonic() - started < 5 * CHECK_INTERVAL_S + 2


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_a_corrupt_store_stops_start_up_and_is_survived_while_running(
    api_registry: Registry, make_api: Callable[..., Api], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": 1, "keys": [{"name": "x"')
    with use_home(api_registry.settings.home, EXAMPASS_API_KEYS_FILE=str(broken)) as s:
        with pytest.raises(KeyStoreError, match="broken.json: not valid JSON"):
            create_app(s)

    api = make_api()
    headers = api.key("grades-export", "feedback")
    assert api.feedback(headers).status_code == 202
    api.keys.write_text("{ this is not json")

    def noticed() -> bool:
        assert api.feedback(headers).status_code == 202, "the last good keys keep serving"
        return any("cannot be used; keeping the last good keys" in r.message for r in caplog.records)

    with caplog.at_level(logging.ERROR, logger="exampass_api.core.keystore"):
        assert _eventually(noticed), "the broken store was never noticed"


def test_anonymous_callers_are_rate_limited_per_address(make_api: Callable[..., Api]) -> None:
    api = make_api(EXAMPASS_RATE_LIMIT_PUBLIC="3/minute")
    answers = [api.client.post("/predict", json=STUDENT).status_code for _ in range(3)]
    assert answers == [200, 200, 200]
    spoofed = api.client.post("/predict", json=STUDENT, headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 429, "X-Forwarded-For from a client must not reset its limit"
    assert 1 <= int(spoofed.headers["Retry-After"]) <= 60
    assert "3 per 1 minute" in spoofed.json()["detail"]
    assert len(api.lines()) == 3, "a refused request is never logged"
    keyed = api.client.post("/predict", json=STUDENT, headers=api.key("portal", "predict"))
    assert keyed.status_code == 200, "keyed clients are unlimited unless EXAMPASS_RATE_LIMIT_KEYED is set"


def test_keyed_clients_have_their_own_limit(make_api: Callable[..., Api]) -> None:
    api = make_api(EXAMPASS_RATE_LIMIT_KEYED="2/minute")
    first, second = api.key("school-a", "feedback"), api.key("school-b", "feedback")
    assert [api.feedback(first).status_code for _ in range(3)] == [202, 202, 429]
    assert api.feedback(second).status_code == 202, "each key has its own counter"


def test_model_shows_nothing_secret(make_api: Callable[..., Api]) -> None:
    api = make_api()
    headers = api.key("grades-export", "feedback")
    body = api.client.get("/model").text
    assert headers["Authorization"].removeprefix("Bearer ") not in body
    for secret_ish in ("grades-export", str(api.keys), "sqlite", "mlflow.db", "password", "api_keys"):
        assert secret_ish not in body
    # "model_card" (a route, "/model/card") appears only for versions that have a card.
    assert set(json.loads(body)) - {"model_card"} == {
        "name", "version", "alias", "run_id", "threshold", "trained_at", "candidate",
        "test_metrics", "loaded_at", "scorer", "explanation", "decision",
    }  # fmt: skip


def test_openapi_documents_the_bearer_scheme(make_api: Callable[..., Api]) -> None:
    spec = make_api().client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"401", "403", "429"} <= set(spec["paths"]["/feedback"]["post"]["responses"])
    guarded = [
        ("/feedback", "post"),
        ("/predict", "post"),
        ("/predict/batch", "post"),
        ("/predict/csv", "post"),
    ]
    for path, method in guarded:
        assert spec["paths"][path][method].get("security") == [{"HTTPBearer": []}], path
    assert "security" not in spec["paths"]["/health"]["get"]


_HEADERS = strategies.one_of(
    strategies.none(),
    strategies.text(max_size=80),
    strategies.from_regex(r"Bearer xp_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", fullmatch=True),
    strategies.sampled_from(["Bearer VALID", "Bearer VALID ", " Bearer VALID", "bearer VALID"]),
)
_BODIES = strategies.one_of(
    strategies.binary(max_size=200),
    strategies.recursive(
        strategies.none() | strategies.booleans() | strategies.floats() | strategies.text(max_size=20),
        lambda inner: (
            strategies.lists(inner, max_size=4)
            | strategies.dictionaries(strategies.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)


def test_fuzzed_requests_never_get_a_5xx(make_api: Callable[..., Api]) -> None:
    """Every authenticated endpoint (the page's forms too), with and without keys and with garbage, answers
    2xx/4xx only."""
    api = make_api(EXAMPASS_PUBLIC_PREDICT="false")
    valid = api.key("fuzz", "predict", "feedback")["Authorization"].removeprefix("Bearer ")

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        path=strategies.sampled_from(
            [
                "/predict",
                "/predict/batch",
                "/predict/csv",
                "/feedback",
                "/page/predict",
                "/page/roster",
                "/page/key",
            ]
        ),
        header=_HEADERS,
        body=_BODIES,
        content_type=strategies.sampled_from(
            [
                "application/json",
                "text/plain",
                "text/csv",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                None,
            ]
        ),
    )
    def probe(path: str, header: str | None, body: bytes, content_type: str | None) -> None:
        headers: dict[str, Any] = {} if content_type is None else {"content-type": content_type}
        if header is not None:  # raw bytes, so any text (controls, non-ASCII) reaches the server as sent
            headers["Authorization"] = header.replace("VALID", valid).encode("utf-8", "surrogatepass")
        response = api.client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (path, headers, body, response.text)

    probe()


def test_apikey_cli_prints_the_token_once_and_stores_only_a_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "home" / "api_keys.json"
    monkeypatch.setenv("EXAMPASS_API_KEYS_FILE", str(store))
    assert apikey.main(["create", "grades-export", "--scope", "feedback", "--scope", "predict"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("xp_")
    text = store.read_text()
    assert token not in text and token.split("_", 2)[2] not in text
    assert store.stat().st_mode & 0o777 == 0o600
    assert apikey.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "grades-export" in listing and "feedback,predict" in listing and "never" in listing
    assert token not in listing
    with pytest.raises(SystemExit):
        apikey.main(["create", "grades-export", "--scope", "feedback"])
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        apikey.main(["create", "public", "--scope", "feedback"])
    assert "reserved" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        apikey.main(["revoke", "nobody"])


def test_concurrent_creates_lose_nothing(tmp_path: Path) -> None:
    """Ten processes create keys at once; the lock and the atomic replace keep every one."""
    import os
    import subprocess
    import sys

    store = tmp_path / "api_keys.json"
    env = {**os.environ, "EXAMPASS_API_KEYS_FILE": str(store)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "exampass_api.cli", "create", f"school-{i}", "--scope", "feedback"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(10)
    ]
    tokens = [p.communicate(timeout=60)[0].decode().strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    names = {entry["name"] for entry in json.loads(store.read_text())["keys"]}
    assert names == {f"school-{i}" for i in range(10)}
    assert len(set(tokens)) == 10


def test_last_use_is_listed(
    make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api = make_api()
    monkeypatch.setenv("EXAMPASS_API_KEYS_FILE", str(api.keys))
    assert api.feedback(api.key("grades-export", "feedback")).status_code == 202
    api.key("unused", "predict")
    assert apikey.main(["list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["unused"].rstrip().endswith("never")
    assert not rows["grades-export"].rstrip().endswith("never")


def test_prediction_lines_name_their_client(make_api: Callable[..., Api]) -> None:
    api = make_api()
    api.client.post("/predict", json=STUDENT)
    assert [json.loads(line)["client"] for line in prediction_lines(api.logs)] == ["public"]


def test_the_in_memory_limiter_starts_no_thread_per_request(make_api: Callable[..., Api]) -> None:
    """limits' MemoryStorage starts a timer thread every 10 ms under load; ours sweeps in line."""
    import threading

    api = make_api(EXAMPASS_RATE_LIMIT_PUBLIC="1000/minute")
    api.client.post("/predict", json=STUDENT)
    before = threading.active_count()
    started = []
    original = threading.Thread.start

    def spy(thread: threading.Thread) -> None:
        started.append(thread.name)
        original(thread)

    threading.Thread.start = spy  # type: ignore[method-assign]
    try:
        for _ in range(30):
            assert api.client.post("/predict", json=STUDENT).status_code == 200
            time.sleep(0.012)  # longer than the library's 10 ms timer
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
    assert not [name for name in started if "Thread" in name and "AnyIO" not in name], started
    assert threading.active_count() <= before + 1
