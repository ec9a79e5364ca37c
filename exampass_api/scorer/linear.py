"""LogisticRegression, compiled to one table lookup per categorical feature, a dot product and a sigmoid.

Explanation: exact. ``contribution_f = sum_j coef_j * (x_j - r_j)`` over the columns of f, where r is the
reference student: every score at its training mean (``StandardScaler.mean_``; the pass mark when the
pipeline does not scale it) and every categorical feature averaged uniformly over its categories (i.e. the
coefficients centred per feature). They add up to ``logit(p) - reference_log_odds``.

One row is scored in pure Python from dicts keyed by category (``explain_one``): at n=1 numpy's per-call
overhead costs more than the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from exampass_api.scorer.base import Scorer
from exampass_api.scorer.encoding import (
    CATEGORICAL,
    N_CAT,
    N_FEATURES,
    NUMERIC,
    Design,
    FloatArray,
    IndexArray,
    UnsupportedPipeline,
    _expit,
)
from exampass_pipeline.contract import schema


class LinearScorer(Scorer):
    """LogisticRegression: one table lookup per categorical feature, a dot product, a sigmoid."""

    kind = "linear"
    method = "exact linear decomposition of the log-odds against the reference student"

    def __init__(self, design: Design, estimator: Any) -> None:
        coef = np.asarray(estimator.coef_, dtype=np.float64).reshape(-1)
        if coef.shape[0] != design.width:
            raise UnsupportedPipeline(
                f"model expects {coef.shape[0]} columns, the encoder makes {design.width}"
            )
        self.design = design
        self.intercept = float(np.asarray(estimator.intercept_).reshape(-1)[0])
        # Per categorical feature: the log-odds each category adds, and their mean (the reference).
        self.cat_weights = [table @ coef for table in design.cat_tables]
        self.cat_means = np.array([w.mean() for w in self.cat_weights])
        self.cat_centered = [w - w.mean() for w in self.cat_weights]
        self._cat_py = [
            dict(zip(schema.CATEGORIES[n], w.tolist(), strict=True))
            for n, w in zip(CATEGORICAL, self.cat_weights, strict=True)
        ]
        self._cat_centered_py = [
            dict(zip(schema.CATEGORIES[n], w.tolist(), strict=True))
            for n, w in zip(CATEGORICAL, self.cat_centered, strict=True)
        ]
        self.numeric = [(c.feature, float(coef[c.column]), c.shift, c.scale) for c in design.numeric]
        self._numeric_py = [(NUMERIC[i], i, w, shift, scale) for i, w, shift, scale in self.numeric]
        self.ref_z = [
            (w, (float(design.numeric_reference[i]) - shift) / scale) for i, w, shift, scale in self.numeric
        ]
        self.reference_log_odds = (
            self.intercept + float(self.cat_means.sum()) + sum(w * z for w, z in self.ref_z)
        )

    def _logit_and_contrib(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
        n = codes.shape[0]
        contrib = np.zeros((n, N_FEATURES), dtype=np.float64)
        logit = np.full(n, self.intercept)
        for j in range(N_CAT):
            logit += self.cat_weights[j][codes[:, j]]
            contrib[:, j] = self.cat_centered[j][codes[:, j]]
        for (i, w, shift, scale), (_, z_ref) in zip(self.numeric, self.ref_z, strict=True):
            z = (nums[:, i] - shift) / scale
            logit += w * z
            contrib[:, N_CAT + i] += w * (z - z_ref)
        return logit, contrib

    def _link(self, eta: FloatArray) -> FloatArray:
        """P(pass) from the linear predictor: the logistic function (the probit scorer overrides it)."""
        from scipy.special import expit

        proba: FloatArray = expit(eta)
        return proba

    def _link_one(self, eta: float) -> float:
        return _expit(eta)

    def predict_proba(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        return self._link(self._logit_and_contrib(codes, nums)[0])

    def explain(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
        logit, contrib = self._logit_and_contrib(codes, nums)
        return self._link(logit), contrib

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        logit = self.intercept
        contrib = [0.0] * N_FEATURES
        for j, name in enumerate(CATEGORICAL):
            value = record[name]
            logit += self._cat_py[j][value]
            contrib[j] = self._cat_centered_py[j][value]
        for (name, i, w, shift, scale), (_, z_ref) in zip(self._numeric_py, self.ref_z, strict=True):
            z = (record[name] - shift) / scale
            logit += w * z
            contrib[N_CAT + i] += w * (z - z_ref)
        return self._link_one(logit), contrib

    def linear_predictor_one(self, record: Mapping[str, Any]) -> float:
        """The log-odds (the expected maths score for the score model) of one validated student.

        With ``score_slopes`` and ``linear_predictor_for`` it gives advice its closed form: the predictor is
        linear in each score and the link is increasing, so the smallest passing rise is one division.
        """
        eta = self.intercept + sum(
            table[record[name]] for name, table in zip(CATEGORICAL, self._cat_py, strict=True)
        )
        for name, _, w, shift, scale in self._numeric_py:
            eta += w * (record[name] - shift) / scale
        return float(eta)

    def score_slopes(self) -> dict[str, float]:
        """How much the linear predictor moves per point of each score (zero for a score the model drops)."""
        slopes = dict.fromkeys(NUMERIC, 0.0)
        for name, _, w, _, scale in self._numeric_py:
            slopes[name] += w / scale
        return slopes

    def linear_predictor_for(self, proba: float) -> float:
        """The linear predictor at which the pass probability reaches ``proba``: the link's inverse."""
        if not 0.0 < proba < 1.0:
            return math.inf if proba >= 1.0 else -math.inf
        return math.log(proba) - math.log1p(-proba)

    def reference(self) -> dict[str, Any]:
        return self.design.reference_description()
