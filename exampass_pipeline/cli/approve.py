"""``exampass-approve VERSION``: serve a version the champion gate held for approval."""

from __future__ import annotations

import argparse
import getpass

from mlflow import MlflowClient

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings


def approve_main(argv: list[str] | None = None) -> int:
    """``exampass-approve VERSION``: serve a version the champion gate held for approval.

    Run it with the pipeline's MLflow rights (only that user may move the alias). The approval is recorded on
    the version: who (MLFLOW_TRACKING_USERNAME, else the login name), when, and the note.
    """
    parser = argparse.ArgumentParser(description="Approve a model version the champion gate held back.")
    parser.add_argument("version", help="the held version, as the alert names it")
    parser.add_argument("--note", default="", help="why it is approved (recorded on the version)")
    args = parser.parse_args(argv)
    settings = Settings.for_command(parser)
    registry.configure(settings)
    approver = settings.mlflow_tracking_username or getpass.getuser()
    try:
        registry.approve(MlflowClient(), args.version, approver, args.note)
    except registry.ApprovalError as exc:
        parser.error(str(exc))
    print(f"version {args.version} approved by {approver}: it is now @{schema.CHAMPION_ALIAS}")
    return 0
