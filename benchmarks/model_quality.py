"""Model-quality and fairness benchmark: the whole selection procedure, its decision rule and the alternatives.

Runs split_students -> train_and_select -> evaluate on 20 seeded stratified 70/10/20 splits of the real Kaggle
file. For every split the chosen model is scored on that split's untouched 200-row test part and on two
large samples of new students (the population checks: ``exampass_pipeline.ml.synthetic``, and the same students
with maths drawn from the file's least-squares fit plus its noise), under:
  * the served rule: a cut-off per lunch x gender x race/ethnicity group, equal expected fail recall;
  * the alternatives fitted for the same model: one cut-off for everybody; a cut-off per lunch x gender; a
    cut-off per combination of all five categorical features (240 groups);
  * "fairness through unawareness": the same score model without gender and race/ethnicity, one cut-off;
  * the earlier reference points: logistic regression at 0.5, the seed's RandomForest, the majority class.
Fairness columns: the largest gap in fail-class recall between the groups of each feature, pooled over the
20 splits' test rows (each row of the file is in about four test parts), and on the synthetic sample (the
mean over the 20 models). ``--files K`` adds the noise band: the same served procedure on K independent
1,000-student files drawn from the population model, to show how far the pooled gaps of *one* file wander;
``--checks K`` scores the served models on K independent 23,000-student samples (what one outside check sees).
Nothing is tuned on the test parts: each seed's test rows are only ever scored.

    .venv/bin/python benchmarks/model_quality.py [--seeds 20] [--big 100000] [--files 0] [--checks 5] [--strict]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runnable as a plain script from any directory

from exampass_pipeline.contract import schema  # noqa: E402
from exampass_pipeline.ml import dataset, fairness, modeling, synthetic  # noqa: E402

DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "StudentsPerformance.csv"
GOAL_ROC_AUC = 0.972
GOAL_F1_FAIL = 0.745
GOAL_GAPS = {schema.LUNCH: 0.05, schema.GENDER: 0.05, schema.RACE_ETHNICITY: 0.08}
BIG_SEED = 990_001  # the population samples: no reference sample or file uses these seeds
CHECK_ROWS = 23_000  # the size of the independent check the issue describes
REPORTED = ("roc_auc", "f1_fail", "recall_fail", "precision_fail", "brier")
LABELS = {
    "roc_auc": "ROC-AUC",
    "f1_fail": "F1 (fail)",
    "recall_fail": "recall (fail)",
    "precision_fail": "precision (fail)",
    "brier": "Brier",
}
SHORT = {
    schema.LUNCH: "lunch",
    schema.GENDER: "gender",
    schema.RACE_ETHNICITY: "race",
    schema.PARENTAL_EDUCATION: "parent ed.",
    schema.TEST_PREP: "test prep",
}
SERVED = "served: per lunch x gender x race/ethnicity"
ALTERNATIVES = {
    "single threshold": "same model, one cut-off",
    "per lunch x gender": "same model, per lunch x gender",
    "per all five categorical features": "same model, per combination of all five categories",
}
UNAWARE = "unaware: no gender, race/ethnicity; one cut-off"


def load_students(path: Path = DEFAULT_DATA) -> pd.DataFrame:
    """The Kaggle file, validated by the pipeline's own reader, with the label; in memory only."""
    table = dataset.clean_students(dataset.read_students_csv(path), source="kaggle")
    return table.drop(columns=dataset.SOURCE_COLUMN)


def seed_random_forest(seed: int) -> Pipeline:
    """The product seed's suggestion as it was: RandomForestClassifier() defaults, our encoders, 0.5."""
    return Pipeline(
        [
            ("preprocess", modeling.make_preprocessor(scale_numeric=False)),
            ("model", RandomForestClassifier(random_state=seed)),
        ]
    )


def plain_logistic(seed: int) -> Pipeline:
    return modeling.build_candidates(["logistic_regression"], seed)["logistic_regression"]


def unaware_score_model() -> Pipeline:
    """The score regression without gender and race/ethnicity among its inputs."""
    kept = [c for c in schema.CATEGORICAL_FEATURES if c not in (schema.GENDER, schema.RACE_ETHNICITY)]
    encoder = OneHotEncoder(
        categories=[list(schema.CATEGORIES[c]) for c in kept], handle_unknown="ignore", sparse_output=False
    )
    preprocess = ColumnTransformer(
        [("categorical", encoder, kept), ("numeric", StandardScaler(), list(schema.NUMERIC_FEATURES))]
    )
    return Pipeline([("preprocess", preprocess), ("model", modeling.ScoreProbitClassifier())])


