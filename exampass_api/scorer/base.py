"""The interface the service scores through, whichever model family sits behind it.

Batch methods take the (codes, nums) arrays from ``encoding.encode`` so that a batch is encoded once;
``explain_one`` takes the validated record itself because at one row building arrays costs more than scoring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from exampass_api.scorer.encoding import FloatArray, IndexArray, encode


class Scorer(ABC):
    """A compiled model: probabilities and per-feature contributions from (codes, nums).

    Contributions are in ``units`` (log-odds of passing for the classifiers, maths points for the score
    model), measured from ``reference_value`` (the reference student's value in those units, or None where
    the method is not additive). ``reference_log_odds`` is the same number for log-odds scorers, else None.
    """

    kind: str = "abstract"
    method: str = ""
    units: str = "log-odds"
    reference_log_odds: float | None = None

    @property
    def reference_value(self) -> float | None:
        return self.reference_log_odds

    @abstractmethod
    def predict_proba(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        """P(pass) per row, shape (n,)."""

    @abstractmethod
    def explain(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(P(pass) (n,), contributions (n, len(FEATURES)) in FEATURES order)."""

    @abstractmethod
    def reference(self) -> dict[str, Any]:
        """The reference the contributions are measured from, for GET /model."""

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        """One record; scorers override this where pure Python beats numpy's per-call overhead."""
        codes, nums = encode([record])
        proba, contrib = self.explain(codes, nums)
        return float(proba[0]), contrib[0].tolist()
