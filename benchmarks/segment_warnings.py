"""How often ``segment_quality`` warns on ordinary days, and how often it catches a model with a real gap.

A champion is trained the way the pipeline trains it (``train_and_select`` on the seed-42 split of the real
Kaggle file, served rule on). Then ``--days`` ordinary days of ``--rows`` new students each are drawn from
``exampass_pipeline.ml.synthetic`` (the population the model was trained for; every student labelled), scored,
and judged by ``segment_quality`` with its defaults, under three decisions:

* the served rule (per lunch x gender x race/ethnicity cut-offs): an ordinary day, a warning is a false alarm;
* the same model with one cut-off for everybody: a real but modest lunch gap (about 0.10 on the population);
* the score model without gender and race/ethnicity, one cut-off: a real gender gap of about 0.4.

The old rule (warn when the gap between groups with >= 5 fails exceeds 0.2, lunch and gender judged) is
scored on the same days, and the new rule is shown for several minimum gaps (``max_gap``). Rates carry 95 %
Wilson intervals.

    .venv/bin/python benchmarks/segment_warnings.py [--days 1000] [--rows 200]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.model_quality import DEFAULT_DATA, load_students, unaware_score_model  # noqa: E402
from exampass_pipeline.contract import schema  # noqa: E402
from exampass_pipeline.contract.settings import ThresholdValues  # noqa: E402
from exampass_pipeline.ml import fairness, modeling, synthetic  # noqa: E402
from exampass_pipeline.monitoring import quality  # noqa: E402

GOAL_WARN_RATE = 0.05
MIN_GAPS = (0.0, 0.05, 0.10, 0.15, 0.20)
OLD_SEGMENTS = (schema.LUNCH, schema.GENDER)
OLD_MAX_GAP = 0.2
DAY_SEED = 5_000_000  # days use seeds DAY_SEED + i: disjoint from every other sample the benchmarks draw


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags: list[bool]) -> str:
    k, n = int(sum(flags)), len(flags)
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} ({lo:.3f}-{hi:.3f})"


def decisions(students: pd.DataFrame) -> dict[str, tuple[object, object]]:
    """(pipeline, rule) per decision judged: served, one cut-off, unaware."""
    parts = modeling.split_students(students, seed=42)
    selection = modeling.train_and_select(parts.train, parts.validation, seed=42)
    pool = pd.concat([parts.train, parts.validation], ignore_index=True)
    reference, _ = fairness.reference_students(pool, seed=42)
    unaware = modeling.fit_pipeline(unaware_score_model(), pool)
    unaware_rule = fairness.fit_rule(modeling.pass_probability(unaware, reference), reference, ())
    return {
        "served rule (ordinary days)": (selection.pipeline, selection.rule),
        "same model, one cut-off": (selection.pipeline, selection.alternatives["single threshold"]),
        "unaware model, one cut-off": (unaware, unaware_rule),
    }


def judge_day(day: pd.DataFrame, defaults: ThresholdValues) -> dict[str, object]:
    """The day's verdicts: the new rule at every minimum gap (one call, max_gap=0) and the old rule."""
    decision = quality.segment_quality(
        day, max_gap=0.0, min_fail_per_group=defaults.segment_min_fail, alpha=defaults.segment_alpha
    )
    out: dict[str, object] = {}
    for min_gap in MIN_GAPS:
        out[f"new@{min_gap:.2f}"] = any(
            seg.get("p_holm", 1.0) < decision.alpha and seg["gap"] > min_gap
            for name, seg in decision.segments.items()
            if name in decision.judged_segments and seg["judged"]
        )
    out["old"] = any(
        decision.segments[name]["judged"] and decision.segments[name]["gap"] > OLD_MAX_GAP
        for name in OLD_SEGMENTS
    )
    out["judged"] = decision.status != "warn"
    for name in decision.judged_segments:
        out[f"gap_{name}"] = decision.segments[name]["gap"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=1000, help="ordinary days simulated")
    parser.add_argument("--rows", type=int, default=200, help="labelled students per day")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Kaggle StudentsPerformance.csv")
    args = parser.parse_args(argv)
    defaults = ThresholdValues()
    with threadpool_limits(limits=1):
        models = decisions(load_students(args.data))
        results: dict[str, list[dict[str, object]]] = {name: [] for name in models}
        for i in tqdm(range(args.days), desc="days", file=sys.stderr):
            day = synthetic.sample(args.rows, seed=DAY_SEED + i)
            for name, (pipeline, rule) in models.items():
                p = modeling.pass_probability(pipeline, day)
                scored = day.assign(predicted_pass=p >= rule.for_frame(day))  # type: ignore[attr-defined]
                results[name].append(judge_day(scored, defaults))

    current = f"new@{defaults.segment_max_gap:.2f}"
    print(
        f"segment_quality on {args.days} simulated days of {args.rows} labelled students "
        f"(alpha {defaults.segment_alpha}, min {defaults.segment_min_fail} fails per group)\n"
    )
    head = ["decision", *(f"new, gap > {g:.2f}" for g in MIN_GAPS), "old rule (gap > 0.2)", "mean gaps"]
    print("| " + " | ".join(head) + " |\n|---|" + "---|" * (len(head) - 1))
    for name, days in results.items():
        frame = pd.DataFrame(days)
        gaps = ", ".join(
            f"{c.removeprefix('gap_')} {frame[c].mean():.2f}" for c in frame.columns if c.startswith("gap_")
        )
        cells = [rate(frame[f"new@{g:.2f}"].tolist()) for g in MIN_GAPS] + [rate(frame["old"].tolist()), gaps]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ordinary = pd.DataFrame(results["served rule (ordinary days)"])
    warn_rate = float(ordinary[current].mean())
    ok = warn_rate <= GOAL_WARN_RATE
    print(
        f"\n{'PASS' if ok else 'FAIL'}: ordinary days warn on {warn_rate:.3f} <= {GOAL_WARN_RATE} "
        f"(defaults: max_gap {defaults.segment_max_gap}); judged on {ordinary['judged'].mean():.2f} of days"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
