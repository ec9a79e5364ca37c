"""The JSON-lines prediction and feedback log: the only channel from the API to the pipeline.

Why files and not the warehouse: DuckDB allows one writer process, and the API must never block on (or corrupt)
the pipeline's database. Each record is one ``os.write`` on an ``O_APPEND`` descriptor, so concurrent writers in
one or several processes never interleave, and a process killed mid-way leaves either a whole line or nothing.
The reader still treats every line as untrusted: anything malformed is quarantined with its reason.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from exampass_pipeline.contract import logrecords, schema
from exampass_pipeline.contract.logfile import write_line

_CLIENT = logrecords.CLIENT  # the one client-name rule, which io.ingest_sql's SQL repeats
UNATTRIBUTED = logrecords.UNATTRIBUTED  # lines written before clients were recorded

PREDICTIONS = "predictions"
FEEDBACK = "feedback"


def utc_now() -> datetime:
    return datetime.now(UTC)


def day_file(directory: Path, day: date) -> Path:
    """Logs are cut by UTC day so that a daily partition maps to exactly one file."""
    return directory / f"{day.isoformat()}.jsonl"


def day_files(directory: Path, day: date) -> list[Path]:
    """Every file holding ``day``'s lines of one kind, in reading order.

    The day file of old (``<day>.jsonl``) first, then the day's segments (``<day>/<name>.jsonl`` or, once
    closed and compressed, ``.jsonl.gz``) sorted by name; a segment and its compressed copy never both count.
    """
    found = [day_file(directory, day)] if day_file(directory, day).exists() else []
    folder = Path(directory) / day.isoformat()
    if folder.is_dir():
        names = {p.name: p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))}
        for name in sorted({n.removesuffix(".gz") for n in names}):
            # While compressing, both exist: the plain one is complete, the .gz may not be yet.
            found.append(names.get(name) or names[name + ".gz"])
    return found


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One JSON line, byte-identical to ``json.dumps(record, separators=(",", ":"))`` plus a newline.

    orjson is ~15x faster, which matters on the API's hot path where the standard encoder cost more than
    scoring. It writes every float in [1e-4, 1] (and 0.0) exactly as Python's ``repr``; any other probability
    (orjson writes 1e-5 as 0.00001) or a non-finite one goes through ``json.dumps``, which refuses NaN.
    """
    p = record.get("pass_probability", 0.0)
    if p == 0.0 or 1e-4 <= p <= 1.0:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


