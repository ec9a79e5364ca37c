"""Monitoring: per-day Evidently reports, their numbers as trend tables, and the drift and quality checks.

Each report asset's output *is* its trend table (one partition per day, keyed on a DATE column), so
re-running a day replaces that day's numbers instead of appending a second copy.
The checks are emitted by the report assets themselves: the decision needs exactly the data the report step
already loaded, and a partitioned check then always refers to the same day as its report.
"""

from datetime import UTC, date, datetime
from functools import lru_cache, partial
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.defs.partitions import daily_partitions
from exampass_pipeline.defs.resources import Alerter, ExamPassPaths, MlflowRegistry, Thresholds
from exampass_pipeline.io import ingest_sql
from exampass_pipeline.monitoring import day_sql, drift, drift_sql, quality, reports
from exampass_pipeline.monitoring.segments import SegmentDecision

NO_DATA_DRIFT = "no_data_drift"
PREDICTION_DRIFT = "prediction_drift"
MODEL_QUALITY = "model_quality"
SEGMENT_QUALITY = "segment_quality"


@lru_cache(maxsize=8)
def _load_version(tracking_uri: str, version: str) -> registry.LoadedModel:
    """Models are immutable per version, so one load per process and version is enough."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = registry.find_version(client, version)
    if found is None:
        raise LookupError(f"{schema.MODEL_NAME} has no version {version}")
    return registry.load_version(found, client)


def serving_model(
    version: str | None, store: MlflowRegistry, log: Any
) -> tuple[registry.LoadedModel | None, str]:
    """The version that answered most of the day's requests, and a sentence saying what the day is judged by.

    Prediction drift and quality must be judged against the model that actually made the predictions. Only
    when MLflow says that version does not exist (deleted, or logged by another registry) is the day judged
    against the current champion instead, and that is logged and said in the metadata; an unreachable
    registry fails the step (``registry.RegistryError``), it never changes the verdict silently.
    ``version`` is the day's most frequent one (``day_sql.served_version``), None on a day without predictions.
    """
    client = store.client()
    if version is not None:
        if registry.find_version(client, version) is not None:
            return _load_version(
                store.tracking_uri, version
            ), f"version {version}, which served most of the day"
        note = f"version {version} served most of the day but is not in the registry"
        log.warning(f"{note}: judging the day against the current champion instead")
    else:
        note = "no predictions"
    champion = registry.champion_version(client)
    if champion is None:
        return None, f"{note}; no champion either: prediction drift and quality are not judged"
    model = _load_version(store.tracking_uri, str(champion.version))
    return model, f"{note}; judged against the current champion, version {champion.version}"


def _long_table(day: date, numbers: dict[str, Any], kind: str) -> pd.DataFrame:
    rows = [{"metric": k, "value": float(v)} for k, v in numbers.items() if isinstance(v, int | float)]
    frame = pd.DataFrame(rows, columns=["metric", "value"]).astype({"metric": "string", "value": "float64"})
    frame.insert(0, "partition_date", pd.Series([day] * len(frame), dtype=pd.ArrowDtype(pa.date32())))
    frame["report"] = pd.Series([kind] * len(frame), dtype="string")
    frame["computed_at"] = pd.Series(
        [datetime.now(UTC).replace(tzinfo=None)] * len(frame), dtype="datetime64[us]"
    )
    return frame


def _report_link(html: Any) -> dict[str, dg.MetadataValue]:
    return {"report": dg.MetadataValue.path(str(html)), "report_url": dg.MetadataValue.url(html.as_uri())}


@dg.asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"evidently", "duckdb"},
    metadata={"partition_expr": "partition_date"},
    ins={"train_split": dg.AssetIn(), "validation_split": dg.AssetIn(), "test_split": dg.AssetIn()},
    deps=["prediction_batches"],
    check_specs=[
        dg.AssetCheckSpec(NO_DATA_DRIFT, asset="drift_report", description="The day's inputs did not drift."),
        dg.AssetCheckSpec(
            PREDICTION_DRIFT, asset="drift_report", description="Predicted probabilities did not drift."
        ),
    ],
)
def drift_report(
    context: dg.AssetExecutionContext,
    train_split: pd.DataFrame,
    validation_split: pd.DataFrame,
    test_split: pd.DataFrame,
    paths: ExamPassPaths,
    thresholds: Thresholds,
    alerter: Alerter,
    warehouse: DuckDBResource,
    mlflow_registry: MlflowRegistry,
) -> Any:
    """Evidently data drift of the day's inputs and predicted probabilities against the training split.

    The day stays in DuckDB: both verdicts come from aggregates of every row (``drift_sql``), and Evidently
    draws its page from a seeded sample of ``day_sql.SAMPLE_ROWS`` rows, which the page states.
    """
    day = date.fromisoformat(context.partition_key)
    check = partial(
        alerter.check_result, context, warehouse, asset="drift_report", partition_key=context.partition_key
    )
    reference = train_split[list(schema.FEATURES)].copy()
    held_out = pd.concat([validation_split, test_split], ignore_index=True)
    current = day_sql.day_relation(ingest_sql.BATCHES, day)
    with warehouse.get_connection() as conn:
        ingest_sql.configure(conn)
        n_day, version = day_sql.row_count(conn, current), day_sql.served_version(conn, current)
    # The model is loaded outside the connection: the warehouse file is not held while MLflow answers.
    model, judged_by = serving_model(version, mlflow_registry, context.log)
    # Held-out rows: the model's answers on students it never saw are what the day should look like.
    held_out_probs = None if model is None else model.pass_probability(held_out)
    with warehouse.get_connection() as conn:
        data, pred, drawn = _day_drift(conn, current, train_split, held_out_probs, thresholds)
    if model is not None:
        reference["pass_probability"] = model.pass_probability(reference)
    html = paths.reports / "drift" / f"{day.isoformat()}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, Any] = dict(
        reports.drift_report(
            reference,
            drawn,
            html,
            decisions=[d for d in (data, pred) if d is not None],
            day_rows=n_day,
        )
    )
    numbers.update({f"exampass_{k}": v for k, v in data.to_metadata().items()})
    table = _long_table(day, numbers, "drift")
    yield dg.Output(
        table,
        metadata={
            **_report_link(html),
            "rows": n_day,
            "report_sample_rows": len(drawn),
            "drift_status": data.status,
            "drifted_columns": ", ".join(data.drifted_columns) or "none",
            "model_version": model.version if model else "none",
            "judged_against": judged_by,
        },
    )
    yield check(
        check_name=NO_DATA_DRIFT,
        passed=data.passed,
        message=data.reason,
        metadata={**data.to_metadata(), **_report_link(html)},
    )
    if pred is None:
        yield dg.AssetCheckResult(
            asset_key="drift_report",
            check_name=PREDICTION_DRIFT,
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description="no champion model: prediction drift not judged",
        )
        return
    yield check(
        check_name=PREDICTION_DRIFT,
        passed=pred.passed,
        message=pred.reason,
        metadata={**pred.to_metadata(), **_report_link(html)},
    )


def _day_drift(
    conn: Any,
    current: str,
    train_split: pd.DataFrame,
    held_out_probs: Any,
    thresholds: Thresholds,
) -> tuple[drift.DriftDecision, drift.DriftDecision | None, pd.DataFrame]:
    """Both drift verdicts from full-day aggregates, and the seeded sample Evidently's page is drawn from.

    One connection for the three, so they all see the same partition even if a backfill rewrites it after.
    """
    ingest_sql.configure(conn)
    data = drift_sql.data_drift_sql(
        train_split, conn, current, alpha=thresholds.drift_alpha, min_rows=thresholds.drift_min_rows
    )
    pred = None
    if held_out_probs is not None:
        pred = drift_sql.prediction_drift_sql(
            held_out_probs, conn, current, alpha=thresholds.drift_alpha, min_rows=thresholds.drift_min_rows
        )
    return data, pred, day_sql.sample(conn, current, [*schema.FEATURES, "pass_probability"])


@dg.asset(
    group_name="monitoring",
    partitions_def=daily_partitions,
    kinds={"evidently", "duckdb"},
    metadata={"partition_expr": "partition_date"},
    ins={"test_split": dg.AssetIn()},
    deps=["prediction_batches"],
    check_specs=[
        dg.AssetCheckSpec(
            MODEL_QUALITY, asset="quality_report", description="Fail-class recall and ROC-AUC hold up."
        ),
        dg.AssetCheckSpec(
            SEGMENT_QUALITY,
            asset="quality_report",
            description="Fail-class recall does not differ too much between lunch and gender groups.",
        ),
    ],
)
def quality_report(
    context: dg.AssetExecutionContext,
    test_split: pd.DataFrame,
    paths: ExamPassPaths,
    thresholds: Thresholds,
    alerter: Alerter,
    warehouse: DuckDBResource,
    mlflow_registry: MlflowRegistry,
) -> Any:
    """Evidently classification quality on the day's labelled rows, overall and per segment.

    Only the labelled rows leave DuckDB (the checks need each one: DeLong's ROC-AUC, the per-group cut-offs);
    Evidently draws its page from a seeded sample of them, which the page states.
    """
    day = date.fromisoformat(context.partition_key)
    check = partial(
        alerter.check_result, context, warehouse, asset="quality_report", partition_key=context.partition_key
    )
    current = day_sql.day_relation(ingest_sql.BATCHES, day)
    with warehouse.get_connection() as conn:
        ingest_sql.configure(conn)
        version = day_sql.served_version(conn, current)
        labelled = day_sql.labelled_rows(conn, current)
    labelled[schema.LABEL] = labelled[schema.LABEL].astype(bool)
    labelled["predicted_pass"] = labelled["predicted_pass"].astype(bool)
    model, judged_by = serving_model(version, mlflow_registry, context.log)
    html = paths.reports / "quality" / f"{day.isoformat()}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    # The served decision: the model's rule (a cut-off per group of students), so the day is judged by what
    # the students were actually told.
    numbers: dict[str, Any] = dict(
        reports.quality_report(
            labelled, model.decision if model else 0.5, html, evidently_rows=day_sql.SAMPLE_ROWS
        )
    )

    decision, segments = _day_quality(labelled, model, test_split, thresholds)
    numbers.update({f"exampass_{k}": v for k, v in decision.to_metadata().items()})
    yield dg.Output(
        _long_table(day, numbers, "quality"),
        metadata={
            **_report_link(html),
            "labelled_rows": len(labelled),
            "quality_status": decision.status,
            "model_version": model.version if model else "none",
            "judged_against": judged_by,
        },
    )
    yield check(
        check_name=MODEL_QUALITY,
        passed=decision.passed,
        message=decision.reason,
        metadata={**decision.to_metadata(), **_report_link(html)},
    )
    yield check(
        check_name=SEGMENT_QUALITY,
        passed=segments.passed,
        message=segments.reason,
        metadata={**segments.to_metadata(), **_report_link(html)},
        severity=dg.AssetCheckSeverity.WARN,
    )


def _day_quality(
    labelled: pd.DataFrame,
    model: registry.LoadedModel | None,
    test_split: pd.DataFrame,
    thresholds: Thresholds,
) -> tuple[quality.QualityDecision, SegmentDecision]:
    """The model-quality and per-segment verdicts on the day's labelled rows, under the served rule."""
    # The champion's test figures came from a test split with only a few dozen fails; passing its class counts
    # lets the check allow for the luck of that split as well as of today's sample.
    champion_figures = {
        **(model.metrics if model else {}),
        "test_n_fail": float((~test_split[schema.LABEL].astype(bool)).sum()),
        "test_n_pass": float(test_split[schema.LABEL].astype(bool).sum()),
    }
    decision = quality.model_quality(
        labelled[schema.LABEL].to_numpy(),
        labelled["pass_probability"].to_numpy(),
        model.thresholds(labelled) if model else 0.5,
        champion_figures,
        alpha=thresholds.quality_alpha,
        min_labelled=thresholds.quality_min_labelled,
    )
    segments = quality.segment_quality(
        labelled,
        max_gap=thresholds.segment_max_gap,
        min_fail_per_group=thresholds.segment_min_fail,
        alpha=thresholds.segment_alpha,
    )
    return decision, segments
