"""The served decision: how a pass probability becomes ``predicted_pass``, stored with every model version.

A ``DecisionRule`` is either one cut-off for everybody, or one cut-off per combination of a few categorical
features (``group_thresholds``): a student passes when P(pass) >= the cut-off of their combination. The
rule is data, not code: the training run fits it (``exampass_pipeline.ml.fairness``), ``registry.log_model``
writes ``to_dict()`` into the MLmodel ``metadata`` next to ``threshold``, and the pipeline
(``registry.LoadedModel.thresholds``) and the API (``Bundle.thresholds``) read it back through
``from_dict``, so both apply the very same numbers. The served *probability* is never changed by it.

This module is imported by the API process through ``registry``: numpy, pandas and ``schema`` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from exampass_pipeline.contract import schema

SINGLE: Final = "single_threshold"
GROUPS: Final = "group_thresholds"
EQUAL_FAIL_RECALL: Final = (
    "equal fail-class recall (equal opportunity for the fail class; TNR parity, pass = 1)"
)
MAX_F1: Final = "largest expected F1(fail)"

Cell = tuple[str, ...]


def _cutoff(value: Any, what: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"{what}: {value!r} is not a pass-probability cut-off in [0, 1]")
    return number


@dataclass(frozen=True)
class DecisionRule:
    """``threshold`` for everybody, unless ``features`` name the groups that each get their own cut-off.

    ``cutoffs`` maps a combination of values of ``features`` (in that order) to its cut-off; a combination
    without one (none, once fitted: every combination is) falls back to ``threshold``. ``criterion``,
    ``target_fail_recall`` and ``fitted_on`` say how the numbers were chosen, for /model and the card.
    """

    threshold: float
    features: tuple[str, ...] = ()
    cutoffs: Mapping[Cell, float] = field(default_factory=dict)
    criterion: str = MAX_F1
    target_fail_recall: float | None = None
    fitted_on: str = ""

    def __post_init__(self) -> None:
        _cutoff(self.threshold, "threshold")
        unknown = [f for f in self.features if f not in schema.CATEGORIES]
        if unknown or len(set(self.features)) != len(self.features):
            raise ValueError(
                f"features: {list(self.features)!r} must be distinct categorical features of the schema"
            )
        for cell, value in self.cutoffs.items():
            if len(cell) != len(self.features) or any(
                v not in schema.CATEGORIES[f] for f, v in zip(self.features, cell, strict=False)
            ):
                raise ValueError(f"cutoffs: {cell!r} is not a combination of {', '.join(self.features)}")
            _cutoff(value, f"cutoffs[{cell!r}]")

    @classmethod
    def single(cls, threshold: float, *, criterion: str = MAX_F1, fitted_on: str = "") -> DecisionRule:
        """One cut-off for everybody (every model logged before group thresholds existed reads as this)."""
        return cls(float(threshold), criterion=criterion, fitted_on=fitted_on)

    @property
    def kind(self) -> str:
        return GROUPS if self.features else SINGLE

    def cutoff(self, record: Mapping[str, Any]) -> float:
        """The cut-off for one student record (any mapping holding the rule's features)."""
        if not self.features:
            return self.threshold
        return float(self.cutoffs.get(tuple(str(record[f]) for f in self.features), self.threshold))

    def grid(self) -> np.ndarray:
        """The cut-off of every combination of the rule's features, indexed by schema category positions."""
        shape = tuple(len(schema.CATEGORIES[f]) for f in self.features)
        out = np.full(shape, self.threshold, dtype=np.float64)
        for cell, value in self.cutoffs.items():
            index = tuple(schema.CATEGORIES[f].index(v) for f, v in zip(self.features, cell, strict=True))
            out[index] = value
        return out

    def table(self) -> np.ndarray:
        """The cut-off for every combination of *all* categorical features, shape (2, 5, 6, 2, 2).

        Indexed by the positions of the values in ``schema.CATEGORIES`` (the API's integer codes), so a batch
        of encoded rows finds its cut-offs with one fancy-indexing step.
        """
        grid = self.grid()
        axes = [schema.CATEGORICAL_FEATURES.index(f) for f in self.features]
        shape = [len(schema.CATEGORIES[f]) for f in schema.CATEGORICAL_FEATURES]
        # Move the rule's axes into schema order, then broadcast over the features the rule ignores.
        expanded = np.transpose(grid, np.argsort(axes).tolist())
        view_shape = [1] * len(shape)
        for axis in sorted(axes):
            view_shape[axis] = shape[axis]
        return np.broadcast_to(expanded.reshape(view_shape), shape).copy()

    def for_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The cut-off of each row of ``frame`` (a value outside the schema gets ``threshold``)."""
        if not self.features:
            return np.full(len(frame), self.threshold, dtype=np.float64)
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ValueError(f"decision rule: missing column(s) {', '.join(missing)}")
        grid = self.grid()
        codes = [
            pd.Categorical(frame[f].astype(str), categories=list(schema.CATEGORIES[f])).codes
            for f in self.features
        ]
        known = np.logical_and.reduce([c >= 0 for c in codes])
        out = np.full(len(frame), self.threshold, dtype=np.float64)
        out[known] = grid[tuple(c[known] for c in codes)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML data for the MLmodel metadata: one readable entry per combination."""
        return {
            "kind": self.kind,
            "threshold": float(self.threshold),
            "features": list(self.features),
            "cutoffs": [
                {**dict(zip(self.features, cell, strict=True)), "threshold": float(value)}
                for cell, value in sorted(self.cutoffs.items(), key=lambda kv: self._sort_key(kv[0]))
            ],
            "criterion": self.criterion,
            "target_fail_recall": self.target_fail_recall,
            "fitted_on": self.fitted_on,
        }

    def _sort_key(self, cell: Cell) -> tuple[int, ...]:
        return tuple(schema.CATEGORIES[f].index(v) for f, v in zip(self.features, cell, strict=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, fallback_threshold: float = 0.5) -> DecisionRule:
        """The rule ``to_dict`` wrote; without one (older versions), a single cut-off at the given threshold."""
        if not data:
            return cls.single(fallback_threshold)
        features = tuple(str(f) for f in data.get("features") or ())
        cutoffs: dict[Cell, float] = {}
        for entry in data.get("cutoffs") or ():
            cell = tuple(str(entry[f]) for f in features)
            cutoffs[cell] = _cutoff(entry["threshold"], f"cutoffs[{cell!r}]")
        target = data.get("target_fail_recall")
        return cls(
            threshold=_cutoff(data.get("threshold", fallback_threshold), "threshold"),
            features=features,
            cutoffs=cutoffs,
            criterion=str(data.get("criterion", MAX_F1)),
            target_fail_recall=None if target is None else float(target),
            fitted_on=str(data.get("fitted_on", "")),
        )

    def summary(self) -> str:
        """One sentence for reports and logs."""
        if not self.features:
            return f"pass when P(pass) >= {self.threshold:.3f}"
        values = list(self.cutoffs.values()) or [self.threshold]
        target = (
            f", each set for a fail-class recall of {self.target_fail_recall:.2f}"
            if self.target_fail_recall is not None
            else ""
        )
        return (
            f"pass when P(pass) >= the cut-off of the student's {' x '.join(self.features)} group "
            f"({len(self.cutoffs)} groups, cut-offs {min(values):.3f} to {max(values):.3f}{target})"
        )
