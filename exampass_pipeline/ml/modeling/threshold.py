"""The decision threshold: the cut-off on pass probability that maximises a smoothed F1 of the fail class,
and the out-of-fold predictions it is tuned on. Kept apart from selection because the rule is tuned and
benchmarked on its own (the benchmarks compare it with a fixed 0.5 and with the test-set oracle).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from exampass_pipeline.ml.modeling.candidates import SOFT_LABEL_SCALE, fit_pipeline
from exampass_pipeline.ml.modeling.metrics import _check_scores, pass_probability
from exampass_pipeline.ml.modeling.splits import label_array

THRESHOLD_GRID: np.ndarray = np.round(np.arange(0.05, 0.9501, 0.01), 2)
SMOOTHING_WIDTH = 5  # grid points in the moving average: the centre and 2 on each side (+-0.02)
PLATEAU_TOLERANCE = 0.005  # smoothed F1 within this of the best counts as "as good"
OOF_FOLDS = 5


def f1_fail_curve(y_pass: Any, p_pass: Any, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """F1 of the fail class at every threshold of the grid (vectorised; used by the threshold rule)."""
    y, p = _check_scores(y_pass, p_pass)
    fail = ~y
    pred_fail = p[None, :] < grid[:, None]
    tp = (pred_fail & fail[None, :]).sum(axis=1)
    denom = pred_fail.sum(axis=1) + fail.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def choose_threshold(y_pass: Any, p_pass: Any, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """The cut-off on pass probability maximising a smoothed F1(fail): the middle of the best plateau.

    With ~100-130 failing students to tune on, the raw F1 curve is a staircase whose highest step is often a
    single lucky threshold where one or two borderline students flip. So the curve is first smoothed with a
    moving average over +-0.02 of probability (5 grid points; a refit-free regulariser that favours
    thresholds whose *neighbours* are also good), then every grid point whose smoothed F1 is within
    PLATEAU_TOLERANCE of the best counts as "as good", and we return the midpoint of the contiguous run
    holding the best. The midpoint is the choice least sensitive to a small shift of the probabilities
    between the tuning data and the future.
    """
    curve = f1_fail_curve(y_pass, p_pass, grid)
    half = SMOOTHING_WIDTH // 2
    padded = np.pad(curve, half, mode="edge")
    smooth = np.convolve(padded, np.ones(SMOOTHING_WIDTH) / SMOOTHING_WIDTH, mode="valid")
    best = int(np.argmax(smooth))
    good = smooth >= smooth[best] - PLATEAU_TOLERANCE
    lo = best
    while lo > 0 and good[lo - 1]:
        lo -= 1
    hi = best
    while hi < len(grid) - 1 and good[hi + 1]:
        hi += 1
    return float(np.round((grid[lo] + grid[hi]) / 2, 4))


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
