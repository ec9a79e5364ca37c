"""A day of the prediction log into the warehouse with DuckDB: the pipeline's fast path beside predlog's reader.

Why not ``predlog.day_batch``: it builds one Python dict per line and re-reads the seven earlier prediction
days to tell orphan feedback from late feedback, so a day of a million predictions took minutes and gigabytes.
Here the lines are framed in Python in large blocks (C-speed ``split``, line numbers and torn last lines exact),
handed to DuckDB as Arrow, validated and typed in SQL generated from ``contract.schema``, joined with the
feedback window in SQL and written with ``INSERT ... SELECT`` in one transaction, never through pandas.

Why the result is identical to the reference reader: the SQL only *accepts* a line when it can prove the
reference would accept it with the same values (the writer's exact key order, canonical ids and timestamps,
JSON types that need no conversion, no control characters or trailing commas that DuckDB's lenient parser
would let through). Every other line - torn, malformed, or merely unusual - is handed to
``predlog.check_line``, which accepts it or quarantines it with its reason, so reasons are worded in one place.
``tests/monitoring/test_ingest_sql.py`` proves equality on fuzzed logs.

Orphan feedback is counted against ``prediction_ids`` (the distinct ids of each ingested day, keyed by day),
never by re-reading old days; a window day that was never ingested is indexed from its log once, first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from exampass_pipeline.contract import predlog, schema
from exampass_pipeline.io.warehouse import WAREHOUSE_SCHEMA

BATCHES = f"{WAREHOUSE_SCHEMA}.prediction_batches"
QUARANTINE = f"{WAREHOUSE_SCHEMA}.quarantine"
IDS = f"{WAREHOUSE_SCHEMA}.prediction_ids"
IDS_DAYS = f"{WAREHOUSE_SCHEMA}.prediction_id_days"
# Lines are framed in blocks of this many bytes: large enough that per-block costs vanish, small enough that
# a block's Arrow copy (about twice its size) never matters next to DuckDB's memory limit.
BLOCK_BYTES = 32 << 20

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What ``datetime.isoformat`` writes for an aware UTC instant; the date itself is checked by the cast.
_STAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{6})?\+00:00"
_CLIENT = "[a-z0-9][a-z0-9._-]{0,62}"  # predlog._CLIENT, fullmatch
_INTEGER = "('UBIGINT', 'BIGINT')"

PREDICTION_FIELDS = ("prediction_id", "timestamp", "model_version", "client", "inputs", "pass_probability",
                     "predicted_pass")
FEEDBACK_FIELDS = ("prediction_id", "timestamp", "client", schema.MATH_SCORE)

BATCH_TYPES: dict[str, str] = {
    "prediction_id": "VARCHAR",
    "partition_date": "DATE",
    "timestamp": "TIMESTAMP",
    "model_version": "VARCHAR",
    "client": "VARCHAR",
    **{name: "VARCHAR" if name in schema.CATEGORIES else "BIGINT" for name in schema.FEATURES},
    "pass_probability": "DOUBLE",
    "predicted_pass": "BOOLEAN",
    schema.MATH_SCORE: "BIGINT",
    schema.LABEL: "BOOLEAN",
    "feedback_timestamp": "TIMESTAMP",
    "feedback_client": "VARCHAR",
}
assert tuple(BATCH_TYPES) == predlog.BATCH_COLUMNS

_PRED_STAGE = {
    "prediction_id": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "model_version": "VARCHAR",
    "client": "VARCHAR",
    **{name: BATCH_TYPES[name] for name in schema.FEATURES},
    "pass_probability": "DOUBLE",
    "predicted_pass": "BOOLEAN",
}
_FB_STAGE = {"prediction_id": "VARCHAR", "timestamp": "TIMESTAMP", "client": "VARCHAR", schema.MATH_SCORE: "BIGINT"}


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _keys_clause(fields: Sequence[str]) -> str:
    """The writer's keys in the writer's order, with or without ``client`` (older lines have none)."""
    without = [f for f in fields if f != "client"]
    return f"(k = {_sql_list(fields)} OR k = {_sql_list(without)})"


def _stamp(expr: str) -> str:
    return f"try_cast(left({expr}, length({expr}) - 6) AS TIMESTAMP)"


def _parse_sql(kind: str) -> tuple[str, str, list[str]]:
    """(json paths, clean condition, typed column expressions) for one kind, generated from the schema.

    ``v`` is the list of the paths' JSON values, ``k`` the top-level keys, ``ki`` the keys of ``inputs``.
    """
    pred = kind == predlog.PREDICTIONS
    paths = ["prediction_id", "timestamp", *(("model_version",) if pred else ()), "client"]
    if pred:
        paths += [f"inputs.{name}" for name in schema.FEATURES] + ["pass_probability", "predicted_pass"]
    else:
        paths.append(schema.MATH_SCORE)
    at = {p.removeprefix("inputs."): i + 1 for i, p in enumerate(paths)}

    def t(name: str) -> str:
        return f"json_type(v[{at[name]}])"

    def s(name: str) -> str:
        return f"json_extract_string(v[{at[name]}], '$')"

    conds = [
        _keys_clause(PREDICTION_FIELDS if pred else FEEDBACK_FIELDS),
        f"{t('prediction_id')} = 'VARCHAR'",
        f"regexp_full_match({s('prediction_id')}, '{_UUID}')",
        f"{t('timestamp')} = 'VARCHAR'",
        f"regexp_full_match({s('timestamp')}, '{_STAMP}')",
        f"{_stamp(s('timestamp'))} IS NOT NULL",
        f"(v[{at['client']}] IS NULL OR ({t('client')} = 'VARCHAR' AND regexp_full_match({s('client')}, '{_CLIENT}')))",
    ]
    cols = [s("prediction_id"), _stamp(s("timestamp"))]
    if pred:
        conds += [f"{t('model_version')} = 'VARCHAR'", f"ki = {_sql_list(schema.FEATURES)}"]
        cols += [s("model_version")]
    cols.append(f"coalesce({s('client')}, '{predlog.UNATTRIBUTED}')")
    scores = schema.NUMERIC_FEATURES if pred else (schema.MATH_SCORE,)
    for name in schema.FEATURES if pred else ():
        if name in schema.CATEGORIES:
            conds.append(f"{t(name)} = 'VARCHAR' AND {s(name)} IN ({_sql_list(schema.CATEGORIES[name])[1:-1]})")
            cols.append(s(name))
    for name in scores:
        conds.append(
            f"{t(name)} IN {_INTEGER} AND try_cast(v[{at[name]}] AS BIGINT) "
            f"BETWEEN {schema.SCORE_MIN} AND {schema.SCORE_MAX}"
        )
    if pred:
        conds += [
            f"{t('pass_probability')} IN ('DOUBLE', 'UBIGINT', 'BIGINT')",
            "try_cast(v[{0}] AS DOUBLE) BETWEEN 0 AND 1".format(at["pass_probability"]),
            f"{t('predicted_pass')} = 'BOOLEAN'",
        ]
        # The stage's column order: prediction_id, timestamp, model_version, client, features..., p, decision.
        cols = cols[:4] + [
            s(n) if n in schema.CATEGORIES else f"CAST(v[{at[n]}] AS BIGINT)" for n in schema.FEATURES
        ]
        cols += [f"CAST(v[{at['pass_probability']}] AS DOUBLE)", f"CAST(v[{at['predicted_pass']}] AS BOOLEAN)"]
    else:
        cols.append(f"CAST(v[{at[schema.MATH_SCORE]}] AS BIGINT)")
    return _sql_list(["$." + p for p in paths]), " AND ".join(f"({c})" for c in conds), cols


@dataclass(frozen=True)
class Block:
    """Whole lines of one file: their numbers, their text and whether each ended with a newline."""

    line_no: list[int]
    lines: list[str]
    terminated: list[bool]


def blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """The file's lines in blocks; decoded with ``errors="replace"`` as the reference reader decodes them.

    Decoding a block of whole lines equals decoding each line: a newline byte never continues a UTF-8
    sequence, so the decoder is back in step at every line start.
    """
    number = 1
    carry = b""
    with predlog.open_segment(path) as fh:
        while True:
            data = fh.read(block_bytes)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                lines = data[:cut].decode("utf-8", errors="replace").split("\n")[:-1]
                yield Block(list(range(number, number + len(lines))), lines, [True] * len(lines))
                number += len(lines)
    if carry:
        yield Block([number], [carry.decode("utf-8", errors="replace")], [False])


@dataclass
class Staged:
    """What staging one kind of one day found besides the clean rows: the lines only Python could judge."""

    quarantined: list[dict[str, Any]]
    lines: int = 0


class DayIngestion:
    """Stages a day's lines in temporary tables of one DuckDB connection and writes the partition from them."""

    def __init__(self, conn: Any, logs_dir: Path, block_bytes: int = BLOCK_BYTES) -> None:
        self.conn = conn
        self.logs_dir = Path(logs_dir)
        self.block_bytes = block_bytes
        self._sql = {kind: _parse_sql(kind) for kind in (predlog.PREDICTIONS, predlog.FEEDBACK)}

    def _stage_table(self, name: str, kind: str) -> None:
        cols = _PRED_STAGE if kind == predlog.PREDICTIONS else _FB_STAGE
        typed = ", ".join(f'"{c}" {t}' for c, t in cols.items())
        self.conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {name} (day_offset INTEGER, file_idx INTEGER, line_no BIGINT, {typed})"
        )

    def stage(self, table: str, kind: str, day: date, offset: int, keep_quarantine: bool) -> Staged:
        """Append ``day``'s valid ``kind`` records to ``table``; return the quarantined lines if wanted."""
        paths, clean, cols = self._sql[kind]
        staged = Staged([])
        for file_idx, path in enumerate(predlog.day_files(self.logs_dir / kind, day)):
            for block in blocks(path, self.block_bytes):
                staged.lines += len(block.lines)
                chunk = pa.table(
                    {"line_no": pa.array(block.line_no, pa.int64()), "line": pa.array(block.lines, pa.string()),
                     "terminated": pa.array(block.terminated, pa.bool_())}
                )
                self.conn.register("log_chunk", chunk)
                self.conn.execute(
                    "CREATE OR REPLACE TEMP TABLE log_parsed AS SELECT line_no, line, "
                    f"coalesce(ok AND {clean}, false) AS clean, v FROM ("
                    f"SELECT *, CASE WHEN ok THEN json_extract(line, {paths}) END AS v, "
                    "CASE WHEN ok THEN json_keys(line) END AS k, "
                    "CASE WHEN ok THEN json_keys(line, '$.inputs') END AS ki FROM ("
                    "SELECT *, terminated AND NOT regexp_matches(line, '[\\x00-\\x1f]|,\\s*[}\\]]') "
                    "AND json_valid(line) AS ok FROM log_chunk))"
                )
                self.conn.unregister("log_chunk")
                self.conn.execute(
                    f"INSERT INTO {table} SELECT {offset}, {file_idx}, line_no, {', '.join(cols)} "
                    "FROM log_parsed WHERE clean"
                )
                odd = self.conn.execute(
                    "SELECT line_no, line FROM log_parsed WHERE NOT clean ORDER BY line_no"
                ).fetchall()
                ends = dict(zip(block.line_no, block.terminated, strict=True)) if odd else {}
                self._judge(table, kind, offset, file_idx, path, odd, ends, staged, keep_quarantine)
        self.conn.execute("DROP TABLE IF EXISTS log_parsed")
        return staged

    def _judge(
        self,
        table: str,
        kind: str,
        offset: int,
        file_idx: int,
        path: Path,
        odd: list[tuple[int, str]],
        ends: dict[int, bool],
        staged: Staged,
        keep_quarantine: bool,
    ) -> None:
        """The lines SQL could not prove clean, judged by the reference checker, one by one."""
        accepted = []
        for line_no, line in odd:
            text = line + ("\n" if ends[line_no] else "")
            record, reason = predlog.parse_line(text, kind, terminated=ends[line_no])
            if record is None:
                if keep_quarantine:
                    staged.quarantined.append(predlog.quarantine_row(path, line_no, text, reason or "unreadable"))
                continue
            cols = _PRED_STAGE if kind == predlog.PREDICTIONS else _FB_STAGE
            values = [record[c] for c in cols]
            values[1] = values[1].astimezone(UTC).replace(tzinfo=None)
            accepted.append([offset, file_idx, line_no, *values])
        if accepted:
            marks = ", ".join("?" * len(accepted[0]))
            self.conn.executemany(f"INSERT INTO {table} VALUES ({marks})", accepted)


