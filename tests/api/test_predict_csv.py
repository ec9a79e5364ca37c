"""POST /predict/csv through the real app on the real registry: spreadsheets in, scored spreadsheets out.

Every rule of the issue has its test here: both header spellings, the maths column ignored, the input's
columns kept in order, bad rows answered with their reasons and no probability, probabilities identical to
/predict/batch, formulas neutralised, and every whole-file refusal (with nothing logged).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import OpenApp, prediction_lines
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies

from exampass_api.core.keystore import create_key
from exampass_api.services.advice import cheapest_sentence
from exampass_api.services.roster import MAX_ROSTER, RESULT_COLUMNS
from exampass_pipeline.contract import schema

KAGGLE = [k for k, v in schema.KAGGLE_HEADER.items() if v != schema.MATH_SCORE]
SNAKE = list(schema.FEATURES)
CSV = {"content-type": "text/csv"}


class Api:
    def __init__(self, client: TestClient, logs: Path, keys: Path) -> None:
        self.client, self.logs, self.keys = client, logs, keys

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in prediction_lines(self.logs)]

    def post(self, body: str | bytes, headers: dict[str, str] | None = None) -> Any:
        content = body.encode() if isinstance(body, str) else body
        return self.client.post("/predict/csv", content=content, headers={**CSV, **(headers or {})})


@pytest.fixture
def make_api(open_app: Callable[..., OpenApp]) -> Callable[..., Api]:
    """The app on the session registry with its own logs and key store; extra settings per test."""

    def make(**extra: str) -> Api:
        app = open_app(**extra)
        return Api(app.client, app.logs, app.keys)

    return make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def table(header: list[str], rows: list[list[Any]], delimiter: str = ",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows([header, *rows])
    return out.getvalue()


def parsed(response: Any, delimiter: str = ",") -> list[list[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return list(
        csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline=""), delimiter=delimiter)
    )


def cells(record: dict[str, Any]) -> list[Any]:
    return [record[name] for name in schema.FEATURES]


def test_both_header_spellings_score_like_the_batch_endpoint_to_the_byte(
    api: Api, records: list[dict[str, Any]]
) -> None:
    students = records[:200]
    batch = api.client.post("/predict/batch", json={"students": students})
    expected = [repr(p["pass_probability"]) for p in batch.json()["predictions"]]
    decisions = ["true" if p["predicted_pass"] else "false" for p in batch.json()["predictions"]]
    for header in (KAGGLE, SNAKE):
        rows = parsed(api.post(table(header, [cells(r) for r in students])))
        assert rows[0] == header + list(RESULT_COLUMNS)
        got = [row[len(header)] for row in rows[1:]]
        assert got == expected, "the same floats, written the same way, as /predict/batch"
        assert [row[len(header) + 1] for row in rows[1:]] == decisions
        assert all(row[-1] == "" for row in rows[1:])
        assert all(len(row[len(header) + 2].split("; ")) == 3 for row in rows[1:])


def test_each_flagged_row_gets_the_cheapest_advice_of_predict_in_words_and_no_other_row_does(
    make_api: Callable[..., Api], records: list[dict[str, Any]]
) -> None:
    api = make_api(EXAMPASS_RATE_LIMIT_PUBLIC="1000000/minute")
    students = records[:300]
    rows = parsed(api.post(table(SNAKE, [cells(r) for r in students])))
    advice_at = rows[0].index("advice")
    flagged = 0
    for student, row in zip(students, rows[1:], strict=True):
        response = api.client.post("/predict", json=student)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert row[advice_at] == cheapest_sentence(answer.get("advice"), student)
        assert bool(row[advice_at]) == (not answer["predicted_pass"]), "advice exactly for a flagged row"
        flagged += not answer["predicted_pass"]
    assert flagged >= 10, "the sample must hold flagged students for this test to mean anything"
    assert all(
        name not in row[advice_at] for row in rows[1:] for name in ("gender", "lunch", "race", "parental")
    )


def test_the_maths_column_is_kept_but_never_scored_and_extra_columns_keep_their_order(
    api: Api, records: list[dict[str, Any]]
) -> None:
    header = ["student", "gender", "race/ethnicity", "parental level of education", "lunch"]
    header += ["test preparation course", "math score", "reading score", "writing score", "note"]
    rows = [[f"S-{i:03}", *cells(r)[:5], i, *cells(r)[5:], "ok"] for i, r in enumerate(records[:20])]
    low = parsed(api.post(table(header, rows)))
    high = parsed(api.post(table(header, [row[:6] + ["100"] + row[7:] for row in rows])))
    assert low[0] == header + list(RESULT_COLUMNS)
    assert [row[:10] for row in low[1:]] == [[str(c) for c in row] for row in rows], "input cells as sent"
    assert [row[10] for row in low[1:]] == [row[10] for row in high[1:]], "maths changes nothing"


def test_bad_rows_get_their_reasons_and_no_probability_while_the_rest_are_scored_and_logged(
    api: Api, records: list[dict[str, Any]]
) -> None:
    good = [cells(r) for r in records[:5]]
    bad_race = [*good[1][:1], "grp B", *good[1][2:]]
    bad_score = [*good[3][:5], 150, "x"]
    body = table(KAGGLE, [good[0], bad_race, good[2], bad_score, good[4]])
    rows = parsed(api.post(body))[1:]
    assert [row[-1] for row in rows[:1] + rows[2:3] + rows[4:]] == ["", "", ""]
    assert rows[1][-1].startswith("race/ethnicity: unknown category 'grp B'; allowed: 'group A'")
    assert rows[3][-1] == "reading score: 150 is outside 0-100; writing score: 'x' is not a number"
    for row in (rows[1], rows[3]):
        assert row[len(KAGGLE) : len(KAGGLE) + 3] == ["", "", ""], "no probability for a bad row"
    logged = api.lines()
    assert [line["inputs"] for line in logged] == [records[0], records[2], records[4]], "only scored rows"
    assert {line["client"] for line in logged} == {"public"}
    assert [repr(line["pass_probability"]) for line in logged] == [rows[i][len(KAGGLE)] for i in (0, 2, 4)]


def test_text_that_a_spreadsheet_would_run_is_neutralised(api: Api, records: list[dict[str, Any]]) -> None:
    dangerous = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=1"]
    header = ["=name", *SNAKE, "id"]
    rows = [[text, *cells(records[0]), "-5"] for text in dangerous]
    rows.append(["@home", "=female", *cells(records[0])[1:], "4"])
    rows.append(["tab", "\tfemale", *cells(records[0])[1:], "5"])  # valid once stripped: still neutralised
    answer = parsed(api.post(table(header, rows)))
    assert answer[0][0] == "'=name"
    assert [row[0] for row in answer[1:-2]] == ["'" + text for text in dangerous]
    assert [row[8] for row in answer[1:-2]] == ["-5"] * len(dangerous), (
        "a plain negative number stays a number"
    )
    assert answer[-2][:2] == ["'@home", "'=female"]
    assert answer[-2][-1].startswith("gender: unknown category '=female'")
    assert answer[-1][1] == "'\tfemale" and answer[-1][len(header)] != "", "scored, and its cell neutralised"
    for row in answer:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")) and (
                cell == "-5" or not cell.startswith("-")
            )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 422, "empty"),
        (b" \r\n\r\n", 422, "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 422, "binary"),
        ("gender,lunch\nfemale,standard\n".encode("utf-16"), 422, "binary"),
        ("gender;café\n".encode("latin-1"), 422, "not UTF-8"),
        (b"PK\x03\x04\x14\x00\x06\x00", 422, "ZIP"),
        (b"name,age\nAda,12\n", 422, "no usable header"),
        (",".join(SNAKE[:-1]).encode() + b"\n", 422, "writing_score"),
        (",".join(KAGGLE + ["gender"]).encode() + b"\n", 422, "twice"),
        (b'gender,"lunch\nfemale,"x"y"\n', 422, "not a readable CSV"),
    ],
)
def test_a_file_that_is_not_a_usable_roster_is_refused_whole_with_its_reason(
    api: Api, body: bytes, status: int, words: str
) -> None:
    response = api.post(body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert response.json()["errors"][0]["reason"] in response.json()["detail"]
    assert api.lines() == []


def test_a_missing_column_is_named_in_both_spellings(api: Api) -> None:
    header = [c for c in KAGGLE if c != "race/ethnicity"]
    detail = api.post(",".join(header) + "\n").json()["detail"]
    assert detail == "header: the header lacks the column(s) 'race/ethnicity' (or 'race_ethnicity')"


def test_more_rows_than_the_limit_is_413_and_nothing_is_logged(
    api: Api, records: list[dict[str, Any]]
) -> None:
    rows = [cells(records[i % len(records)]) for i in range(MAX_ROSTER + 1)]
    over = api.post(table(SNAKE, rows))
    assert over.status_code == 413
    assert f"{MAX_ROSTER:,}" in over.json()["detail"]
    assert api.lines() == []
    exactly = parsed(api.post(table(SNAKE, rows[:MAX_ROSTER])))
    assert len(exactly) == MAX_ROSTER + 1
    assert len(api.lines()) == MAX_ROSTER


def test_a_header_only_file_is_an_empty_answer_and_logs_nothing(api: Api) -> None:
    assert parsed(api.post(",".join(KAGGLE) + "\r\n\r\n")) == [KAGGLE + list(RESULT_COLUMNS)]
    assert api.lines() == []


def test_a_body_that_is_not_sent_as_csv_is_415(api: Api) -> None:
    body = table(SNAKE, [])
    for content_type in ("application/json", "multipart/form-data; boundary=x", "image/png"):
        response = api.client.post("/predict/csv", content=body, headers={"content-type": content_type})
        assert response.status_code == 415
        assert "text/csv" in response.json()["detail"]
    for content_type in ("text/csv; charset=utf-8", "application/csv", "text/plain"):
        ok = api.client.post("/predict/csv", content=body, headers={"content-type": content_type})
        assert ok.status_code == 200, content_type


def test_cells_holding_delimiters_quotes_and_line_breaks_come_back_intact(
    api: Api, records: list[dict[str, Any]]
) -> None:
    names = ["Smith, Jo", 'Jo "JJ" Smith', "two\nlines", "plain"]
    rows = [[name, *cells(records[i])] for i, name in enumerate(names)]
    answer = parsed(api.post(table(["name", *SNAKE], rows)))
    assert [row[0] for row in answer[1:]] == names
    assert [row[1:8] for row in answer[1:]] == [[str(c) for c in cells(records[i])] for i in range(4)]
    assert all(row[8] and not row[-1] for row in answer[1:])


def test_semicolons_tabs_and_a_byte_order_mark_come_back_as_they_came(
    api: Api, records: list[dict[str, Any]]
) -> None:
    for delimiter in (";", "\t"):
        body = "\ufeff" + table(KAGGLE, [cells(r) for r in records[:3]], delimiter)
        response = api.post(body)
        assert response.content.startswith("\ufeff".encode()), "Excel needs the mark to read UTF-8"
        rows = parsed(response, delimiter)
        assert rows[0] == KAGGLE + list(RESULT_COLUMNS)
        assert all(row[-1] == "" and row[len(KAGGLE)] for row in rows[1:])


def test_an_answer_uploaded_again_is_scored_again_not_stacked(
    api: Api, records: list[dict[str, Any]]
) -> None:
    first = api.post(table(KAGGLE, [cells(r) for r in records[:4]]))
    second = api.post(first.content)
    assert second.content == first.content


def test_spaces_and_whole_number_decimals_are_read_as_the_loader_reads_them(
    api: Api, records: list[dict[str, Any]]
) -> None:
    record = records[0]
    padded = [f" {value} " for value in cells(record)[:5]] + [f"{record['reading_score']}.0", "  50"]
    rows = parsed(api.post(table(SNAKE, [padded, cells({**record, "writing_score": 50})])))
    assert rows[1][len(SNAKE)] == rows[2][len(SNAKE)] != ""


def test_private_predict_needs_a_key_and_names_its_client(
    make_api: Callable[..., Api], records: list[dict[str, Any]]
) -> None:
    api = make_api(EXAMPASS_PUBLIC_PREDICT="false")
    body = table(SNAKE, [cells(r) for r in records[:3]])
    refused = api.post(body)
    assert refused.status_code == 401
    assert "predict" in refused.json()["detail"]
    token = create_key(api.keys, "grade-office", ["predict"])
    assert len(parsed(api.post(body, {"Authorization": f"Bearer {token}"}))) == 4
    assert [line["client"] for line in api.lines()] == ["grade-office"] * 3


_CELLS = strategies.text(
    alphabet=strategies.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
)


def test_fuzzed_files_never_get_a_5xx_or_a_silent_row(api: Api, records: list[dict[str, Any]]) -> None:
    """Random cells under a real header: every data row comes back, scored or with its error, never both."""
    good = [str(c) for c in cells(records[0])]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        rows=strategies.lists(
            strategies.lists(
                strategies.one_of(_CELLS, strategies.sampled_from(good)), min_size=7, max_size=7
            ),
            max_size=4,
        ),
        raw=strategies.binary(max_size=64),
    )
    def probe(rows: list[list[str]], raw: bytes) -> None:
        assert api.post(raw).status_code < 500
        response = api.post(table(SNAKE, rows))
        assert response.status_code < 500, response.text
        if response.status_code == 200:
            for row in parsed(response)[1:]:
                scored, error = row[len(SNAKE)] != "", row[-1] != ""
                assert scored != error, row

    probe()
