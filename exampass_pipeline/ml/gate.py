"""The champion gate: may this challenger replace the served model?

Three questions, in order; the first "no" decides:

1. **Is it a regression?** Test ROC-AUC no worse than the champion's, re-scored on the *same* current test
   split, within ``promotion_margin``. No: ``rejected`` (registered, never served), as before.
2. **Does it also hold on the trusted set?** The same margin rule on the curated test rows, which production
   feedback never enters (``trust.split_by_source``). The current split holds production rows, so whoever
   controls the feedback also writes part of that exam; the trusted set they cannot touch.
3. **Did its behaviour move?** On the trusted set, for every value of every categorical feature, the mean
   pass probability and the flag rate of champion and challenger. A shift beyond the bound (set from the
   noise of honest retrains, docs/security.md) means the new labels say something different about a group
   of students; a campaign against one group shows exactly that.

A challenger that fails 2 or 3 is not rejected outright: it becomes ``pending_approval``. The world does
change (a harder exam makes every school's students score lower for the same background), and then the old
trusted set is out of date rather than the labels wrong. Two ways through:

* **corroboration**: a moved segment is let through when at least ``corroboration_min_clients`` independent
  clients each report, for that segment, maths scores significantly off the curated model's expectation in
  the direction of the move (one-sided z-test of their mean standardised residual). One compromised key
  cannot corroborate itself;
* **approval**: a person with the pipeline's MLflow rights runs ``exampass-approve VERSION`` (the alert says
  so); the approval is recorded on the version with who gave it.

This module never imports dagster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.registry import LoadedModel
from exampass_pipeline.ml import dataset
from exampass_pipeline.ml.trust import PlausibilityModel

Status = Literal["promoted", "rejected", "pending_approval"]
MIN_FLAG_CHANGES = 3


@dataclass(frozen=True)
class Bounds:
    """The numbers the gate judges by (from the Thresholds resource)."""

    margin: float
    max_probability_shift: float
    max_flag_shift: float
    min_segment_rows: int
    corroboration_min_clients: int
    corroboration_min_rows: int
    corroboration_alpha: float


@dataclass(frozen=True)
class Comparison:
    """One margin-rule comparison of challenger and champion ROC-AUC on one labelled set."""

    name: str
    n: int
    candidate_auc: float
    champion_auc: float
    margin: float

    @property
    def passed(self) -> bool:
        return self.candidate_auc >= self.champion_auc - self.margin

    def sentence(self) -> str:
        sign = ">=" if self.passed else "<"
        return (
            f"ROC-AUC {self.candidate_auc:.4f} {sign} champion {self.champion_auc:.4f} - margin {self.margin} "
            f"on the {self.name} ({self.n} rows)"
        )


@dataclass(frozen=True)
class Shift:
    """How the challenger's answers for one group of trusted students differ from the champion's."""

    feature: str
    value: str
    n: int
    champion_pass_probability: float
    candidate_pass_probability: float
    champion_flag_rate: float
    candidate_flag_rate: float

    @property
    def probability_shift(self) -> float:
        return self.candidate_pass_probability - self.champion_pass_probability

    @property
    def flag_shift(self) -> float:
        return self.candidate_flag_rate - self.champion_flag_rate

    def beyond(self, bounds: Bounds) -> bool:
        """Judged only for segments of ``min_segment_rows``; a flag-rate move must also be at least
        MIN_FLAG_CHANGES students, or one borderline student in a group of 13 would block every retrain."""
        if self.n < bounds.min_segment_rows:
            return False
        flags_moved = (
            abs(self.flag_shift) > bounds.max_flag_shift and abs(self.flag_shift) * self.n >= MIN_FLAG_CHANGES
        )
        return abs(self.probability_shift) > bounds.max_probability_shift or flags_moved

    def sentence(self) -> str:
        return (
            f"{self.feature}={self.value} ({self.n} trusted students): mean pass probability "
            f"{self.champion_pass_probability:.3f} -> {self.candidate_pass_probability:.3f} "
            f"({self.probability_shift:+.3f}), flag rate {self.champion_flag_rate:.3f} -> "
            f"{self.candidate_flag_rate:.3f} ({self.flag_shift:+.3f})"
        )


@dataclass
class GateDecision:
    status: Status
    reason: str
    comparisons: list[Comparison] = field(default_factory=list)
    shifts: list[Shift] = field(default_factory=list)
    moved: list[Shift] = field(default_factory=list)
    corroborated_by: dict[str, list[str]] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow and Dagster: both comparisons and the largest behaviour shifts."""
        out: dict[str, float] = {}
        for comparison in self.comparisons:
            key = "trusted" if comparison.name == TRUSTED else "test"
            out[f"gate_{key}_roc_auc_candidate"] = comparison.candidate_auc
            out[f"gate_{key}_roc_auc_champion"] = comparison.champion_auc
        if self.shifts:
            out["gate_max_probability_shift"] = max(abs(s.probability_shift) for s in self.shifts)
            out["gate_max_flag_shift"] = max(abs(s.flag_shift) for s in self.shifts)
        return out

    def shifts_frame(self) -> pd.DataFrame:
        rows = [
            {
                "feature": s.feature,
                "value": s.value,
                "n": s.n,
                "champion_pass_probability": s.champion_pass_probability,
                "candidate_pass_probability": s.candidate_pass_probability,
                "probability_shift": s.probability_shift,
                "champion_flag_rate": s.champion_flag_rate,
                "candidate_flag_rate": s.candidate_flag_rate,
                "flag_shift": s.flag_shift,
                "moved": s in self.moved,
            }
            for s in self.shifts
        ]
        return pd.DataFrame(rows)


