"""False-alarm and detection rates of ExamPass's drift rule against Evidently's default "any column drifted".

Usage: ``python benchmarks/drift_checks.py [--batches 1000] [--drift-batches 500] [--evidently-batches 400]``

Undrifted batches: for every batch a fresh seeded 70/10/20 split of the real Kaggle file
(``modeling.split_students``); the reference is the 70 % training split, exactly what production compares
against, and the batch is n rows drawn *without replacement* from the other 30 %. Reference and batch are then
two disjoint random subsets of one i.i.d. file, which is precisely "no drift". (Bootstrap resampling with
replacement from the 300 held-out rows is also measured, as a sensitivity row: it duplicates rows, so a batch
differs from the population by the pool's own sampling error *plus* the resampling error, roughly twice what a
real day shows at n = 300, and any calibrated test fires more often. That is an artefact of the resampling.)

Drifted batches: ``synthetic.sample(n, scenario=...)`` for each scenario, against the same kind of reference.
The synthetic ``none`` scenario doubles as a check that the generator matches the real file.

Evidently's rule is evaluated through Evidently itself: its own default test choice
(``get_stattest(..., stattest_func=None)``: chi-square or Z-test for categoricals, KS for scores, for a
reference of <= 1000 rows) and its own test implementations at its default threshold 0.05, one drifted column
being enough ("any column drifted", i.e. DataDriftPreset's drift share set to 1/7). That skips only the plotly
rendering, which costs ~1.5 s per batch; the first ``--verify-reports`` batches are also run through a full
``Report([DataDriftPreset()])`` and must flag exactly the same columns.

The pipeline judges a day from DuckDB aggregates (``monitoring.drift_sql``), not from the frame. The
``--sql-batches`` pairs (every size above plus days of 20,000 and 200,000 synthetic rows, undrifted and
drifted) are judged both ways and must give the same verdict and drifted columns: the SQL path is exactly as
strict as ``drift.data_drift`` at every size, since it never samples.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.model_quality import DEFAULT_DATA, load_students  # noqa: E402
from exampass_pipeline.contract import schema  # noqa: E402
from exampass_pipeline.ml import modeling, synthetic  # noqa: E402
from exampass_pipeline.monitoring import drift, drift_sql  # noqa: E402

DATA = DEFAULT_DATA.resolve()
SIZES = (50, 100, 300)
DRIFT_SCENARIOS = tuple(s for s in synthetic.SCENARIOS if s != "none")
FALSE_ALARM_GOAL = 0.05
DETECTION_GOAL = 0.90
DETECTION_GOAL_SCENARIOS = ("lunch_shift", "score_decline")
DETECTION_GOAL_N = 100

Rule = Callable[[pd.DataFrame, pd.DataFrame], bool]


def exampass_rule(reference: pd.DataFrame, current: pd.DataFrame) -> bool:
    return drift.data_drift(reference, current).status == "fail"


def evidently_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Columns Evidently's default per-column tests call drifted (its own test choice and implementation)."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    drifted = []
    for col in schema.FEATURES:
        kind = ColumnType.Categorical if col in schema.CATEGORIES else ColumnType.Numerical
        test = get_stattest(reference[col], current[col], kind, None)
        if test(reference[col], current[col], kind, None).drifted:
            drifted.append(col)
    return drifted


def evidently_rule(reference: pd.DataFrame, current: pd.DataFrame) -> bool:
    return bool(evidently_columns(reference, current))


def evidently_report_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """The same decision through a full Evidently Report, to prove the shortcut is faithful."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cols = list(schema.FEATURES)
    definition = DataDefinition(
        numerical_columns=list(schema.NUMERIC_FEATURES), categorical_columns=list(schema.CATEGORICAL_FEATURES)
    )
    snapshot = Report([DataDriftPreset(columns=cols)]).run(
        Dataset.from_pandas(current[cols].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[cols].reset_index(drop=True), data_definition=definition),
    )
    drifted = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if (
            str(config.get("type", "")).endswith("ValueDrift")
            and float(metric["value"]) < config["threshold"]
        ):
            drifted.append(config["column"])
    return sorted(drifted, key=cols.index)