def recall_gaps(frame: pd.DataFrame, flagged: np.ndarray) -> dict[str, float]:
    """Largest minus smallest fail-class recall between the groups of every categorical feature."""
    fails = ~frame[schema.LABEL].to_numpy(dtype=bool)
    out = {}
    for feature in schema.CATEGORICAL_FEATURES:
        values = frame[feature].astype(str).to_numpy()
        recalls = [flagged[fails & (values == g)].mean() for g in np.unique(values[fails])]
        out[feature] = float(max(recalls) - min(recalls))
    return out


def population_figures(frame: pd.DataFrame, p: np.ndarray, cut: Any) -> dict[str, float]:
    metrics = modeling.classification_metrics(frame[schema.LABEL].to_numpy(bool), p, cut)
    return {**metrics, **{f"gap_{f}": g for f, g in recall_gaps(frame, p < cut).items()}}


def least_squares_population(students: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """New students whose maths is the least-squares fit of the whole file plus normal noise (sigma 5.4).

    The population model of ``synthetic`` is noisier than the file (its Bayes ROC-AUC is 0.971, the file's
    least squares reaches 0.973-0.975); this second population has the file's own noise level, the one 23,000
    independent students showed (least squares: ROC-AUC 0.975). Features come from ``synthetic``.
    """
    truth = modeling.fit_pipeline(
        modeling.build_candidates(["score_regression"], 0)["score_regression"], students
    )
    frame = synthetic.sample(n, seed=seed)
    mu = truth.named_steps["model"].predict_score(
        truth.named_steps["preprocess"].transform(frame[list(schema.FEATURES)])
    )
    noise = np.random.default_rng(seed).normal(0.0, truth.named_steps["model"].scale_, n)
    frame[schema.MATH_SCORE] = np.clip(np.rint(mu + noise), 0, 100).astype(int)
    frame[schema.LABEL] = mu + noise >= schema.PASS_MARK - 0.5
    return frame


class Runs:
    """Per procedure: test metrics per split, pooled test flags, and population metrics and gaps per model."""

    def __init__(self) -> None:
        self.test: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.pooled: dict[str, list[tuple[pd.DataFrame, np.ndarray]]] = defaultdict(list)
        self.pop: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))

    def add(
        self,
        name: str,
        test: pd.DataFrame,
        p_test: np.ndarray,
        cut_test: Any,
        pops: dict[str, Any] | None = None,
    ) -> None:
        """``pops``: population key -> (frame, p, cut) for the same model and decision."""
        y = test[schema.LABEL].to_numpy(dtype=bool)
        self.test[name].append(modeling.classification_metrics(y, p_test, cut_test))
        self.pooled[name].append((test, p_test < cut_test))
        for key, (frame, p, cut) in (pops or {}).items():
            self.pop[key][name].append(population_figures(frame, p, cut))

    def table(self, names: list[str]) -> pd.DataFrame:
        rows = {}
        for name in names:
            frame = pd.DataFrame(self.test[name])
            row: dict[str, Any] = {m: (frame[m].mean(), frame[m].std(ddof=1)) for m in REPORTED}
            tests = pd.concat([t for t, _ in self.pooled[name]])
            flags = np.concatenate([f for _, f in self.pooled[name]])
            row.update({f"gap_{f}": g for f, g in recall_gaps(tests, flags).items()})
            for key, by_name in self.pop.items():
                if by_name.get(name):
                    row.update({f"{key}_{k}": v for k, v in pd.DataFrame(by_name[name]).mean().items()})
            rows[name] = row
        return pd.DataFrame(rows).T


def _fit_unaware(pool: pd.DataFrame, reference: pd.DataFrame) -> tuple[Pipeline, Any]:
    pipeline = modeling.fit_pipeline(unaware_score_model(), pool)
    rule = fairness.fit_rule(modeling.pass_probability(pipeline, reference), reference, ())
    return pipeline, rule


