"""The slow path: the Pipeline itself, for any model the compiler does not reduce or does not reproduce.

It keeps the service answering (and explaining) with any estimator training might produce, at the cost of
one DataFrame and one ``predict_proba`` call per request.

Explanation: occlusion in log-odds, from one vectorised ``predict_proba`` call over the rows and all their
variants: logit(p) minus the mean logit with the feature set to each of its categories (a score: set to the
pass mark). Not additive, and ``reference_log_odds`` stays None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exampass_api.scorer.base import Scorer
from exampass_api.scorer.encoding import (
    CATEGORICAL,
    N_CAT,
    N_FEATURES,
    NUMERIC,
    FloatArray,
    IndexArray,
    _logit,
    decode_frame,
)
from exampass_pipeline.contract import schema


class PipelineScorer(Scorer):
    """Anything the compiler does not reduce: the Pipeline itself, one DataFrame per call (slow but exact)."""

    kind = "pipeline"
    method = (
        "occlusion in log-odds: logit(p) minus the mean logit with the feature set to each reference value "
        "(every category uniformly; scores at the pass mark); probabilities clipped to [1e-6, 1 - 1e-6]"
    )

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.eps = 1e-6
        self.variants: list[tuple[int, int, float]] = []  # (feature index, code or -1, numeric value)
        for j, name in enumerate(CATEGORICAL):
            self.variants.extend((j, k, 0.0) for k in range(len(schema.CATEGORIES[name])))
        for i, _ in enumerate(NUMERIC):
            self.variants.append((N_CAT + i, -1, float(schema.PASS_MARK)))

    def predict_proba(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        return np.asarray(self.pipeline.predict_proba(decode_frame(codes, nums))[:, 1], dtype=np.float64)

    def explain(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
        n = codes.shape[0]
        all_codes = [codes]
        all_nums = [nums]
        for feature, code, value in self.variants:
            c, x = codes.copy(), nums.copy()
            if feature < N_CAT:
                c[:, feature] = code
            else:
                x[:, feature - N_CAT] = value
            all_codes.append(c)
            all_nums.append(x)
        proba_all = self.predict_proba(np.concatenate(all_codes), np.concatenate(all_nums))
        logits = _logit(np.clip(proba_all, self.eps, 1 - self.eps)).reshape(len(self.variants) + 1, n)
        contrib = np.zeros((n, N_FEATURES), dtype=np.float64)
        counts = np.zeros(N_FEATURES)
        for v, (feature, _, _) in enumerate(self.variants, start=1):
            contrib[:, feature] -= logits[v]
            counts[feature] += 1
        contrib = logits[0][:, None] + contrib / counts
        return proba_all[:n], contrib

    def reference(self) -> dict[str, Any]:
        out: dict[str, Any] = {n: f"uniform over {len(schema.CATEGORIES[n])} categories" for n in CATEGORICAL}
        out.update({n: {"value": float(schema.PASS_MARK), "source": "pass mark"} for n in NUMERIC})
        return out
