"""Rows as arrays, and the ColumnTransformer as lookup tables: what every compiled scorer shares.

Rows are encoded once as ``codes`` (n, 5): the index of each categorical value in ``schema.CATEGORIES``, and
``nums`` (n, 2): the two scores as float64. Integer codes rather than strings let a category become a table
row by indexing, with no string hashing per request.

``compile_design`` reduces the fitted ColumnTransformer to one table per categorical feature (category ->
the one-hot part of the design-matrix row) plus one affine map per score, computed in the order
StandardScaler uses (``x - mean_``, then ``/ scale_``) so that the columns match ``transform`` to the bit.
It also records which original feature every column came from, which is how one-hot contributions are
summed back per feature, and the raw score of the reference student the linear explanation is measured from.

Two failures are kept apart: ``UnsupportedPipeline`` only means "not compiled" (the plain Pipeline will
serve), while ``ModelNotServable`` means the model itself would fail on requests the API accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from exampass_pipeline.contract import schema

FloatArray: TypeAlias = npt.NDArray[np.float64]
IndexArray: TypeAlias = npt.NDArray[np.intp]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

CATEGORICAL: Final = schema.CATEGORICAL_FEATURES
NUMERIC: Final = schema.NUMERIC_FEATURES
FEATURES: Final = schema.FEATURES
N_CAT: Final = len(CATEGORICAL)
N_FEATURES: Final = len(FEATURES)
CODES: Final[dict[str, dict[str, int]]] = {
    name: {value: i for i, value in enumerate(schema.CATEGORIES[name])} for name in CATEGORICAL
}
UNITS: Final = "log-odds"
PROBE_TOLERANCE: Final = 1e-9


class UnsupportedPipeline(ValueError):
    """The pipeline has a shape the compiler does not reduce; the plain Pipeline will be used instead."""


class ModelNotServable(ValueError):
    """The model cannot score every request the API accepts (e.g. its encoder refuses a valid category)."""


def encode(records: Sequence[Mapping[str, Any]]) -> tuple[IndexArray, FloatArray]:
    """Validated records (schema spellings, whole scores) to the (codes, nums) arrays every scorer takes."""
    n = len(records)
    codes = np.array([[CODES[f][r[f]] for f in CATEGORICAL] for r in records], dtype=np.intp).reshape(
        n, N_CAT
    )
    nums = np.array([[r[f] for f in NUMERIC] for r in records], dtype=np.float64).reshape(n, len(NUMERIC))
    return codes, nums


def decode_frame(codes: IndexArray, nums: FloatArray) -> Any:
    """The DataFrame scikit-learn would get for these rows: the reference the fast path is checked against."""
    import pandas as pd

    data: dict[str, Any] = {}
    for j, name in enumerate(CATEGORICAL):
        data[name] = np.asarray(schema.CATEGORIES[name], dtype=object)[codes[:, j]]
    for i, name in enumerate(NUMERIC):
        data[name] = nums[:, i].astype(np.int64)
    return pd.DataFrame(data, columns=list(FEATURES))


def probe_rows(n: int = 90) -> tuple[IndexArray, FloatArray]:
    """A fixed grid touching every category and the whole score range, for the load-time self-check."""
    i = np.arange(n)
    codes = np.stack([i % len(schema.CATEGORIES[name]) for name in CATEGORICAL], axis=1).astype(np.intp)
    codes[:, 1] = (i // 2) % len(schema.CATEGORIES[CATEGORICAL[1]])  # decorrelate from gender
    nums = np.stack([(i * 37) % 101, (i * 53 + 11) % 101], axis=1).astype(np.float64)
    nums[:3] = [[0, 0], [100, 100], [0, 100]]
    return codes, nums


def _logit(p: FloatArray) -> FloatArray:
    """Log-odds without clipping: every caller has already clipped p away from 0 and 1, each its own way."""
    logit: FloatArray = np.log(p) - np.log1p(-p)
    return logit


def _expit(z: float) -> float:
    """The sigmoid in plain floats for one-row paths; split by sign because ``math.exp`` raises on overflow."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class NumericColumn:
    """One design-matrix column fed by a score: ``(x - shift) / scale``, the order StandardScaler uses."""

    feature: int  # index into NUMERIC
    column: int
    shift: float
    scale: float


