"""Headless entry points: `exampass-train` and `exampass-backfill`.

They materialize into the real Dagster instance (DAGSTER_HOME), so their runs, checks and metadata show up in
the UI exactly as if they had been launched there.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
import warnings
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from exampass_pipeline import registry, schema
from exampass_pipeline.settings import Settings, SettingsError
from exampass_pipeline.simulate import day_arg

REPO_ROOT = Path(__file__).resolve().parents[1]
# Headless runs print what happened at the end; the step-by-step DEBUG stream stays in the Dagster UI.
CONSOLE_WARNINGS_ONLY = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def quiet_beta_warnings() -> None:
    # dagster-mlflow is "beta" and says so on every import and run; on a terminal that drowns the metrics.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The project-local instance; seeded with the repo's dagster.yaml the first time."""
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))  # what DagsterInstance.get() reads
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", config)
    return dg.DagsterInstance.get()


def materialize_training(
    instance: dg.DagsterInstance,
    settings: Settings,
    *,
    selection: dg.AssetSelection | None = None,
    candidate_set: str = "default",
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    from exampass_pipeline.definitions import ASSET_CHECKS, ASSETS
    from exampass_pipeline.jobs import TRAINING
    from exampass_pipeline.resources import build_resources

    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=selection or TRAINING,
        instance=instance,
        resources=build_resources(settings),
        run_config={
            "ops": {"pass_classifier": {"config": {"candidate_set": candidate_set}}},
            **CONSOLE_WARNINGS_ONLY,
        },
        tags=tags,
        raise_on_error=False,
    )


def materialize_monitoring(
    instance: dg.DagsterInstance, settings: Settings, partition_key: str
) -> dg.ExecuteInProcessResult:
    from exampass_pipeline.definitions import ASSET_CHECKS, ASSETS
    from exampass_pipeline.jobs import MONITORING
    from exampass_pipeline.resources import build_resources

    return dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=MONITORING,
        partition_key=partition_key,
        instance=instance,
        resources=build_resources(settings),
        run_config=CONSOLE_WARNINGS_ONLY,
        raise_on_error=False,
    )


def _print_training(result: dg.ExecuteInProcessResult) -> int:
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
                print(
                    f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}",
                    file=sys.stderr,
                )
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                print(f"CHECK FAILED {evaluation.check_name}: {evaluation.description}", file=sys.stderr)
        return 1
    for mat in result.get_asset_materialization_events():
        if mat.asset_key == dg.AssetKey("model_evaluation"):
            meta = mat.materialization.metadata
            print(
                f"model version {meta['model_version'].value}: {meta['decision'].value} ({meta['reason'].value})"
            )
            for name in schema.TEST_METRICS:
                print(f"  {name:24s} {meta[name].value:.4f}")
    return 0


def settings_from_env(parser: argparse.ArgumentParser) -> Settings:
    """Settings from the environment, a bad value being a usage error that names its variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        parser.error(str(exc))


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Materialize the ExamPass training assets and print test metrics."
    )
    parser.add_argument("--if-no-champion", action="store_true", help="do nothing when a champion exists")
    parser.add_argument("--candidate-set", default="default", help="modeling.CANDIDATE_SETS key")
    args = parser.parse_args(argv)
    quiet_beta_warnings()
    settings = settings_from_env(parser)
    try:
        registry.configure(settings)
        champion = registry.champion_version() if args.if_no_champion else None
    except (registry.RegistryError, MlflowException, OSError) as exc:
        print(
            f"error: cannot reach the MLflow registry: {exc}",
            file=sys.stderr,
        )
        return 2
    if champion is not None:
        print(f"champion exists: {champion.version}; skipping training")
        return 0
    if not settings.data_path.exists():
        print(
            f"warning: no data file at {settings.data_path}; training on a synthetic sample", file=sys.stderr
        )
    result = materialize_training(instance_for(settings), settings, candidate_set=args.candidate_set)
    return _print_training(result)


def _backfill_days(parser: argparse.ArgumentParser, first: date, last: date) -> list[date]:
    """Every day of the range, refused up front unless all are partitions Dagster knows.

    Checking before the first run means a range that runs past the last complete day (or starts before the
    partitions do) fails with one clear message, instead of re-monitoring half the range and then crashing.
    """
    from exampass_pipeline.assets.ingest import daily_partitions

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
    settings = settings_from_env(parser)
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
    from exampass_pipeline.jobs import RETRAIN

    print(f"retraining on the grown student table ({len(failed_checks)} failed checks in the range)")
    return _print_training(materialize_training(instance, settings, selection=RETRAIN)) or status


def approve_main(argv: list[str] | None = None) -> int:
    """``exampass-approve VERSION``: serve a version the champion gate held for approval.

    Run it with the pipeline's MLflow rights (only that user may move the alias). The approval is recorded on
    the version: who (MLFLOW_TRACKING_USERNAME, else the login name), when, and the note.
    """
    parser = argparse.ArgumentParser(description="Approve a model version the champion gate held back.")
    parser.add_argument("version", help="the held version, as the alert names it")
    parser.add_argument("--note", default="", help="why it is approved (recorded on the version)")
    args = parser.parse_args(argv)
    settings = settings_from_env(parser)
    registry.configure(settings)
    approver = settings.mlflow_tracking_username or getpass.getuser()
    try:
        registry.approve(MlflowClient(), args.version, approver, args.note)
    except registry.ApprovalError as exc:
        parser.error(str(exc))
    print(f"version {args.version} approved by {approver}: it is now @{schema.CHAMPION_ALIAS}")
    return 0
