"""A day of the prediction log ingested by DuckDB, written straight into the warehouse.

Why: the reference reader (``contract.predlog.day_batch``) builds one Python dict per line and re-reads seven
earlier prediction days to tell orphan feedback, so its cost grew with the day times the window and its memory
by gigabytes per million predictions. Here:

- lines are cut in Arrow (exactly at ``\\n``, numbered, the unterminated last one kept apart) in bounded chunks;
- a regular expression generated from ``contract.schema`` accepts the writer's canonical line in SQL (fields in
  the writer's order, categories from the schema, whole-number scores, canonical UUIDs and UTC timestamps);
  every line it does not accept goes to ``predlog.parse_line``, the reference, which either accepts it
  (a hand-written but valid line) or gives THE reason. So both readers agree by construction on everything
  the fast path rejects, and the fast path accepts only lines the reference accepts with the same values;
- orphan feedback is counted against ``prediction_ids``, an index of each ingested day's ids;
- the day's rows, ids and quarantine are replaced in one transaction (idempotent re-materialization).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from exampass_pipeline.contract import predlog, schema
from exampass_pipeline.io.warehouse import WAREHOUSE_SCHEMA

BATCHES = f"{WAREHOUSE_SCHEMA}.prediction_batches"
QUARANTINE = f"{WAREHOUSE_SCHEMA}.quarantine"
PREDICTION_IDS = f"{WAREHOUSE_SCHEMA}.prediction_ids"
CHUNK_BYTES = 32 << 20

_TYPES = {
    "prediction_id": "VARCHAR",
    "partition_date": "DATE",
    "timestamp": "TIMESTAMP",
    "model_version": "VARCHAR",
    "client": "VARCHAR",
    **{name: "VARCHAR" for name in schema.CATEGORICAL_FEATURES},
    **{name: "BIGINT" for name in schema.NUMERIC_FEATURES},
    "pass_probability": "DOUBLE",
    "predicted_pass": "BOOLEAN",
    schema.MATH_SCORE: "BIGINT",
    schema.LABEL: "BOOLEAN",
    "feedback_timestamp": "TIMESTAMP",
    "feedback_client": "VARCHAR",
}
assert tuple(_TYPES) == predlog.BATCH_COLUMNS
_PRED_FIELDS = (
    "prediction_id",
    "timestamp",
    "model_version",
    "client",
    *schema.FEATURES,
    "pass_probability",
    "predicted_pass",
)
_FB_FIELDS = ("prediction_id", "timestamp", "client", schema.MATH_SCORE)
_STAGE = {
    predlog.PREDICTIONS: ("p_stage", _PRED_FIELDS),
    predlog.FEEDBACK: ("f_stage", _FB_FIELDS),
}

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Hours, minutes and seconds in range and no year 0000: DuckDB casts 24:00 to the next midnight and 0000 to
# 1 BC, where ``datetime.fromisoformat`` refuses both (tests/io/test_ingest_sql_edges.py).
_TS = (
    r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-[0-9]{2}-[0-9]{2}"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{6})?\+00:00"
)
_SCORE = "0|[1-9][0-9]{0,2}"
# No sign: a probability is never negative, and JSON -0 is the integer 0 to Python but -0.0 as a DOUBLE cast.
_NUMBER = r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_CLIENT = "[a-z0-9][a-z0-9._-]{0,62}"
assert predlog._CLIENT.pattern == _CLIENT  # one client rule


def _literal(text: str) -> str:
    """A category as RE2 matches it literally inside a JSON string (no category needs JSON escaping)."""
    assert '"' not in text and "\\" not in text and text.isprintable()
    return "".join("\\" + ch if ch in r".^$|?*+()[]{}/" else ch for ch in text)


def _pattern(kind: str) -> str:
    """The writer's canonical line (``predlog.encode_record``) as one anchored expression, from the schema."""
    if kind == predlog.FEEDBACK:
        body = (
            f'"prediction_id":"({_UUID})","timestamp":"({_TS})","client":"({_CLIENT})",'
            f'"{schema.MATH_SCORE}":({_SCORE})'
        )
    else:
        inputs = ",".join(
            f'"{name}":"({"|".join(map(_literal, schema.CATEGORIES[name]))})"'
            if name in schema.CATEGORIES
            else f'"{name}":({_SCORE})'
            for name in schema.FEATURES
        )
        body = (
            f'"prediction_id":"({_UUID})","timestamp":"({_TS})","model_version":"([^"\\\\\\x00-\\x1f]*)",'
            f'"client":"({_CLIENT})","inputs":{{{inputs}}},"pass_probability":({_NUMBER}),'
            '"predicted_pass":(true|false)'
        )
    return "^\\{" + body + "\\}$"