def ensure_tables(conn: Any) -> None:
    """The partition, quarantine and id-index tables, typed from the schema (an empty day creates them too)."""
    cols = ", ".join(f'"{c}" {t}' for c, t in BATCH_TYPES.items())
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {WAREHOUSE_SCHEMA}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {BATCHES} ({cols})")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {QUARANTINE} (partition_date DATE, file VARCHAR, line_no BIGINT, "
        "raw VARCHAR, reason VARCHAR)"
    )
    conn.execute(f"CREATE TABLE IF NOT EXISTS {IDS} (day DATE, prediction_id VARCHAR)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {IDS_DAYS} (day DATE, indexed_at TIMESTAMP, ids BIGINT)")


@dataclass(frozen=True)
class IngestResult:
    """The figures of one ingested day, as the asset reports them."""

    rows: int
    labelled: int
    quarantined: int
    orphan_feedback: int
    duplicate_predictions: int
    feedback_lines: int
    prediction_lines: int


def _index_day(conn: Any, day: date, table: str) -> None:
    """Replace ``day``'s entry of the id index with the distinct ids staged in ``table``."""
    conn.execute(f"DELETE FROM {IDS} WHERE day = ?", [day])
    conn.execute(f"DELETE FROM {IDS_DAYS} WHERE day = ?", [day])
    conn.execute(f"INSERT INTO {IDS} SELECT DISTINCT ?::DATE, prediction_id FROM {table}", [day])
    conn.execute(
        f"INSERT INTO {IDS_DAYS} SELECT ?::DATE, ?, count(*) FROM {IDS} WHERE day = ?",
        [day, datetime.now(UTC).replace(tzinfo=None), day],
    )