CURRENT = "current test split"
TRUSTED = "trusted set"


def _auc(model: LoadedModel, frame: pd.DataFrame) -> float:
    y = frame[schema.LABEL].astype(bool).to_numpy()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, model.pass_probability(frame)))


def compare(
    name: str, candidate: LoadedModel, champion: LoadedModel, frame: pd.DataFrame, margin: float
) -> Comparison:
    return Comparison(name, len(frame), _auc(candidate, frame), _auc(champion, frame), margin)


def behaviour(candidate: LoadedModel, champion: LoadedModel, trusted: pd.DataFrame) -> list[Shift]:
    """Per value of every categorical feature: both models' mean pass probability and flag rate."""
    p_new, p_old = candidate.pass_probability(trusted), champion.pass_probability(trusted)
    flag_new, flag_old = ~candidate.predicted_pass(trusted), ~champion.predicted_pass(trusted)
    shifts = []
    for feature in schema.CATEGORICAL_FEATURES:
        values = trusted[feature].astype(str).to_numpy()
        for value in schema.CATEGORIES[feature]:
            mask = values == value
            if mask.any():
                shifts.append(
                    Shift(
                        feature,
                        value,
                        int(mask.sum()),
                        float(p_old[mask].mean()),
                        float(p_new[mask].mean()),
                        float(flag_old[mask].mean()),
                        float(flag_new[mask].mean()),
                    )
                )
    return shifts


def corroborating_clients(
    shift: Shift, production: pd.DataFrame, plausibility: PlausibilityModel, bounds: Bounds
) -> list[str]:
    """Clients whose own reports, for this segment, are significantly off the curated expectation in the
    direction the model moved (lower pass probability: scores below what was expected)."""
    if production.empty:
        return []
    rows = production[production[shift.feature].astype(str) == shift.value]
    if rows.empty:
        return []
    z = pd.Series(plausibility.z(rows), index=rows.index)
    direction = -1.0 if shift.probability_shift < 0 else 1.0
    critical = float(stats.norm.ppf(1 - bounds.corroboration_alpha))
    clients = []
    for client, group in z.groupby(rows[dataset.CLIENT_COLUMN].astype(str)):
        n = len(group)
        if n >= bounds.corroboration_min_rows and direction * float(group.mean()) * math.sqrt(n) > critical:
            clients.append(str(client))
    return sorted(clients)


def decide(
    candidate: LoadedModel,
    champion: LoadedModel | None,
    test_split: pd.DataFrame,
    trusted: pd.DataFrame,
    production: pd.DataFrame,
    plausibility: PlausibilityModel,
    bounds: Bounds,
) -> GateDecision:
    """Promote, reject, or hold for approval (see the module docstring for the rules and why)."""
    if champion is None:
        return GateDecision(
            "promoted", f"no champion yet; new test ROC-AUC {_auc(candidate, test_split):.4f}"
        )
    if champion.version == candidate.version:
        return GateDecision("promoted", "this version is already the champion")
    current = compare(CURRENT, candidate, champion, test_split, bounds.margin)
    if not current.passed:
        return GateDecision("rejected", current.sentence() + "; registered but not served", [current])
    trusted_cmp = compare(TRUSTED, candidate, champion, trusted, bounds.margin)
    comparisons = [current, trusted_cmp]
    shifts = behaviour(candidate, champion, trusted)
    moved = [s for s in shifts if s.beyond(bounds)]
    corroborated = {
        f"{s.feature}={s.value}": corroborating_clients(s, production, plausibility, bounds) for s in moved
    }
    unexplained = [
        s for s in moved if len(corroborated[f"{s.feature}={s.value}"]) < bounds.corroboration_min_clients
    ]
    held = [] if trusted_cmp.passed else [trusted_cmp.sentence()]
    if unexplained:
        held.append(
            f"behaviour moved beyond the bound (pass probability {bounds.max_probability_shift}, flag rate "
            f"{bounds.max_flag_shift}) for {'; '.join(s.sentence() for s in unexplained)}; corroborated by "
            f"{_corroboration_text(corroborated, unexplained)}"
        )
    if held:
        reason = f"{'; '.join(held)}; held for approval: run `exampass-approve {candidate.version}`"
        return GateDecision("pending_approval", reason, comparisons, shifts, moved, corroborated)
    reason = f"{current.sentence()}; {trusted_cmp.sentence()}"
    if moved:
        reason += "; behaviour moved, corroborated by independent clients: " + "; ".join(
            f"{k} by {', '.join(v)}" for k, v in corroborated.items()
        )
    return GateDecision("promoted", reason, comparisons, shifts, moved, corroborated)


def _corroboration_text(corroborated: dict[str, list[str]], unexplained: list[Shift]) -> str:
    parts = []
    for s in unexplained:
        clients = corroborated.get(f"{s.feature}={s.value}", [])
        parts.append(
            f"{s.feature}={s.value}: {len(clients)} client(s){' (' + ', '.join(clients) + ')' if clients else ''}"
        )
    return "; ".join(parts)


def bounds_from(values: Any) -> Bounds:
    """Bounds from anything carrying the threshold fields (the Dagster resource or Settings)."""
    return Bounds(
        margin=values.promotion_margin,
        max_probability_shift=values.behaviour_max_probability_shift,
        max_flag_shift=values.behaviour_max_flag_shift,
        min_segment_rows=values.behaviour_min_segment_rows,
        corroboration_min_clients=values.corroboration_min_clients,
        corroboration_min_rows=values.corroboration_min_rows,
        corroboration_alpha=values.corroboration_alpha,
    )
