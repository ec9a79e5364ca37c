"""The score regression (``ScoreProbitClassifier``), compiled like the logistic model: table lookups, a dot
product, then the normal CDF instead of the sigmoid.

The model predicts an expected maths score ``mu`` and reads the pass probability off a normal predictive
distribution: ``P(pass) = Phi((mu - pass_mark) / sigma)`` (pass_mark 49.5: scores are whole points).

Explanation: exact, in **maths points**. ``contribution_f = sum_j coef_j * (x_j - r_j)`` over the columns of
feature f, against the same reference student as the logistic scorer (scores at their training mean, each
categorical feature averaged uniformly over its categories). The contributions add up to
``mu - reference_value``: "writing score +8.1" means this student's writing score moves the expected maths
score 8.1 points above the reference student's. Points were chosen over the probit z (the same numbers
divided by sigma) because a teacher reads them without a formula, and the decision is a cut-off on mu.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from exampass_api.scorer.encoding import Design, FloatArray
from exampass_api.scorer.linear import LinearScorer

_SQRT2 = math.sqrt(2.0)


class ScoreScorer(LinearScorer):
    """ScoreProbitClassifier: expected maths score by table lookups and a dot product, then Phi."""

    kind = "score"
    units = "maths points"
    method = (
        "exact linear decomposition of the expected maths score (points) against the reference student; "
        "P(pass) = Phi((expected maths - pass mark) / sigma)"
    )

    def __init__(self, design: Design, estimator: Any) -> None:
        super().__init__(design, estimator)
        self.pass_mark = float(estimator.pass_mark)
        self.sigma = float(estimator.scale_)
        # LinearScorer computed the reference student's linear predictor: here an expected maths score.
        self.reference_score = float(self.reference_log_odds) if self.reference_log_odds is not None else 0.0
        self.reference_log_odds = None

    @property
    def reference_value(self) -> float | None:
        return self.reference_score

    def _link(self, eta: FloatArray) -> FloatArray:
        from scipy.special import ndtr

        proba: FloatArray = ndtr((eta - self.pass_mark) / self.sigma)
        return proba

    def _link_one(self, eta: float) -> float:
        return 0.5 * math.erfc(-((eta - self.pass_mark) / self.sigma) / _SQRT2)

    def linear_predictor_for(self, proba: float) -> float:
        """The expected maths score at which ``Phi((mu - pass_mark) / sigma)`` reaches ``proba``."""
        if not 0.0 < proba < 1.0:
            return math.inf if proba >= 1.0 else -math.inf
        return self.pass_mark + self.sigma * NormalDist().inv_cdf(proba)

    def reference(self) -> dict[str, Any]:
        out = self.design.reference_description()
        out["expected_math_score"] = self.reference_score
        out["pass_mark"] = self.pass_mark
        out["sigma"] = self.sigma
        return out
