"""Candidates, selection and metrics: plain scikit-learn, no orchestrator.

The training asset, the benchmark, monitoring and the tests all call these functions directly, so the rules
for "how a model is chosen" and "how a model is scored" exist exactly once. Every model is an sklearn
Pipeline [("preprocess", ColumnTransformer), ("model", estimator)] over a DataFrame with columns
schema.FEATURES; class 1 (True) is "passes", and `predict_proba(X)[:, 1]` is the pass probability. The
decision is `predicted_pass = pass_probability >= the cut-off the model's DecisionRule gives the student`
(exampass_pipeline.contract.decision; fitted by exampass_pipeline.ml.fairness).

The pipelines are deliberately restricted to OneHotEncoder (explicit schema categories), StandardScaler or
"passthrough" feeding ScoreProbitClassifier (``score_model``: least squares on the maths score, read out as
P(maths >= 50)), LogisticRegression, RandomForestClassifier or HistGradientBoostingClassifier: the API
compiles exactly those types into a fast array scorer, and skops loads them with registry.TRUSTED_TYPES.

The pieces are split by what changes together: ``splits`` (the seeded 70/10/20 cut and the label reader),
``candidates`` (pipelines, hyperparameters and training targets), ``metrics`` (how a model is scored),
``out_of_fold`` (each training row scored by a model that did not see it), ``selection`` (the procedure
that combines them), ``plots`` (the figures logged with a model version) and ``lineage`` (the training
table's content hash). Callers import
from ``exampass_pipeline.ml.modeling`` itself, which re-exports every public name, so moving code between the
pieces never changes a caller.
"""

from __future__ import annotations

from exampass_pipeline.contract.score_model import LATENT_PASS_MARK, ScoreProbitClassifier
from exampass_pipeline.ml.modeling.candidates import (
    CANDIDATE_SETS,
    CANDIDATES,
    N_ONE_HOT,
    SOFT_LABEL_SCALE,
    SOFT_WEIGHT_FLOOR,
    build_candidates,
    fit_pipeline,
    fits_math_score,
    make_preprocessor,
    score_targets,
    training_targets,
)
from exampass_pipeline.ml.modeling.lineage import table_hash
from exampass_pipeline.ml.modeling.metrics import (
    METRIC_NAMES,
    classification_metrics,
    evaluate,
    pass_probability,
)
from exampass_pipeline.ml.modeling.out_of_fold import OOF_FOLDS, out_of_fold_pass_probability
from exampass_pipeline.ml.modeling.plots import plot_confusion, plot_roc
from exampass_pipeline.ml.modeling.selection import COMPARED_RULES, Selection, train_and_select
from exampass_pipeline.ml.modeling.splits import (
    TEST_FRACTION,
    VALIDATION_FRACTION,
    Splits,
    label_array,
    split_sizes,
    split_students,
)

__all__ = [
    "CANDIDATES",
    "CANDIDATE_SETS",
    "COMPARED_RULES",
    "LATENT_PASS_MARK",
    "METRIC_NAMES",
    "N_ONE_HOT",
    "OOF_FOLDS",
    "SOFT_LABEL_SCALE",
    "SOFT_WEIGHT_FLOOR",
    "TEST_FRACTION",
    "VALIDATION_FRACTION",
    "ScoreProbitClassifier",
    "Selection",
    "Splits",
    "build_candidates",
    "classification_metrics",
    "evaluate",
    "fit_pipeline",
    "fits_math_score",
    "label_array",
    "make_preprocessor",
    "out_of_fold_pass_probability",
    "pass_probability",
    "plot_confusion",
    "plot_roc",
    "score_targets",
    "split_sizes",
    "split_students",
    "table_hash",
    "train_and_select",
    "training_targets",
]
