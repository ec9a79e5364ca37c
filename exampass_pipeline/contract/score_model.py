"""Score regression read out as a pass probability: least squares on the maths score, then P(maths >= 50).

The pass/fail bit throws away how far each student was from the pass mark. Maths is, to the precision the
data allow, a linear function of the seven fields plus normal noise (``benchmarks/f1_ceiling.py``: flexible
learners do not beat least squares on CV RMSE; the residuals have sd 5.4 points, skewness -0.03, excess
kurtosis -0.06). So the model fits the *score* by least squares, estimates the residual spread sigma, and
reads the pass probability off the normal predictive distribution:

    expected maths  mu = intercept + coef . x
    P(pass)            = Phi((mu - 49.5) / sigma)

49.5 and not 50 because scores are whole points: ``math >= 50`` is ``latent >= 49.5`` for a score rounded
from a continuous one. With a constant sigma the ranking is the ranking of mu, so ROC-AUC is least
squares' own; the probability is calibrated exactly when the linear-normal model holds, which is what the
decision rule (``exampass_pipeline.ml.fairness``) relies on.

Measured (cross-validated on train + validation of each of the 20 benchmark splits, never their test rows):
CV ROC-AUC 0.970 against 0.968 for the soft-target logistic regression, CV log loss 0.146 against 0.159;
it won the CV selection on all 20 splits. A sigma per gender or per lunch group (the only visible
differences in residual spread) moved test ROC-AUC by under 0.0002, so sigma is one number.

The estimator is a plain scikit-learn classifier over the preprocessed design matrix: ``classes_`` are
[False, True] and ``predict_proba[:, 1]`` is P(pass), so selection, metrics, the registry and the API treat
it like any other candidate. It is trained on the maths score: ``fit(X, math_score)``; the class attribute
``fits_math_score`` tells ``modeling.fit_pipeline`` to pass the score instead of the label. Its fitted state
is numbers and arrays only, so skops loads it once its type is in ``registry.TRUSTED_TYPES``.

It lives outside ``modeling`` on purpose: skops imports this module by name when the API loads a model, and
it needs nothing but numpy, scipy and scikit-learn's base classes. Its import path is part of every stored
model: moving it would orphan them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.special import ndtr
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_array, check_is_fitted

from exampass_pipeline.contract import schema

# The continuity-corrected pass mark on the latent score (see the module docstring).
LATENT_PASS_MARK = schema.PASS_MARK - 0.5


class ScoreProbitClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Least squares on the maths score; P(pass) = Phi((expected maths - pass_mark) / sigma).

    ``fit(X, y)`` takes the maths score as ``y`` (refusing a 0/1 label, the likely mistake);
    ``sample_weight`` gives weighted least squares. Fitted attributes: ``coef_`` (maths points per design
    column), ``intercept_``, ``scale_`` (sigma: the residual standard deviation with the degrees-of-freedom
    correction), ``classes_`` = [False, True], ``n_features_in_``.
    """

    fits_math_score: ClassVar[bool] = True

    def __init__(self, pass_mark: float = LATENT_PASS_MARK) -> None:
        self.pass_mark = pass_mark

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> ScoreProbitClassifier:
        """Weighted least squares of the score on [1, X]; sigma from the residuals."""
        A = check_array(X, dtype=np.float64)
        score = np.asarray(y, dtype=np.float64).reshape(-1)
        if score.shape[0] != A.shape[0]:
            raise ValueError(f"y: {score.shape[0]} scores for {A.shape[0]} rows")
        if not np.isfinite(score).all():
            raise ValueError("y: maths scores must be finite numbers")
        if np.isin(score, (0.0, 1.0)).all():
            raise ValueError(
                "y: looks like a 0/1 pass label; ScoreProbitClassifier is fitted on the maths score"
            )
        weight = np.ones(len(score)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != score.shape or (weight < 0).any() or weight.sum() <= 0:
            raise ValueError("sample_weight: one non-negative weight per row, not all zero")
        design = np.column_stack([np.ones(len(score)), A])
        root = np.sqrt(weight)
        beta, _, rank, _ = np.linalg.lstsq(design * root[:, None], score * root, rcond=None)
        residual = score - design @ beta
        dof = max(int((weight > 0).sum()) - int(rank), 1)
        # Weights are rescaled to sum to the number of weighted rows, so sigma does not depend on their unit.
        scaled = weight * (weight > 0).sum() / weight.sum()
        self.intercept_ = float(beta[0])
        self.coef_ = np.asarray(beta[1:], dtype=np.float64)
        self.scale_ = float(np.sqrt(float(scaled @ (residual * residual)) / dof))
        if not self.scale_ > 0:
            raise ValueError("y: the scores are fitted exactly; sigma is zero and P(pass) is undefined")
        self.classes_ = np.array([False, True])
        self.n_features_in_ = A.shape[1]
        return self

    def predict_score(self, X: Any) -> np.ndarray:
        """The expected maths score of each row."""
        check_is_fitted(self, "coef_")
        A = check_array(X, dtype=np.float64)
        if A.shape[1] != self.n_features_in_:
            raise ValueError(f"X: {A.shape[1]} columns, the model was fitted on {self.n_features_in_}")
        mu: np.ndarray = A @ self.coef_ + self.intercept_
        return mu

    def decision_function(self, X: Any) -> np.ndarray:
        """The probit z = (expected maths - pass_mark) / sigma: P(pass) = Phi(z)."""
        z: np.ndarray = (self.predict_score(X) - self.pass_mark) / self.scale_
        return z

    def predict_proba(self, X: Any) -> np.ndarray:
        """[P(fail), P(pass)] per row; each side from ``ndtr`` directly, so neither loses its tail."""
        z = self.decision_function(X)
        return np.column_stack([ndtr(-z), ndtr(z)])

    def predict(self, X: Any) -> np.ndarray:
        """Pass when P(pass) >= 0.5 (the served decision uses the model's own rule instead)."""
        return np.asarray(self.decision_function(X) >= 0.0)
