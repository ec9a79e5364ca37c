"""log_segments: closed segments compressed by the pipeline; the day reads the same, a killed writer's too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

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


def test_only_segments_left_alone_for_the_grace_are_compressed_and_the_day_reads_the_same(
    tmp_path: Path,
) -> None:
    log = predlog.PredictionLog(tmp_path, segment_bytes=3_000)
    for i in range(60):
        log.log_prediction(STUDENT, i / 100, i % 2 == 0, "1", client="school-1", at=at(DAY))
        log.log_feedback(f"00000000-0000-4000-8000-{i:012d}", 40 + i % 30, client="school-2", at=at(DAY))
    log.close()
    before = {kind: predlog.read_day(tmp_path, kind, DAY) for kind in (predlog.PREDICTIONS, predlog.FEEDBACK)}
    files = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    now = datetime.now(UTC)
    old = (now - log_segments.GRACE - timedelta(minutes=5)).timestamp()
    for path in files[:-1]:
        os.utime(path, (old, old))
    compressed = log_segments.compact(tmp_path, now)
    assert sorted(p.name for p in compressed) == sorted(p.name + ".gz" for p in files[:-1])
    after_files = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    assert after_files[-1] == files[-1] and all(p.name.endswith(".jsonl.gz") for p in after_files[:-1])
    assert not list(tmp_path.rglob("*.tmp"))
    for kind, result in before.items():
        again = predlog.read_day(tmp_path, kind, DAY)
        assert again.records == result.records and again.quarantined == []
    plain = sum(p.stat().st_size for p in files[:-1] if p.exists())
    assert plain == 0
    assert log_segments.compact(tmp_path, now) == [], "nothing left to compress"


WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from exampass_pipeline.contract import predlog
log = predlog.PredictionLog(Path(sys.argv[1]), segment_bytes=50_000)
student = {"gender": "male", "race_ethnicity": "group A", "parental_level_of_education": "high school",
           "lunch": "standard", "test_preparation_course": "none", "reading_score": 60, "writing_score": 58}
when = datetime(2026, 11, 20, 12, tzinfo=UTC)
while True:
    log.log_prediction(student, 0.5, True, "1", client="school-1", at=when)
"""


def test_a_killed_writers_segments_compress_and_lose_nothing_but_a_torn_last_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    folder = tmp_path / predlog.PREDICTIONS / DAY.isoformat()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob("*.jsonl"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = predlog.day_files(tmp_path / predlog.PREDICTIONS, DAY)
    assert len(files) >= 3, "the writer should have rotated"
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    compressed = log_segments.compact(tmp_path, datetime.now(UTC) + log_segments.GRACE + timedelta(minutes=1))
    assert len(compressed) == len(files)
    result = predlog.read_day(tmp_path, predlog.PREDICTIONS, DAY)
    assert len(result.records) == lines
    assert len(result.quarantined) <= 1  # SIGKILL between two writes tears nothing; at most the last line
