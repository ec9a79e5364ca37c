"""The modelling table: the curated file plus the labelled production rows that survive screening.

Production rows teach a retrain how the population changes, but every one was sent by a client, and a client
can lie (a compromised key, a buggy grade export). So before they join (``exampass_pipeline.ml.trust``):

1. a reported maths score far outside what the student's other fields make likely is quarantined;
2. a client whose reports for some group disagree with every other client's is quarantined for that group;
3. no client supplies more than ``client_max_share`` of the table; beyond it its rows are down-sampled.

Everything quarantined is kept in the warehouse with its reason (``feedback_quarantine``), the counts per
client and day too (``feedback_screening``), and the WARN check ``feedback_plausibility`` names any client
whose implausible share is high.
"""

from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from exampass_pipeline.contract import predlog, schema
from exampass_pipeline.defs.resources import Alerter, Thresholds
from exampass_pipeline.io.warehouse import WAREHOUSE_SCHEMA
from exampass_pipeline.ml import dataset, trust

PRODUCTION_SOURCE = "production"
PLAUSIBILITY_CHECK = "feedback_plausibility"
QUARANTINE = f"{WAREHOUSE_SCHEMA}.feedback_quarantine"
SCREENING = f"{WAREHOUSE_SCHEMA}.feedback_screening"


LABELLED = f"{WAREHOUSE_SCHEMA}.labelled_production"
# The columns of a labelled production row, as students reads them: the record, who reported the outcome, and
# when and under which id it was predicted.
_LABELLED_COLUMNS = [*schema.COLUMNS, dataset.CLIENT_COLUMN, "partition_date", "prediction_id", "timestamp"]


def _labelled_select(conn: Any) -> str:
    """The view's query: every ingested prediction whose outcome was reported, from every partition.

    The client of a training row is whoever reported its outcome: the label is what they supplied. Rows
    ingested before clients were recorded count as "unattributed". Before the first partition there is no
    batch table yet, and the view is an empty one of the same columns.
    """
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "AND column_name = 'feedback_client'",
        [WAREHOUSE_SCHEMA, "prediction_batches"],
    ).fetchone()
    if exists and exists[0]:
        return (
            f"SELECT {', '.join(schema.COLUMNS)}, coalesce(feedback_client, '{predlog.UNATTRIBUTED}') AS client, "
            f"CAST(partition_date AS DATE) AS partition_date, prediction_id, timestamp "
            f"FROM {WAREHOUSE_SCHEMA}.prediction_batches WHERE {schema.MATH_SCORE} IS NOT NULL"
        )
    typed = [f"CAST(NULL AS VARCHAR) AS {name}" for name in schema.CATEGORICAL_FEATURES]
    typed += [f"CAST(NULL AS BIGINT) AS {name}" for name in schema.SCORES]
    typed += [
        "CAST(NULL AS VARCHAR) AS client",
        "CAST(NULL AS DATE) AS partition_date",
        "CAST(NULL AS VARCHAR) AS prediction_id",
        "CAST(NULL AS TIMESTAMP) AS timestamp",
    ]
    return f"SELECT {', '.join(typed)} WHERE false"


@dg.asset(
    group_name="monitoring",
    kinds={"duckdb"},
    deps=[dg.AssetDep("prediction_batches", partition_mapping=dg.AllPartitionMapping())],
)
def labelled_production(warehouse: DuckDBResource) -> dg.MaterializeResult:
    """Every prediction the service made whose real outcome a client has reported since: a view over all
    partitions of ``prediction_batches``, which ``students`` screens before any of it can train.

    A view, so keeping it current costs nothing however long the history grows: each monitoring run refreshes
    it, and so does the first training, so that the training group never waits on an upstream that was never
    materialized.
    """
    with warehouse.get_connection() as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {WAREHOUSE_SCHEMA}")
        conn.execute(f"CREATE OR REPLACE VIEW {LABELLED} AS {_labelled_select(conn)}")
        rows, clients = conn.execute(
            f"SELECT count(*), count(DISTINCT client) FROM {LABELLED}"
        ).fetchone() or (0, 0)
    return dg.MaterializeResult(metadata={"dagster/row_count": int(rows), "clients": int(clients)})


def _production_rows(warehouse: DuckDBResource) -> pd.DataFrame:
    """The labelled production rows, oldest first; none before labelled_production was first materialized."""
    with warehouse.get_connection() as conn:
        exists = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [WAREHOUSE_SCHEMA, "labelled_production"],
        ).fetchone()
        if not exists or not exists[0]:
            return pd.DataFrame(columns=_LABELLED_COLUMNS[:-1])
        rows: pd.DataFrame = conn.execute(
            f"SELECT {', '.join(_LABELLED_COLUMNS[:-1])} FROM {LABELLED} ORDER BY timestamp, prediction_id"
        ).df()
    return rows


def _store(warehouse: DuckDBResource, quarantined: pd.DataFrame, counts: pd.DataFrame) -> None:
    """Replace both screening tables: they describe the production rows of this materialization."""
    quarantined = quarantined.astype({"prediction_id": "string", "client": "string", "reason": "string"})
    counts = counts.astype({dataset.CLIENT_COLUMN: "string"})
    with warehouse.get_connection() as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {WAREHOUSE_SCHEMA}")
        for table, frame in ((QUARANTINE, quarantined), (SCREENING, counts)):
            conn.register("screening_rows", frame)
            conn.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM screening_rows")
            conn.unregister("screening_rows")


