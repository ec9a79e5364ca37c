"""The page at / in Debian's Chromium, as a teacher uses it: offline, from the keyboard, and checked by axe.

Every test runs the real `exampass-api` on a trained @champion and blocks every request that leaves the
loopback address; at the end it asserts the page asked for nothing outside. The numbers the page shows are
compared with what the JSON API answers for the same students, over HTTP, from the same server.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pandas as pd
import pytest
from support import PAGE_STUDENT

from exampass_api.services.advice import sentence
from exampass_pipeline.contract import schema

LOOPBACK = {"127.0.0.1", "localhost"}
STUDENT = PAGE_STUDENT
LABELS = {
    "gender": "Gender",
    "race_ethnicity": "Race/ethnicity",
    "parental_level_of_education": "Parental level of education",
    "lunch": "Lunch",
    "test_preparation_course": "Test preparation course",
    "reading_score": "Reading score",
    "writing_score": "Writing score",
}


@dataclass
class Api:
    base: str
    logs: Path
    keys: Path

    def lines(self) -> list[dict[str, Any]]:
        folder = self.logs / "predictions"
        return [json.loads(li) for p in sorted(folder.glob("*.jsonl")) for li in p.read_text().splitlines()]


@pytest.fixture
def start_api(
    trained_home: Path,
    servers: Callable[..., Any],
    port: Callable[[], int],
    child_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> Callable[..., Api]:
    """`exampass-api` on the trained home, with this test's own prediction log and key store."""

    def start(**extra: str) -> Api:
        api_port = port()
        logs, keys = tmp_path / "logs", tmp_path / "api_keys.json"
        env = child_env(
            trained_home,
            EXAMPASS_API_HOST="127.0.0.1",
            EXAMPASS_API_PORT=str(api_port),
            EXAMPASS_LOGS=str(logs),
            EXAMPASS_API_KEYS_FILE=str(keys),
            **extra,
        )
        server = servers("exampass-api", [str(Path(sys.executable).with_name("exampass-api"))], env)
        base = f"http://127.0.0.1:{api_port}"
        server.wait_http(f"{base}/ready", timeout_s=120)
        return Api(base, logs, keys)

    return start