def _fast_select(kind: str) -> str:
    """SQL turning the chunk's lines into typed rows, with ``ok`` true where the fast path accepts the line."""
    _, fields = _STAGE[kind]
    names = ", ".join(f"'{f}'" for f in fields)
    pattern = _pattern(kind).replace("'", "''")
    cols = []
    for f in fields:
        ref = f"m.{f}"
        if f == "timestamp":
            cols.append(f"TRY_CAST(left({ref}, length({ref}) - 6) AS TIMESTAMP) AS {f}")  # drop +00:00
        elif f in schema.SCORES:
            cols.append(f"TRY_CAST(nullif({ref}, '') AS BIGINT) AS {f}")
        elif f == "pass_probability":
            cols.append(f"TRY_CAST(nullif({ref}, '') AS DOUBLE) AS {f}")
        elif f == "predicted_pass":
            cols.append(f"{ref} = 'true' AS {f}")
        else:
            cols.append(f"{ref} AS {f}")
    checks = ["m.prediction_id <> ''", "timestamp IS NOT NULL"]
    checks += [f"{f} BETWEEN {schema.SCORE_MIN} AND {schema.SCORE_MAX}" for f in fields if f in schema.SCORES]
    if kind == predlog.PREDICTIONS:
        checks.append("pass_probability BETWEEN 0 AND 1")
    return (
        f"SELECT file_idx, line_no, line, {', '.join(cols)}, coalesce({' AND '.join(checks)}, false) AS ok "
        f"FROM (SELECT file_idx, line_no, line, regexp_extract(line, '{pattern}', [{names}]) AS m FROM chunk)"
    )


def split_lines(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Any:
    """Yield (first line number, Arrow string array of lines without their newline, torn last line or None).

    Cut at ``\\n`` only, like the reference's binary line iteration; bytes that are not UTF-8 are replaced
    per line, as the reference decodes them.
    """
    first, carry = 1, b""
    with predlog.open_segment(path) as fh:
        while True:
            block = fh.read(chunk_bytes)
            data = carry + block
            if not block:
                yield first, pa.array([], pa.string()), data.decode("utf-8", errors="replace") or None
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1 :]
            lines = pc.split_pattern(pa.array([data[:cut]], pa.binary()), pattern=b"\n").flatten()
            try:
                strings = lines.cast(pa.string())
            except pa.ArrowInvalid:
                strings = pa.array(
                    [b.decode("utf-8", errors="replace") for b in lines.to_pylist()], pa.string()
                )
            yield first, strings, None
            first += len(strings)


def _create_stage(conn: Any) -> None:
    for table, fields in _STAGE.values():
        typed = ", ".join(f"{f} {_TYPES[f] if f != schema.MATH_SCORE else 'BIGINT'}" for f in fields)
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} (day_off INT, file_idx INT, line_no BIGINT, {typed})"
        )
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE q_stage (file VARCHAR, line_no BIGINT, raw VARCHAR, reason VARCHAR)"
    )


