"""A generative model of students, fitted to the Kaggle file, plus the drift scenarios the demo replays.

Why a fitted model and not resampling: the simulator must be able to produce unlimited, *new* students (so
monitoring never sees the training rows again) and to move one factor at a time (so a drift scenario changes
exactly what it claims). Only summary statistics are kept, in ``synthetic_params.json`` next to this file;
``python -m exampass_pipeline.ml.synthetic fit PATH`` regenerates it from the real file, byte for byte.

The model:

* **Categoricals** are drawn independently from their marginals. A chi-square test of every pair in the real
  file finds no association (all p > 0.05, stored in the JSON as ``independence_pvalues``), so a full joint
  table (240 cells from 1,000 rows) would only add noise.
* **Scores** follow a linear model: ``(math, reading, writing) = intercept + one effect per category
  level`` (the first level of each feature in ``schema.CATEGORIES`` order is the baseline), plus a
  correlated residual.
* **The residual** is a Gaussian copula: correlated normals (the normal-score correlation of the real
  residuals) mapped through each score's empirical residual quantiles. Plain Gaussian residuals get the left
  tail wrong (the real residuals are skewed), which overstates the pass rate by ~1.5 points; the quantile map
  keeps it at the real 86.5 %.
* Scores are rounded to whole points and clipped to 0..100; ``pass_math`` follows from ``schema.pass_math``.

Scenarios (``SCENARIOS``), each a change of parameters rather than a post-hoc edit of the sample, so
everything that depends on the changed factor moves with it:

* ``none`` — the population the model was trained on.
* ``lunch_shift`` — the free/reduced lunch share goes from ~35 % to 70 %. Scores stay conditional on lunch,
  so they (and the pass rate) fall with it: covariate shift with a real effect on the label.
* ``prep_collapse`` — nobody completes the test preparation course; scores drop by its effect.
* ``score_decline`` — every score falls by 5 points at the same category mix: reading and writing move
  (feature drift) and maths moves with them, so the pass rate falls too (label drift).
* ``new_school`` — a different race/ethnicity mix (group A and B heavy) and a parental-education mix
  tilted to school-level qualifications: the kind of shift a new partner school brings.
* ``harder_exam`` — the maths exam gets harder for everyone: maths falls 8 points at the same reading,
  writing and background. The relation the model learned really changes (concept drift); from one
  client's side it looks like the lies of a poisoning campaign, so the retraining defences must let it
  through once several clients agree (docs/security.md).

This module never imports dagster.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from exampass_pipeline.contract import schema

PARAMS_PATH = Path(__file__).with_name("synthetic_params.json")
PARAMS_FORMAT = 1

SCENARIOS: tuple[str, ...] = (
    "none",
    "lunch_shift",
    "prep_collapse",
    "score_decline",
    "new_school",
    "harder_exam",
)

# Residual quantiles kept per score: 1 % steps is fine enough for the pass-mark tail, small enough to read.
QUANTILE_LEVELS = 101
# Floats are rounded so the JSON stays readable and diffs stay small; far below any effect we test for.
DECIMALS = 6

LUNCH_SHIFT_FREE_SHARE = 0.70
SCORE_DECLINE_POINTS = 5.0
HARDER_EXAM_POINTS = 8.0
# Shares by level name, turned into positional vectors at sample time.
NEW_SCHOOL_MIX: dict[str, dict[str, float]] = {
    schema.RACE_ETHNICITY: {
        "group A": 0.30,
        "group B": 0.30,
        "group C": 0.20,
        "group D": 0.12,
        "group E": 0.08,
    },
    schema.PARENTAL_EDUCATION: {
        "some high school": 0.30,
        "high school": 0.30,
        "some college": 0.20,
        "associate's degree": 0.12,
        "bachelor's degree": 0.06,
        "master's degree": 0.02,
    },
}


def _round(value: Any) -> Any:
    """Round nested floats so that the JSON is deterministic and compact."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _design(frame: pd.DataFrame) -> np.ndarray:
    """Intercept plus one indicator per non-baseline level, in schema order: the columns of ``fit_params``."""
    columns = [np.ones(len(frame))]
    for name, levels in schema.CATEGORIES.items():
        values = frame[name].to_numpy()
        columns.extend((values == level).astype(float) for level in levels[1:])
    return np.column_stack(columns)