def run_split(
    students: pd.DataFrame,
    seed: int,
    populations: dict[str, pd.DataFrame],
    runs: Runs,
    extras: dict[str, list[Any]],
    checks: list[pd.DataFrame],
) -> None:
    """One seeded split: the served procedure, its alternatives, unawareness and the reference points."""
    parts = modeling.split_students(students, seed=seed)
    started = time.process_time()
    selection = modeling.train_and_select(parts.train, parts.validation, seed=seed)
    extras["cpu"].append(time.process_time() - started)
    extras["chosen"].append(selection.name)
    extras["target"].append(selection.rule.target_fail_recall)
    extras["cv"].append({n: s for n, s in selection.candidate_scores.items()})
    p_test = modeling.pass_probability(selection.pipeline, parts.test)
    p_pop = {k: modeling.pass_probability(selection.pipeline, f) for k, f in populations.items()}
    rules = {
        SERVED: selection.rule,
        **{label: selection.alternatives[n] for n, label in ALTERNATIVES.items()},
    }
    for name, rule in rules.items():
        pops = {k: (f, p_pop[k], rule.for_frame(f)) for k, f in populations.items()}
        runs.add(name, parts.test, p_test, rule.for_frame(parts.test), pops)
    for check in checks:  # independent 23,000-student samples: what one hidden check would show
        p = modeling.pass_probability(selection.pipeline, check)
        extras["check"].append(population_figures(check, p, selection.rule.for_frame(check)))
    pool = pd.concat([parts.train, parts.validation], ignore_index=True)
    reference, _ = fairness.reference_students(pool, seed=seed)
    unaware, rule = _fit_unaware(pool, reference)
    p_u = modeling.pass_probability(unaware, parts.test)
    pops = {k: (f, modeling.pass_probability(unaware, f), rule.threshold) for k, f in populations.items()}
    runs.add(UNAWARE, parts.test, p_u, rule.threshold, pops)
    y_train = parts.train[schema.LABEL].to_numpy(bool)
    for name, build in (
        ("logistic regression alone (threshold 0.5)", plain_logistic),
        ("seed RandomForest (defaults, threshold 0.5)", seed_random_forest),
    ):
        fitted = build(seed).fit(parts.train[list(schema.FEATURES)], y_train)
        runs.add(name, parts.test, modeling.pass_probability(fitted, parts.test), 0.5)
    runs.add("majority class (everybody passes)", parts.test, np.full(len(parts.test), y_train.mean()), 0.5)