@dataclass(frozen=True)
class Design:
    """The ColumnTransformer reduced to per-category rows of the design matrix plus affine numeric columns."""

    width: int
    cat_tables: tuple[FloatArray, ...]  # per categorical feature: (n_categories, width)
    numeric: tuple[NumericColumn, ...]
    column_feature: IndexArray  # (width,) index into FEATURES of the feature each column came from
    numeric_reference: FloatArray  # (len(NUMERIC),) raw score of the reference student
    numeric_reference_source: tuple[str, ...]
    # One-row fast path (numpy's per-call overhead dominates at n=1): the categorical part of a row is one of
    # the 240 category combinations, so every combination's row is precomputed and a request copies one.
    combo_stride: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)
    combo_rows: FloatArray = field(init=False, repr=False, compare=False)
    numeric_py: list[tuple[str, int, float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [len(schema.CATEGORIES[name]) for name in CATEGORICAL]
        strides = [int(np.prod(sizes[j + 1 :])) for j in range(N_CAT)]
        object.__setattr__(
            self,
            "combo_stride",
            {
                name: {c: k * strides[j] for k, c in enumerate(schema.CATEGORIES[name])}
                for j, name in enumerate(CATEGORICAL)
            },
        )
        combos = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
        rows = np.zeros((len(combos), self.width), dtype=np.float64)
        for j, table in enumerate(self.cat_tables):
            rows += table[combos[:, j]]
        object.__setattr__(self, "combo_rows", rows)
        numeric = [(NUMERIC[c.feature], c.column, c.shift, c.scale) for c in self.numeric]
        object.__setattr__(self, "numeric_py", numeric)

    def row(self, record: Mapping[str, Any]) -> FloatArray:
        """One record's design-matrix row: the same values as ``transform`` gives for it."""
        combo = 0
        for name, strides in self.combo_stride.items():
            combo += strides[record[name]]
        x: FloatArray = self.combo_rows[combo].copy()
        for name, col, shift, scale in self.numeric_py:
            x[col] = (record[name] - shift) / scale
        return x

    def transform(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        """Many rows at once: a few whole-array operations, where ``row`` pays Python per value."""
        X = np.zeros((codes.shape[0], self.width), dtype=np.float64)
        for j, table in enumerate(self.cat_tables):
            X += table[codes[:, j]]
        for col in self.numeric:
            X[:, col.column] = (nums[:, col.feature] - col.shift) / col.scale
        return X

    def reference_description(self) -> dict[str, Any]:
        """The reference student as GET /model shows it, so that a contribution can be read against it."""
        out: dict[str, Any] = {}
        for name in CATEGORICAL:
            out[name] = f"uniform over {len(schema.CATEGORIES[name])} categories"
        for i, name in enumerate(NUMERIC):
            out[name] = {
                "value": float(self.numeric_reference[i]),
                "source": self.numeric_reference_source[i],
            }
        return out


def _input_names(ct: Any, name: str, columns: Any) -> list[str]:
    """A transformer's input columns by name, whatever form (names, slice, mask, callable) they were given in.

    The fitted ColumnTransformer has resolved them to indices, but in a private attribute; hence the fallback
    to the declared form when it is missing.
    """
    indices = getattr(ct, "_transformer_to_input_indices", {}).get(name)
    names_in = getattr(ct, "feature_names_in_", None)
    if indices is not None and names_in is not None:
        return [str(names_in[i]) for i in indices]
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, list | tuple) and all(isinstance(c, str) for c in columns):
        return list(columns)
    raise UnsupportedPipeline(f"cannot resolve the columns of transformer {name!r}: {columns!r}")


def _is_identity(trans: Any) -> bool:
    """'passthrough' and an empty FunctionTransformer leave a score as it is: a column with shift 0, scale 1."""
    if isinstance(trans, str):
        return trans == "passthrough"
    from sklearn.preprocessing import FunctionTransformer

    return isinstance(trans, FunctionTransformer) and trans.func is None


def compile_design(ct: Any) -> Design:
    """Reduce a fitted ColumnTransformer made of OneHotEncoder / StandardScaler / passthrough / drop."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not isinstance(ct, ColumnTransformer):
        raise UnsupportedPipeline(f"first step is {type(ct).__name__}, not a ColumnTransformer")
    cat_columns: dict[str, list[tuple[int, int]]] = {name: [] for name in CATEGORICAL}  # (category, column)
    numeric: list[NumericColumn] = []
    column_feature: list[int] = []
    reference: list[float | None] = [None] * len(NUMERIC)
    offset = 0
    for name, trans, columns in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        inputs = _input_names(ct, name, columns)
        if not inputs:
            continue
        unknown = [c for c in inputs if c not in FEATURES]
        if unknown:
            raise UnsupportedPipeline(f"transformer {name!r} reads columns outside the schema: {unknown}")
        if isinstance(trans, OneHotEncoder):
            if getattr(trans, "_infrequent_enabled", False):
                raise UnsupportedPipeline("OneHotEncoder with infrequent categories")
            drop_idx = getattr(trans, "drop_idx_", None)
            for j, feature in enumerate(inputs):
                if feature not in schema.CATEGORIES:
                    raise UnsupportedPipeline(f"OneHotEncoder applied to numeric feature {feature!r}")
                known = [str(c) for c in trans.categories_[j]]
                dropped = None if drop_idx is None or drop_idx[j] is None else int(drop_idx[j])
                width = len(known) - (dropped is not None)
                for k, category in enumerate(schema.CATEGORIES[feature]):
                    if category not in known:
                        if trans.handle_unknown == "error":
                            raise ModelNotServable(
                                f"{feature}: the model's encoder does not know category {category!r} "
                                "and refuses unknown categories"
                            )
                        continue  # encodes as all zeros, as handle_unknown='ignore' does
                    idx = known.index(category)
                    if idx == dropped:
                        continue
                    col = offset + idx - (dropped is not None and idx > dropped)
                    cat_columns[feature].append((k, col))
                offset += width
                column_feature.extend([FEATURES.index(feature)] * width)
        elif isinstance(trans, StandardScaler) or _is_identity(trans):
            for j, feature in enumerate(inputs):
                if feature not in NUMERIC:
                    raise UnsupportedPipeline(f"categorical feature {feature!r} is not one-hot encoded")
                i = NUMERIC.index(feature)
                shift, scale = 0.0, 1.0
                if isinstance(trans, StandardScaler):
                    if trans.with_mean:
                        shift = float(trans.mean_[j])
                        reference[i] = shift
                    if trans.with_std and trans.scale_ is not None:
                        scale = float(trans.scale_[j])
                numeric.append(NumericColumn(i, offset, shift, scale))
                column_feature.append(FEATURES.index(feature))
                offset += 1
        else:
            raise UnsupportedPipeline(f"transformer {name!r} is a {type(trans).__name__}")
    tables = []
    for name in CATEGORICAL:
        table = np.zeros((len(schema.CATEGORIES[name]), offset), dtype=np.float64)
        for k, col in cat_columns[name]:
            table[k, col] = 1.0
        tables.append(table)
    ref = np.array([schema.PASS_MARK if r is None else r for r in reference], dtype=np.float64)
    sources = tuple("training mean" if r is not None else "pass mark" for r in reference)
    return Design(
        offset, tuple(tables), tuple(numeric), np.array(column_feature, dtype=np.intp), ref, sources
    )
