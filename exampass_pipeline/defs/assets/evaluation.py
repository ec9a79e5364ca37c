"""Evaluation and the champion gate: test metrics, plots, and whether the new version is served.

The gate (``exampass_pipeline.ml.gate``) compares the new version and the current champion on the *same* current
test split, re-scoring the champion there (the split moves as production rows join the student table, so
yesterday's figures are not comparable), on the trusted set no production row enters, and segment by segment
for a change of behaviour. A held promotion is an alert that says how to approve it.
"""

import base64
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.defs.resources import Alerter, ExamPassPaths, MlflowRegistry, Thresholds
from exampass_pipeline.ml import dataset, fairness, gate, model_card, modeling, trust

GATE_CHECK = "champion_gate"


def _image_md(path: Path, title: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{encoded})"


def _plots(
    client: MlflowClient,
    paths: ExamPassPaths,
    candidate: registry.LoadedModel,
    run_id: str,
    test: pd.DataFrame,
) -> tuple[Path, Path]:
    """ROC and confusion matrix of the candidate on the test split, as files and as MLflow artifacts."""
    y_pass = test[schema.LABEL].astype(bool).to_numpy()
    p_pass = candidate.pass_probability(test)
    out_dir = paths.reports / "models" / f"v{candidate.version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    roc_png = modeling.plot_roc(y_pass, p_pass, out_dir / "roc_curve.png")
    cuts = candidate.thresholds(test)
    cm_png = modeling.plot_confusion(y_pass, p_pass, cuts, out_dir / "confusion_matrix.png")
    client.log_artifact(run_id, str(roc_png), "evaluation")
    client.log_artifact(run_id, str(cm_png), "evaluation")
    return roc_png, cm_png


def _fairness(
    client: MlflowClient,
    run_id: str,
    candidate: registry.LoadedModel,
    test: pd.DataFrame,
    metrics: dict[str, float],
    card: Any,
    data_source: str,
) -> fairness.Assessment:
    """Per-group figures (fairlearn MetricFrame) on the test split, logged as metrics and a table, and the
    model card, which every registered version carries."""
    assessment = fairness.assess(
        test[schema.LABEL].astype(bool).to_numpy(),
        candidate.pass_probability(test),
        candidate.predicted_pass(test),
        test,
    )
    for name, value in assessment.metrics(prefix="test_").items():
        if not math.isnan(value):  # a feature with fewer than two groups of enough fails has no gap
            client.log_metric(run_id, name, float(value))
    client.log_table(run_id, data=assessment.table(), artifact_file="evaluation/fairness.json")
    markdown = model_card.render(
        version=candidate.version,
        candidate=candidate.candidate,
        rule=candidate.decision,
        test_metrics=metrics,
        assessment=assessment,
        rule_comparison=candidate.rule_comparison,
        n_train=int(card["n_train"]),
        n_test=len(test),
        data_source=data_source,
        run_id=run_id,
        trained_at=str(card["trained_at"]),
    )
    registry.log_model_card(client, run_id, markdown)
    return assessment


def _data_source(students: pd.DataFrame) -> str:
    sources = set(students.loc[trust.is_curated(students), dataset.SOURCE_COLUMN].astype(str))
    curated = (
        "the Kaggle file (EXAMPASS_DATA)" if "kaggle" in sources else "a SYNTHETIC sample (no data file)"
    )
    production = int((~trust.is_curated(students)).sum())
    return curated + (
        f", plus {production} screened production rows with reported outcomes" if production else ""
    )


def _judge(
    client: MlflowClient,
    candidate: registry.LoadedModel,
    thresholds: Thresholds,
    splits: dict[str, pd.DataFrame],
    students: pd.DataFrame,
) -> tuple[gate.GateDecision, dict[str, float] | None, registry.LoadedModel | None]:
    """The gate's decision, and the champion's metrics on the same test split when there is a champion."""
    incumbent = registry.champion_version(client)
    champion = None if incumbent is None else registry.load_version(incumbent, client)
    curated = students[trust.is_curated(students)]
    decision = gate.decide(
        candidate,
        champion,
        splits["test"],
        splits["trusted"],
        students[~trust.is_curated(students)],
        trust.PlausibilityModel.fit(trust.plausibility_rows(curated)),
        gate.bounds_from(thresholds),
    )
    champion_metrics = None
    if champion is not None and champion.version != candidate.version:
        champion_metrics = modeling.evaluate(champion.pipeline, champion.decision, splits["test"])
    return decision, champion_metrics, champion


def _record(
    context: dg.AssetExecutionContext,
    client: MlflowClient,
    run_id: str,
    candidate: registry.LoadedModel,
    decision: gate.GateDecision,
    alert: tuple[Alerter, DuckDBResource],
) -> None:
    """The verdict on the version (and the alias), both comparisons on the run, and an alert when held."""
    registry.record_decision(
        client, candidate.version, decision.promoted, decision.reason, status=decision.status
    )
    for name, value in decision.metrics().items():
        client.log_metric(run_id, name, float(value))
    shifts = decision.shifts_frame()
    if not shifts.empty:
        client.log_table(run_id, data=shifts, artifact_file="evaluation/behaviour_shifts.json")
    log = context.log.info if decision.promoted else context.log.warning
    log(f"version {candidate.version}: {decision.status}: {decision.reason}")
    if decision.status == registry.PENDING:
        alerter, warehouse = alert
        alerter.raise_alert(
            warehouse,
            check_name=GATE_CHECK,
            asset="model_evaluation",
            partition_key=None,
            severity="WARN",
            message=f"version {candidate.version} held for approval, the champion keeps serving: {decision.reason}",
            figures={
                "version": candidate.version,
                **decision.metrics(),
                "moved": [s.sentence() for s in decision.moved],
                "corroborated_by": decision.corroborated_by,
                "approve_with": f"exampass-approve {candidate.version}",
            },
            context=context,
        )


