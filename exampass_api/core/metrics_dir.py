"""The metrics directory several workers share, set up before ``prometheus_client`` creates a metric.

Apart from ``core.metrics`` on purpose: with ``PROMETHEUS_MULTIPROC_DIR`` set, the library opens a file in that
directory the moment a metric is created, and ``core.metrics`` creates its metrics at import. So
``exampass-api`` must make (and empty) the directory before anything imports ``core.metrics``; importing it
from the entry point's top crashed every container at start (the directory Compose names did not exist yet).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_OWN_DIR_PREFIX: Final = "exampass-metrics-"


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Give several workers one metrics directory, emptied, before they start; None for a single worker.

    Called by ``exampass-api`` in the parent process: the workers inherit the variable and import the library
    after it is set, which is what switches the library to files. A directory left by an earlier run would add
    its counts to this one's, so it is emptied; one the operator set is used (Docker gives each container
    its own), else a private temporary one is made.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not configured:
        return None
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix=_OWN_DIR_PREFIX))
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.glob("*.db"):
        entry.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path | None) -> None:
    """Remove a directory ``prepare_multiprocess_dir`` made for this run (never one the operator set)."""
    if path is not None and path.name.startswith(_OWN_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
