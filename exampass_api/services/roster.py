"""Class rosters as CSV: read a spreadsheet's file, judge every row, write the scored file back.

Shared by ``POST /predict/csv`` and the web page's roster upload, so both accept the same files and give the
same reasons. The rules, and why:

* The whole file is refused (``RosterRejected``) only when there is nothing sensible to score: it is empty,
  binary or not UTF-8, not parseable as CSV, its header lacks a model column (or names one twice), or it has
  more than MAX_ROSTER rows (413). Otherwise every row is judged on its own: a bad row gets its reasons, with
  the file's row number and column, and every valid row is still scored.
* Headers go through ``schema.header_map``, the same mapping the training data loader uses, so the Kaggle
  spelling (``race/ethnicity``, ``math score``) and snake_case both work. A maths column is carried through
  untouched and never scored: it is the label.
* Cells are judged by ``problems`` (``schema.validate_record``): the sentences the JSON API gives. Like the
  data loader, cells are stripped of surrounding spaces and the delimiter may be ``,``, ``;`` (European
  spreadsheets) or a tab; the answer uses the file's own delimiter and byte-order mark, so a spreadsheet
  opens it as it opened the original.
* The answer keeps the input's columns in the input's order, then adds RESULT_COLUMNS. Every text cell that
  starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (the OWASP list) gets a leading ``'``, so a
  spreadsheet shows it instead of running it as a formula. Plain numbers ("-5") are left alone.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Final

import numpy as np
import orjson

from exampass_api.scorer import CODES
from exampass_api.services.advice import cheapest_sentence
from exampass_api.services.model_store import Bundle
from exampass_api.services.prediction import PredictionService, Scored
from exampass_api.services.reasons import reason_texts
from exampass_pipeline.contract import schema

MAX_ROSTER: Final = 10_000
# Generous per row (a Kaggle row is under 100 bytes; names, ids and notes may ride along), so that only an
# absurd upload is refused by its size before its rows are counted.
MAX_ROSTER_BYTES: Final = MAX_ROSTER * 1024
RESULT_COLUMNS: Final = ("pass_probability", "predicted_pass", "top_reasons", "advice", "error")
DELIMITERS: Final = (",", ";", "\t")
FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_TRIGGERS: Final = frozenset(FORMULA_START)
# ASCII digits only: ``\d`` would also take other scripts' digits, which float() reads but people do not.
_NUMBER: Final = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
MAX_COLUMNS: Final = 200
_SCORE_TEXT: Final = {str(i): i for i in range(schema.SCORE_MIN, schema.SCORE_MAX + 1)}
_BOM: Final = "\ufeff"
MISSING: Final = "missing (required field)"  # as the JSON API says it
_SAVE_AS: Final = "save the sheet as 'CSV UTF-8 (comma delimited)' and upload that"


class RosterRejected(Exception):
    """The whole file is refused: answered with ``status`` (413 or 422) and a reason naming ``part``."""

    def __init__(self, status: int, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.status = status
        self.part = part
        self.reason = reason


@dataclass(frozen=True)
class CellError:
    """Why one row was not scored: its row number as a spreadsheet shows it (header = 1), the column, the
    cell's text and the reason (``schema.validate_record``'s sentence)."""

    row: int
    column: str
    value: str
    reason: str


@dataclass
class Roster:
    """A parsed roster: every data row as text, and the valid ones as records ready for ``score``."""

    header: list[str]
    delimiter: str
    bom: bool
    columns: dict[str, int]  # schema feature -> its column index in the file
    rows: list[list[str]] = field(default_factory=list)  # the data rows' cells (padded to the header)
    numbers: list[int] = field(default_factory=list)  # each data row's row number in the file
    records: list[dict[str, Any]] = field(default_factory=list)  # the valid rows, in file order
    valid: list[int] = field(default_factory=list)  # the index in ``rows`` of each record
    codes: list[tuple[int, ...]] = field(default_factory=list)  # each record's categories, scorer-encoded
    scores: list[tuple[int, int]] = field(default_factory=list)  # each record's reading and writing scores
    loose: set[int] = field(default_factory=set)  # rows valid only once stripped/converted (``_judge``)
    errors: dict[int, list[CellError]] = field(default_factory=dict)  # index in ``rows`` -> its errors

    def encoded(self) -> tuple[np.ndarray, np.ndarray]:
        """The valid records as the scorer's (codes, nums), built while they were judged."""
        codes = np.array(self.codes, dtype=np.intp).reshape(len(self.codes), len(schema.CATEGORICAL_FEATURES))
        nums = np.array(self.scores, dtype=np.float64).reshape(len(self.scores), len(schema.NUMERIC_FEATURES))
        return codes, nums

    def error_text(self, index: int) -> str:
        """The ``error`` cell of a bad row: "race/ethnicity: unknown category 'grp B'; allowed: ..."."""
        return "; ".join(f"{e.column}: {e.reason}" if e.column else e.reason for e in self.errors[index])

    def kept_columns(self) -> list[int]:
        """The input columns the answer repeats: all but earlier result columns (re-uploading an answer
        replaces its results instead of stacking a second set beside them)."""
        return [i for i, name in enumerate(self.header) if name.strip() not in RESULT_COLUMNS]


