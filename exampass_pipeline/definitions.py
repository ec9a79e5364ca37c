"""The ExamPass code location: the ``defs/`` folder, loaded the way Dagster documents it, bound to resources.

``dg dev``, ``dg check defs``, ``dagster dev`` and the gRPC code server all load ``defs`` below. Tests, the
CLIs and benchmarks call ``build_defs(settings)`` for a home of their own: the same definitions, with the
resources built from those settings instead of the process environment.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import dagster as dg

from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.defs.resources import build_resources

PROJECT = Path(__file__).parent


@functools.cache
def folder() -> dg.Definitions:
    """What the ``defs/`` folder defines, loaded once per process; its resources are replaced below."""
    return dg.load_from_defs_folder(path_within_project=PROJECT)


def materializable() -> list[Any]:
    """Every asset and asset check, as ``dg.materialize`` takes them (the CLIs and tests)."""
    defs = folder()
    return [*(defs.assets or ()), *(defs.asset_checks or ())]


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of ``defs/``, with the resources of ``settings``.

    Runs execute in process: every asset writes the one DuckDB file, which admits a single writer process.
    """
    folder_defs = folder()
    return dg.Definitions(
        assets=folder_defs.assets,
        asset_checks=folder_defs.asset_checks,
        jobs=folder_defs.jobs,
        schedules=folder_defs.schedules,
        sensors=folder_defs.sensors,
        resources=build_resources(settings),
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
