"""Asset checks on the training data, and the one path by which any failed check becomes an alert.

Checks on `students` are blocking: a table with the wrong schema, nulls, too few rows or an implausible pass
rate must stop training before it produces a model that looks fine and is not.
"""

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.settings import threshold_env_var
from exampass_pipeline.defs.resources import ALERTS_ASSET, Alerter, Thresholds
from exampass_pipeline.ml import dataset, trust

alerts = dg.AssetSpec(
    ALERTS_ASSET,
    deps=["students", "train_split", "trusted_set", "model_evaluation", "drift_report", "quality_report"],
    group_name="monitoring",
    kinds={"duckdb"},
    description=(
        "exampass.alerts: one row per failed check or held promotion, with its delivery to the webhook. "
        "Appended by the checks of the assets it depends on, never materialized on its own."
    ),
)


def schema_problems(frame: pd.DataFrame) -> list[str]:
    lineage = (dataset.SOURCE_COLUMN, dataset.CLIENT_COLUMN)  # every training row traceable to both
    problems = [
        f"missing column {c}" for c in (*schema.COLUMNS, schema.LABEL, *lineage) if c not in frame.columns
    ]
    for name in schema.CATEGORICAL_FEATURES:
        if name in frame:
            unknown = sorted(set(frame[name].dropna().astype(str)) - set(schema.CATEGORIES[name]))
            if unknown:
                problems.append(f"{name} has unknown categories {unknown[:5]}")
    for name in schema.SCORES:
        if name in frame:
            values = pd.to_numeric(frame[name], errors="coerce")
            outside = int(((values < schema.SCORE_MIN) | (values > schema.SCORE_MAX) | values.isna()).sum())
            if outside:
                problems.append(
                    f"{name} has {outside} value(s) outside {schema.SCORE_MIN}-{schema.SCORE_MAX}"
                )
    if schema.LABEL in frame and schema.MATH_SCORE in frame:
        wrong = int((frame[schema.LABEL] != (frame[schema.MATH_SCORE] >= schema.PASS_MARK)).sum())
        if wrong:
            problems.append(f"{schema.LABEL} disagrees with {schema.MATH_SCORE} on {wrong} row(s)")
    return problems