def fit_params(df: pd.DataFrame) -> dict[str, Any]:
    """Estimate the model's parameters from a student table (``schema.COLUMNS``, as read by
    ``dataset.read_students_csv``).

    Deterministic (least squares, ranks, quantiles), so the committed JSON can be checked against the real
    file.
    """
    missing = [c for c in schema.COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"fit_params: missing column(s) {', '.join(missing)}")
    if len(df) < 50:
        raise ValueError(f"fit_params: {len(df)} rows is too few to estimate the model (need at least 50)")
    for name, levels in schema.CATEGORIES.items():
        unknown = sorted(set(df[name].astype(str)) - set(levels))
        if unknown:
            raise ValueError(
                f"{name}: unknown category {unknown[0]!r}; allowed: {', '.join(map(repr, levels))}"
            )

    marginals = {
        name: [float((df[name] == level).mean()) for level in levels]
        for name, levels in schema.CATEGORIES.items()
    }
    pvalues: dict[str, float] = {}
    for a, b in combinations(schema.CATEGORICAL_FEATURES, 2):
        table = pd.crosstab(df[a], df[b])
        pvalues[f"{a}|{b}"] = float(stats.chi2_contingency(table)[1])

    x = _design(df)
    y = df[list(schema.SCORES)].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residuals = y - x @ coef

    effects: dict[str, list[list[float]]] = {}
    row = 1
    for name, levels in schema.CATEGORIES.items():
        effects[name] = [[0.0] * len(schema.SCORES)]
        for _ in levels[1:]:
            effects[name].append(coef[row].tolist())
            row += 1

    ranks = stats.rankdata(residuals, axis=0)
    normal_scores = stats.norm.ppf((ranks - 0.5) / len(residuals))
    correlation = np.corrcoef(normal_scores, rowvar=False)
    quantiles = np.quantile(residuals, np.linspace(0.0, 1.0, QUANTILE_LEVELS), axis=0)

    labels = df[schema.MATH_SCORE].map(schema.pass_math)
    fitted: dict[str, Any] = _round(
        {
            "format": PARAMS_FORMAT,
            "n_rows": int(len(df)),
            "categories": {name: list(levels) for name, levels in schema.CATEGORIES.items()},
            "marginals": marginals,
            "independence_pvalues": pvalues,
            "scores": list(schema.SCORES),
            "intercept": coef[0].tolist(),
            "effects": effects,
            "residual": {
                "covariance": np.cov(residuals, rowvar=False).tolist(),
                "copula_correlation": correlation.tolist(),
                "quantiles": quantiles.T.tolist(),
            },
            "reference": {
                "pass_rate": float(labels.mean()),
                "score_means": df[list(schema.SCORES)].mean().tolist(),
                "score_stds": df[list(schema.SCORES)].std().tolist(),
            },
        }
    )
    return fitted


@functools.cache
def _cached_params() -> str:
    return PARAMS_PATH.read_text()


def load_params() -> dict[str, Any]:
    """The committed parameters; a fresh copy each call, so a caller's edits never leak into other samples."""
    params: dict[str, Any] = json.loads(_cached_params())
    return params


def _check_params(params: Mapping[str, Any]) -> None:
    """Refuse parameters written for another schema rather than silently mislabel categories."""
    if params.get("format") != PARAMS_FORMAT:
        raise ValueError(f"params: format {params.get('format')!r} is not {PARAMS_FORMAT}")
    for name, levels in schema.CATEGORIES.items():
        if list(params["categories"].get(name, [])) != list(levels):
            raise ValueError(f"params: categories of {name} do not match schema.CATEGORIES")


def _set_share(params: dict[str, Any], feature: str, shares: Mapping[str, float]) -> None:
    levels = schema.CATEGORIES[feature]
    params["marginals"][feature] = [float(shares.get(level, 0.0)) for level in levels]