def screen_production(
    base: pd.DataFrame, production: pd.DataFrame, thresholds: Thresholds
) -> tuple[trust.Screened, list[trust.Bias], pd.DataFrame]:
    """Production rows that may train, everything quarantined (with reasons), the client biases found, and
    the per-client-per-day counts."""
    model = trust.PlausibilityModel.fit(trust.plausibility_rows(base))
    implausible = trust.screen(production, model, thresholds.plausibility_width)
    biases = trust.biased_clients(
        implausible.kept,
        model,
        alpha=thresholds.client_bias_alpha,
        min_rows=thresholds.client_bias_min_rows,
        min_gap=thresholds.client_bias_min_gap,
    )
    biased = trust.screen_clients(implausible.kept, model, biases)
    quarantined = pd.concat([implausible.quarantined, biased.quarantined], ignore_index=True)
    counts = trust.quarantine_counts(production, quarantined)
    return trust.Screened(biased.kept, quarantined), biases, counts


def _plausibility_result(
    counts: pd.DataFrame, biases: list[trust.Bias], thresholds: Thresholds
) -> tuple[bool, str, dict[str, Any]]:
    judged = counts[counts["reported"] >= thresholds.implausible_min_rows]
    high = judged[judged["implausible_share"] > thresholds.implausible_share_max]
    problems = [
        f"{row.client} on {row.partition_date}: {row.quarantined} of {row.reported} reports implausible "
        f"({row.implausible_share:.0%})"
        for row in high.itertuples()
    ] + [bias.reason() for bias in biases]
    if problems:
        named = sorted({*high[dataset.CLIENT_COLUMN].astype(str), *(b.client for b in biases)})
        message = (
            f"feedback from {', '.join(named)} looks wrong, quarantined and not trained on: "
            f"{'; '.join(problems[:10])}"
        )
    else:
        message = (
            f"no client above {thresholds.implausible_share_max:.0%} implausible reports on any day (of "
            f"{len(judged)} client-days with at least {thresholds.implausible_min_rows} reports), and no client "
            "disagrees with the others"
        )
    figures = {
        "client_days_judged": len(judged),
        "client_days_high": len(high),
        "biased_client_groups": len(biases),
        "quarantined_rows": int(counts["quarantined"].sum()) if len(counts) else 0,
    }
    return not problems, message, figures


@dg.multi_asset(
    group_name="training",
    outs={
        "students": dg.AssetOut(
            kinds={"duckdb", "pandas"},
            description="The curated file plus the labelled production rows that survive screening.",
        ),
        "feedback_quarantine": dg.AssetOut(
            dagster_type=dg.Nothing,
            kinds={"duckdb"},
            description="Production rows kept out of training, each with its reason (trust screening).",
        ),
        "feedback_screening": dg.AssetOut(
            dagster_type=dg.Nothing,
            kinds={"duckdb"},
            description="Per client and day: outcomes reported, quarantined and the implausible share.",
        ),
    },
    deps=["labelled_production"],
    check_specs=[
        dg.AssetCheckSpec(
            PLAUSIBILITY_CHECK,
            asset="students",
            description="No client sends many implausible outcomes, or outcomes unlike every other client's.",
        )
    ],
)
def students(
    context: dg.AssetExecutionContext,
    raw_students: pd.DataFrame,
    warehouse: DuckDBResource,
    thresholds: Thresholds,
    alerter: Alerter,
) -> Any:
    """The modelling table: typed, labelled, screened, capped, and tagged with its source and client."""
    base = dataset.clean_students(raw_students)
    production = _production_rows(warehouse)
    screened, biases, counts = screen_production(base, production, thresholds)
    _store(warehouse, screened.quarantined, counts)
    yield dg.Output(
        None,
        "feedback_quarantine",
        metadata={"dagster/row_count": len(screened.quarantined), "table": QUARANTINE},
    )
    yield dg.Output(
        None, "feedback_screening", metadata={"dagster/row_count": len(counts), "table": SCREENING}
    )
    parts = [base]
    if len(screened.kept):
        parts.append(dataset.clean_students(screened.kept, PRODUCTION_SOURCE))
    capped = trust.cap_clients(pd.concat(parts, ignore_index=True), thresholds.client_max_share, seed=0)
    table = capped.table.reset_index(drop=True)
    sources = table[dataset.SOURCE_COLUMN].value_counts().to_dict()
    clients = table[dataset.CLIENT_COLUMN].value_counts().to_dict()
    cap_note = trust.describe_cap(capped.capped, thresholds.client_max_share)
    context.log.info(
        f"students: {len(table)} rows by source {sources}, by client {clients}; "
        f"{len(screened.quarantined)} production row(s) quarantined; {cap_note}"
    )
    yield dg.Output(
        table,
        "students",
        metadata={
            "dagster/row_count": len(table),
            "rows_by_source": dg.MetadataValue.json({str(k): int(v) for k, v in sources.items()}),
            "rows_by_client": dg.MetadataValue.json({str(k): int(v) for k, v in clients.items()}),
            "quarantined_production_rows": len(screened.quarantined),
            "client_cap": cap_note,
            "pass_rate": float(table[schema.LABEL].mean()),
            "preview": dg.MetadataValue.md(table.head(5).to_markdown(index=False)),
        },
    )
    passed, message, figures = _plausibility_result(counts, biases, thresholds)
    yield alerter.check_result(
        context,
        warehouse,
        asset="students",
        check_name=PLAUSIBILITY_CHECK,
        passed=passed,
        message=message,
        metadata=figures,
        severity=dg.AssetCheckSeverity.WARN,
    )