@contextmanager
def _fail_closed(
    context: dg.AssetExecutionContext, alerter: Alerter, warehouse: DuckDBResource
) -> Iterator[None]:
    """An MLflow failure anywhere in evaluation fails the step, says so, and leaves the champion alone.

    The version just trained stays undecided (``registry.record_decision`` writes the verdict last), and an
    ERROR alert is recorded so that a person learns that the gate could not run, not only that a run failed.
    """
    try:
        yield
    except (registry.RegistryError, MlflowException, OSError) as exc:
        message = (
            f"the champion gate could not decide and the champion stays: MLflow failed: "
            f"{type(exc).__name__}: {str(exc)[:500]}"
        )
        alerter.raise_alert(
            warehouse,
            check_name=GATE_CHECK,
            asset="model_evaluation",
            partition_key=None,
            severity="ERROR",
            message=message,
            figures={"error": type(exc).__name__},
            context=context,
        )
        raise dg.Failure(description=message) from exc


@dg.asset(
    group_name="training",
    kinds={"mlflow"},
    ins={"students": dg.AssetIn(), "trusted_set": dg.AssetIn()},
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    paths: ExamPassPaths,
    thresholds: Thresholds,
    mlflow_registry: MlflowRegistry,
    alerter: Alerter,
    warehouse: DuckDBResource,
    pass_classifier: pd.DataFrame,
    test_split: pd.DataFrame,
    trusted_set: pd.DataFrame,
    students: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Test metrics on the model's MLflow run, ROC and confusion plots, and the gate's decision."""
    card = pass_classifier.iloc[0]
    run_id = str(card["mlflow_run_id"])
    with _fail_closed(context, alerter, warehouse):
        client = mlflow_registry.client()
        version = client.get_model_version(schema.MODEL_NAME, str(card["model_version"]))
        candidate = registry.load_version(version, client)
        metrics = modeling.evaluate(candidate.pipeline, candidate.decision, test_split)
        for name, value in metrics.items():
            client.log_metric(run_id, name, float(value))
        roc_png, cm_png = _plots(client, paths, candidate, run_id, test_split)
        assessment = _fairness(client, run_id, candidate, test_split, metrics, card, _data_source(students))
        splits = {"test": test_split, "trusted": trusted_set}
        decision, champion_metrics, champion = _judge(client, candidate, thresholds, splits, students)
        _record(context, client, run_id, candidate, decision, (alerter, warehouse))

    rows = [{"model_version": candidate.version, "role": "candidate", **metrics}]
    if champion_metrics is not None and champion is not None:
        rows.append({"model_version": champion.version, "role": "champion", **champion_metrics})
    table = pd.DataFrame(rows)
    table["promoted"] = decision.promoted
    table["decision"] = decision.status
    table["reason"] = decision.reason
    table["evaluated_at"] = datetime.now(UTC).replace(tzinfo=None)
    table["n_test"] = len(test_split)
    table["n_trusted"] = len(trusted_set)
    metadata = _evaluation_metadata(paths, card, candidate, metrics, decision, (roc_png, cm_png))
    metadata["fairness"] = dg.MetadataValue.md(assessment.markdown())
    metadata.update({k: float(v) for k, v in assessment.metrics(prefix="test_").items() if not math.isnan(v)})
    return dg.Output(table, metadata=metadata)


def _evaluation_metadata(
    paths: ExamPassPaths,
    card: Any,
    candidate: registry.LoadedModel,
    metrics: dict[str, float],
    decision: gate.GateDecision,
    plots: tuple[Path, Path],
) -> dict[str, Any]:
    roc_png, cm_png = plots
    comparisons = "\n".join(
        f"- {c.sentence()}: {'pass' if c.passed else 'FAIL'}" for c in decision.comparisons
    )
    shifts = decision.shifts_frame()
    return {
        **{name: float(value) for name, value in metrics.items()},
        **decision.metrics(),
        "model_version": candidate.version,
        "decision": decision.status,
        "reason": decision.reason,
        "gate_comparisons": dg.MetadataValue.md(comparisons or "no champion to compare with"),
        "behaviour_shifts": dg.MetadataValue.md(
            shifts.round(4).to_markdown(index=False) if not shifts.empty else "no champion to compare with"
        ),
        "roc_curve": dg.MetadataValue.path(str(roc_png)),
        "confusion_matrix": dg.MetadataValue.path(str(cm_png)),
        "plots": dg.MetadataValue.md(
            _image_md(roc_png, "ROC curve") + "\n\n" + _image_md(cm_png, "Confusion")
        ),
        "mlflow_run": dg.MetadataValue.url(
            paths.mlflow_run_url(str(card["experiment_id"]), str(card["mlflow_run_id"]))
        ),
        "mlflow_model_version": dg.MetadataValue.url(
            paths.mlflow_version_url(schema.MODEL_NAME, candidate.version)
        ),
    }
