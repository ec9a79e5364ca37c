"""The writer's segments: bounded size, bounded descriptors, never a torn or lost line, never a reused name."""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from exampass_pipeline.contract import predlog
from exampass_pipeline.io import log_segments

STUDENT = {
    "gender": "female",
    "race_ethnicity": "group C",
    "parental_level_of_education": "some college",
    "lunch": "standard",
    "test_preparation_course": "none",
    "reading_score": 71,
    "writing_score": 70,
}
DAY = date(2026, 11, 20)


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


SEGMENT = 4_000


def _write_segments(logs_dir: str, n: int) -> None:
    log = predlog.PredictionLog(Path(logs_dir), segment_bytes=SEGMENT)
    for _ in range(n):
        log.log_prediction(STUDENT, 0.7, True, "1", client="school-1", at=at(DAY))
    log.close()


def _open_segments(root: Path) -> int:
    """Descriptors of this process open on files under ``root``."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return sum(link.startswith(str(root)) for link in links)


def test_threads_and_processes_rotate_segments_without_losing_or_tearing_a_line(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path, segment_bytes=SEGMENT)
    threads = [
        threading.Thread(
            target=lambda: [
                log.log_prediction(STUDENT, 0.9, True, "1", client="school-1", at=at(DAY)) for _ in range(300)
            ]
        )
        for _ in range(4)
    ]
    procs = [
        multiprocessing.get_context("spawn").Process(target=_write_segments, args=(str(tmp_path), 300))
        for _ in range(2)
    ]
    for worker in [*threads, *procs]:
        worker.start()
    for worker in [*threads, *procs]:
        worker.join()
    # One current and at most one retired segment per kind, however many were written.
    assert 2 <= _open_segments(tmp_path) <= 2 * 2
    log.close()
    files = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    assert len(files) > 20
    assert all(
        re.fullmatch(r"\d\d-\d+-\d{4}\.jsonl", f.name) and f.parent.name == DAY.isoformat() for f in files
    )
    # A segment is cut once it holds SEGMENT bytes; under threads a few lines more may land before the cut.
    assert max(f.stat().st_size for f in files) < SEGMENT + 8 * 400
    result = predlog.read_day(tmp_path, predlog.PREDICTIONS, DAY)
    assert len(result.records) == 6 * 300 and result.quarantined == []
    assert len({r["prediction_id"] for r in result.records}) == 6 * 300


def test_a_restarted_writer_never_appends_to_a_compressed_segment(tmp_path: Path) -> None:
    first = predlog.PredictionLog(tmp_path, segment_bytes=SEGMENT)
    first.log_prediction(STUDENT, 0.6, True, "1", client="school-1", at=at(DAY))
    first.close()
    (plain,) = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    packed = log_segments.compress_segment(plain)
    content = packed.read_bytes()
    again = predlog.PredictionLog(tmp_path, segment_bytes=SEGMENT)  # same pid, numbering starts over
    again.log_prediction(STUDENT, 0.4, False, "1", client="school-1", at=at(DAY))
    again.close()
    assert packed.read_bytes() == content
    files = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    assert len(files) == 2 and packed in files
    assert [r["pass_probability"] for r in predlog.read_day(tmp_path, predlog.PREDICTIONS, DAY).records] == [
        0.6,
        0.4,
    ]


def test_segment_bytes_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        predlog.PredictionLog(tmp_path, segment_bytes=0)
