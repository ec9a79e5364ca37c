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
    """A compiled model: probabilities and per-feature log-odds contributions from (codes, nums)."""

    kind: str = "abstract"
    method: str = ""
    reference_log_odds: float | None = None

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
