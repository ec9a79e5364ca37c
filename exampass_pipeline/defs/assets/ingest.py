"""Ingest: the Kaggle file (or its synthetic stand-in), the cleaned student table, and daily prediction batches.

The student table grows with production: labelled prediction rows (inputs plus the real maths score from
feedback) join the original file, so a retrain learns from what the service actually saw.
"""

import time
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from exampass_pipeline.contract import predlog, schema
from exampass_pipeline.defs.partitions import daily_partitions
from exampass_pipeline.defs.resources import ExamPassPaths
from exampass_pipeline.io import ingest_sql, log_segments
from exampass_pipeline.io.warehouse import WAREHOUSE_SCHEMA
from exampass_pipeline.ml import dataset

QUARANTINE_TABLE = ingest_sql.QUARANTINE
RETENTION_TABLE = f"{WAREHOUSE_SCHEMA}.log_retention"
_RETENTION_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {WAREHOUSE_SCHEMA}; CREATE TABLE IF NOT EXISTS {RETENTION_TABLE} "
    "(deleted_at TIMESTAMP, kind VARCHAR, day DATE, file VARCHAR, bytes BIGINT)"
)
SYNTHETIC_ROWS = 1000


def _markdown_preview(frame: pd.DataFrame, rows: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(rows).to_markdown(index=False))


@dg.asset(group_name="training", kinds={"duckdb", "pandas"})
def raw_students(context: dg.AssetExecutionContext, paths: ExamPassPaths) -> dg.Output[pd.DataFrame]:
    """The student records as published, validated cell by cell.

    With no file at EXAMPASS_DATA the pipeline still runs end to end on a synthetic sample, and says so in the
    log and in metadata, so a newcomer never mistakes demo numbers for real ones.
    """
    path = Path(paths.data_path)
    if path.exists():
        try:
            frame = dataset.read_students_csv(path)
        except dataset.DataError as exc:
            raise dg.Failure(description=str(exc)) from exc
        source = "kaggle"
    else:
        from exampass_pipeline.ml import synthetic

        context.log.warning(
            f"NO DATA FILE at {path}: training on a SYNTHETIC sample of {SYNTHETIC_ROWS} students. "
            "Set EXAMPASS_DATA to the Kaggle StudentsPerformance.csv for real results."
        )
        frame = synthetic.sample(SYNTHETIC_ROWS, seed=0)[list(schema.COLUMNS)]
        source = "synthetic"
    frame[dataset.SOURCE_COLUMN] = source
    return dg.Output(
        frame,
        metadata={
            "source": source,
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": len(frame),
            "preview": _markdown_preview(frame),
        },
    )


@dg.asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"duckdb", "pandas"},
    metadata={"partition_expr": "partition_date"},
)
def prediction_batches(
    context: dg.AssetExecutionContext, paths: ExamPassPaths, warehouse: DuckDBResource
) -> dg.MaterializeResult:
    """One UTC day of the API's prediction log joined with the feedback received for it so far.

    Re-materializing a day picks up feedback that arrived late (up to a week); malformed lines are kept in the
    quarantine table with their reason instead of failing the whole day. DuckDB reads the log and writes the
    partition itself (``io.ingest_sql``), so the day never passes through pandas; downstream assets still load
    the partition through the IO manager, which reads the same table.
    """
    day = date.fromisoformat(context.partition_key)
    deleted = _deleted_by_retention(warehouse, day)
    if deleted:
        # Re-ingesting would replace the stored rows with an empty day: refuse, and keep what is stored.
        raise dg.Failure(
            description=f"the log files of {day} were deleted by log retention on {deleted}; the rows ingested "
            "before are kept as they are (EXAMPASS_LOG_RETENTION_DAYS)"
        )
    # Segments no writer uses any more are compressed here, off the API's request path (io.log_segments).
    compressed = log_segments.compact(paths.logs, datetime.now(UTC))
    with warehouse.get_connection() as conn:
        ingest_sql.configure(conn)
        counts = ingest_sql.ingest_day(conn, paths.logs, day)
    if counts.quarantined:
        context.log.warning(f"{counts.quarantined} malformed log line(s) quarantined for {day}")
    if counts.orphan_feedback:
        context.log.warning(f"{counts.orphan_feedback} feedback line(s) on {day} match no prediction")
    removed = _apply_retention(context, paths, warehouse) if paths.log_retention_days else []
    files = predlog.day_files(paths.logs / predlog.PREDICTIONS, day)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": counts.rows,
            "segments_compressed": len(compressed),
            "labelled_rows": counts.labelled,
            "quarantined_lines": counts.quarantined,
            "orphan_feedback": counts.orphan_feedback,
            "duplicate_predictions": counts.duplicate_predictions,
            "feedback_lines": counts.feedback_lines,
            "log_file": dg.MetadataValue.path(
                str(files[0] if files else predlog.day_file(paths.logs / predlog.PREDICTIONS, day))
            ),
            "log_files": len(files),
            "log_files_deleted_by_retention": dg.MetadataValue.json([str(p) for p in removed]),
        },
    )


def _deleted_by_retention(warehouse: DuckDBResource, day: date) -> str | None:
    with warehouse.get_connection() as conn:
        conn.execute(_RETENTION_DDL)
        row = conn.execute(
            f"SELECT max(deleted_at) FROM {RETENTION_TABLE} WHERE kind = ? AND day = ?",
            [predlog.PREDICTIONS, day],
        ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _apply_retention(
    context: dg.AssetExecutionContext, paths: ExamPassPaths, warehouse: DuckDBResource
) -> list[Path]:
    """Delete log day files older than the retention, but only those every reader has already ingested.

    A file counts as ingested when each partition that reads it (``predlog.readers_of``) has a materialization
    newer than the file's last change, so nothing written after an ingestion is ever lost. Deletions are
    recorded in the warehouse (``log_retention``) and in the run's metadata.
    """
    today = datetime.now(UTC).date()
    expired = predlog.expired_day_files(paths.logs, paths.log_retention_days, today)
    if not expired:
        return []
    valid = set(daily_partitions.get_partition_keys())
    wanted = sorted(
        {d.isoformat() for kind, day, _ in expired for d in predlog.readers_of(kind, day)} & valid
    )
    latest: dict[str, float] = {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=wanted),
        limit=10 * len(wanted) + 10,
    ).records
    for record in records:
        if record.partition_key is not None:
            latest[record.partition_key] = max(latest.get(record.partition_key, 0.0), record.timestamp)
    latest[context.partition_key] = time.time()  # this step has just read its files
    removed: list[tuple[str, date, Path, int]] = []
    for kind, day, path in expired:
        readers = [d.isoformat() for d in predlog.readers_of(kind, day) if d.isoformat() in valid]
        changed = path.stat().st_mtime
        if readers and all(latest.get(key, 0.0) > changed for key in readers):
            size = path.stat().st_size
            path.unlink()
            removed.append((kind, day, path, size))
    if removed:
        with warehouse.get_connection() as conn:
            conn.execute(_RETENTION_DDL)
            now = datetime.now(UTC).replace(tzinfo=None)
            conn.executemany(
                f"INSERT INTO {RETENTION_TABLE} VALUES (?, ?, ?, ?, ?)",
                [[now, kind, day, str(path), size] for kind, day, path, size in removed],
            )
        context.log.info(
            f"log retention ({paths.log_retention_days} days) deleted {len(removed)} day file(s)"
        )
    return [path for _, _, path, _ in removed]
