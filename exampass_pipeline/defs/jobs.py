"""Jobs: what a person (or the sensor, or the schedule) can launch as one run."""

from __future__ import annotations

import dagster as dg

from exampass_pipeline.defs.partitions import daily_partitions

# Training also (re)creates the view of labelled production rows: on a fresh install that is its first
# materialization, so the training group's only upstream outside itself is never missing in the UI.
TRAINING = dg.AssetSelection.groups("training") | dg.AssetSelection.assets("labelled_production")
MONITORING = dg.AssetSelection.groups("monitoring")
# The student table and what it is built from, with its screening tables (one step makes all three).
STUDENTS = dg.AssetSelection.assets(
    "raw_students", "labelled_production", "students"
).required_multi_asset_neighbors()
# Retraining re-reads the stored raw file but rebuilds everything after it, so production rows ingested since
# the last training join the table (students' screening tables are produced with it).
RETRAIN = dg.AssetSelection.assets(
    "labelled_production",
    "students",
    "train_split",
    "validation_split",
    "test_split",
    "trusted_set",
    "pass_classifier",
    "model_evaluation",
).required_multi_asset_neighbors()

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