def _index_window(ingestion: DayIngestion, day: date) -> None:
    """Index the window's earlier days that were never ingested, from their logs, once."""
    conn = ingestion.conn
    window = [day - timedelta(days=o) for o in range(1, predlog.FEEDBACK_WINDOW_DAYS + 1)]
    known = {d for (d,) in conn.execute(f"SELECT day FROM {IDS_DAYS} WHERE day >= ? AND day < ?",
                                        [window[-1], day]).fetchall()}
    for earlier in window:
        if earlier not in known and predlog.day_files(ingestion.logs_dir / predlog.PREDICTIONS, earlier):
            ingestion._stage_table("stage_old", predlog.PREDICTIONS)
            ingestion.stage("stage_old", predlog.PREDICTIONS, earlier, 0, keep_quarantine=False)
            _index_day(conn, earlier, "stage_old")
    conn.execute("DROP TABLE IF EXISTS stage_old")


_FINAL = """
WITH firsts AS (
    SELECT * FROM stage_pred QUALIFY row_number() OVER (PARTITION BY prediction_id ORDER BY file_idx, line_no) = 1
), fb AS (
    SELECT f.prediction_id, f.timestamp AS feedback_timestamp, f.client AS feedback_client, f.{math}
    FROM stage_fb f SEMI JOIN firsts USING (prediction_id)
    QUALIFY row_number() OVER (PARTITION BY f.prediction_id
                               ORDER BY f.timestamp DESC, f.day_offset DESC, f.file_idx DESC, f.line_no DESC) = 1
)
SELECT p.prediction_id, ?::DATE, p.timestamp, p.model_version, p.client, {features}, p.pass_probability,
       p.predicted_pass, fb.{math}, fb.{math} >= {mark}, fb.feedback_timestamp, fb.feedback_client
FROM firsts p LEFT JOIN fb USING (prediction_id)
ORDER BY p.file_idx, p.line_no
"""