@dg.asset_check(asset="students", blocking=True, description="Columns, categories and score ranges.")
def students_schema(
    context: dg.AssetCheckExecutionContext,
    students: pd.DataFrame,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    problems = schema_problems(students)
    return alerter.check_result(
        context,
        warehouse,
        asset="students",
        check_name="students_schema",
        passed=not problems,
        message="; ".join(problems) if problems else "schema, categories and ranges as expected",
        metadata={"problems": len(problems)},
    )


@dg.asset_check(asset="students", blocking=True, description="No missing values in any column.")
def students_no_nulls(
    context: dg.AssetCheckExecutionContext,
    students: pd.DataFrame,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    nulls = {str(c): int(n) for c, n in students.isna().sum().items() if n}
    return alerter.check_result(
        context,
        warehouse,
        asset="students",
        check_name="students_no_nulls",
        passed=not nulls,
        message=f"null values: {nulls}" if nulls else "no nulls",
        metadata={"null_columns": dg.MetadataValue.json(nulls)},
    )


@dg.asset_check(asset="students", blocking=True, description="Enough rows to train on.")
def students_min_rows(
    context: dg.AssetCheckExecutionContext,
    students: pd.DataFrame,
    thresholds: Thresholds,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    n = len(students)
    ok = n >= thresholds.min_student_rows
    return alerter.check_result(
        context,
        warehouse,
        asset="students",
        check_name="students_min_rows",
        passed=ok,
        message=(
            f"{n} rows; the minimum is {thresholds.min_student_rows} "
            f"(set {threshold_env_var('min_student_rows')} to change it)"
        ),
        metadata={"rows": n, "min_rows": thresholds.min_student_rows},
    )


@dg.asset_check(asset="students", blocking=True, description="The pass rate is plausible.")
def students_pass_rate(
    context: dg.AssetCheckExecutionContext,
    students: pd.DataFrame,
    thresholds: Thresholds,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    rate = float(students[schema.LABEL].mean()) if len(students) else float("nan")
    ok = thresholds.pass_rate_min <= rate <= thresholds.pass_rate_max
    return alerter.check_result(
        context,
        warehouse,
        asset="students",
        check_name="students_pass_rate",
        passed=ok,
        message=(
            f"pass rate {rate:.3f}; allowed band {thresholds.pass_rate_min}-{thresholds.pass_rate_max} "
            f"({threshold_env_var('pass_rate_min')}, {threshold_env_var('pass_rate_max')})"
        ),
        metadata={"pass_rate": rate, "min": thresholds.pass_rate_min, "max": thresholds.pass_rate_max},
    )


@dg.asset_check(
    asset="train_split",
    blocking=True,
    additional_ins={"validation_split": dg.AssetIn(), "test_split": dg.AssetIn(), "students": dg.AssetIn()},
    description="Train, validation and test are disjoint, cover the table, and are 70/10/20.",
)
def splits_disjoint_and_sized(
    context: dg.AssetCheckExecutionContext,
    train_split: pd.DataFrame,
    validation_split: pd.DataFrame,
    test_split: pd.DataFrame,
    students: pd.DataFrame,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    ids = {
        name: set(frame[dataset.ROW_ID])
        for name, frame in (("train", train_split), ("validation", validation_split), ("test", test_split))
    }
    overlaps = {
        f"{a}&{b}": len(ids[a] & ids[b])
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))
    }
    n = len(students)
    expected = trust.expected_sizes(students)
    actual = {"train": len(train_split), "validation": len(validation_split), "test": len(test_split)}
    covered = len(ids["train"] | ids["validation"] | ids["test"]) == n
    problems = [f"{k} overlap {v} rows" for k, v in overlaps.items() if v]
    problems += [
        f"{k} has {actual[k]} rows, expected {expected[k]}" for k in actual if actual[k] != expected[k]
    ]
    if not covered:
        problems.append("the splits do not cover every student row exactly once")
    return alerter.check_result(
        context,
        warehouse,
        asset="train_split",
        check_name="splits_disjoint_and_sized",
        passed=not problems,
        message="; ".join(problems) if problems else f"disjoint and sized {actual} of {n}",
        metadata={
            **{f"rows_{k}": v for k, v in actual.items()},
            **{f"overlap_{k}": v for k, v in overlaps.items()},
        },
    )


@dg.asset_check(
    asset="trusted_set",
    blocking=True,
    description="The trusted set holds curated rows only: no production feedback writes the exam.",
)
def trusted_set_is_curated(
    context: dg.AssetCheckExecutionContext,
    trusted_set: pd.DataFrame,
    alerter: Alerter,
    warehouse: DuckDBResource,
) -> dg.AssetCheckResult:
    sources = trusted_set[dataset.SOURCE_COLUMN].value_counts().to_dict()
    foreign = {str(k): int(v) for k, v in sources.items() if k not in dataset.CURATED_SOURCES}
    clients = sorted(set(trusted_set[dataset.CLIENT_COLUMN].astype(str)) - {dataset.CURATED_CLIENT})
    problems = [f"{n} row(s) from source {s}" for s, n in foreign.items()] + [f"client(s) {clients}"] * bool(
        clients
    )
    return alerter.check_result(
        context,
        warehouse,
        asset="trusted_set",
        check_name="trusted_set_is_curated",
        passed=not problems and len(trusted_set) > 0,
        message="; ".join(problems) if problems else f"{len(trusted_set)} curated rows, no production row",
        metadata={"rows": len(trusted_set), "foreign_rows": sum(foreign.values())},
    )
