"""The DuckDB warehouse, Dagster-free: where its tables live, one writer at a time, columns that follow code.

``defs.resources.WarehouseIOManager`` stores every asset's DataFrame here through these pieces.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

# The DuckDB schema every ExamPass table lives in.
WAREHOUSE_SCHEMA = "exampass"


def follow_columns(connection: Any, table: str, obj: pd.DataFrame) -> None:
    """Rebuild ``table`` with exactly ``obj``'s columns (new ones NULL, dropped ones gone); a no-op when equal.

    Runs only on the first write after a release changed an asset's columns, inside the IO manager's
    transaction-less connection; the rebuilt table keeps every row that was there.
    """
    schema, name = table.split(".", 1)
    current = [
        column
        for (column,) in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position",
            [schema, name],
        ).fetchall()
    ]
    wanted = connection.execute("DESCRIBE SELECT * FROM obj").fetchall()
    if not current or current == [column for column, *_ in wanted]:
        return
    select = ", ".join(
        f'"{column}"' if column in current else f'CAST(NULL AS {kind}) AS "{column}"'
        for column, kind, *_ in wanted
    )
    connection.execute(f"CREATE OR REPLACE TABLE {table}__evolving AS SELECT {select} FROM {table}")
    connection.execute(f"DROP TABLE {table}")
    connection.execute(f"ALTER TABLE {table}__evolving RENAME TO {name}")


class WriterLock:
    """One writing process at a time for the DuckDB file, whoever started the run.

    DuckDB admits one writer process and refuses a second at once (dagster-duckdb retries for about 100 s,
    then the run fails). Runs from the daemon's queue are one at a time already, but a CLI run
    (``exampass-train``, ``exampass-backfill``) or a test materializes in its own process. So every run takes
    this exclusive ``flock`` for as long as it runs and a second one waits for it, saying who holds it. The
    kernel releases it when the holder dies, even by SIGKILL, so a crashed run never blocks the next.
    """

    POLL_S = 0.5
    REPORT_EVERY_S = 30.0

    def __init__(self, database: str) -> None:
        self.path = Path(f"{database}.writer-lock")
        self._fd: int | None = None

    def acquire(self, holder: str, timeout_s: float, say: Callable[[str], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        started = time.monotonic()
        reported: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - started >= timeout_s:
                    os.close(fd)
                    raise TimeoutError(
                        f"the warehouse {self.path.with_suffix('')} is still being written by "
                        f"{self._holder() or 'another process'} after {timeout_s:.0f} s; giving up"
                    ) from None
                if reported is None or now - reported >= self.REPORT_EVERY_S:
                    reported = now
                    say(f"waiting for the warehouse: {self._holder() or 'another process'} is writing it")
                time.sleep(self.POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def _holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