def markdown_table(summary: pd.DataFrame, n_seeds: int) -> str:
    gap_cols = [f"gap_{f}" for f in fairness.FAIRNESS_FEATURES]
    head = [
        "procedure",
        *(LABELS[m] for m in REPORTED),
        *(f"gap {SHORT[f]}" for f in fairness.FAIRNESS_FEATURES),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name, row in summary.iterrows():
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if not np.isnan(row[m][0]) else "n/a" for m in REPORTED]
        cells += [f"{row[c]:.3f}" for c in gap_cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean ± std over {n_seeds} splits (test = 200 rows); gaps pooled over the test rows."]
    return "\n".join(lines)


def population_table(summary: pd.DataFrame, key: str, caption: str) -> str:
    names = [n for n in summary.index if not pd.isna(summary.loc[n].get(f"{key}_roc_auc", np.nan))]
    head = [
        "procedure",
        "ROC-AUC",
        "F1 (fail)",
        "Brier",
        *(f"gap {SHORT[f]}" for f in fairness.FAIRNESS_FEATURES),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name in names:
        row = summary.loc[name]
        cells = [f"{row[f'{key}_{c}']:.3f}" for c in ("roc_auc", "f1_fail", "brier")]
        cells += [f"{row[f'{key}_gap_{f}']:.3f}" for f in fairness.FAIRNESS_FEATURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{caption}; mean over the models of the splits.",
    ]
    return "\n".join(lines)


def noise_band(n_files: int, seeds: int) -> pd.DataFrame:
    """The served procedure (score model) on independent 1,000-student files: pooled test gaps and F1."""
    rows = []
    for k in tqdm(range(n_files), desc="files", file=sys.stderr):
        file = synthetic.sample(1000, seed=700_000 + k)
        runs = Runs()
        for seed in range(seeds):
            parts = modeling.split_students(file, seed=seed)
            selection = modeling.train_and_select(
                parts.train, parts.validation, candidate_set="fast", seed=seed
            )
            p = modeling.pass_probability(selection.pipeline, parts.test)
            runs.add(SERVED, parts.test, p, selection.rule.for_frame(parts.test))
        row = runs.table([SERVED]).iloc[0]
        rows.append({"f1_fail": row["f1_fail"][0], **{f: row[f"gap_{f}"] for f in GOAL_GAPS}})
    return pd.DataFrame(rows)


def report_extras(extras: dict[str, list[Any]], n_seeds: int) -> None:
    chosen = Counter(extras["chosen"])
    print(
        "Chosen candidate (CV log loss on train + validation): "
        + ", ".join(f"{n} {c}/{n_seeds}" for n, c in chosen.most_common())
    )
    cv = pd.DataFrame([{(n, k): v for n, s in d.items() for k, v in s.items()} for d in extras["cv"]]).mean()
    for name in sorted({n for n, _ in cv.index}):
        auc, loss, brier = (cv[(name, k)] for k in ("roc_auc", "log_loss", "brier"))
        print(f"  CV {name}: ROC-AUC {auc:.4f}, log loss {loss:.4f}, Brier {brier:.4f}")
    target = np.asarray(extras["target"], dtype=float)
    print(f"Target fail recall of the served rule: {target.mean():.3f} ± {target.std(ddof=1):.3f}")
    print(
        f"train_and_select per split: CPU {np.mean(extras['cpu']):.2f} s mean / {np.max(extras['cpu']):.2f} s max"
    )


def goals(summary: pd.DataFrame) -> list[tuple[str, bool, float]]:
    served = summary.loc[SERVED]
    out = [
        (
            f"mean ROC-AUC >= {GOAL_ROC_AUC} (Kaggle test splits)",
            served["roc_auc"][0] >= GOAL_ROC_AUC,
            served["roc_auc"][0],
        ),
        (
            f"mean F1(fail) >= {GOAL_F1_FAIL}, rule on (Kaggle test splits)",
            served["f1_fail"][0] >= GOAL_F1_FAIL,
            served["f1_fail"][0],
        ),
        (
            f"F1(fail) >= {GOAL_F1_FAIL}, rule on (synthetic population)",
            served["big_f1_fail"] >= GOAL_F1_FAIL,
            served["big_f1_fail"],
        ),
        (
            f"F1(fail) >= {GOAL_F1_FAIL}, rule on (least-squares population)",
            served["ls_f1_fail"] >= GOAL_F1_FAIL,
            served["ls_f1_fail"],
        ),
        (
            f"mean ROC-AUC >= {GOAL_ROC_AUC} (least-squares population)",
            served["ls_roc_auc"] >= GOAL_ROC_AUC,
            served["ls_roc_auc"],
        ),
    ]
    for feature, limit in GOAL_GAPS.items():
        for key, where in (
            ("", "Kaggle test rows, pooled"),
            ("big_", "synthetic population"),
            ("ls_", "least-squares population"),
        ):
            value = served[f"{key}gap_{feature}"]
            out.append((f"fail-recall gap {SHORT[feature]} <= {limit} ({where})", value <= limit, value))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of splits (seeds 0..N-1)")
    parser.add_argument("--big", type=int, default=100_000, help="students in each population sample")
    parser.add_argument("--checks", type=int, default=5, help="independent 23,000-student samples to score")
    parser.add_argument("--files", type=int, default=0, help="independent synthetic files for the noise band")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Kaggle StudentsPerformance.csv")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any goal is not met")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds: need at least 2 to report a standard deviation")
    if not args.data.exists():
        parser.error(f"--data: {args.data.resolve()} does not exist")

    students = load_students(args.data)
    populations = {
        "big": synthetic.sample(args.big, seed=BIG_SEED),
        "ls": least_squares_population(students, args.big, BIG_SEED + 1),
    }
    checks = [least_squares_population(students, CHECK_ROWS, BIG_SEED + 2 + i) for i in range(args.checks)]
    runs = Runs()
    extras: dict[str, list[Any]] = defaultdict(list)
    with threadpool_limits(limits=1):
        for seed in tqdm(range(args.seeds), desc="splits", file=sys.stderr):
            run_split(students, seed, populations, runs, extras, checks)
        band = noise_band(args.files, args.seeds) if args.files else None

    order = [SERVED, *ALTERNATIVES.values(), UNAWARE]
    order += [n for n in runs.test if n not in order]
    summary = runs.table(order)
    print(markdown_table(summary, args.seeds))
    print()
    print(population_table(summary, "big", f"{args.big:,} new students from exampass_pipeline.ml.synthetic"))
    print()
    print(
        population_table(
            summary, "ls", f"{args.big:,} new students, maths = the file's least squares + noise"
        )
    )
    print()
    if extras["check"]:
        check = pd.DataFrame(extras["check"])
        cols = ["roc_auc", "f1_fail", *(f"gap_{f}" for f in GOAL_GAPS)]
        print(
            f"Served rule on {args.checks} independent {CHECK_ROWS:,}-student samples (least-squares population), "
            f"{len(check)} model x sample pairs:"
        )
        print(
            check[cols]
            .describe(percentiles=[0.5, 0.95])
            .loc[["mean", "50%", "95%", "max"]]
            .round(3)
            .to_markdown()
        )
        print()
    report_extras(extras, args.seeds)
    if band is not None:
        print(f"\nNoise band: the served procedure on {len(band)} independent 1,000-student synthetic files")
        print(
            band.describe(percentiles=[0.05, 0.5, 0.95])
            .loc[["mean", "5%", "50%", "95%"]]
            .round(3)
            .to_markdown()
        )
    print()
    results = goals(summary)
    for text, ok, value in results:
        print(f"{'PASS' if ok else 'FAIL'}: {text} ({value:.4f})")
    return 1 if args.strict and not all(ok for _, ok, _ in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