def _stage_file(conn: Any, kind: str, path: Path, file_idx: int, day_off: int) -> None:
    """Every line of one file into the staging table of its kind, or (own day only) into the quarantine."""
    table, fields = _STAGE[kind]
    select = _fast_select(kind)
    for first, lines, torn in split_lines(path):
        rejected: list[tuple[int, str]] = []
        if len(lines):
            chunk = pa.table(
                {
                    "file_idx": pa.array([file_idx] * len(lines), pa.int32()),
                    "line_no": pa.array(range(first, first + len(lines)), pa.int64()),
                    "line": lines,
                }
            )
            conn.register("chunk", chunk)
            conn.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {select}")
            conn.unregister("chunk")
            conn.execute(
                f"INSERT INTO {table} SELECT {day_off}, file_idx, line_no, {', '.join(fields)} "
                "FROM parsed WHERE ok"
            )
            rejected = conn.execute(
                "SELECT line_no, line FROM parsed WHERE NOT ok ORDER BY line_no"
            ).fetchall()
            conn.execute("DROP TABLE parsed")
        slow: list[list[Any]] = []
        quarantined: list[list[Any]] = []
        candidates = [(n, t + "\n", True) for n, t in rejected]
        if torn is not None:
            candidates.append((first + len(lines), torn, False))
        for line_no, text, terminated in candidates:
            record, reason = predlog.parse_line(text, kind, terminated=terminated)
            if record is not None:
                record["timestamp"] = record["timestamp"].replace(tzinfo=None)
                slow.append([day_off, file_idx, line_no, *(record[f] for f in fields)])
            else:
                row = predlog.quarantine_row(path, line_no, text, reason or "unreadable")
                quarantined.append([row["file"], row["line_no"], row["raw"], row["reason"]])
        if slow:
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * (len(fields) + 3))})", slow)
        if quarantined and day_off == 0:
            conn.executemany("INSERT INTO q_stage VALUES (?, ?, ?, ?)", quarantined)


@dataclass(frozen=True)
class DayCounts:
    """What an ingestion found, for the asset's metadata and the benchmark's nothing-lost count."""

    rows: int
    labelled: int
    quarantined: int
    orphan_feedback: int
    duplicate_predictions: int
    feedback_lines: int
    prediction_lines: int


MEMORY_LIMIT = "1500MB"
THREADS = 2


def configure(conn: Any, memory_limit: str = MEMORY_LIMIT, threads: int = THREADS) -> None:
    """Bound DuckDB explicitly: the staging tables spill to disk past the limit instead of growing the process."""
    conn.execute(f"SET memory_limit = '{memory_limit}'")
    conn.execute(f"SET threads = {int(threads)}")
    conn.execute("SET preserve_insertion_order = false")


def create_tables(conn: Any) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {WAREHOUSE_SCHEMA}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {BATCHES} ({', '.join(f'{c} {t}' for c, t in _TYPES.items())})")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (partition_date DATE, file VARCHAR, line_no BIGINT, "
        "raw VARCHAR, reason VARCHAR)"
    )
    conn.execute(f"CREATE TABLE IF NOT EXISTS {PREDICTION_IDS} (partition_date DATE, prediction_id VARCHAR)")


_BATCH_SELECT = f"""
WITH own AS (
    SELECT * FROM p_stage QUALIFY row_number() OVER (PARTITION BY prediction_id ORDER BY file_idx, line_no) = 1
), fb AS (
    SELECT f.* FROM f_stage f SEMI JOIN own USING (prediction_id)
    QUALIFY row_number() OVER (PARTITION BY prediction_id
                               ORDER BY timestamp DESC, day_off DESC, file_idx DESC, line_no DESC) = 1
)
SELECT own.prediction_id, CAST($day AS DATE), own.timestamp, own.model_version, own.client,
       {", ".join(f"own.{n}" for n in schema.FEATURES)}, own.pass_probability, own.predicted_pass,
       fb.{schema.MATH_SCORE}, fb.{schema.MATH_SCORE} >= {schema.PASS_MARK}, fb.timestamp, fb.client
FROM own LEFT JOIN fb USING (prediction_id)
"""


