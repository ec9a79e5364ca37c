"""What retraining trusts: the curated data decides, production feedback only helps.

Labelled production rows teach a retrain how the population changes, which is right; but whoever sends the
feedback must not also write the exam the models are graded on, nor steer the model through a few lies. So:

* **The trusted set** is the test part of the *curated* rows (the Kaggle file or its synthetic stand-in),
  cut by the same seeded, stratified rule every time: for one data file and seed it is always the same rows,
  and no production row ever enters it (``split_by_source``).
* **Plausibility screening** (``PlausibilityModel``): a least-squares model of the maths score, fitted on
  curated training rows only, says what a student's reading, writing and background make likely. A
  reported score outside a wide predictive interval (``width`` residual standard deviations; the residuals
  of this data are normal) is quarantined with its reason and never trains. One honest row in ~16,000 falls
  outside 4 sd; a "this group all failed" campaign lands 30-60 points away.
* **A cap per client** (``cap_clients``): no one key's rows are more than a set share of a retrain's
  training table; beyond it that client's rows are down-sampled (seeded), and the retrain says so.

``gate`` uses the trusted set and the same plausibility model to judge a challenger before promotion.
This module never imports dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import dataset
from exampass_pipeline.ml.modeling import Splits, split_sizes, split_students

QUARANTINE_COLUMNS = (
    "prediction_id",
    "client",
    "partition_date",
    schema.MATH_SCORE,
    "expected_math_score",
    "z",
    "reason",
)


# The curated rows are always cut with this seed: the trusted set is then the same exam on every retrain for
# one data file, whatever seed a run chooses for the production rows.
CURATED_SEED = 42


def is_curated(table: pd.DataFrame) -> np.ndarray:
    """Rows from the curated data file (any source other than production feedback)."""
    return table[dataset.SOURCE_COLUMN].isin(dataset.CURATED_SOURCES).to_numpy()


@dataclass(frozen=True)
class SourceSplits:
    """The 70/10/20 cut of curated and production rows, each cut on its own, and the trusted set."""

    splits: Splits
    trusted: pd.DataFrame


def split_by_source(table: pd.DataFrame, seed: int) -> SourceSplits:
    """Cut curated and production rows separately, so the curated test part never depends on production.

    Cutting the whole table at once would let every new feedback row move which curated students land in
    test; cut on their own (always with CURATED_SEED), the curated rows give the same trusted set on every
    retrain for one data file. ``seed`` cuts the production rows: the same 70/10/20 rule when there are
    enough of them to stratify, else they all train (a handful of rows cannot say much in an exam anyway).
    """
    curated_mask = is_curated(table)
    curated = split_students(table[curated_mask], seed=CURATED_SEED)
    production = table[~curated_mask]
    if _splittable(production):
        prod = split_students(production, seed=seed)
        parts = [
            (curated.train, prod.train),
            (curated.validation, prod.validation),
            (curated.test, prod.test),
        ]
    else:
        empty = production.iloc[0:0]
        parts = [(curated.train, production), (curated.validation, empty), (curated.test, empty)]
    train, validation, test = (pd.concat(pair).sort_index() for pair in parts)
    return SourceSplits(Splits(train=train, validation=validation, test=test), trusted=curated.test)


def _splittable(production: pd.DataFrame) -> bool:
    labels = production[schema.LABEL].astype(bool)
    return len(production) >= 30 and min(int(labels.sum()), int((~labels).sum())) >= 3


def expected_sizes(table: pd.DataFrame) -> dict[str, int]:
    """The part sizes ``split_by_source`` gives: 70/10/20 of the curated rows plus, when they can be
    stratified, 70/10/20 of the production rows (else all of them train). For the split check."""
    curated = split_sizes(int(is_curated(table).sum()))
    production = table[~is_curated(table)]
    extra = split_sizes(len(production)) if _splittable(production) else {"train": len(production)}
    return {part: curated[part] + extra.get(part, 0) for part in curated}


def plausibility_rows(curated: pd.DataFrame) -> pd.DataFrame:
    """The curated rows the plausibility model learns from: all but the trusted set (train + validation)."""
    parts = split_students(curated[is_curated(curated)], seed=CURATED_SEED)
    return pd.concat([parts.train, parts.validation])


# ------------------------------------------------------------------------------------------ plausibility
def _design(frame: pd.DataFrame) -> np.ndarray:
    """Intercept, one-hot categories (first level dropped) and the two scores: the additive model that fits
    this data as well as any flexible learner (docs/model.md, "How high can F1(fail) go?")."""
    columns = [np.ones(len(frame))]
    for name in schema.CATEGORICAL_FEATURES:
        values = frame[name].astype(str).to_numpy()
        columns += [(values == level).astype(float) for level in schema.CATEGORIES[name][1:]]
    columns += [frame[name].to_numpy(dtype=float) for name in schema.NUMERIC_FEATURES]
    return np.column_stack(columns)


@dataclass(frozen=True)
class PlausibilityModel:
    """The maths score a student's other fields make likely, learned from curated rows only."""

    coef: np.ndarray
    sigma: float
    n: int

    @classmethod
    def fit(cls, curated: pd.DataFrame) -> PlausibilityModel:
        if not is_curated(curated).all():
            raise ValueError("PlausibilityModel.fit: only curated rows may teach what is plausible")
        x = _design(curated)
        y = curated[schema.MATH_SCORE].to_numpy(dtype=float)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        dof = max(len(y) - x.shape[1], 1)
        sigma = float(np.sqrt(np.sum((y - x @ coef) ** 2) / dof))
        return cls(coef=coef, sigma=sigma, n=len(y))

    def expected(self, frame: pd.DataFrame) -> np.ndarray:
        expected: np.ndarray = _design(frame) @ self.coef
        return expected

    def z(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised residual of each reported maths score: (reported - expected) / sigma."""
        z: np.ndarray = (frame[schema.MATH_SCORE].to_numpy(dtype=float) - self.expected(frame)) / self.sigma
        return z


@dataclass
class Screened:
    """Production rows split into the plausible ones (they may train) and the quarantined ones, with why."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame


def screen(production: pd.DataFrame, model: PlausibilityModel, width: float) -> Screened:
    """Quarantine every reported score more than ``width`` residual sds from what its student makes likely."""
    if production.empty:
        return Screened(production, pd.DataFrame(columns=list(QUARANTINE_COLUMNS)))
    z = model.z(production)
    return _quarantine(production, model, np.abs(z) > width, width)


def screen_clients(production: pd.DataFrame, model: PlausibilityModel, biases: list[Bias]) -> Screened:
    """Quarantine the reports of each flagged client for the group its reports disagree about."""
    bad = np.zeros(len(production), dtype=bool)
    reasons = np.full(len(production), "", dtype=object)
    for bias in biases:
        mask = (
            segment_mask(production, bias.segment)
            & (production[dataset.CLIENT_COLUMN] == bias.client).to_numpy()
        )
        reasons[mask & ~bad] = bias.reason()
        bad |= mask
    screened = _quarantine(production, model, bad, 0.0)
    screened.quarantined["reason"] = reasons[bad].tolist()
    return screened


def _quarantine(
    production: pd.DataFrame, model: PlausibilityModel, bad: np.ndarray, width: float
) -> Screened:
    z = model.z(production)
    expected = model.expected(production)
    rows = production[bad]
    quarantined = pd.DataFrame(
        {
            "prediction_id": rows["prediction_id"].astype(str).to_numpy(),
            "client": rows[dataset.CLIENT_COLUMN].astype(str).to_numpy(),
            "partition_date": rows["partition_date"].to_numpy() if "partition_date" in rows else None,
            schema.MATH_SCORE: rows[schema.MATH_SCORE].to_numpy(dtype=int),
            "expected_math_score": np.round(expected[bad], 1),
            "z": np.round(z[bad], 2),
        }
    )
    quarantined["reason"] = [
        f"reported maths {score} is {abs(zz):.1f} sd {'below' if zz < 0 else 'above'} the {exp:.0f} its reading, "
        f"writing and background make likely (plausible: within {width:g} sd = {width * model.sigma:.0f} points)"
        for score, exp, zz in zip(
            quarantined[schema.MATH_SCORE], quarantined["expected_math_score"], z[bad], strict=True
        )
    ]
    return Screened(kept=production[~bad], quarantined=quarantined)


@dataclass(frozen=True)
class Bias:
    """One client's reports about one group of students, set against the median client's."""

    client: str
    segment: str
    n: int
    n_others: int
    mean_z: float
    others_mean_z: float
    p_value: float

    def reason(self) -> str:
        gap = self.mean_z - self.others_mean_z
        return (
            f"{self.client}'s reported maths for {self.segment} is {abs(gap):.1f} sd "
            f"{'below' if gap < 0 else 'above'} what the other clients report for the same students' "
            f"backgrounds ({self.n} of {self.n + self.n_others} reports, p = {self.p_value:.1e})"
        )


def biased_clients(
    production: pd.DataFrame, model: PlausibilityModel, *, alpha: float, min_rows: int, min_gap: float
) -> list[Bias]:
    """Clients whose reports for a group of students disagree with the other clients', beyond chance.

    Each report becomes a standardised residual against the curated model. For each group (every student,
    then every value of every categorical feature) the reference is the *median* of the clients' mean
    residuals, so one lying client cannot drag it; each client's mean is tested against it (z-test,
    residuals have sd 1), Holm-corrected over all comparisons, and flagged only when the gap is also at least
    ``min_gap`` sd. Lies that each look plausible (a few points below the truth) still shift one client's
    mean, and that is what this sees. A real change of the world moves every client alike and moves the
    median with them, so it is not flagged; with a single client there is nothing to compare with, and the
    gate's behaviour check is the defence.
    """
    if production.empty or production[dataset.CLIENT_COLUMN].nunique() < 2:
        return []
    z = model.z(production)
    clients = production[dataset.CLIENT_COLUMN].astype(str).to_numpy()
    candidates: list[Bias] = []
    for segment, mask in _groups(production):
        means = {}
        for client in sorted(set(clients[mask])):
            mine = mask & (clients == client)
            if int(mine.sum()) >= min_rows:
                means[client] = (float(z[mine].mean()), int(mine.sum()))
        if len(means) < 2:
            continue
        reference = float(np.median([mean for mean, _ in means.values()]))
        for client, (mean, n) in means.items():
            p = float(2 * stats.norm.sf(abs(mean - reference) * np.sqrt(n)))
            others = int(mask.sum()) - n
            candidates.append(Bias(client, segment, n, others, mean, reference, p))
    order = np.argsort([b.p_value for b in candidates])
    flagged: list[Bias] = []
    for rank, index in enumerate(order):
        bias = candidates[index]
        if bias.p_value * (len(candidates) - rank) >= alpha:
            break  # Holm: every later p-value is larger
        if abs(bias.mean_z - bias.others_mean_z) >= min_gap:
            flagged.append(bias)
    return flagged


def _groups(frame: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    groups: list[tuple[str, np.ndarray]] = [("all students", np.ones(len(frame), dtype=bool))]
    for feature in schema.CATEGORICAL_FEATURES:
        values = frame[feature].astype(str).to_numpy()
        groups += [(f"{feature}={value}", values == value) for value in schema.CATEGORIES[feature]]
    return groups


def segment_mask(frame: pd.DataFrame, segment: str) -> np.ndarray:
    if segment == "all students":
        return np.ones(len(frame), dtype=bool)
    feature, value = segment.split("=", 1)
    return (frame[feature].astype(str) == value).to_numpy()


def quarantine_counts(production: pd.DataFrame, quarantined: pd.DataFrame) -> pd.DataFrame:
    """Per client and day: rows reported, rows quarantined and the implausible share (for the WARN check)."""
    keys = [dataset.CLIENT_COLUMN, "partition_date"]
    if production.empty:
        return pd.DataFrame(columns=[*keys, "reported", "quarantined", "implausible_share"])
    reported = production.groupby(keys, dropna=False).size().rename("reported")
    bad = quarantined.groupby(["client", "partition_date"], dropna=False).size().rename("quarantined")
    bad.index = bad.index.set_names(keys)
    counts = pd.concat([reported, bad], axis=1).fillna(0).astype({"reported": int, "quarantined": int})
    counts["implausible_share"] = counts["quarantined"] / counts["reported"]
    return counts.reset_index().sort_values(keys, ignore_index=True)


# ------------------------------------------------------------------------------------------------- cap
@dataclass
class Capped:
    table: pd.DataFrame
    # client -> (rows it had, rows kept) for every client that was down-sampled
    capped: dict[str, tuple[int, int]] = field(default_factory=dict)


def cap_clients(table: pd.DataFrame, max_share: float, seed: int) -> Capped:
    """Down-sample every production client whose rows exceed ``max_share`` of the final table.

    The share is of the table the retrain learns from, after capping: with c = max_share and R the rows that
    are not this client's, a client keeps at most floor(c R / (1 - c)) rows. Curated rows are never capped.
    Clients are capped largest first, and the sample is seeded, so a retrain is reproducible.
    """
    if not 0 < max_share < 1:
        raise ValueError(f"max_share: {max_share!r} must be strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    out = table
    report: dict[str, tuple[int, int]] = {}
    production = table.loc[~is_curated(table), dataset.CLIENT_COLUMN].value_counts()
    for client, had in production.items():
        mask = (out[dataset.CLIENT_COLUMN] == client).to_numpy() & ~is_curated(out)
        others = len(out) - int(mask.sum())
        allowed = int(np.floor(max_share * others / (1 - max_share)))
        if had <= allowed:
            continue
        positions = np.flatnonzero(mask)
        drop = rng.choice(positions, size=had - allowed, replace=False)
        keep = np.ones(len(out), dtype=bool)
        keep[drop] = False
        out = out[keep]
        report[str(client)] = (int(had), allowed)
    return Capped(out, report)


def describe_cap(capped: dict[str, tuple[int, int]], max_share: float) -> str:
    if not capped:
        return f"no client above {max_share:.0%} of the training rows"
    parts = [f"{client}: {had} -> {kept}" for client, (had, kept) in sorted(capped.items())]
    return f"down-sampled to {max_share:.0%} of the training rows: " + "; ".join(parts)
