"""``exampass-backfill``: re-ingest and re-monitor a range of days, then retrain once."""

from __future__ import annotations

import argparse
from datetime import date, timedelta

from tqdm import tqdm

from exampass_pipeline.cli.runs import (
    instance_for,
    materialize_monitoring,
    materialize_training,
    print_training,
    quiet_beta_warnings,
)
from exampass_pipeline.cli.simulate import day_arg
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import Settings


def _backfill_days(parser: argparse.ArgumentParser, first: date, last: date) -> list[date]:
    """Every day of the range, refused up front unless all are partitions Dagster knows.

    Checking before the first run means a range that runs past the last complete day (or starts before the
    partitions do) fails with one clear message, instead of re-monitoring half the range and then crashing.
    """
    from exampass_pipeline.defs.partitions import daily_partitions

    if last < first:
        parser.error(f"end: {last} is before start {first}")
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    known = daily_partitions.get_partition_keys()
    known_set = set(known)
    outside = [d for d in days if d.isoformat() not in known_set]
    if outside:
        span = f"{known[0]} .. {known[-1]}" if known else "none yet"
        parser.error(
            f"start/end: {outside[0]} is not a daily partition. Partitions run from the first day "
            f"(EXAMPASS_PARTITIONS_START) to the last complete day: {span}"
        )
    return days


def backfill_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Re-ingest and re-monitor every day in a range, then retrain once on the grown table."
    )
    parser.add_argument("start", type=day_arg, help="first day, YYYY-MM-DD")
    parser.add_argument("end", type=day_arg, help="last day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--no-retrain", action="store_true", help="only re-ingest and re-monitor")
    args = parser.parse_args(argv)
    days = _backfill_days(parser, args.start, args.end)
    quiet_beta_warnings()
    settings = Settings.for_command(parser)
    registry.configure(settings)
    instance = instance_for(settings)
    failed_checks: list[str] = []
    status = 0
    for day in tqdm(days, desc="monitoring", unit="day"):
        result = materialize_monitoring(instance, settings, day.isoformat())
        if not result.success:
            status = 1
            tqdm.write(f"{day}: monitoring run failed, see the Dagster UI run {result.run_id}")
            continue
        verdicts = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        failed = sorted(name for name, ok in verdicts.items() if not ok)
        failed_checks += [f"{day}:{name}" for name in failed]
        tqdm.write(f"{day}: " + ("all checks passed" if not failed else "FAILED " + ", ".join(failed)))
    if args.no_retrain:
        return status
    from exampass_pipeline.defs.jobs import RETRAIN

    print(f"retraining on the grown student table ({len(failed_checks)} failed checks in the range)")
    return print_training(materialize_training(instance, settings, selection=RETRAIN)) or status