# ------------------------------------------------------------------------------------------------ reading
def decode(raw: bytes) -> tuple[str, bool]:
    """The file's text and whether it began with a byte-order mark, or RosterRejected saying what it is."""
    if not raw.strip(b" \t\r\n" + _BOM.encode()):
        raise RosterRejected(422, "file", "the file is empty: send a CSV whose first row is the header")
    if raw.startswith(b"PK\x03\x04"):
        raise RosterRejected(
            422, "file", f"this is a ZIP archive (an Excel .xlsx workbook?), not a CSV: {_SAVE_AS}"
        )
    if b"\x00" in raw:
        raise RosterRejected(
            422, "file", f"this is a binary file (it contains NUL bytes), not a CSV: {_SAVE_AS}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = (
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}): {_SAVE_AS}"
        )
        raise RosterRejected(422, "file", reason) from exc
    bom = text.startswith(_BOM)
    return text.removeprefix(_BOM), bom


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) per CSV record; RosterRejected for text the csv module cannot read."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    number = 0
    try:
        for cells in reader:
            number += 1
            yield number, cells
    except csv.Error as exc:
        raise RosterRejected(422, "file", f"not a readable CSV file at row {number + 1}: {exc}") from exc


def _delimiter(text: str) -> str:
    """The delimiter that makes the most model columns out of the first line (comma when none does)."""
    first = text.lstrip("\r\n").split("\n", 1)[0]
    best, found = ",", 0
    for delimiter in DELIMITERS:
        cells = next(csv.reader([first], delimiter=delimiter), [])
        mapped = len(schema.header_map(cells)[0])
        if mapped > found:
            best, found = delimiter, mapped
    return best


def _spellings(name: str) -> str:
    kaggle = next(k for k, v in schema.KAGGLE_HEADER.items() if v == name)
    return repr(name) if kaggle == name else f"{kaggle!r} (or {name!r})"


def feature_columns(header: list[str]) -> dict[str, int]:
    """Each model feature's column index, or RosterRejected naming what the header lacks or repeats."""
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        target = schema.header_map([name])[0].get(name)
        if target is None or target == schema.MATH_SCORE:
            continue
        if target in columns:
            reason = (
                f"the header names {_spellings(target)} twice (columns {columns[target] + 1} and {index + 1}); "
                "keep one"
            )
            raise RosterRejected(422, "header", reason)
        columns[target] = index
    missing = [name for name in schema.FEATURES if name not in columns]
    if len(missing) == len(schema.FEATURES):
        reason = (
            "no usable header: the first row must name the columns "
            + ", ".join(next(k for k, v in schema.KAGGLE_HEADER.items() if v == n) for n in schema.FEATURES)
            + f" (the Kaggle file's spelling, or snake_case); it has {', '.join(map(schema.shown, header))}"
        )
        raise RosterRejected(422, "header", reason)
    if missing:
        reason = f"the header lacks the column(s) {', '.join(map(_spellings, missing))}"
        raise RosterRejected(422, "header", reason)
    return columns


def parse_roster(raw: bytes) -> Roster:
    """Read and judge a roster file: every row either becomes a record or gets its reasons."""
    text, bom = decode(raw)
    delimiter = _delimiter(text)
    records = _records(text, delimiter)
    header: list[str] | None = None
    for _, cells in records:
        if "".join(cells).strip():
            header = cells
            break
    if header is None:
        raise RosterRejected(422, "file", "the file is empty: send a CSV whose first row is the header")
    if len(header) > MAX_COLUMNS:
        reason = f"the header has {len(header):,} columns; a roster may have at most {MAX_COLUMNS}"
        raise RosterRejected(422, "header", reason)
    roster = Roster(header, delimiter, bom, feature_columns(header))
    _read_rows(roster, records)
    return roster