@pytest.fixture
def outside(page: Any) -> list[str]:
    """Refuse every request off the loopback address, and remember it: the page must not need any."""
    blocked: list[str] = []

    def offline(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or (urlparse(url).hostname or "") in LOOPBACK:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", offline)
    return blocked


def no_serious_violations(page: Any) -> None:
    """axe-core (bundled by axe-playwright-python, injected locally) finds nothing serious or critical."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, "accessibility violations:\n" + "\n".join(bad)
    assert results.response["passes"], "axe ran its rules"


def predict(api: Api, student: dict[str, Any]) -> dict[str, Any]:
    return httpx.post(f"{api.base}/predict", json=student, timeout=30).json()


def percent(p: float) -> str:
    return f"{int(p * 100 + 0.5)} %"


def test_one_student_from_the_keyboard_alone_gets_the_apis_probability(
    start_api: Callable[..., Api], page: Any, outside: list[str], snap: Callable[..., Path]
) -> None:
    api = start_api()
    page.goto(f"{api.base}/")
    page.get_by_role("button", name="Predict").wait_for()
    no_serious_violations(page)

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the forms"
    for name in schema.FEATURES:
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == f"f-{name}", "the fields in reading order"
        if name in schema.CATEGORIES:
            for _ in range(schema.CATEGORIES[name].index(STUDENT[name]) + 1):
                page.keyboard.press("ArrowDown")  # from "Choose…" down to the student's value
        else:
            page.keyboard.type(str(STUDENT[name]))
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Predict"
    page.keyboard.press("Enter")
    page.locator("#pass-probability").wait_for()

    api_answer = predict(api, STUDENT)
    assert page.locator("#pass-probability").inner_text() == percent(api_answer["pass_probability"])
    verdict = "Likely to pass." if api_answer["predicted_pass"] else "At risk of failing."
    assert page.locator("#verdict").inner_text() == verdict
    assert page.locator("#threshold").inner_text() == "50 %"
    assert page.locator("svg.chart rect").count() == len(schema.FEATURES)
    top = api_answer["explanation"][0]
    assert LABELS[top["feature"]].lower() in page.locator("#sentence").inner_text().lower()
    page_line = api.lines()[0]
    assert page_line["inputs"] == STUDENT and page_line["client"] == "public"
    no_serious_violations(page)
    page.locator("#answer").scroll_into_view_if_needed()
    snap(page, "page-student")
    assert not outside, f"the page tried to reach the network: {outside}"


def test_a_flagged_student_is_told_what_would_change_the_verdict_in_the_apis_own_numbers(
    start_api: Callable[..., Api], page: Any, outside: list[str], snap: Callable[..., Path]
) -> None:
    api = start_api()
    student = {**STUDENT, "reading_score": 30, "writing_score": 28}
    api_answer = predict(api, student)
    assert not api_answer["predicted_pass"], "this student must be flagged for the test to mean anything"
    page.goto(f"{api.base}/")
    for name in schema.CATEGORICAL_FEATURES:
        page.get_by_label(LABELS[name], exact=True).select_option(student[name])
    page.get_by_label("Reading score").fill(str(student["reading_score"]))
    page.get_by_label("Writing score").fill(str(student["writing_score"]))
    page.get_by_role("button", name="Predict").click()
    page.locator("#pass-probability").wait_for()
    page.locator("#advice").wait_for()
    assert page.get_by_role("heading", name="What would change the verdict").is_visible()
    shown = page.locator("#advice li").all_inner_texts()
    options = api_answer["advice"]["options"]
    assert shown == ([sentence(o, student) for o in options] or [api_answer["advice"]["note"]])
    assert any("reading score of" in line for line in shown), "a score the school can raise"
    for word in ("gender", "group C", "lunch", "high school"):
        assert word not in " ".join(shown)
    no_serious_violations(page)
    page.locator("#advice").scroll_into_view_if_needed()
    snap(page, "page-advice")
    assert not outside, f"the page tried to reach the network: {outside}"


def test_a_bad_score_is_shown_by_its_field_with_the_apis_reason(
    start_api: Callable[..., Api], page: Any, outside: list[str]
) -> None:
    api = start_api()
    page.goto(f"{api.base}/")
    for name in schema.CATEGORICAL_FEATURES:
        page.get_by_label(LABELS[name], exact=True).select_option(STUDENT[name])
    page.get_by_label("Reading score").fill("150")
    page.get_by_label("Writing score").fill("50")
    page.get_by_role("button", name="Predict").click()
    message = page.locator("#reading_score-error")
    message.wait_for()
    reason = next(
        e["reason"]
        for e in httpx.post(f"{api.base}/predict", json={**STUDENT, "reading_score": 150}).json()["errors"]
    )
    assert message.inner_text() == reason == "150 is outside 0-100"
    reading = page.get_by_label("Reading score")
    assert reading.get_attribute("aria-invalid") == "true"
    assert reading.get_attribute("aria-describedby") == "reading_score-error", (
        "the message belongs to the field"
    )
    assert reading.input_value() == "150", "what was typed is kept"
    assert page.locator(".field-error").count() == 1
    assert api.lines() == [], "nothing invalid is logged"
    no_serious_violations(page)
    assert not outside


def _roster(students: pd.DataFrame, path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Twenty real students as a Kaggle-header roster with a name column; rows 4 and 9 (file rows 5, 10) bad."""
    kaggle = {v: k for k, v in schema.KAGGLE_HEADER.items()}
    chosen = students.head(20)[list(schema.COLUMNS)].to_dict("records")
    records = [{k: (int(v) if k in schema.SCORES else str(v)) for k, v in r.items()} for r in chosen]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["student", *[kaggle[c] for c in schema.COLUMNS]])
    for i, record in enumerate(records):
        row = [f"Student {i + 1:02}", *[record[c] for c in schema.COLUMNS]]
        if i == 3:
            row[2] = "grp B"
        if i == 8:
            row[-1] = "101"
        writer.writerow(row)
    path.write_text(out.getvalue())
    valid = [{k: r[k] for k in schema.FEATURES} for i, r in enumerate(records) if i not in (3, 8)]
    return path, valid


