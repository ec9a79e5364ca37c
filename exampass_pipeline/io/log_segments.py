"""Closed log segments compressed by the pipeline, never in the API's request path.

Why: a day of predictions is about 434 bytes each as plain JSON lines and about 58 gzip-compressed, and DuckDB
and ``predlog.open_segment`` read ``.jsonl.gz`` directly. A segment is closed when nothing has written to it
for ``GRACE``: the writer (``predlog.JsonlAppender`` with ``segment_bytes``) never writes to a segment after
the wall-clock hour it was opened in, so two hours of silence leave a margin for clock steps. A killed
writer's segment is compressed as it is; its torn last line stays torn and is quarantined when read.

The steps keep every reader safe: the compressed copy is written to ``<name>.jsonl.gz.tmp`` (no reader lists
it), flushed to disk, renamed to ``<name>.jsonl.gz``, and only then is the plain segment removed. While both
exist, ``predlog.day_files`` reads the plain one, which is complete.
"""

from __future__ import annotations

import gzip
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from exampass_pipeline.contract import predlog

GRACE = timedelta(hours=2)


def closed_segments(logs_dir: Path, now: datetime, grace: timedelta = GRACE) -> list[Path]:
    """Plain segments of both kinds untouched for longer than ``grace`` before ``now``, in name order."""
    cutoff = now.timestamp() - grace.total_seconds()
    found = []
    for kind in (predlog.PREDICTIONS, predlog.FEEDBACK):
        for path in sorted((Path(logs_dir) / kind).glob("????-??-??/*.jsonl")):
            if path.stat().st_mtime < cutoff:
                found.append(path)
    return found


def compress_segment(path: Path) -> Path:
    """``path`` gzip-compressed next to it, the plain file removed once the copy is durable."""
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.tmp")
    with open(path, "rb") as src, open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, target)
    path.unlink()
    return target


def compact(logs_dir: Path, now: datetime, grace: timedelta = GRACE) -> list[Path]:
    """Compress every closed segment; the compressed paths."""
    return [compress_segment(path) for path in closed_segments(logs_dir, now, grace)]
