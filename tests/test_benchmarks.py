"""The F1(fail) ceiling benchmark's own arithmetic: the verdict on the 0.78 goal rests on it being right."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from support import load_script

from exampass_pipeline.contract import schema


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    return load_script("benchmarks/f1_ceiling.py")


def _brute_force_best_f1(y_pass: np.ndarray, fail_score: np.ndarray) -> float:
    best = 0.0
    fail = ~y_pass
    for cut in np.unique(fail_score):
        flagged = fail_score >= cut
        best = max(best, 2 * (flagged & fail).sum() / (flagged.sum() + fail.sum()))
    return float(best)


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_fail_matches_brute_force_with_ties(ceiling: ModuleType, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.85
    # Coarse scores force many ties, which must be flagged together, never split by row order.
    score = np.round(rng.normal(size=300) - 1.5 * y, 1)
    assert ceiling.best_f1_fail(y, score) == pytest.approx(_brute_force_best_f1(y, score))


def test_best_f1_fail_is_one_for_a_perfect_ranking(ceiling: ModuleType) -> None:
    y = np.array([True] * 90 + [False] * 10)
    assert ceiling.best_f1_fail(y, (~y).astype(float)) == 1.0
    assert ceiling.best_f1_fail(y, np.zeros(100)) == pytest.approx(2 * 10 / (100 + 10))


def test_bayes_ceiling_on_the_real_file(ceiling: ModuleType, real_csv: Path) -> None:
    students = ceiling.load_students(real_csv).reset_index(drop=True)
    mu, sigma = ceiling.least_squares_truth(students)
    assert 5.0 < sigma < 6.0  # maths points; the residual sd the README quotes is 5.43
    fixed, oracle, p_fail_at_cut = ceiling.bayes_ceiling(students, mu, sigma, 200, np.random.default_rng(1))
    assert fixed.shape == oracle.shape == (200,)
    # A cut-off chosen on the test set itself can never do worse than the fixed population cut-off.
    assert (oracle >= fixed - 1e-12).all()
    # Theory for calibrated probabilities: the F1-optimal cut-off is P(fail) = F1* / 2.
    assert p_fail_at_cut == pytest.approx(fixed.mean() / 2, abs=0.04)
    assert 0.6 < fixed.mean() < 0.9
    assert set(students.columns) >= set(schema.COLUMNS) | {schema.LABEL}