_TABLES: Final = tuple(CODES[name] for name in schema.CATEGORICAL_FEATURES)
_GENDER, _RACE, _PARENT, _LUNCH, _PREP = schema.CATEGORICAL_FEATURES
_READING, _WRITING = schema.NUMERIC_FEATURES


def _read_rows(roster: Roster, records: Iterator[tuple[int, list[str]]]) -> None:
    """Every data row into ``roster``: the hot loop of a 10,000-row upload, hence the local names.

    A row spelled exactly as the schema spells it (what a clean export gives) is encoded on the spot; any
    other row goes to ``_judge``, which strips and converts its cells and finds its reasons.
    """
    width = len(roster.header)
    pick = itemgetter(*(roster.columns[name] for name in schema.FEATURES))
    g_codes, r_codes, p_codes, l_codes, t_codes = _TABLES
    score = _SCORE_TEXT
    rows, numbers, accepted, valid, codes, scores = (
        roster.rows, roster.numbers, roster.records, roster.valid, roster.codes, roster.scores
    )  # fmt: skip
    for number, cells in records:
        if not "".join(cells).strip():
            continue  # a blank line in a spreadsheet export: not a student
        if len(rows) == MAX_ROSTER:
            raise RosterRejected(
                413,
                "file",
                f"more than {MAX_ROSTER:,} students (row {number} is student {MAX_ROSTER + 1:,}): "
                f"split the file into parts of at most {MAX_ROSTER:,} rows",
            )
        if len(cells) != width:
            extra = "".join(cells[width:]).strip()
            cells = cells[:width] + [""] * (width - len(cells))
            if extra:
                rows.append(cells)
                numbers.append(number)
                reason = f"the row has more cells than the header's {width}"
                roster.errors[len(rows) - 1] = [CellError(number, "", "", reason)]
                continue
        rows.append(cells)
        numbers.append(number)
        g, r, p, lunch, t, reading, writing = pick(cells)
        try:
            code = (g_codes[g], r_codes[r], p_codes[p], l_codes[lunch], t_codes[t])
            pair = (score[reading], score[writing])
            record = {
                _GENDER: g, _RACE: r, _PARENT: p, _LUNCH: lunch, _PREP: t, _READING: pair[0], _WRITING: pair[1],
            }  # fmt: skip
        except KeyError:
            _judge(roster, cells, number)
            continue
        accepted.append(record)
        valid.append(len(rows) - 1)
        codes.append(code)
        scores.append(pair)


def _judge(roster: Roster, cells: list[str], number: int) -> None:
    """The general check of one row (already in ``roster.rows``): a record, or its errors."""
    columns = roster.columns
    record = {name: _cell_value(name, cells[columns[name]]) for name in schema.FEATURES}
    found = problems(record)
    if found:
        header = roster.header
        roster.errors[len(roster.rows) - 1] = [
            CellError(number, header[columns[p.field]], cells[columns[p.field]], p.reason) for p in found
        ]
        return
    for name in schema.NUMERIC_FEATURES:
        record[name] = int(record[name])
    roster.loose.add(len(roster.rows) - 1)
    roster.records.append(record)
    roster.valid.append(len(roster.rows) - 1)
    roster.codes.append(tuple(CODES[name][record[name]] for name in schema.CATEGORICAL_FEATURES))
    roster.scores.append((record[_READING], record[_WRITING]))


def problems(record: dict[str, Any]) -> list[schema.FieldError]:
    """Why a record read from text (a CSV row, the page's form) is invalid, in the JSON API's words.

    ``schema.validate_record``'s reasons, with two differences: an empty cell is "missing (required field)",
    as the API says of a missing field, and a score cell that only Python would read as a number ("7_2",
    "٧٢") is "not a number" (``cell_value`` leaves such text as text).
    """
    found = [
        schema.FieldError(p.field, MISSING) if p.reason == "missing" else p
        for p in schema.validate_record(record)
    ]
    flagged = {p.field for p in found}
    for name in schema.NUMERIC_FEATURES:
        if isinstance(record[name], str) and name not in flagged:
            found.append(schema.FieldError(name, f"{schema.shown(record[name])} is not a number"))
    return sorted(found, key=lambda p: schema.FEATURES.index(p.field))


def cell_value(text: str) -> int | float | str | None:
    """A score cell as the number it spells ("72", "72.0", "7.2e1"), None when empty, else the text itself
    (which ``schema.score_error`` then calls "not a number"). Words such as "nan" stay text on purpose."""
    text = text.strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return text