def ingest_day(conn: Any, logs_dir: Path, day: date, *, block_bytes: int = BLOCK_BYTES) -> IngestResult:
    """Replace ``day``'s partition, quarantine and id index from the logs, in one transaction.

    Idempotent: the same logs give the same rows (and the same order) however often the day is ingested.
    """
    ensure_tables(conn)
    ingestion = DayIngestion(conn, logs_dir, block_bytes)
    conn.execute("BEGIN TRANSACTION")
    try:
        ingestion._stage_table("stage_pred", predlog.PREDICTIONS)
        ingestion._stage_table("stage_fb", predlog.FEEDBACK)
        preds = ingestion.stage("stage_pred", predlog.PREDICTIONS, day, 0, keep_quarantine=True)
        own = ingestion.stage("stage_fb", predlog.FEEDBACK, day, 0, keep_quarantine=True)
        for offset in range(1, predlog.FEEDBACK_WINDOW_DAYS + 1):
            ingestion.stage("stage_fb", predlog.FEEDBACK, day + timedelta(days=offset), offset, False)
        _index_day(conn, day, "stage_pred")
        _index_window(ingestion, day)
        result = _write_partition(conn, day, preds, own)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("DROP TABLE IF EXISTS stage_pred; DROP TABLE IF EXISTS stage_fb")
    return result


