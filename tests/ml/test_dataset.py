"""Reading the student file: the Kaggle header as published, and a clear refusal of every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import pytest

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import dataset

HEADER = (
    '"gender","race/ethnicity","parental level of education","lunch","test preparation course",'
    '"math score","reading score","writing score"'
)
ROW = '"female","group B","bachelor\'s degree","standard","none","72","72","74"'


def write(tmp_path: Path, text: str | bytes, name: str = "students.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_reads_the_real_file_with_its_quoted_header(real_csv: Path) -> None:
    frame = dataset.read_students_csv(real_csv)
    assert list(frame.columns) == list(schema.COLUMNS)
    assert len(frame) == 1000
    assert frame[schema.MATH_SCORE].dtype == "int64"
    table = dataset.clean_students(frame, "kaggle")
    assert table[schema.LABEL].mean() == pytest.approx(0.865)
    assert set(table[dataset.SOURCE_COLUMN]) == {"kaggle"}


def test_accepts_snake_case_header(tmp_path: Path) -> None:
    path = write(tmp_path, ",".join(schema.COLUMNS) + "\n" + ROW.replace('"', "") + "\n")
    assert len(dataset.read_students_csv(path)) == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (HEADER.replace(',"lunch"', "") + "\n" + ROW + "\n", "missing column(s) lunch"),
        (
            HEADER + "\n" + ROW.replace("group B", "group Z") + "\n",
            "row 2, column race_ethnicity: unknown category 'group Z'",
        ),
        (
            HEADER + "\n" + ROW + "\n" + ROW.replace('"72","72"', '"seventy","72"') + "\n",
            "row 3, column math_score: 'seventy' is not a number",
        ),
        (
            HEADER + "\n" + ROW.replace('"74"', '"140"') + "\n",
            "row 2, column writing_score: '140' is outside 0-100",
        ),
        (
            HEADER + "\n" + ROW.replace('"74"', '"-3"') + "\n",
            "row 2, column writing_score: '-3' is outside 0-100",
        ),
        (HEADER + "\n" + ROW.replace('"74"', '"7.5"') + "\n", "'7.5' is not a whole number"),
        ("", "the file is empty"),
        ("   \n\n", "the file is empty"),
        (HEADER + "\n", "no rows"),
        ('{"students": [1, 2, 3]}', "missing column(s)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a CSV text file"),
    ],
    ids=[
        "missing-column",
        "unknown-category",
        "non-numeric",
        "too-high",
        "negative",
        "fraction",
        "empty",
        "blank",
        "header-only",
        "json",
        "binary",
    ],
)
def test_bad_files_are_refused_with_file_place_and_reason(
    tmp_path: Path, content: str | bytes, expected: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(dataset.DataError) as err:
        dataset.read_students_csv(path)
    message = str(err.value)
    assert str(path) in message
    assert expected in message


def test_unknown_category_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\n" + ROW.replace('"standard"', '"deluxe"') + "\n")
    with pytest.raises(dataset.DataError, match="allowed: 'standard', 'free/reduced'"):
        dataset.read_students_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(dataset.DataError, match="no such file"):
        dataset.read_students_csv(tmp_path / "nope.csv")
