"""Out-of-fold pass probabilities: each training row scored by a model that did not see it.

Selection judges candidates on them and the decision rule is fitted on them, because a model's probabilities
for its own training rows are more confident than anything it will see in production.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from exampass_pipeline.ml.modeling.candidates import SOFT_LABEL_SCALE, fit_pipeline
from exampass_pipeline.ml.modeling.metrics import pass_probability
from exampass_pipeline.ml.modeling.splits import label_array

OOF_FOLDS = 5


def out_of_fold_pass_probability(
    pipeline: Pipeline, train: pd.DataFrame, seed: int, *, soft_label_scale: float = SOFT_LABEL_SCALE
) -> np.ndarray:
    """Pass probabilities for every training row from models that did not see that row (stratified K-fold)."""
    y = label_array(train, "train")
    out = np.empty(len(train), dtype=float)
    folds = StratifiedKFold(n_splits=OOF_FOLDS, shuffle=True, random_state=seed)
    for fit_idx, pred_idx in folds.split(np.zeros(len(y)), y):
        model = fit_pipeline(clone(pipeline), train.iloc[fit_idx], soft_label_scale=soft_label_scale)
        out[pred_idx] = pass_probability(model, train.iloc[pred_idx])
    return out