def test_a_roster_with_two_bad_rows_is_ranked_and_its_download_matches_the_batch_endpoint(
    start_api: Callable[..., Api],
    page: Any,
    outside: list[str],
    students: pd.DataFrame,
    tmp_path: Path,
    snap: Callable[..., Path],
) -> None:
    api = start_api()
    roster, valid = _roster(students, tmp_path / "class-7b.csv")
    page.goto(f"{api.base}/")
    page.get_by_label("Class roster (CSV file)").set_input_files(str(roster))
    page.get_by_role("button", name="Score roster").click()
    page.locator("#ranked").wait_for()

    ranked = page.locator("#ranked tbody tr")
    assert ranked.count() == len(valid)
    chances = [int(t.split()[0]) for t in page.locator("#ranked td.num").all_inner_texts() if t[0].isdigit()]
    assert chances == sorted(chances), "highest risk (lowest chance of passing) first"
    errors = page.locator("#bad-rows tbody tr")
    assert errors.count() == 2
    assert errors.nth(0).inner_text().split("\t")[:3] == ["5", "race/ethnicity", "grp B"]
    assert errors.nth(1).inner_text().split("\t")[:3] == ["10", "writing score", "101"]
    assert "101 is outside 0-100" in errors.nth(1).inner_text()
    no_serious_violations(page)
    page.locator("#roster-result").scroll_into_view_if_needed()
    snap(page, "page-roster")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename == "class-7b-exampass.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert [r["student"] for r in rows] == [f"Student {i:02}" for i in range(1, 21)], (
        "the file's rows, in order"
    )
    scored = [r for r in rows if r["pass_probability"]]
    batch = httpx.post(f"{api.base}/predict/batch", json={"students": valid}, timeout=60).json()
    assert [r["pass_probability"] for r in scored] == [
        repr(p["pass_probability"]) for p in batch["predictions"]
    ]
    assert [r["error"] != "" for r in rows] == [i in (3, 8) for i in range(20)]
    assert not outside, f"the page tried to reach the network: {outside}"


def test_when_predict_is_private_the_page_asks_for_a_key_and_keeps_it_for_the_session(
    start_api: Callable[..., Api], page: Any, outside: list[str]
) -> None:
    from exampass_api.core.keystore import create_key

    api = start_api(EXAMPASS_PUBLIC_PREDICT="false")
    token = create_key(api.keys, "head-of-maths", ["predict"])
    page.goto(f"{api.base}/")
    assert page.get_by_role("button", name="Predict").count() == 0
    no_serious_violations(page)
    page.get_by_label("API key", exact=True).fill("xp_000000000000_" + "A" * 43)
    page.get_by_role("button", name="Use this key").click()
    assert "unknown or revoked API key" in page.locator("#key-notice").inner_text()
    page.get_by_label("API key", exact=True).fill(token)
    page.get_by_role("button", name="Use this key").click()
    page.get_by_role("button", name="Predict").wait_for()
    assert token not in page.content()
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["expires"] == -1, "a session cookie: gone when the browser closes"
    assert page.evaluate("document.cookie") == "", "no script can read the key"
    for name in schema.CATEGORICAL_FEATURES:
        page.get_by_label(LABELS[name], exact=True).select_option(STUDENT[name])
    page.get_by_label("Reading score").fill(str(STUDENT["reading_score"]))
    page.get_by_label("Writing score").fill(str(STUDENT["writing_score"]))
    page.get_by_role("button", name="Predict").click()
    page.locator("#pass-probability").wait_for()
    assert [line["client"] for line in api.lines()] == ["head-of-maths"]
    page.get_by_role("button", name="Forget the key").click()
    page.get_by_label("API key", exact=True).wait_for()
    assert page.context.cookies() == []
    assert not outside