def apply_scenario(params: Mapping[str, Any], scenario: str) -> dict[str, Any]:
    """A copy of ``params`` changed the way the scenario describes (see the module docstring)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: unknown scenario {scenario!r}; allowed: {', '.join(SCENARIOS)}")
    out = copy.deepcopy(dict(params))
    if scenario == "lunch_shift":
        _set_share(
            out,
            schema.LUNCH,
            {"standard": 1 - LUNCH_SHIFT_FREE_SHARE, "free/reduced": LUNCH_SHIFT_FREE_SHARE},
        )
    elif scenario == "prep_collapse":
        _set_share(out, schema.TEST_PREP, {"none": 1.0})
    elif scenario == "score_decline":
        out["intercept"] = [v - SCORE_DECLINE_POINTS for v in out["intercept"]]
    elif scenario == "new_school":
        for feature, shares in NEW_SCHOOL_MIX.items():
            _set_share(out, feature, shares)
    elif scenario == "harder_exam":
        maths = schema.SCORES.index(schema.MATH_SCORE)
        out["intercept"] = [v - HARDER_EXAM_POINTS * (i == maths) for i, v in enumerate(out["intercept"])]
    return out


def sample(
    n: int,
    *,
    seed: int | None = None,
    scenario: str = "none",
    params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Draw ``n`` new students: ``schema.COLUMNS`` (scores as ints 0..100) plus ``schema.LABEL`` (bool).

    The same ``seed``, scenario and parameters always give the same frame.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n: must be a non-negative integer, got {n!r}")
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario: unknown scenario {scenario!r}; allowed: {', '.join(SCENARIOS)}")
    base = load_params() if params is None else params
    _check_params(base)
    p = apply_scenario(base, scenario)
    rng = np.random.default_rng(seed)
    n = int(n)

    columns: dict[str, Any] = {}
    mean = np.tile(np.asarray(p["intercept"], dtype=float), (n, 1))
    for name, levels in schema.CATEGORIES.items():
        probs = np.asarray(p["marginals"][name], dtype=float)
        probs = probs / probs.sum()
        idx = rng.choice(len(levels), size=n, p=probs)
        columns[name] = np.asarray(levels, dtype=object)[idx]
        mean += np.asarray(p["effects"][name], dtype=float)[idx]

    residual = p["residual"]
    z = rng.multivariate_normal(
        np.zeros(len(schema.SCORES)), np.asarray(residual["copula_correlation"]), size=n
    )
    u = stats.norm.cdf(z)
    quantiles = np.asarray(residual["quantiles"], dtype=float)
    levels_q = np.linspace(0.0, 1.0, quantiles.shape[1])
    noise = np.column_stack([np.interp(u[:, j], levels_q, quantiles[j]) for j in range(len(schema.SCORES))])
    scores = np.clip(np.rint(mean + noise), schema.SCORE_MIN, schema.SCORE_MAX).astype("int64")

    frame = pd.DataFrame(columns)
    for j, name in enumerate(schema.SCORES):
        frame[name] = scores[:, j]
    frame[schema.LABEL] = frame[schema.MATH_SCORE] >= schema.PASS_MARK
    return frame[[*schema.COLUMNS, schema.LABEL]]


# A list of scalars (no nested brackets or braces) is printed on one line: one table row per line.
_FLAT_LIST = re.compile(r"\[\s*([^\[\]{}]*?)\s*\]")


def write_params(params: Mapping[str, Any], path: Path) -> None:
    """Write atomically, so an interrupted ``fit`` never leaves a half-written parameter file behind."""
    text = _FLAT_LIST.sub(
        lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", json.dumps(params, indent=1)
    )
    text += "\n"
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``fit PATH`` regenerates the committed parameters; ``sample N`` prints synthetic students as CSV."""
    parser = argparse.ArgumentParser(
        prog="python -m exampass_pipeline.ml.synthetic", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="estimate the parameters from a Kaggle-format CSV and write the JSON")
    fit.add_argument("csv", type=Path)
    fit.add_argument("--out", type=Path, default=PARAMS_PATH)
    smp = sub.add_parser("sample", help="write N synthetic students as CSV (stdout unless --out)")
    smp.add_argument("n", type=int)
    smp.add_argument("--seed", type=int, default=None)
    smp.add_argument("--scenario", choices=SCENARIOS, default="none")
    smp.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.command == "fit":
        from exampass_pipeline.ml.dataset import DataError, read_students_csv

        try:
            params = fit_params(read_students_csv(args.csv))
        except (DataError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        write_params(params, args.out)
        print(
            f"wrote {args.out} from {params['n_rows']} rows "
            f"(pass rate {params['reference']['pass_rate']:.3f})"
        )
        return 0

    try:
        frame = sample(args.n, seed=args.seed, scenario=args.scenario)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frame.to_csv(args.out if args.out else sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
