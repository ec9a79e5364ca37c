"""Compile a fitted scikit-learn Pipeline into a scorer that works on plain arrays, with explanations.

Why: ``Pipeline.predict_proba`` on a one-row DataFrame costs milliseconds (pandas, input validation and, for
the ensembles, joblib/OpenMP start-up: ~140 ms for a 200-tree forest here), more than the whole HTTP stack.
At load time the ColumnTransformer is reduced to lookup tables and affine maps, and the estimator to arrays;
a request then costs a few numpy (for the linear model, pure Python) operations. The arithmetic mirrors
scikit-learn's own (float32 features against float64 thresholds for the forest, float64 for boosting,
``x - mean_`` then ``/ scale_``), and ``compile_pipeline`` checks the result against ``predict_proba`` on a
probe grid before it is used, falling back to the plain Pipeline if they ever disagree.

Rows are encoded as ``codes`` (n, 5): the index of each categorical value in ``schema.CATEGORIES``, and
``nums`` (n, 2): the two scores as float64.

Explanations per original feature (one-hot columns are summed back), in log-odds of passing, except the score
model's, in maths points (each scorer's ``units``). Each module's docstring says how its method works and what
the contributions add up to:

* ``score`` (ScoreProbitClassifier, least squares on the maths score): exact decomposition of the expected
  maths score against a reference student, in points.
* ``linear`` (LogisticRegression): exact decomposition against a reference student.
* ``forest`` (random forest, extra trees, one tree) and ``boosting`` (HistGradientBoosting): path
  attribution (Saabas), precomputed per leaf; the forest's rescaled from probability to log-odds.
* ``fallback`` (any other estimator, or a compiled scorer that failed the probe check): occlusion through the
  Pipeline itself. Not additive.

The rest: ``encoding`` (rows to arrays, the ColumnTransformer to a ``Design``, the shared constants and
errors) and ``base`` (the ``Scorer`` interface). Everything the service and the tests use is importable from
this package.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exampass_api.scorer.base import Scorer
from exampass_api.scorer.boosting import BoostingScorer
from exampass_api.scorer.encoding import (
    CATEGORICAL,
    CODES,
    FEATURES,
    N_CAT,
    N_FEATURES,
    NUMERIC,
    PROBE_TOLERANCE,
    UNITS,
    Design,
    ModelNotServable,
    NumericColumn,
    UnsupportedPipeline,
    compile_design,
    decode_frame,
    encode,
    probe_rows,
)
from exampass_api.scorer.fallback import PipelineScorer
from exampass_api.scorer.forest import Forest, ForestScorer
from exampass_api.scorer.linear import LinearScorer
from exampass_api.scorer.score import ScoreScorer
from exampass_pipeline.contract import registry

__all__ = [
    "CATEGORICAL",
    "CODES",
    "FEATURES",
    "N_CAT",
    "N_FEATURES",
    "NUMERIC",
    "PROBE_TOLERANCE",
    "UNITS",
    "BoostingScorer",
    "Design",
    "Forest",
    "ForestScorer",
    "LinearScorer",
    "ModelNotServable",
    "NumericColumn",
    "PipelineScorer",
    "Scorer",
    "ScoreScorer",
    "UnsupportedPipeline",
    "compile_design",
    "compile_pipeline",
    "decode_frame",
    "encode",
    "probe_rows",
    "top_contributions",
]

log = logging.getLogger(__name__)


def _compile_unchecked(pipeline: Any) -> Scorer:
    """The compiled scorer for the pipeline's estimator, not yet checked against ``predict_proba``.

    Raises UnsupportedPipeline for any shape it does not reduce, which ``compile_pipeline`` turns into the
    plain-Pipeline fallback rather than an error.
    """
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise UnsupportedPipeline("not a two-step Pipeline (preprocess, model)")
    design = compile_design(pipeline.steps[0][1])
    estimator = pipeline.steps[-1][1]
    if isinstance(estimator, registry.ScoreProbitClassifier):
        return ScoreScorer(design, estimator)
    if isinstance(estimator, LogisticRegression):
        if np.asarray(estimator.coef_).shape[0] != 1:
            raise UnsupportedPipeline("multinomial logistic regression")
        return LinearScorer(design, estimator)
    if isinstance(estimator, RandomForestClassifier | ExtraTreesClassifier | DecisionTreeClassifier):
        return ForestScorer(design, estimator)
    if isinstance(estimator, HistGradientBoostingClassifier):
        return BoostingScorer(design, estimator)
    raise UnsupportedPipeline(f"estimator {type(estimator).__name__}")


def compile_pipeline(pipeline: Any) -> Scorer:
    """The fastest scorer that reproduces ``pipeline.predict_proba(...)[:, 1]`` to within PROBE_TOLERANCE.

    Raises ModelNotServable when the model itself would fail on requests the API accepts.
    """
    try:
        scorer: Scorer = _compile_unchecked(pipeline)
    except UnsupportedPipeline as exc:
        log.warning("serving through the plain Pipeline (slow path): %s", exc)
        return PipelineScorer(pipeline)
    codes, nums = probe_rows()
    expected = np.asarray(pipeline.predict_proba(decode_frame(codes, nums))[:, 1], dtype=np.float64)
    got = scorer.predict_proba(codes, nums)
    explained, _ = scorer.explain(codes, nums)
    error = max(float(np.max(np.abs(got - expected))), float(np.max(np.abs(explained - expected))))
    if not error <= PROBE_TOLERANCE:
        log.error(
            "compiled %s scorer is off by %.3g on the probe grid; using the plain Pipeline",
            scorer.kind,
            error,
        )
        return PipelineScorer(pipeline)
    return scorer


def top_contributions(
    record: Mapping[str, Any], contributions: Sequence[float], k: int
) -> list[dict[str, Any]]:
    """The k features with the largest |contribution|, largest first (ties keep the schema order)."""
    magnitude = [abs(c) for c in contributions]
    order = sorted(range(N_FEATURES), key=magnitude.__getitem__, reverse=True)[:k]
    return [
        {"feature": FEATURES[i], "value": record[FEATURES[i]], "contribution": contributions[i]}
        for i in order
    ]