def _cell_value(name: str, text: str) -> Any:
    if name in schema.NUMERIC_FEATURES:
        return cell_value(text)
    return text.strip() or None


# ------------------------------------------------------------------------------------------------ writing
def neutralised(cell: str) -> str:
    """The cell as a spreadsheet may safely open it: a leading ``'`` on text that would start a formula."""
    if cell and cell.startswith(FORMULA_START) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def probability_texts(probabilities: list[float]) -> list[str]:
    """Each probability as the shortest text that reads back as the same float: Python's ``repr``, which is
    also how the JSON of /predict/batch writes it. orjson writes the same digits for every float from 1e-4 to
    1 (and 0.0), at a fraction of the cost of 1,000 ``repr`` calls; anything smaller goes through ``repr``."""
    texts = orjson.dumps(probabilities)[1:-1].decode().split(",") if probabilities else []
    return [t if p == 0.0 or p >= 1e-4 else repr(p) for t, p in zip(texts, probabilities, strict=True)]


def advice_texts(service: PredictionService, roster: Roster, scored: Scored, bundle: Bundle) -> list[str]:
    """The ``advice`` column: the cheapest change that passes, in words, for each flagged row; empty otherwise.

    "Cheapest" is ``advice.advise``'s: the fewest score points added, the course counting as none.
    """
    return [
        cheapest_sentence(service.advice_for(bundle, record, passed), record)
        for record, passed in zip(roster.records, scored.decisions, strict=True)
    ]


def answer_rows(roster: Roster, scored: Scored, advice: Sequence[str]) -> Iterator[list[str]]:
    """The answer's header, then one row per data row in file order: kept columns, then RESULT_COLUMNS.

    A row whose model cells were spelled exactly as the schema spells them (the fast path of ``_read_rows``)
    can only start a formula in its other columns, so only those are looked at; any other row is neutralised
    cell by cell.
    """
    kept = roster.kept_columns()
    every = kept == list(range(len(roster.header)))
    features = set(roster.columns.values())
    unverified = [at for at, i in enumerate(kept) if i not in features]
    yield [neutralised(roster.header[i]) for i in kept] + list(RESULT_COLUMNS)
    position = {row: j for j, row in enumerate(roster.valid)}
    reasons = reason_texts(roster.records, scored.contributions, scored.order)
    probabilities, decisions, loose = probability_texts(scored.probabilities), scored.decisions, roster.loose
    for index, cells in enumerate(roster.rows):
        out = cells[:] if every else [cells[i] for i in kept]
        j = position.get(index)
        if j is None or index in loose or any(out[at][:1] in _TRIGGERS for at in unverified):
            out = [neutralised(cell) for cell in out]
        if j is None:
            out += ["", "", "", "", neutralised(roster.error_text(index))]
        else:
            out += [probabilities[j], "true" if decisions[j] else "false", reasons[j], advice[j], ""]
        yield out


def to_csv(roster: Roster, scored: Scored, advice: Sequence[str]) -> bytes:
    """The answer file, in the input's delimiter and with its byte-order mark if it had one.

    A row none of whose cells holds the delimiter, a quote or a line break needs no quoting, and is joined
    directly: what the csv writer would write, at a fraction of its cost (it cost more than scoring the row).
    Every other row goes through the writer.
    """
    buffer = io.StringIO()
    if roster.bom:
        buffer.write(_BOM)
    delimiter = roster.delimiter
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    rows = answer_rows(roster, scored, advice)
    header = next(rows)
    writer.writerow(header)
    separators, write = len(header) - 1, buffer.write
    for row in rows:
        line = delimiter.join(row)
        if line.count(delimiter) == separators and '"' not in line and "\n" not in line and "\r" not in line:
            write(line)
            write("\r\n")
        else:
            writer.writerow(row)
    return buffer.getvalue().encode("utf-8")


def score_valid_rows(service: PredictionService, bundle: Bundle, roster: Roster, client: str) -> Scored:
    """The roster's valid rows through the one scoring path, logged with ``client``. Blocking."""
    codes, nums = roster.encoded()
    return service.score(bundle, roster.records, client, codes, nums)


def scored_csv(service: PredictionService, bundle: Bundle, roster: Roster, client: str) -> bytes:
    """/predict/csv's answer: the roster scored, as a file. Blocking: the route runs it in the thread pool."""
    scored = score_valid_rows(service, bundle, roster, client)
    return to_csv(roster, scored, advice_texts(service, roster, scored, bundle))