class JsonlAppender:
    """Appends whole records to per-UTC-day files, one ``write`` per record.

    Descriptors are cached per day so the hot path costs one syscall; the lock guards only the cache, not the
    write, because ``O_APPEND`` writes of a regular file are atomic with respect to each other.

    With ``segment_bytes``, the day is written as segments ``<day>/<HH>-<pid>-<n>.jsonl`` (HH: the UTC hour it
    was opened), a new one once it holds ``segment_bytes`` or the wall-clock hour changes, so the pipeline can
    compress closed ones during the day (``io.log_segments``): none is written after its hour. Names are made
    with ``O_EXCL``, skipping any whose ``.gz`` exists: a restarted writer with the same pid (pid 1 in a
    container) never appends to a segment the pipeline compressed.
    """

    def __init__(self, directory: Path, segment_bytes: int | None = None) -> None:
        if segment_bytes is not None and segment_bytes < 1:
            raise ValueError(f"segment_bytes: {segment_bytes!r} must be positive (or None for day files)")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._fds: dict[date, int] = {}
        self._opened: dict[
            int, tuple[int, int]
        ] = {}  # segment descriptor -> (wall hour opened, bytes written)
        self._retired: list[int] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def _full(self, fd: int) -> bool:
        if self.segment_bytes is None:
            return False
        hour, size = self._opened.get(fd, (-1, 0))
        return size >= self.segment_bytes or hour != int(time.time() // 3600)

    def _open(self, day: date) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        if self.segment_bytes is None:
            return os.open(day_file(self.directory, day), flags, 0o600)
        folder = self.directory / day.isoformat()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        hour = int(time.time() // 3600)
        while True:
            self._seq += 1
            path = folder / f"{hour % 24:02d}-{os.getpid()}-{self._seq:04d}.jsonl"
            if path.with_name(path.name + ".gz").exists():
                continue
            try:
                fd = os.open(path, flags | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            self._opened[fd] = (hour, 0)
            return fd

    def _fd(self, day: date) -> int:
        fd = self._fds.get(day)
        if fd is not None and not self._full(fd):
            return fd
        with self._lock:
            fd = self._fds.get(day)
            if fd is None or self._full(fd):
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                new = self._open(day)
                # At most two days open; a replaced descriptor is closed at the next rotation.
                retiring = [] if fd is None else [fd]
                retiring += [self._fds.pop(old) for old in sorted(d for d in self._fds if d != day)[:-1]]
                for stale in self._retired:
                    os.close(stale)
                    self._opened.pop(stale, None)
                self._retired = retiring
                self._fds[day] = fd = new
            return fd

    def append(self, record: Mapping[str, Any], at: datetime) -> None:
        self._append_day(at.astimezone(UTC).date(), record)

    def _append_day(self, day: date, record: Mapping[str, Any]) -> None:
        if self.segment_bytes is None:
            self._write(self._fd(day), record)
            return
        # Segments rotate often; the lock makes "look up the descriptor, write" one step, so a rotation can
        # never close a descriptor (whose number the kernel may hand out again) under a write. O_APPEND writes
        # of one file are serialized by the kernel anyway, so threads lose next to nothing.
        with self._write_lock:
            fd = self._fd(day)
            written = self._write(fd, record)
            hour, size = self._opened[fd]
            self._opened[fd] = (hour, size + written)

    def appender(self, at: datetime) -> Callable[[Mapping[str, Any]], object]:
        """A function appending records to ``at``'s day file: for many records stamped at one instant.

        The day and its descriptor are resolved once (with segments, the day only: a batch may span a
        rotation); each record is still its own single ``write``.
        """
        day = at.astimezone(UTC).date()
        if self.segment_bytes is not None:
            return partial(self._append_day, day)
        return partial(self._write, self._fd(day))

    def _write(self, fd: int, record: Mapping[str, Any]) -> int:
        line = encode_record(record)
        write_line(fd, line, self.directory)  # whole line or nothing, else LogUnavailable
        return len(line)

    def close(self) -> None:
        with self._lock:
            for fd in [*self._fds.values(), *self._retired]:
                os.close(fd)
            self._fds.clear()
            self._retired.clear()
            self._opened.clear()


def _prediction_record(
    prediction_id: str,
    timestamp: str,
    model_version: str,
    client: str,
    inputs: Mapping[str, Any],
    pass_probability: float,
    predicted_pass: bool,
) -> dict[str, Any]:
    """The one layout of a prediction line; monitoring's reader and the API's tests rely on it."""
    return {
        "prediction_id": prediction_id,
        "timestamp": timestamp,
        "model_version": model_version,
        "client": client,
        "inputs": {name: inputs[name] for name in schema.FEATURES},
        "pass_probability": float(pass_probability),
        "predicted_pass": bool(predicted_pass),
    }


class PredictionLog:
    """Writer for the API and the simulator: both must produce byte-identical records."""

    def __init__(self, logs_dir: Path, segment_bytes: int | None = None) -> None:
        """``segment_bytes``: write hourly segments of at most about that size instead of one file per day."""
        self.predictions = JsonlAppender(Path(logs_dir) / PREDICTIONS, segment_bytes)
        self.feedback = JsonlAppender(Path(logs_dir) / FEEDBACK, segment_bytes)

    def log_prediction(
        self,
        inputs: Mapping[str, Any],
        pass_probability: float,
        predicted_pass: bool,
        model_version: str,
        *,
        client: str,
        prediction_id: str | None = None,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        at = at or utc_now()
        record = _prediction_record(
            prediction_id or str(uuid.uuid4()),
            at.astimezone(UTC).isoformat(),
            str(model_version),
            client,
            inputs,
            pass_probability,
            predicted_pass,
        )
        self.predictions.append(record, at)
        return record

    def log_predictions(
        self,
        inputs: Iterable[Mapping[str, Any]],
        pass_probabilities: Iterable[float],
        predicted_passes: Iterable[bool],
        model_version: str,
        prediction_ids: Iterable[str],
        at: datetime,
        *,
        client: str,
    ) -> None:
        """Many predictions made at one instant (a batch request): log_prediction's records, one write each.

        The timestamp text and the day file are worked out once instead of once per row, which was a third
        of the cost of a 1,000-student batch.
        """
        stamp = at.astimezone(UTC).isoformat()
        version = str(model_version)
        append = self.predictions.appender(at)
        for row, p, decision, prediction_id in zip(
            inputs, pass_probabilities, predicted_passes, prediction_ids, strict=True
        ):
            append(_prediction_record(prediction_id, stamp, version, client, row, p, decision))

    def log_feedback(
        self, prediction_id: str, math_score: int, *, client: str, at: datetime | None = None
    ) -> dict[str, Any]:
        at = at or utc_now()
        record = {
            "prediction_id": str(prediction_id),
            "timestamp": at.astimezone(UTC).isoformat(),
            "client": client,
            "math_score": int(math_score),
        }
        self.feedback.append(record, at)
        return record

    def close(self) -> None:
        self.predictions.close()
        self.feedback.close()


@dataclass
class ReadResult:
    """Parsed records plus everything that could not be trusted, kept with its reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)


_CHECKERS = {PREDICTIONS: logrecords.check_prediction, FEEDBACK: logrecords.check_feedback}


def open_segment(path: Path) -> Any:
    """A log file for reading as bytes: closed segments are gzip-compressed (``*.jsonl.gz``), others plain."""
    return gzip.open(path, "rb") if Path(path).name.endswith(".gz") else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open_segment(path) as fh:
        yield from enumerate(fh, start=1)


def parse_line(text: str, kind: str, *, terminated: bool) -> tuple[dict[str, Any] | None, str | None]:
    """One decoded log line (with its newline, if it had one): the record, or None and why not.

    The single definition of what a line means and of every quarantine reason; ``read_log`` is built on it, and
    the pipeline's SQL ingestion (``monitoring.ingest_sql``) hands it every line its fast path did not accept,
    so both readers give the same records and the same reasons.
    """
    if not terminated:
        return None, "truncated line (no newline)"
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return _CHECKERS[kind](obj), None
    except KeyError as exc:
        return None, f"missing field {exc.args[0]!r}"
    except (ValueError, TypeError) as exc:
        return None, str(exc) or type(exc).__name__


def quarantine_row(path: Path | str, line_no: int, text: str, reason: str) -> dict[str, Any]:
    """A quarantined line as stored: the file, the 1-based line number, the line (cut short) and the reason."""
    return {"file": str(path), "line_no": line_no, "raw": text.rstrip("\n")[:2000], "reason": reason}


def read_log(path: Path, kind: str) -> ReadResult:
    """Parse one day file; a missing file is an empty day, not an error."""
    result = ReadResult()
    if not Path(path).exists():
        return result
    for line_no, raw in _lines(Path(path)):
        text = raw.decode("utf-8", errors="replace")
        record, reason = parse_line(text, kind, terminated=raw.endswith(b"\n"))
        if record is not None:
            result.records.append(record)
        else:
            result.quarantined.append(quarantine_row(path, line_no, text, reason or "unreadable"))
    return result


def read_day(logs_dir: Path, kind: str, day: date) -> ReadResult:
    """The reference reader of one day: every file of the day, in ``day_files`` order."""
    result = ReadResult()
    for path in day_files(Path(logs_dir) / kind, day):
        part = read_log(path, kind)
        result.records.extend(part.records)
        result.quarantined.extend(part.quarantined)
    return result


FEEDBACK_WINDOW_DAYS = 7


def readers_of(kind: str, day: date) -> list[date]:
    """The daily partitions whose ingestion reads one day file (see ``day_batch``).

    A prediction file is read by its own day and, to tell orphan feedback from late feedback, by the
    FEEDBACK_WINDOW_DAYS after it; a feedback file by its own day and the window before it.
    """
    sign = 1 if kind == PREDICTIONS else -1
    return [date.fromordinal(day.toordinal() + sign * offset) for offset in range(FEEDBACK_WINDOW_DAYS + 1)]


def expired_day_files(logs_dir: Path, keep_days: int, today: date) -> list[tuple[str, date, Path]]:
    """Day files and segments (kind, day, path) whose day is more than ``keep_days`` before ``today``, oldest
    first; a segment is judged and deleted like a day file, on its own modification time."""
    cutoff = today.toordinal() - keep_days
    found: list[tuple[str, date, Path]] = []
    for kind in (PREDICTIONS, FEEDBACK):
        folder = Path(logs_dir) / kind
        candidates = [(p.stem, p) for p in folder.glob("????-??-??.jsonl")]
        candidates += [(p.parent.name, p) for p in folder.glob("????-??-??/*.jsonl*")]  # segments
        for stem, path in sorted(candidates):
            try:
                day = date.fromisoformat(stem)
            except ValueError:
                continue  # not one of ours
            if day.toordinal() < cutoff:
                found.append((kind, day, path))
    return sorted(found, key=lambda item: (item[1], item[0]))


BATCH_COLUMNS: tuple[str, ...] = (
    "prediction_id",
    "partition_date",
    "timestamp",
    "model_version",
    "client",
    *schema.FEATURES,
    "pass_probability",
    "predicted_pass",
    schema.MATH_SCORE,
    schema.LABEL,
    "feedback_timestamp",
    "feedback_client",
)


@dataclass
class DayBatch:
    """One UTC day of predictions joined with the feedback that arrived for them so far."""

    day: date
    frame: Any  # pandas.DataFrame with BATCH_COLUMNS
    quarantined: list[dict[str, Any]]
    orphan_feedback: int
    duplicate_predictions: int
    feedback_lines: int


def day_batch(logs_dir: Path, day: date) -> DayBatch:
    """Join a day's predictions with feedback from that day and the following FEEDBACK_WINDOW_DAYS.

    Feedback is counted as an orphan in the partition of the file it was written to, when no prediction of
    that day or the window before it has its id; so every feedback line is judged exactly once.
    """
    preds = read_day(logs_dir, PREDICTIONS, day)
    quarantined = list(preds.quarantined)
    by_id: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for rec in preds.records:
        if rec["prediction_id"] in by_id:
            duplicates += 1
            continue
        by_id[rec["prediction_id"]] = rec

    feedback: dict[str, dict[str, Any]] = {}
    own_feedback: list[dict[str, Any]] = []
    for offset in range(FEEDBACK_WINDOW_DAYS + 1):
        fb_day = date.fromordinal(day.toordinal() + offset)
        result = read_day(logs_dir, FEEDBACK, fb_day)
        if offset == 0:
            quarantined.extend(result.quarantined)
            own_feedback = result.records
        for rec in result.records:
            if rec["prediction_id"] in by_id:
                previous = feedback.get(rec["prediction_id"])
                if previous is None or rec["timestamp"] >= previous["timestamp"]:
                    feedback[rec["prediction_id"]] = rec

    known_ids = set(by_id)
    for offset in range(1, FEEDBACK_WINDOW_DAYS + 1):
        earlier = date.fromordinal(day.toordinal() - offset)
        known_ids.update(r["prediction_id"] for r in read_day(logs_dir, PREDICTIONS, earlier).records)
    orphans = sum(1 for rec in own_feedback if rec["prediction_id"] not in known_ids)

    rows = []
    for pid, rec in by_id.items():
        fb = feedback.get(pid)
        rows.append(
            {
                **rec,
                "partition_date": day,
                "timestamp": rec["timestamp"].replace(tzinfo=None),
                schema.MATH_SCORE: fb[schema.MATH_SCORE] if fb else None,
                schema.LABEL: schema.pass_math(fb[schema.MATH_SCORE]) if fb else None,
                "feedback_timestamp": fb["timestamp"].replace(tzinfo=None) if fb else None,
                "feedback_client": fb["client"] if fb else None,
            }
        )
    frame = _batch_frame(rows)
    return DayBatch(
        day=day,
        frame=frame,
        quarantined=quarantined,
        orphan_feedback=orphans,
        duplicate_predictions=duplicates,
        feedback_lines=len(own_feedback),
    )


def _batch_frame(rows: list[dict[str, Any]]) -> Any:
    """The day's rows with explicit dtypes, so that even an empty day creates the warehouse table with the
    right column types; the partition column must be a DATE, or re-materializing a day would duplicate rows."""
    import pandas as pd
    import pyarrow as pa

    frame = pd.DataFrame(rows, columns=list(BATCH_COLUMNS))
    frame = frame.astype(
        {
            "prediction_id": "string",
            "model_version": "string",
            "client": "string",
            "feedback_client": "string",
            **{name: "string" for name in schema.CATEGORICAL_FEATURES},
            **{name: "int64" for name in schema.NUMERIC_FEATURES},
            "pass_probability": "float64",
            "predicted_pass": "bool",
            schema.MATH_SCORE: "Int64",
            schema.LABEL: "boolean",
        }
    )
    frame["partition_date"] = pd.Series(frame["partition_date"], dtype=pd.ArrowDtype(pa.date32()))
    # Straight to microseconds: through pandas' default nanoseconds a valid year past 2262 would overflow.
    for column in ("timestamp", "feedback_timestamp"):
        frame[column] = pd.Series(frame[column].tolist(), dtype="datetime64[us]", index=frame.index)
    return frame