class Batches:
    """Seeded reference/current pairs; batch i of a cell is the same whichever rule asks for it."""

    def __init__(self, students: pd.DataFrame) -> None:
        self.students = students

    def reference_and_pool(self, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        splits = modeling.split_students(self.students, seed=seed)
        return splits.train, pd.concat([splits.validation, splits.test])

    def undrifted(self, n: int, i: int, *, bootstrap: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
        reference, pool = self.reference_and_pool(seed=1_000_003 * n + i)
        rng = np.random.default_rng([n, i, int(bootstrap)])
        rows = rng.choice(len(pool), size=n, replace=bootstrap)
        return reference, pool.iloc[rows]

    def drifted(self, scenario: str, n: int, i: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        reference, _ = self.reference_and_pool(seed=2_000_003 * n + i)
        seed = 7919 * (synthetic.SCENARIOS.index(scenario) + 1) + 104_729 * n + i
        return reference, synthetic.sample(n, seed=seed, scenario=scenario)


def rate(
    rule: Rule, make: Callable[[int], tuple[pd.DataFrame, pd.DataFrame]], count: int, label: str
) -> tuple[float, int, float]:
    """Share of batches the rule flags, the count, and the seconds spent inside the rule."""
    hits = 0
    spent = 0.0
    for i in tqdm(range(count), desc=label, file=sys.stderr, leave=False, mininterval=2.0):
        reference, current = make(i)
        started = time.perf_counter()
        hits += rule(reference, current)
        spent += time.perf_counter() - started
    return hits / count, count, spent


LARGE_SIZES = (20_000, 200_000)


def sql_agreement(batches: Batches, count: int) -> tuple[int, int, float, float]:
    """(pairs judged, pairs whose SQL verdict differs, pandas seconds, SQL seconds) over undrifted and
    drifted pairs at every size; the large days a tenth as often (they cost 1,000x more rows)."""
    pairs: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    for i in range(count):
        n = SIZES[i % len(SIZES)]
        pairs.append(batches.undrifted(n, i) if i % 2 == 0 else batches.drifted(DRIFT_SCENARIOS[i % 3], n, i))
    for i in range(max(1, count // 10)):
        n = LARGE_SIZES[i % len(LARGE_SIZES)]
        reference, _ = batches.reference_and_pool(seed=3_000_017 + i)
        scenario = ("none", "lunch_shift", "score_decline")[i % 3]
        pairs.append((reference, synthetic.sample(n, seed=5_000_011 + i, scenario=scenario)))
    differ, t_pandas, t_sql = 0, 0.0, 0.0
    with duckdb.connect() as conn:
        conn.execute("SET threads = 2")
        for reference, current in tqdm(pairs, desc="SQL vs pandas", file=sys.stderr, leave=False):
            t0 = time.perf_counter()
            expected = drift.data_drift(reference, current)
            t1 = time.perf_counter()
            conn.register("day_rows", current[list(schema.FEATURES)])
            conn.execute("CREATE OR REPLACE TABLE day AS SELECT * FROM day_rows")
            t2 = time.perf_counter()
            got = drift_sql.data_drift_sql(reference, conn, "day")
            t3 = time.perf_counter()
            conn.unregister("day_rows")
            differ += (got.status, got.drifted_columns) != (expected.status, expected.drifted_columns)
            t_pandas, t_sql = t_pandas + t1 - t0, t_sql + t3 - t2
    return len(pairs), differ, t_pandas, t_sql


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cell(p: float, n: int) -> str:
    lo, hi = wilson(p, n)
    return f"{100 * p:.1f} % [{100 * lo:.1f}-{100 * hi:.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="undrifted batches per n for ExamPass")
    parser.add_argument("--drift-batches", type=int, default=500, help="drifted batches per scenario and n")
    parser.add_argument("--evidently-batches", type=int, default=400, help="batches per cell for Evidently")
    parser.add_argument("--verify-reports", type=int, default=10, help="batches checked with a full Report")
    parser.add_argument("--sql-batches", type=int, default=300, help="pairs judged from SQL aggregates too")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if not DATA.exists():
        print(f"error: the Kaggle file is expected at {DATA}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    batches = Batches(load_students(DATA))
    rules: dict[str, tuple[Rule, int, int]] = {
        "ExamPass": (exampass_rule, args.batches, args.drift_batches),
        "Evidently any-column": (evidently_rule, args.evidently_batches, args.evidently_batches),
    }

    print(f"# Drift rule benchmark ({DATA.name}, sizes {SIZES})", flush=True)
    mismatches = 0
    verify_seconds = 0.0
    for i in range(args.verify_reports):
        n = SIZES[i % len(SIZES)]
        reference, current = batches.undrifted(n, i) if i % 2 == 0 else batches.drifted("score_decline", n, i)
        t0 = time.perf_counter()
        via_report = evidently_report_columns(reference, current)
        verify_seconds += time.perf_counter() - t0
        via_tests = evidently_columns(reference, current)
        mismatches += via_report != via_tests
    if args.verify_reports:
        print(
            f"Evidently shortcut vs full Report on {args.verify_reports} batches: "
            f"{'identical' if mismatches == 0 else f'{mismatches} MISMATCHES'} "
            f"(full Report {verify_seconds / args.verify_reports:.2f} s/batch)",
            flush=True,
        )

    sql_pairs, sql_differ, sql_pandas, sql_seconds = sql_agreement(batches, args.sql_batches)
    if args.sql_batches:
        print(
            f"SQL aggregates (drift_sql) vs data_drift on {sql_pairs} pairs (n = {SIZES} and {LARGE_SIZES}): "
            f"{'identical verdicts' if sql_differ == 0 else f'{sql_differ} DIFFERENT verdicts'} "
            f"(pandas {sql_pandas:.1f} s, SQL {sql_seconds:.1f} s in all)",
            flush=True,
        )

    false_alarm: dict[tuple[str, str, int], tuple[float, int]] = {}
    detection: dict[tuple[str, str, int], tuple[float, int]] = {}
    seconds: dict[str, list[float]] = {name: [0.0, 0.0] for name in rules}
    for name, (rule, null_count, drift_count) in rules.items():
        for n in SIZES:
            for source, make in (
                ("real file, subsample", lambda i, n=n: batches.undrifted(n, i)),
                ("real file, bootstrap", lambda i, n=n: batches.undrifted(n, i, bootstrap=True)),
                ("synthetic none", lambda i, n=n: batches.drifted("none", n, i)),
            ):
                count = null_count if source == "real file, subsample" else max(1, null_count // 2)
                p, k, spent = rate(rule, make, count, f"{name} {source} n={n}")
                false_alarm[(source, name, n)] = (p, k)
                seconds[name][0] += spent
                seconds[name][1] += k
            print(
                f"  {name}: undrifted n={n} done, false alarms "
                f"{100 * false_alarm[('real file, subsample', name, n)][0]:.1f} %",
                file=sys.stderr,
                flush=True,
            )
            for scenario in DRIFT_SCENARIOS:
                p, k, spent = rate(
                    rule,
                    lambda i, s=scenario, n=n: batches.drifted(s, n, i),
                    drift_count,
                    f"{name} {scenario} n={n}",
                )
                detection[(scenario, name, n)] = (p, k)
                seconds[name][0] += spent
                seconds[name][1] += k

    print("\n## False-alarm rate on undrifted batches (goal: <= 5 % at every n)\n")
    print("| batches | rule | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for source in ("real file, subsample", "synthetic none", "real file, bootstrap"):
        for name in rules:
            cells = [cell(*false_alarm[(source, name, n)]) for n in SIZES]
            print(f"| {source} | {name} | " + " | ".join(cells) + " |")
    print(
        "\n## Detection rate on drifted batches "
        "(goal: >= 90 % at n = 100 for lunch_shift and score_decline)\n"
    )
    print("| scenario | rule | " + " | ".join(f"n = {n}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for scenario in DRIFT_SCENARIOS:
        for name in rules:
            cells = [cell(*detection[(scenario, name, n)]) for n in SIZES]
            print(f"| {scenario} | {name} | " + " | ".join(cells) + " |")

    print(
        "\nBatches per cell: "
        + "; ".join(
            f"{name}: {null} undrifted (real file, subsample), {max(1, null // 2)} per other undrifted row, "
            f"{drifted} drifted"
            for name, (_, null, drifted) in rules.items()
        )
        + ". Brackets: 95 % Wilson intervals."
    )
    base = seconds["Evidently any-column"][0] / max(seconds["Evidently any-column"][1], 1)
    ours = seconds["ExamPass"][0] / max(seconds["ExamPass"][1], 1)
    print(
        f"Cost per batch: ExamPass rule {1000 * ours:.1f} ms, "
        f"Evidently per-column tests {1000 * base:.1f} ms "
        f"(ExamPass / Evidently = {ours / base:.2f}x)"
        + (
            f", full Evidently Report {verify_seconds / args.verify_reports:.2f} s"
            if args.verify_reports
            else ""
        )
        + "."
    )

    print("\n## Goals\n")
    ok = True
    for n in SIZES:
        p, k = false_alarm[("real file, subsample", "ExamPass", n)]
        passed = p <= FALSE_ALARM_GOAL
        ok &= passed
        print(
            f"- {'PASS' if passed else 'FAIL'}: ExamPass false alarms at n = {n}: "
            f"{100 * p:.1f} % <= 5 % ({k} batches)"
        )
    for scenario in DETECTION_GOAL_SCENARIOS:
        p, k = detection[(scenario, "ExamPass", DETECTION_GOAL_N)]
        passed = p >= DETECTION_GOAL
        ok &= passed
        print(
            f"- {'PASS' if passed else 'FAIL'}: ExamPass detects {scenario} at n = {DETECTION_GOAL_N}: "
            f"{100 * p:.1f} % >= 90 % ({k} batches)"
        )
    if args.verify_reports:
        passed = mismatches == 0
        ok &= passed
        print(
            f"- {'PASS' if passed else 'FAIL'}: Evidently shortcut matches the full Report "
            f"({args.verify_reports} batches)"
        )
    if args.sql_batches:
        passed = sql_differ == 0
        ok &= passed
        print(
            f"- {'PASS' if passed else 'FAIL'}: the SQL-aggregate verdict equals data_drift's "
            f"({sql_pairs} pairs, up to {LARGE_SIZES[-1]:,} rows)"
        )
    print(f"\nTotal {time.perf_counter() - started:.0f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