def _index_unseen_window_days(conn: Any, logs: Path, day: date) -> None:
    """Index the ids of window days that were never ingested, from their logs, so orphans match the reference.

    A backfill may ingest a day before the earlier days of its window; the reference reader reads their logs,
    so without this their late feedback would count as orphans here. Only days with no index rows at all and
    a log are read; their own ingestion later replaces these rows (and stores their quarantine).
    """
    window = [day - timedelta(days=off) for off in range(1, predlog.FEEDBACK_WINDOW_DAYS + 1)]
    indexed = {
        d
        for (d,) in conn.execute(
            f"SELECT DISTINCT partition_date FROM {PREDICTION_IDS} WHERE partition_date BETWEEN ? AND ?",
            [window[-1], window[0]],
        ).fetchall()
    }
    for earlier in window:
        files = predlog.day_files(logs / predlog.PREDICTIONS, earlier)
        if earlier in indexed or not files:
            continue
        _create_stage(conn)
        for idx, path in enumerate(files):
            _stage_file(conn, predlog.PREDICTIONS, path, idx, 0)
        conn.execute(f"INSERT INTO {PREDICTION_IDS} SELECT DISTINCT ?, prediction_id FROM p_stage", [earlier])


def ingest_day(conn: Any, logs_dir: Path, day: date) -> DayCounts:
    """Replace ``day``'s partition, id index and quarantine from the log; the same result every time it runs."""
    create_tables(conn)
    logs = Path(logs_dir)
    _index_unseen_window_days(conn, logs, day)
    _create_stage(conn)
    for idx, path in enumerate(predlog.day_files(logs / predlog.PREDICTIONS, day)):
        _stage_file(conn, predlog.PREDICTIONS, path, idx, 0)
    for off in range(predlog.FEEDBACK_WINDOW_DAYS + 1):
        for idx, path in enumerate(predlog.day_files(logs / predlog.FEEDBACK, day + timedelta(days=off))):
            _stage_file(conn, predlog.FEEDBACK, path, idx, off)
    window = [day - timedelta(days=predlog.FEEDBACK_WINDOW_DAYS), day - timedelta(days=1)]
    orphans, feedback_lines = conn.execute(
        f"SELECT count(*) FILTER (WHERE prediction_id NOT IN (SELECT prediction_id FROM p_stage) AND "
        f"prediction_id NOT IN (SELECT prediction_id FROM {PREDICTION_IDS} WHERE partition_date BETWEEN ? AND ?)),"
        " count(*) FROM f_stage WHERE day_off = 0",
        window,
    ).fetchone() or (0, 0)
    lines = (conn.execute("SELECT count(*) FROM p_stage").fetchone() or (0,))[0]
    conn.execute("BEGIN TRANSACTION")
    try:
        for table in (BATCHES, QUARANTINE, PREDICTION_IDS):
            conn.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
        conn.execute(f"INSERT INTO {BATCHES} {_BATCH_SELECT}", {"day": day})
        conn.execute(f"INSERT INTO {PREDICTION_IDS} SELECT DISTINCT ?, prediction_id FROM p_stage", [day])
        conn.execute(f"INSERT INTO {QUARANTINE} SELECT ?, * FROM q_stage ORDER BY file, line_no", [day])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    rows, labelled = conn.execute(
        f"SELECT count(*), count({schema.MATH_SCORE}) FROM {BATCHES} WHERE partition_date = ?", [day]
    ).fetchone() or (0, 0)
    quarantined = (conn.execute("SELECT count(*) FROM q_stage").fetchone() or (0,))[0]
    for table in ("p_stage", "f_stage", "q_stage"):
        conn.execute(f"DROP TABLE {table}")
    return DayCounts(
        int(rows),
        int(labelled),
        int(quarantined),
        int(orphans),
        int(lines - rows),
        int(feedback_lines),
        int(lines),
    )
