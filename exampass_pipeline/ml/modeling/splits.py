"""The seeded, stratified 70/10/20 cut of a student table, and the pass/fail label reader everything uses.

The split is part of the data contract rather than of any model: the split check re-derives the part sizes
from split_sizes(), the training asset stores the parts in the warehouse, and the benchmarks re-cut with the
same seeds. Changing the rule changes which rows every candidate, threshold and test figure sees, so it lives
on its own, next to the label reader every other piece of modeling validates its input with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from exampass_pipeline.contract import schema

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Splits:
    """One seeded 70/10/20 cut of a student table; each part keeps the input's index and extra columns."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even (round(2.5) == 2); a documented half-up rule is easier to check.
    return math.floor(x + 0.5)


def split_sizes(n: int) -> dict[str, int]:
    """Exact part sizes: test = round_half_up(0.2 n), validation = round_half_up(0.1 n), train = the rest.

    Published as a function so the split check can verify sizes without re-deriving the rule.
    """
    if n < 0:
        raise ValueError(f"n: {n} is negative")
    test = _round_half_up(TEST_FRACTION * n)
    validation = _round_half_up(VALIDATION_FRACTION * n)
    return {"train": n - test - validation, "validation": validation, "test": test}


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {', '.join(missing)}; have {', '.join(map(str, df.columns))}"
        )


def label_array(df: pd.DataFrame, what: str = "table") -> np.ndarray:
    """The pass_math column as a bool array, refusing anything that is not unambiguously a pass/fail flag.

    DuckDB or CSV round trips can turn the bool into 0/1 or an object column; those are accepted, but a
    missing or odd value is an error rather than silently becoming "fail".
    """
    _require_columns(df, [schema.LABEL], what)
    col = df[schema.LABEL]
    if col.isna().any():
        raise ValueError(f"{schema.LABEL}: {int(col.isna().sum())} missing value(s) in {what}")
    if col.dtype == bool:
        return col.to_numpy(dtype=bool)
    bad = sorted({repr(v) for v in col.unique() if v not in (True, False, 0, 1)})
    if bad:
        raise ValueError(f"{schema.LABEL}: values {', '.join(bad[:5])} in {what} are not True/False or 1/0")
    return col.astype(bool).to_numpy()


def split_students(df: pd.DataFrame, seed: int = 42) -> Splits:
    """Cut a labelled student table into train/validation/test, stratified on pass_math and seeded.

    Sizes follow split_sizes(). Stratification is on the label because fails are only ~13 %: an unstratified
    100-row validation set could hold 8 or 20 fails, which would move the fitted decision rule and the selected
    candidate for reasons that have nothing to do with the models. The split works on positions, so a
    non-unique index is harmless, and each part keeps the input's row order, index and extra columns
    (math_score, source, row ids...).
    """
    _require_columns(df, schema.FEATURES, "split_students")
    y = label_array(df, "split_students")
    n = len(df)
    sizes = split_sizes(n)
    n_fail = int((~y).sum())
    n_pass = n - n_fail
    if min(n_fail, n_pass) < 3:
        raise ValueError(
            f"{schema.LABEL}: need at least 3 passing and 3 failing students to stratify, "
            f"got {n_pass} pass / {n_fail} fail"
        )
    if sizes["validation"] < 2 or sizes["test"] < 2:
        raise ValueError(f"split_students: {n} rows are too few for a 70/10/20 split (sizes {sizes})")
    positions = np.arange(n)
    rest, test = train_test_split(positions, test_size=sizes["test"], stratify=y, random_state=seed)
    train, validation = train_test_split(
        rest, test_size=sizes["validation"], stratify=y[rest], random_state=seed
    )
    return Splits(
        train=df.iloc[np.sort(train)],
        validation=df.iloc[np.sort(validation)],
        test=df.iloc[np.sort(test)],
    )
