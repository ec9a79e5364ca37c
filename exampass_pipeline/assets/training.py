"""Training: splits, candidate selection with MLflow tracking, and test-set evaluation with the champion gate.

The gate compares the new version and the current champion on the *same* test split, re-scoring the champion
there: the split moves as production rows join the student table, so yesterday's figures are not comparable.
"""

import base64
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
from mlflow import MlflowClient

from exampass_pipeline import modeling, registry, schema
from exampass_pipeline.resources import ExamPassPaths, MlflowRegistry, Thresholds

ROW_ID = "row_id"


class SplitConfig(dg.Config):
    """The seed makes the 70/10/20 split reproducible; change it to study variance, not to chase a score."""

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
    },
)
def splits(config: SplitConfig, students: pd.DataFrame):  # noqa: ANN201 - dagster reads the outs
    """70/10/20, stratified on the label and seeded: one step, so the three parts always come from one cut."""
    table = students.reset_index(drop=True)
    table.insert(0, ROW_ID, range(len(table)))
    parts = modeling.split_students(table, seed=config.seed)
    for name, frame in (
        ("train_split", parts.train),
        ("validation_split", parts.validation),
        ("test_split", parts.test),
    ):
        yield dg.Output(
            frame.reset_index(drop=True),
            output_name=name,
            metadata={"dagster/row_count": len(frame), "pass_rate": float(frame[schema.LABEL].mean())},
        )


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
    tracker = context.resources.mlflow
    paths: ExamPassPaths = context.resources.paths
    run = mlflow.active_run()
    assert run is not None, "dagster-mlflow did not start an MLflow run"
    try:
        context.log.info(f"training candidate set {config.candidate_set!r} on {len(train_split)} rows")
        selection = modeling.train_and_select(
            train_split, validation_split, candidate_set=config.candidate_set, seed=config.seed
        )
        train_hash = modeling.table_hash(train_split[list(schema.FEATURES) + [schema.MATH_SCORE]])
        tracker.log_params(
            {
                "candidate_set": config.candidate_set,
                "seed": config.seed,
                "chosen_candidate": selection.name,
                "threshold": round(selection.threshold, 6),
                "n_train": len(train_split),
                "n_validation": len(validation_split),
                "features": ",".join(schema.FEATURES),
                "train_table_sha256": train_hash,
            }
        )
        for name, scores in selection.candidate_scores.items():
            mlflow.log_metrics({f"val_{metric}__{name}": float(v) for metric, v in scores.items()})
        mlflow.log_metrics(
            {f"val_{k}": float(v) for k, v in selection.candidate_scores[selection.name].items()}
        )
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
        info = registry.log_model(
            selection.pipeline, selection.threshold, train_split, candidate=selection.name
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
                "train_table_sha256": train_hash,
                "trained_at": datetime.now(UTC).replace(tzinfo=None),
                **{f"val_{k}": float(v) for k, v in selection.candidate_scores[selection.name].items()},
            }
        ]
    )
    scores_md = pd.DataFrame(selection.candidate_scores).T.round(4).to_markdown()
    return dg.Output(
        card,
        metadata={
            "model_version": version,
            "candidate": selection.name,
            "threshold": float(selection.threshold),
            "validation_scores": dg.MetadataValue.md(scores_md),
            "mlflow_run": dg.MetadataValue.url(paths.mlflow_run_url(run.info.experiment_id, run.info.run_id)),
            "mlflow_model_version": dg.MetadataValue.url(
                paths.mlflow_version_url(schema.MODEL_NAME, version)
            ),
            "train_table_sha256": train_hash,
        },
    )


def _image_md(path: Path, title: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{encoded})"


