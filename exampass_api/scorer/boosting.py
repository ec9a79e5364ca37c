"""HistGradientBoostingClassifier, compiled to the same flat tree table as the forest (``forest.Forest``).

Explanation: path attribution (Saabas), as for the forest, but boosting's output is already log-odds
(baseline plus the sum of leaf values), so the moves need no rescaling: they add up exactly to
``logit(p) - reference_log_odds``, the reference being the baseline plus every tree's root expectation.

The predictors store shrunk values at the leaves only, so the internal nodes' expectations are rebuilt at
load time as count-weighted means of their children. The arithmetic is float64 throughout, as in
scikit-learn's own predictor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exampass_api.scorer.base import Scorer
from exampass_api.scorer.encoding import Design, FloatArray, IndexArray, UnsupportedPipeline, _expit
from exampass_api.scorer.forest import Forest, TreeSpec


class BoostingScorer(Scorer):
    """HistGradientBoostingClassifier: baseline plus the sum of leaf values, then the sigmoid."""

    kind = "boosting"
    method = (
        "tree path attribution (Saabas) in log-odds; reference = baseline plus every tree's root expectation"
    )

    def __init__(self, design: Design, estimator: Any) -> None:
        if getattr(estimator, "n_trees_per_iteration_", 1) != 1 or len(estimator.classes_) != 2:
            raise UnsupportedPipeline("boosting model is not a binary classifier")
        if estimator.n_features_in_ != design.width:
            raise UnsupportedPipeline("boosting width does not match the encoder")
        specs: list[TreeSpec] = []
        for (predictor,) in estimator._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise UnsupportedPipeline("native categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            expected = np.where(leaf, nodes["value"], 0.0).astype(np.float64)
            # Internal values are not shrunk in the predictor; rebuild them as the count-weighted leaf mean.
            weight = nodes["count"].astype(np.float64)
            for i in range(len(nodes) - 1, -1, -1):
                if not leaf[i]:
                    left, right = nodes["left"][i], nodes["right"][i]
                    wl, wr = weight[left], weight[right]
                    expected[i] = (wl * expected[left] + wr * expected[right]) / (wl + wr)
                    weight[i] = wl + wr
            specs.append(
                {
                    "left": nodes["left"].astype(np.intp),
                    "right": nodes["right"].astype(np.intp),
                    "feature": nodes["feature_idx"].astype(np.intp),
                    "threshold": nodes["num_threshold"],
                    "is_leaf": leaf,
                    "expected": expected,
                    "depth": int(nodes["depth"].max()),
                }
            )
        self.design = design
        self.forest = Forest.build(specs, design.column_feature)
        self.baseline = float(np.asarray(estimator._baseline_prediction).reshape(-1)[0])
        self.reference_log_odds = self.baseline + float(self.forest.expected[self.forest.roots].sum())

    def _leaves(self, codes: IndexArray, nums: FloatArray) -> IndexArray:
        return self.forest.leaves(self.design.transform(codes, nums))

    def predict_proba(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        from scipy.special import expit

        proba: FloatArray = expit(self.baseline + self.forest.expected[self._leaves(codes, nums)].sum(axis=1))
        return proba

    def explain(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
        from scipy.special import expit

        sums = self.forest.sum_leaves(self._leaves(codes, nums))
        return expit(self.baseline + sums[:, 0]), sums[:, 1:]

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        sums = self.forest.sum_row(self.design.row(record))
        return _expit(self.baseline + float(sums[0])), sums[1:].tolist()

    def reference(self) -> dict[str, Any]:
        return {"baseline_log_odds": self.baseline, "trees": len(self.forest.roots)}
