"""Reading and cleaning the student table.

Kept out of the assets so the CLI, benchmarks and tests load the Kaggle file exactly the way the pipeline does.
Every rejection names the file, the row (as a 1-based line of the file) or column, and the reason: the person
fixing a bad export should not have to guess.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from exampass_pipeline.contract import schema

SOURCE_COLUMN = "source"
CLIENT_COLUMN = "client"
# The position of a row in `students`, which the splits carry so a check can prove them disjoint.
ROW_ID = "row_id"
# The client of rows from the curated data file (Kaggle or its synthetic stand-in): nobody sent them.
CURATED_CLIENT = "curated"
CURATED_SOURCES = frozenset({"kaggle", "synthetic"})


class DataError(ValueError):
    """An input file that cannot become the student table; the message is meant for a human."""


def _header_map(columns: list[str], path: Path) -> dict[str, str]:
    mapping, missing = schema.header_map(columns)
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; the header has {', '.join(map(repr, columns))}"
        )
    return mapping


def read_students_csv(path: Path) -> pd.DataFrame:
    """Load and validate a Kaggle-format CSV into the typed raw table (snake_case columns, int scores)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw_bytes = path.read_bytes()
    if not raw_bytes.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a CSV text file (byte {exc.start} is not UTF-8)") from exc
    if "\x00" in text:
        raise DataError(f"{path}: not a CSV text file (it contains NUL bytes)")
    try:
        sniffed = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
        delimiter = sniffed.delimiter
    except csv.Error:
        delimiter = ","
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=delimiter, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
    columns = [str(c) for c in frame.columns]
    mapping = _header_map(columns, path)
    frame = frame.rename(columns=mapping)[list(schema.COLUMNS)]
    if frame.empty:
        raise DataError(f"{path}: the header is there but the file has no rows")
    return _typed(frame, path)


def _typed(frame: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Validate every cell; report up to five bad cells so one run shows the shape of the problem."""
    problems: list[str] = []
    out = pd.DataFrame(index=frame.index)
    for name in schema.CATEGORICAL_FEATURES:
        values = frame[name].astype(str).str.strip()
        bad = ~values.isin(schema.CATEGORIES[name])
        for idx in values[bad].index[:5]:
            problems.append(
                f"row {idx + 2}, column {name}: unknown category {schema.shown(values[idx])}; allowed: "
                + ", ".join(map(repr, schema.CATEGORIES[name]))
            )
        out[name] = values
    for name in schema.SCORES:
        numbers = pd.to_numeric(frame[name].astype(str).str.strip(), errors="coerce")
        non_numeric = numbers.isna()
        for idx in numbers[non_numeric].index[:5]:
            problems.append(f"row {idx + 2}, column {name}: {schema.shown(frame[name][idx])} is not a number")
        out_of_range = ~non_numeric & ((numbers < schema.SCORE_MIN) | (numbers > schema.SCORE_MAX))
        for idx in numbers[out_of_range].index[:5]:
            problems.append(
                f"row {idx + 2}, column {name}: {frame[name][idx]!r} is outside {schema.SCORE_MIN}-{schema.SCORE_MAX}"
            )
        fractional = ~non_numeric & ~out_of_range & (numbers != numbers.round())
        for idx in numbers[fractional].index[:5]:
            problems.append(
                f"row {idx + 2}, column {name}: {schema.shown(frame[name][idx])} is not a whole number"
            )
        out[name] = numbers
    if problems:
        more = "" if len(problems) <= 10 else f" (and {len(problems) - 10} more)"
        raise DataError(f"{path}: " + "; ".join(problems[:10]) + more)
    for name in schema.SCORES:
        out[name] = out[name].astype("int64")
    return out.reset_index(drop=True)


def clean_students(raw: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """The modelling table: typed columns, the label, where each row came from and who supplied it.

    ``source`` overrides a ``source`` column the raw table may already carry. ``client`` is taken from the
    raw table when it has one (production rows: the key that reported the outcome), else the row is curated.
    """
    table = raw[list(schema.COLUMNS)].copy()
    origin = source if source is not None else raw[SOURCE_COLUMN].astype(str)
    supplier = raw[CLIENT_COLUMN].astype(str) if CLIENT_COLUMN in raw.columns else CURATED_CLIENT
    for name in schema.CATEGORICAL_FEATURES:
        table[name] = table[name].astype(str)
    for name in schema.SCORES:
        table[name] = table[name].astype("int64")
    table[schema.LABEL] = table[schema.MATH_SCORE] >= schema.PASS_MARK
    table[SOURCE_COLUMN] = origin
    table[CLIENT_COLUMN] = supplier
    return table
