"""Jobs: what a person (or the sensor, or the schedule) can launch as one run."""

from __future__ import annotations

import dagster as dg

from exampass_pipeline.defs.partitions import daily_partitions

TRAINING = dg.AssetSelection.groups("training")
MONITORING = dg.AssetSelection.groups("monitoring")
# Retraining re-reads the stored raw file but rebuilds everything after it, so production rows ingested since
# the last training join the table.
RETRAIN = dg.AssetSelection.assets(
    "students",
    "train_split",
    "validation_split",
    "test_split",
    "trusted_set",
    "pass_classifier",
    "model_evaluation",
)

training_job = dg.define_asset_job(
    "training_job", selection=TRAINING, description="Ingest the data file, train, evaluate and gate."
)
retrain_job = dg.define_asset_job(
    "retrain_job", selection=RETRAIN, description="Retrain on the grown student table; the gate decides."
)
monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=MONITORING,
    partitions_def=daily_partitions,
    description="Ingest one day of predictions and feedback, report drift and quality, run the checks.",
)
