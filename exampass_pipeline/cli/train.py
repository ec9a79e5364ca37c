"""``exampass-train``: materialize the training assets and print the test metrics."""

from __future__ import annotations

import argparse
import sys

from mlflow.exceptions import MlflowException

from exampass_pipeline.cli.runs import instance_for, materialize_training, print_training, quiet_beta_warnings
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import Settings


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Materialize the ExamPass training assets and print test metrics."
    )
    parser.add_argument("--if-no-champion", action="store_true", help="do nothing when a champion exists")
    parser.add_argument("--candidate-set", default="default", help="modeling.CANDIDATE_SETS key")
    args = parser.parse_args(argv)
    quiet_beta_warnings()
    settings = Settings.for_command(parser)
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
    return print_training(result)
