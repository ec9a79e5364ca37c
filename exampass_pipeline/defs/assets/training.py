"""Training: the splits (and the trusted set), candidate selection with MLflow tracking, and registration.

Evaluation and the champion gate are in ``evaluation``.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import mlflow
import pandas as pd
from mlflow import MlflowClient

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.defs.resources import ExamPassPaths
from exampass_pipeline.ml import dataset, modeling, trust


class SplitConfig(dg.Config):
    """The seed of the production rows' 70/10/20 cut (the curated rows are always cut the same way, so the
    trusted set stays one exam); change it to study variance, not to chase a score."""

    seed: int = 42


class TrainingConfig(dg.Config):
    """Which candidate set to train (see modeling.CANDIDATE_SETS) and the seed for the estimators."""

    candidate_set: str = "default"
    seed: int = 42


@dg.multi_asset(
    group_name="training",
    outs={
        "train_split": dg.AssetOut(kinds={"duckdb", "pandas"}),
        "validation_split": dg.AssetOut(kinds={"duckdb", "pandas"}),
        "test_split": dg.AssetOut(kinds={"duckdb", "pandas"}),
        "trusted_set": dg.AssetOut(
            kinds={"duckdb", "pandas"},
            description="The curated test rows: the exam production feedback never writes (trust.py).",
        ),
    },
)
def splits(config: SplitConfig, students: pd.DataFrame) -> Iterator[dg.Output[pd.DataFrame]]:
    """70/10/20, stratified and seeded, curated and production rows each cut on their own (one step, so the
    parts always come from one cut); the curated test part is the trusted set the gate also judges on."""
    table = students.reset_index(drop=True)
    table.insert(0, dataset.ROW_ID, range(len(table)))
    cut = trust.split_by_source(table, seed=config.seed)
    parts = {
        "train_split": cut.splits.train,
        "validation_split": cut.splits.validation,
        "test_split": cut.splits.test,
        "trusted_set": cut.trusted,
    }
    for name, frame in parts.items():
        sources = frame[dataset.SOURCE_COLUMN].value_counts().to_dict()
        metadata: dict[str, Any] = {
            "dagster/row_count": len(frame),
            "pass_rate": float(frame[schema.LABEL].mean()),
            "rows_by_source": dg.MetadataValue.json({str(k): int(v) for k, v in sources.items()}),
        }
        if name == "trusted_set":
            metadata["trusted_set_sha256"] = modeling.table_hash(frame[[*schema.FEATURES, schema.MATH_SCORE]])
        yield dg.Output(frame.reset_index(drop=True), output_name=name, metadata=metadata)


def _dagster_run_url(paths: ExamPassPaths, run_id: str) -> str:
    return f"{paths.dagster_ui_url.rstrip('/')}/runs/{run_id}"


@dg.asset(group_name="training", kinds={"mlflow", "scikitlearn"}, required_resource_keys={"mlflow", "paths"})
def pass_classifier(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    train_split: pd.DataFrame,
    validation_split: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Train every candidate, keep the best on validation, tune its threshold, and register it in MLflow.

    The output is the model's card (version, run, threshold); the model itself lives only in the registry,
    which is where the API and the gate read it from.
    """
    paths: ExamPassPaths = context.resources.paths
    run = mlflow.active_run()
    assert run is not None, "dagster-mlflow did not start an MLflow run"
    try:
        context.log.info(f"training candidate set {config.candidate_set!r} on {len(train_split)} rows")
        selection = modeling.train_and_select(
            train_split, validation_split, candidate_set=config.candidate_set, seed=config.seed
        )
        train_hash = modeling.table_hash(train_split[list(schema.FEATURES) + [schema.MATH_SCORE]])
        _track(context, config, selection, train_split, validation_split, train_hash)
        info = registry.log_model(
            selection.pipeline,
            selection.threshold,
            train_split,
            candidate=selection.name,
            rule=selection.rule,
            rule_comparison=selection.rule_comparison,
        )
        version = str(info.registered_model_version)
        client = MlflowClient()
        client.set_model_version_tag(
            schema.MODEL_NAME, version, registry.TAG_THRESHOLD, str(selection.threshold)
        )
        client.set_model_version_tag(schema.MODEL_NAME, version, "dagster_run_id", context.run_id)
        mlflow.end_run()
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    card = pd.DataFrame(
        [
            {
                "model_name": schema.MODEL_NAME,
                "model_version": version,
                "mlflow_run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "candidate": selection.name,
                "candidate_set": config.candidate_set,
                "threshold": float(selection.threshold),
                "n_train": len(train_split) + len(validation_split),
                "train_table_sha256": train_hash,
                "trained_at": datetime.now(UTC).replace(tzinfo=None),
                **{f"val_{k}": float(v) for k, v in selection.candidate_scores[selection.name].items()},
            }
        ]
    )
    return dg.Output(card, metadata=_classifier_metadata(paths, run, version, selection, train_hash))


def _track(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    selection: modeling.Selection,
    train_split: pd.DataFrame,
    validation_split: pd.DataFrame,
    train_hash: str,
) -> None:
    """Parameters, every candidate's validation metrics and the lineage tags, on the active MLflow run."""
    paths: ExamPassPaths = context.resources.paths
    by_client = train_split[dataset.CLIENT_COLUMN].value_counts().to_dict()
    context.resources.mlflow.log_params(
        {
            "candidate_set": config.candidate_set,
            "seed": config.seed,
            "chosen_candidate": selection.name,
            "threshold": round(selection.threshold, 6),
            "n_train": len(train_split),
            "n_validation": len(validation_split),
            "features": ",".join(schema.FEATURES),
            "train_table_sha256": train_hash,
            "train_rows_by_client": ",".join(f"{k}={v}" for k, v in sorted(by_client.items()))[:500],
        }
    )
    for name, scores in selection.candidate_scores.items():
        mlflow.log_metrics({f"val_{metric}__{name}": float(v) for metric, v in scores.items()})
    mlflow.log_metrics({f"val_{k}": float(v) for k, v in selection.candidate_scores[selection.name].items()})
    mlflow.log_metric("threshold", selection.threshold)
    mlflow.set_tags(
        {
            "dagster_run_id": context.run_id,
            "dagster_run_url": _dagster_run_url(paths, context.run_id),
            "dagster_asset": "pass_classifier",
            "train_table_sha256": train_hash,
            "candidate": selection.name,
        }
    )


def _classifier_metadata(
    paths: ExamPassPaths, run: Any, version: str, selection: modeling.Selection, train_hash: str
) -> dict[str, Any]:
    scores_md = pd.DataFrame(selection.candidate_scores).T.round(4).to_markdown()
    return {
        "model_version": version,
        "candidate": selection.name,
        "threshold": float(selection.threshold),
        "validation_scores": dg.MetadataValue.md(scores_md),
        "mlflow_run": dg.MetadataValue.url(paths.mlflow_run_url(run.info.experiment_id, run.info.run_id)),
        "mlflow_model_version": dg.MetadataValue.url(paths.mlflow_version_url(schema.MODEL_NAME, version)),
        "train_table_sha256": train_hash,
    }
