"""The web page through the real app (TestClient) on the real registry: forms, answers, rosters, keys.

The browser tests (tests/browser/test_page_in_chromium.py) show the same page works in Chromium, offline and from the
keyboard; these check what the server sends: the API's numbers and reasons, the log, the cookie.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from api_support import CHAMPION_THRESHOLD, OpenApp, new_home, prediction_lines, use_home
from fastapi.testclient import TestClient
from markupsafe import escape
from support import PAGE_STUDENT

from exampass_api.app import create_app
from exampass_api.core.keystore import create_key, revoke_key
from exampass_api.core.security import SESSION_COOKIE
from exampass_api.services import reasons
from exampass_api.services.roster import MAX_ROSTER
from exampass_pipeline.contract import schema

STUDENT = PAGE_STUDENT
LABELS = reasons.LABELS


class Page:
    def __init__(self, client: TestClient, logs: Path, keys: Path) -> None:
        self.client, self.logs, self.keys = client, logs, keys

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in prediction_lines(self.logs)]

    def predict(self, values: dict[str, Any], **kwargs: Any) -> Any:
        return self.client.post("/page/predict", data={k: str(v) for k, v in values.items()}, **kwargs)

    def upload(self, content: bytes, name: str = "class-7b.csv") -> Any:
        return self.client.post("/page/roster", files={"roster": (name, content, "text/csv")})


@pytest.fixture
def make_page(open_app: Callable[..., OpenApp]) -> Callable[..., Page]:
    def make(base_url: str = "http://testserver", **extra: str) -> Page:
        app = open_app(base_url, **extra)
        return Page(app.client, app.logs, app.keys)

    return make


@pytest.fixture
def page(make_page: Callable[..., Page]) -> Page:
    return make_page()


def text_of(body: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', body, re.S)
    assert found, f"no element #{element_id} in the page"
    return html.unescape(re.sub(r"\s+", " ", found.group(1))).strip()


def roster_csv(records: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["student", *[k for k, v in schema.KAGGLE_HEADER.items() if v != schema.MATH_SCORE]])
    for i, record in enumerate(records):
        writer.writerow([f"S-{i + 1:02}", *[record[name] for name in schema.FEATURES]])
    return out.getvalue().encode()


def test_the_page_is_served_with_labelled_controls_and_nothing_from_elsewhere(page: Page) -> None:
    response = page.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    body = response.text
    for name in schema.FEATURES:
        assert f'<label for="f-{name}">{escape(LABELS[name])}</label>' in body
        assert f'id="f-{name}" name="{name}"' in body
    for name, options in schema.CATEGORIES.items():
        for option in options:
            assert f'<option value="{escape(option)}">' in body, (name, option)
    assert body.count('type="number" min="0" max="100" step="1"') == 2
    assert re.search(r"<button type=\"submit\">Predict</button>", body)
    assert '<input id="roster-file" name="roster" type="file"' in body
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", body), "everything comes from this server"
    assert "<script" not in body
    css = page.client.get("/static/page.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "/static/page.css" in body


def test_the_footer_names_the_model_and_links_its_card_once_there_is_one(page: Page) -> None:
    model = page.client.get("/model").json()
    body = page.client.get("/").text
    assert f"Version <strong>{model['version']}</strong>" in body
    assert model["trained_at"][:10] in body
    assert f"<dt>ROC AUC</dt><dd>{model['test_metrics']['test_roc_auc']:.2f}</dd>" in body
    assert "model card" not in body.lower()
    store = page.client.app.state.store  # type: ignore[attr-defined]
    store.bundle = replace(store.bundle, info={**store.bundle.info, "model_card": "/model/card"})
    assert '<a href="/model/card">Read the model card</a>' in page.client.get("/").text


def test_one_student_gets_the_apis_probability_threshold_and_reasons(page: Page) -> None:
    answer = page.predict(STUDENT)
    assert answer.status_code == 200, answer.text
    logged = page.lines()
    assert len(logged) == 1 and logged[0]["client"] == "public" and logged[0]["inputs"] == STUDENT
    api = page.client.post("/predict", json=STUDENT).json()
    assert logged[0]["pass_probability"] == pytest.approx(api["pass_probability"], abs=1e-12)
    body = answer.text
    assert text_of(body, "pass-probability") == f"{int(api['pass_probability'] * 100 + 0.5)} %"
    assert text_of(body, "threshold") == f"{CHAMPION_THRESHOLD * 100:g} %"
    verdict = "Likely to pass." if api["predicted_pass"] else "At risk of failing."
    assert text_of(body, "verdict").startswith(verdict)
    top = api["explanation"][0]
    words = "raises" if top["contribution"] > 0 else "lowers"
    label = LABELS[top["feature"]]
    subject = f"A {label.lower()} of {top['value']}" if top["feature"] in schema.NUMERIC_FEATURES else label
    assert text_of(body, "sentence").startswith(subject) and f"{words} the chance of passing most" in body
    assert body.count("<rect ") == len(schema.FEATURES), "one bar per feature"
    assert f"{top['contribution']:+.2f}" in body
    assert logged[0]["prediction_id"] in body
    assert 'value="55"' in body, "the form keeps what was typed"


def test_bad_input_is_shown_beside_its_field_with_the_apis_reason_and_nothing_is_logged(page: Page) -> None:
    bad = {**STUDENT, "reading_score": 150, "gender": "robot", "writing_score": ""}
    response = page.predict(bad)
    assert response.status_code == 422
    api = page.client.post("/predict", json={**STUDENT, "reading_score": 150, "gender": "robot"}).json()
    api_reasons = {e["field"]: e["reason"] for e in api["errors"]}
    body = response.text
    assert text_of(body, "reading_score-error") == api_reasons["reading_score"] == "150 is outside 0-100"
    assert text_of(body, "gender-error") == api_reasons["gender"]
    missing = page.client.post("/predict", json={k: v for k, v in STUDENT.items() if k != "writing_score"})
    assert text_of(body, "writing_score-error") == missing.json()["errors"][0]["reason"]
    assert 'aria-invalid="true" aria-describedby="reading_score-error"' in body
    assert "lunch-error" not in body, "a good field gets no message"
    assert 'value="150"' in body
    assert page.lines() == []


def test_a_roster_is_ranked_by_risk_with_its_bad_rows_and_downloads_the_csv_answer(
    page: Page, records: list[dict[str, Any]]
) -> None:
    students = [dict(r) for r in records[:30]]
    students[3]["race_ethnicity"] = "grp B"
    students[7]["reading_score"] = -3
    content = roster_csv(students)
    response = page.upload(content)
    assert response.status_code == 200, response.text
    body = response.text
    ranked = re.findall(r'<td class="num">([^<]+)</td>', body)
    assert len(ranked) == 28
    cell = r"<td>([^<]*)</td>"
    listed = re.findall(rf"<tr>{cell}{cell}<td><code>([^<]*)</code></td>{cell}</tr>", body)
    assert [(row, column, value) for row, column, value, _ in listed] == [
        ("5", "race/ethnicity", "grp B"),
        ("9", "reading score", "-3"),
    ], "the file's row numbers (header = 1), the column as the file names it, the value"
    assert html.unescape(listed[0][3]).startswith("unknown category 'grp B'; allowed: 'group A'")
    assert listed[1][3] == "-3 is outside 0-100"
    download = re.search(
        r'href="data:text/csv;charset=utf-8;base64,([^"]+)" download="class-7b-exampass.csv"', body
    )
    assert download
    csv_answer = page.client.post("/predict/csv", content=content, headers={"content-type": "text/csv"})
    assert base64.b64decode(download.group(1)) == csv_answer.content
    rows = list(csv.DictReader(io.StringIO(csv_answer.text)))
    chances = sorted(float(row["pass_probability"]) for row in rows if row["pass_probability"])
    assert [html.unescape(v) for v in ranked] == [reasons.percent(p) for p in chances], "highest risk first"
    logged = page.lines()
    assert len(logged) == 2 * 28 and {line["client"] for line in logged} == {"public"}


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        (None, 422, "No file was chosen"),
        ({"roster": ("", b"", "application/octet-stream")}, 422, "No file was chosen"),
        ({"roster": ("a.csv", b"", "text/csv")}, 422, "the file is empty"),
        ({"roster": ("a.xlsx", b"PK\x03\x04\x00\x00", "application/octet-stream")}, 422, "ZIP archive"),
        ({"roster": ("a.csv", "gender,café\n".encode("latin-1"), "text/csv")}, 422, "not UTF-8"),
        ({"roster": ("a.csv", b"gender,lunch\nmale,standard\n", "text/csv")}, 422, "lacks the column"),
    ],
)
def test_a_refused_roster_is_explained_on_the_page_and_nothing_is_logged(
    page: Page, files: Any, status: int, words: str
) -> None:
    response = page.client.post("/page/roster", files=files or {"other": ("x", b"", "text/plain")})
    assert response.status_code == status, response.text
    assert words in html.unescape(text_of(response.text, "roster-notice") + response.text)
    assert 'id="roster-notice"' in response.text
    assert page.lines() == []


def test_a_roster_over_the_limit_is_413_on_the_page(page: Page, records: list[dict[str, Any]]) -> None:
    response = page.upload(roster_csv([records[i % len(records)] for i in range(MAX_ROSTER + 1)]))
    assert response.status_code == 413
    assert f"more than {MAX_ROSTER:,} students" in html.unescape(response.text)
    assert page.lines() == []


def test_posts_from_another_site_are_refused(page: Page) -> None:
    for headers in ({"Origin": "https://elsewhere.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = page.predict(STUDENT, headers=headers)
        assert response.status_code == 403, headers
        assert "another site" in response.text
    assert page.predict(STUDENT, headers={"Origin": "http://testserver"}).status_code == 200
    behind_a_proxy = {"Sec-Fetch-Site": "same-origin", "Origin": "https://exampass.school.example"}
    assert page.predict(STUDENT, headers=behind_a_proxy).status_code == 200, "the browser's word is taken"
    assert len(page.lines()) == 2


def test_a_rate_limited_page_says_when_to_come_back(make_page: Callable[..., Page]) -> None:
    page = make_page(EXAMPASS_RATE_LIMIT_PUBLIC="1/minute")
    assert page.predict(STUDENT).status_code == 200
    again = page.predict(STUDENT)
    assert again.status_code == 429
    assert 1 <= int(again.headers["Retry-After"]) <= 60
    assert "Too many requests" in again.text and "1 per 1 minute" in again.text
    assert len(page.lines()) == 1


def _cookie_attributes(response: Any) -> dict[str, str]:
    header = response.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in header.split(";")]
    pairs = dict(attribute.partition("=")[::2] for attribute in attributes)
    return {"": name_value, **{k.lower(): v for k, v in pairs.items()}}


def test_private_predict_asks_for_a_key_and_keeps_it_for_the_session_only(
    make_page: Callable[..., Page], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    page = make_page(EXAMPASS_PUBLIC_PREDICT="false")
    body = page.client.get("/").text
    assert 'name="key" type="password"' in body and 'action="/page/predict' not in body
    refused = page.predict(STUDENT)
    assert refused.status_code == 401 and 'name="key"' in refused.text
    token = create_key(page.keys, "head-of-maths", ["predict"])
    feedback_only = create_key(page.keys, "grades-export", ["feedback"])

    wrong = page.client.post("/page/key", data={"key": token[:-3] + "abc"}, follow_redirects=False)
    assert wrong.status_code == 401 and "unknown or revoked API key" in wrong.text
    assert "set-cookie" not in wrong.headers and token[:-3] not in wrong.text
    scoped = page.client.post("/page/key", data={"key": feedback_only}, follow_redirects=False)
    assert scoped.status_code == 403 and "lacks the &#39;predict&#39; scope" in scoped.text
    assert "set-cookie" not in scoped.headers

    kept = page.client.post("/page/key", data={"key": token}, follow_redirects=False)
    assert kept.status_code == 303 and kept.headers["location"] == "/"
    cookie = _cookie_attributes(kept)
    assert cookie[""] == f"{SESSION_COOKIE}={token}"
    assert {"httponly", "path", "samesite"} <= set(cookie) and cookie["path"] == "/"
    assert cookie["samesite"].lower() == "strict"
    assert not {"max-age", "expires", "secure"} & set(cookie), "a session cookie, not Secure over http"
    home = page.client.get("/").text
    assert "Using your API key" in home and token not in home
    assert page.predict(STUDENT).status_code == 200
    assert [line["client"] for line in page.lines()] == ["head-of-maths"]
    assert not [r for r in caplog.records if token in r.getMessage()], "the token is never logged"

    revoke_key(page.keys, "head-of-maths")
    deadline = time.monotonic() + 10
    while (gone := page.predict(STUDENT)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone.status_code == 401 and "Your key was not accepted" in gone.text
    assert _cookie_attributes(gone).get("max-age") == "0", "a refused key is forgotten"
    assert len(page.lines()) >= 1


def test_the_key_cookie_is_secure_over_https_and_can_be_forgotten(make_page: Callable[..., Page]) -> None:
    page = make_page(base_url="https://testserver", EXAMPASS_PUBLIC_PREDICT="false")
    token = create_key(page.keys, "counsellor", ["predict"])
    kept = page.client.post("/page/key", data={"key": token}, follow_redirects=False)
    assert "secure" in _cookie_attributes(kept)
    forgotten = page.client.post("/page/forget-key", follow_redirects=False)
    assert forgotten.status_code == 303
    assert _cookie_attributes(forgotten).get("max-age") == "0"
    assert 'name="key"' in page.client.get("/").text


def test_without_a_champion_the_page_says_so(tmp_path: Path, empty_registry_db: Path) -> None:
    home = new_home(tmp_path, empty_registry_db)
    with use_home(home) as settings, TestClient(create_app(settings)) as client:
        body = client.get("/").text
        assert "No model is being served yet" in body
        answer = client.post("/page/predict", data={k: str(v) for k, v in STUDENT.items()})
        assert answer.status_code == 503 and "no champion model registered yet" in answer.text
    assert prediction_lines(settings.logs_dir) == []


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({**STUDENT, "writing_score": 50}, "A writing score of 50 lowers the chance of passing most."),
        (
            {**STUDENT, "lunch": "free/reduced"},
            "Lunch \u201cfree/reduced\u201d lowers the chance of passing most.",
        ),
    ],
)
def test_the_sentence_names_the_strongest_feature_in_plain_words(
    record: dict[str, Any], expected: str
) -> None:
    strongest = schema.FEATURES.index("writing_score" if "writing" in expected else "lunch")
    contributions = [0.1] * len(schema.FEATURES)
    contributions[strongest] = -2.0
    assert reasons.sentence(record, contributions) == expected
    chart = reasons.chart(record, contributions)
    assert chart.bars[0].label.startswith(LABELS[schema.FEATURES[strongest]])
    assert chart.bars[0].x + chart.bars[0].width == pytest.approx(chart.zero_x), "a lowering bar ends at zero"
    assert all(bar.x == chart.zero_x for bar in chart.bars[1:]), "raising bars start at zero"


def test_percentages_are_whole_and_honest_at_the_ends() -> None:
    assert [reasons.percent(p) for p in (0.734, 0.735, 0.0, 0.004, 0.996, 1.0)] == [
        "73 %",
        "74 %",
        "0 %",
        "under 1 %",
        "over 99 %",
        "100 %",
    ]
    assert [reasons.threshold_percent(t) for t in (0.6, 0.625)] == ["60 %", "62.5 %"]