def champion_gate(new_auc: float, champion_auc: float | None, margin: float) -> tuple[bool, str]:
    """A new version is served only if it is no worse than the champion, up to a small noise margin."""
    if champion_auc is None:
        return True, f"no champion yet; new test ROC-AUC {new_auc:.4f}"
    if new_auc >= champion_auc - margin:
        return True, (
            f"test ROC-AUC {new_auc:.4f} >= champion {champion_auc:.4f} - margin {margin} on the same test split"
        )
    return False, (
        f"test ROC-AUC {new_auc:.4f} < champion {champion_auc:.4f} - margin {margin} on the same test split; "
        "registered but not served"
    )


@dg.asset(group_name="training", kinds={"mlflow"})
def model_evaluation(
    context: dg.AssetExecutionContext,
    paths: ExamPassPaths,
    thresholds: Thresholds,
    mlflow_registry: MlflowRegistry,
    pass_classifier: pd.DataFrame,
    test_split: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Test metrics on the model's MLflow run, ROC and confusion plots, and the promotion decision."""
    client = mlflow_registry.client()
    card = pass_classifier.iloc[0]
    version = client.get_model_version(schema.MODEL_NAME, str(card["model_version"]))
    candidate = registry.load_version(version, client)
    metrics = modeling.evaluate(candidate.pipeline, candidate.threshold, test_split)
    run_id = str(card["mlflow_run_id"])
    for name, value in metrics.items():
        client.log_metric(run_id, name, float(value))

    y_pass = test_split[schema.LABEL].astype(bool).to_numpy()
    p_pass = candidate.pipeline.predict_proba(test_split[list(schema.FEATURES)])[:, 1]
    out_dir = paths.reports / "models" / f"v{candidate.version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_png = modeling.plot_roc(y_pass, p_pass, out_dir / "roc_curve.png")
    cm_png = modeling.plot_confusion(y_pass, p_pass, candidate.threshold, out_dir / "confusion_matrix.png")
    client.log_artifact(run_id, str(roc_png), "evaluation")
    client.log_artifact(run_id, str(cm_png), "evaluation")

    incumbent = registry.champion_version(client)
    champion_metrics: dict[str, float] | None = None
    if incumbent is None:
        promoted, reason = champion_gate(metrics["test_roc_auc"], None, thresholds.promotion_margin)
    elif str(incumbent.version) == candidate.version:
        promoted, reason = True, "this version is already the champion"
    else:
        champion = registry.load_version(incumbent, client)
        champion_metrics = modeling.evaluate(champion.pipeline, champion.threshold, test_split)
        promoted, reason = champion_gate(
            metrics["test_roc_auc"], champion_metrics["test_roc_auc"], thresholds.promotion_margin
        )
    registry.record_decision(client, candidate.version, promoted, reason)
    (context.log.info if promoted else context.log.warning)(f"version {candidate.version}: {reason}")

    rows = [{"model_version": candidate.version, "role": "candidate", **metrics}]
    if champion_metrics is not None and incumbent is not None:
        rows.append({"model_version": str(incumbent.version), "role": "champion", **champion_metrics})
    table = pd.DataFrame(rows)
    table["promoted"] = promoted
    table["reason"] = reason
    table["evaluated_at"] = datetime.now(UTC).replace(tzinfo=None)
    table["n_test"] = len(test_split)
    return dg.Output(
        table,
        metadata={
            **{name: float(value) for name, value in metrics.items()},
            "model_version": candidate.version,
            "decision": "promoted" if promoted else "rejected",
            "reason": reason,
            "roc_curve": dg.MetadataValue.path(str(roc_png)),
            "confusion_matrix": dg.MetadataValue.path(str(cm_png)),
            "plots": dg.MetadataValue.md(
                _image_md(roc_png, "ROC curve") + "\n\n" + _image_md(cm_png, "Confusion")
            ),
            "mlflow_run": dg.MetadataValue.url(paths.mlflow_run_url(str(card["experiment_id"]), run_id)),
            "mlflow_model_version": dg.MetadataValue.url(
                paths.mlflow_version_url(schema.MODEL_NAME, candidate.version)
            ),
        },
    )