def _write_partition(conn: Any, day: date, preds: Staged, own: Staged) -> IngestResult:
    features = ", ".join(f'p."{n}"' for n in schema.FEATURES)
    final = _FINAL.format(math=schema.MATH_SCORE, features=features, mark=schema.PASS_MARK)
    conn.execute(f"DELETE FROM {BATCHES} WHERE partition_date = ?", [day])
    conn.execute(f"INSERT INTO {BATCHES} ({', '.join(predlog.BATCH_COLUMNS)}) {final}", [day])
    quarantined = preds.quarantined + own.quarantined
    conn.execute(f"DELETE FROM {QUARANTINE} WHERE partition_date = ?", [day])
    if quarantined:
        conn.executemany(
            f"INSERT INTO {QUARANTINE} VALUES (?, ?, ?, ?, ?)",
            [[day, q["file"], q["line_no"], q["raw"], q["reason"]] for q in quarantined],
        )
    window_start = day - timedelta(days=predlog.FEEDBACK_WINDOW_DAYS)
    figures = conn.execute(
        f"""SELECT
            (SELECT count(*) FROM {BATCHES} WHERE partition_date = $day),
            (SELECT count({schema.MATH_SCORE}) FROM {BATCHES} WHERE partition_date = $day),
            (SELECT count(*) - count(DISTINCT prediction_id) FROM stage_pred),
            (SELECT count(*) FROM stage_fb WHERE day_offset = 0),
            (SELECT count(*) FROM stage_fb f WHERE day_offset = 0 AND NOT EXISTS (
                SELECT 1 FROM {IDS} i WHERE i.prediction_id = f.prediction_id AND i.day BETWEEN $start AND $day))
        """,
        {"day": day, "start": window_start},
    ).fetchone()
    rows, labelled, duplicates, feedback_lines, orphans = figures
    return IngestResult(
        rows=int(rows),
        labelled=int(labelled),
        quarantined=len(quarantined),
        orphan_feedback=int(orphans),
        duplicate_predictions=int(duplicates),
        feedback_lines=int(feedback_lines),
        prediction_lines=preds.lines,
    )
