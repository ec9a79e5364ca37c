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

Explanations, always in log-odds of passing, per original feature (one-hot columns are summed back):

* linear (LogisticRegression): exact. ``contribution_f = sum_j coef_j * (x_j - r_j)`` over the columns of f,
  where r is the reference student: every score at its training mean (``StandardScaler.mean_``; the pass
  mark when the pipeline does not scale it) and every categorical feature averaged uniformly over its
  categories (i.e. the coefficients centred per feature). They add up to ``logit(p) - reference_log_odds``.
* forest / boosting: path attribution (Saabas, the ``treeinterpreter`` method). Every node holds the expected
  model output of the training samples that reached it; walking a row from the root to its leaf, each split
  moves the expectation, and that move is credited to the feature the split tested. The moves telescope, so
  the contributions add up exactly to ``output(x) - output(root)``. Boosting's output is already log-odds. A
  forest averages probabilities, so its path contributions (in probability) are rescaled by one common factor
  per row so that they add up to ``logit(p) - logit(p_root)``, with probabilities clipped to
  ``[1/(2T), 1 - 1/(2T)]`` (half a tree's vote, T trees) so that a unanimous forest stays finite.
* pipeline (fallback for any other estimator): occlusion in log-odds, from one vectorised ``predict_proba``
  call: logit(p) minus the mean logit with the feature set to each of its categories (a score: set to the
  pass mark). Not additive.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from exampass_pipeline import schema

log = logging.getLogger(__name__)

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


def encode(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Validated records (schema spellings, whole scores) to the (codes, nums) arrays every scorer takes."""
    n = len(records)
    codes = np.array([[CODES[f][r[f]] for f in CATEGORICAL] for r in records], dtype=np.intp).reshape(
        n, N_CAT
    )
    nums = np.array([[r[f] for f in NUMERIC] for r in records], dtype=np.float64).reshape(n, len(NUMERIC))
    return codes, nums


def decode_frame(codes: np.ndarray, nums: np.ndarray) -> Any:
    """The DataFrame scikit-learn would get for these rows: the reference the fast path is checked against."""
    import pandas as pd

    data: dict[str, Any] = {}
    for j, name in enumerate(CATEGORICAL):
        data[name] = np.asarray(schema.CATEGORIES[name], dtype=object)[codes[:, j]]
    for i, name in enumerate(NUMERIC):
        data[name] = nums[:, i].astype(np.int64)
    return pd.DataFrame(data, columns=list(FEATURES))


def probe_rows(n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """A fixed grid touching every category and the whole score range, for the load-time self-check."""
    i = np.arange(n)
    codes = np.stack([i % len(schema.CATEGORIES[name]) for name in CATEGORICAL], axis=1).astype(np.intp)
    codes[:, 1] = (i // 2) % len(schema.CATEGORIES[CATEGORICAL[1]])  # decorrelate from gender
    nums = np.stack([(i * 37) % 101, (i * 53 + 11) % 101], axis=1).astype(np.float64)
    nums[:3] = [[0, 0], [100, 100], [0, 100]]
    return codes, nums


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _expit(z: float) -> float:
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
    cat_tables: tuple[np.ndarray, ...]  # per categorical feature: (n_categories, width)
    numeric: tuple[NumericColumn, ...]
    column_feature: np.ndarray  # (width,) index into FEATURES of the feature each column came from
    numeric_reference: np.ndarray  # (len(NUMERIC),) raw score of the reference student
    numeric_reference_source: tuple[str, ...]
    # One-row fast path (numpy's per-call overhead dominates at n=1): the categorical part of a row is one of
    # the 240 category combinations, so every combination's row is precomputed and a request copies one.
    combo_stride: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)
    combo_rows: np.ndarray = field(init=False, repr=False, compare=False)
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

    def row(self, record: Mapping[str, Any]) -> np.ndarray:
        """One record's design-matrix row: the same values as ``transform`` gives for it."""
        combo = 0
        for name, strides in self.combo_stride.items():
            combo += strides[record[name]]
        x = self.combo_rows[combo].copy()
        for name, col, shift, scale in self.numeric_py:
            x[col] = (record[name] - shift) / scale
        return x

    def transform(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        X = np.zeros((codes.shape[0], self.width), dtype=np.float64)
        for j, table in enumerate(self.cat_tables):
            X += table[codes[:, j]]
        for col in self.numeric:
            X[:, col.column] = (nums[:, col.feature] - col.shift) / col.scale
        return X

    def reference_description(self) -> dict[str, Any]:
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


class Scorer(ABC):
    """A compiled model: probabilities and per-feature log-odds contributions from (codes, nums)."""

    kind: str = "abstract"
    method: str = ""
    reference_log_odds: float | None = None

    @abstractmethod
    def predict_proba(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        """P(pass) per row, shape (n,)."""

    @abstractmethod
    def explain(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(pass) (n,), contributions (n, len(FEATURES)) in FEATURES order)."""

    @abstractmethod
    def reference(self) -> dict[str, Any]:
        """The reference the contributions are measured from, for GET /model."""

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        """One record; scorers override this where pure Python beats numpy's per-call overhead."""
        codes, nums = encode([record])
        proba, contrib = self.explain(codes, nums)
        return float(proba[0]), contrib[0].tolist()


class LinearScorer(Scorer):
    """LogisticRegression: one table lookup per categorical feature, a dot product, a sigmoid."""

    kind = "linear"
    method = "exact linear decomposition of the log-odds against the reference student"

    def __init__(self, design: Design, estimator: Any) -> None:
        coef = np.asarray(estimator.coef_, dtype=np.float64).reshape(-1)
        if coef.shape[0] != design.width:
            raise UnsupportedPipeline(
                f"model expects {coef.shape[0]} columns, the encoder makes {design.width}"
            )
        self.design = design
        self.intercept = float(np.asarray(estimator.intercept_).reshape(-1)[0])
        # Per categorical feature: the log-odds each category adds, and their mean (the reference).
        self.cat_weights = [table @ coef for table in design.cat_tables]
        self.cat_means = np.array([w.mean() for w in self.cat_weights])
        self.cat_centered = [w - w.mean() for w in self.cat_weights]
        self._cat_py = [
            dict(zip(schema.CATEGORIES[n], w.tolist(), strict=True))
            for n, w in zip(CATEGORICAL, self.cat_weights, strict=True)
        ]
        self._cat_centered_py = [
            dict(zip(schema.CATEGORIES[n], w.tolist(), strict=True))
            for n, w in zip(CATEGORICAL, self.cat_centered, strict=True)
        ]
        self.numeric = [(c.feature, float(coef[c.column]), c.shift, c.scale) for c in design.numeric]
        self._numeric_py = [(NUMERIC[i], i, w, shift, scale) for i, w, shift, scale in self.numeric]
        self.ref_z = [
            (w, (float(design.numeric_reference[i]) - shift) / scale) for i, w, shift, scale in self.numeric
        ]
        self.reference_log_odds = (
            self.intercept + float(self.cat_means.sum()) + sum(w * z for w, z in self.ref_z)
        )

    def _logit_and_contrib(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = codes.shape[0]
        contrib = np.zeros((n, N_FEATURES), dtype=np.float64)
        logit = np.full(n, self.intercept)
        for j in range(N_CAT):
            logit += self.cat_weights[j][codes[:, j]]
            contrib[:, j] = self.cat_centered[j][codes[:, j]]
        for (i, w, shift, scale), (_, z_ref) in zip(self.numeric, self.ref_z, strict=True):
            z = (nums[:, i] - shift) / scale
            logit += w * z
            contrib[:, N_CAT + i] += w * (z - z_ref)
        return logit, contrib

    def predict_proba(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self._logit_and_contrib(codes, nums)[0])

    def explain(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.special import expit

        logit, contrib = self._logit_and_contrib(codes, nums)
        return expit(logit), contrib

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        logit = self.intercept
        contrib = [0.0] * N_FEATURES
        for j, name in enumerate(CATEGORICAL):
            value = record[name]
            logit += self._cat_py[j][value]
            contrib[j] = self._cat_centered_py[j][value]
        for (name, i, w, shift, scale), (_, z_ref) in zip(self._numeric_py, self.ref_z, strict=True):
            z = (record[name] - shift) / scale
            logit += w * z
            contrib[N_CAT + i] += w * (z - z_ref)
        return _expit(logit), contrib

    def reference(self) -> dict[str, Any]:
        return self.design.reference_description()


@dataclass(frozen=True)
class Forest:
    """Many trees flattened into one node table, plus each leaf's path attribution, computed once at load.

    The Saabas attribution of a row depends only on the leaf it reaches in each tree (the path to a leaf is
    unique), so it is precomputed per leaf; scoring is then "find the leaves, gather, sum".
    """

    left: np.ndarray  # (n_nodes,) child when x <= threshold; a leaf points at itself
    right: np.ndarray  # (n_nodes,) child otherwise; a leaf points at itself
    feature: np.ndarray  # (n_nodes,) column tested (0 at leaves)
    threshold: np.ndarray  # (n_nodes,)
    expected: np.ndarray  # (n_nodes,) expected output of the training samples reaching the node
    leaf_moves: np.ndarray  # (n_nodes, N_FEATURES) summed expectation moves per feature from the root
    is_leaf: np.ndarray  # (n_nodes,) bool
    roots: np.ndarray  # (n_trees,)
    depth: int
    sums: np.ndarray  # (1 + N_FEATURES, n_nodes): expected, then leaf_moves, for "sum over reached leaves"

    @classmethod
    def build(cls, trees: list[dict[str, np.ndarray]], column_feature: np.ndarray) -> Forest:
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("left", "right", "feature", "threshold", "expected")
        }
        leaves, roots, offset, depth = [], [], 0, 0
        for t in trees:
            n = len(t["left"])
            leaf = np.asarray(t["is_leaf"]).astype(bool)
            own = np.arange(n)
            parts["left"].append(np.where(leaf, own, t["left"]) + offset)
            parts["right"].append(np.where(leaf, own, t["right"]) + offset)
            parts["feature"].append(np.where(leaf, 0, t["feature"]))
            parts["threshold"].append(np.where(leaf, 0.0, t["threshold"]))
            parts["expected"].append(t["expected"])
            leaves.append(leaf)
            roots.append(offset)
            offset += n
            depth = max(depth, int(t["depth"]))
        flat = {k: np.concatenate(v) for k, v in parts.items()}
        left, right = flat["left"].astype(np.intp), flat["right"].astype(np.intp)
        feature = flat["feature"].astype(np.intp)
        expected = flat["expected"].astype(np.float64)
        is_leaf = np.concatenate(leaves)
        group = column_feature[feature]
        # Top-down, one tree level at a time for all trees: a child inherits its parent's moves plus its own.
        leaf_moves = np.zeros((offset, N_FEATURES), dtype=np.float64)
        frontier = np.array(roots, dtype=np.intp)
        while frontier.size:
            parents = frontier[~is_leaf[frontier]]
            children = []
            for side in (left, right):
                child = side[parents]
                leaf_moves[child] = leaf_moves[parents]
                leaf_moves[child, group[parents]] += expected[child] - expected[parents]
                children.append(child)
            frontier = np.concatenate(children)
        return cls(
            left=left,
            right=right,
            feature=feature,
            threshold=flat["threshold"].astype(np.float64),
            expected=expected,
            leaf_moves=leaf_moves,
            is_leaf=is_leaf,
            roots=np.array(roots, dtype=np.intp),
            depth=depth,
            sums=np.ascontiguousarray(np.concatenate([expected[None, :], leaf_moves.T], axis=0)),
        )

    def leaves_of_row(self, x: np.ndarray) -> np.ndarray:
        """One row: decide every node's direction in one shot, then hop all trees one level per gather.

        At n=1 numpy's per-call overhead dominates: a few calls over every node beat several calls per level.
        """
        nxt = np.where(x[self.feature] > self.threshold, self.right, self.left)
        node = self.roots
        for _ in range(self.depth):
            node = nxt[node]
        return node

    def sum_row(self, x: np.ndarray) -> np.ndarray:
        """One row: [sum of the reached leaves' outputs, summed path moves per feature...] (1 + N_FEATURES,).

        ``take`` along the contiguous node axis is the cheapest gather-and-reduce numpy offers at this size.
        """
        return self.sums.take(self.leaves_of_row(x), axis=1).sum(axis=1)

    def sum_leaves(self, leaves: np.ndarray) -> np.ndarray:
        """Many rows: (n, 1 + N_FEATURES), as a sparse leaf-indicator matrix times the per-node table."""
        from scipy.sparse import csr_matrix

        n, n_trees = leaves.shape
        indicator = csr_matrix(
            (np.ones(leaves.size), leaves.reshape(-1), np.arange(0, n * n_trees + 1, n_trees)),
            shape=(n, self.sums.shape[1]),
        )
        return np.asarray(indicator @ self.sums.T)

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf reached per (row, tree): all rows and trees advance one level per numpy call."""
        n, width = X.shape
        flat = np.ascontiguousarray(X).reshape(-1)
        node = np.repeat(self.roots[None, :], n, axis=0)
        row_offset = (np.arange(n, dtype=np.intp) * width)[:, None]
        for level in range(self.depth):
            go_right = flat[row_offset + self.feature[node]] > self.threshold[node]
            node = np.where(go_right, self.right[node], self.left[node])
            if level % 4 == 3 and self.is_leaf[node].all():
                break
        return node


class ForestScorer(Scorer):
    """RandomForest / ExtraTrees / a single decision tree: the mean of the leaves' pass fractions."""

    kind = "forest"
    method = (
        "tree path attribution (Saabas) averaged over the trees, rescaled from probability to log-odds; "
        "reference = the forest's root expectation"
    )

    def __init__(self, design: Design, estimator: Any) -> None:
        trees = list(getattr(estimator, "estimators_", None) or [estimator])
        if len(estimator.classes_) != 2 or getattr(estimator, "n_outputs_", 1) != 1:
            raise UnsupportedPipeline("forest is not a single-output binary classifier")
        if estimator.n_features_in_ != design.width:
            raise UnsupportedPipeline("forest width does not match the encoder")
        specs = []
        for tree in trees:
            t = tree.tree_
            value = t.value[:, 0, :].astype(np.float64)
            total = value.sum(axis=1)
            total[total == 0.0] = 1.0
            specs.append(
                {
                    "left": t.children_left,
                    "right": t.children_right,
                    "feature": t.feature,
                    "threshold": t.threshold,
                    "is_leaf": t.children_left == -1,
                    "expected": value[:, 1] / total,
                    "depth": t.max_depth,
                }
            )
        self.design = design
        self.trees = trees
        self.forest = Forest.build(specs, design.column_feature)
        self.n_trees = len(trees)
        self.eps = 0.5 / self.n_trees
        self.root_proba = float(self.forest.expected[self.forest.roots].mean())
        self.reference_log_odds = float(_logit(np.clip(np.array(self.root_proba), self.eps, 1 - self.eps)))

    def _leaves(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        # scikit-learn trees compare float32 features against float64 thresholds.
        X32 = self.design.transform(codes, nums).astype(np.float32)
        if X32.shape[0] < 16:
            return self.forest.leaves(X32.astype(np.float64))
        # For a batch the trees' own Cython apply (public API) is several times faster than the numpy walk.
        return np.stack(
            [
                tree.apply(X32, check_input=False) + root
                for tree, root in zip(self.trees, self.forest.roots, strict=True)
            ],
            axis=1,
        )

    def predict_proba(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        return self.forest.expected[self._leaves(codes, nums)].sum(axis=1) / self.n_trees

    def explain(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = self.forest.sum_leaves(self._leaves(codes, nums))
        proba = sums[:, 0] / self.n_trees
        return proba, sums[:, 1:] * self._factors(proba)[:, None]

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        sums = self.forest.sum_row(self.design.row(record).astype(np.float32).astype(np.float64))
        proba = float(sums[0]) / self.n_trees
        return proba, (sums[1:] * self._factor(proba)).tolist()

    def _factor(self, proba: float) -> float:
        """``_factors`` for one row in plain floats (a dozen numpy calls on a 1-element array cost 100 us)."""
        clipped = min(max(proba, self.eps), 1 - self.eps)
        total = (proba - self.root_proba) * self.n_trees
        if abs(total) > 1e-9:
            return (math.log(clipped) - math.log1p(-clipped) - float(self.reference_log_odds or 0.0)) / total
        return 1.0 / (self.n_trees * clipped * (1.0 - clipped))

    def _factors(self, proba: np.ndarray) -> np.ndarray:
        """One factor per row taking the summed tree moves (which add up to T * (p - p_root)) to log-odds."""
        clipped = np.clip(proba, self.eps, 1 - self.eps)
        total = (proba - self.root_proba) * self.n_trees
        dlogit = _logit(clipped) - self.reference_log_odds
        slope = 1.0 / (self.n_trees * clipped * (1.0 - clipped))
        safe = np.abs(total) > 1e-9
        return np.where(safe, dlogit / np.where(safe, total, 1.0), slope)

    def reference(self) -> dict[str, Any]:
        return {"expected_pass_probability": self.root_proba, "trees": self.n_trees}


class BoostingScorer(Scorer):
    """HistGradientBoostingClassifier: baseline plus the sum of leaf values, then the sigmoid."""

    kind = "boosting"
    method = (
        "tree path attribution (Saabas) in log-odds; reference = baseline plus every tree's root expectation"
    )

    def __init__(self, design: Design, estimator: Any) -> None:
        if getattr(estimator, "n_trees_per_iteration_", 1) != 1 or len(estimator.classes_) != 2:
            raise UnsupportedPipeline("boosting model is not a binary classifier")
        if estimator.n_features_in_ != design.width:
            raise UnsupportedPipeline("boosting width does not match the encoder")
        specs = []
        for (predictor,) in estimator._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise UnsupportedPipeline("native categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            expected = np.where(leaf, nodes["value"], 0.0).astype(np.float64)
            # Internal values are not shrunk in the predictor; rebuild them as the count-weighted leaf mean.
            weight = nodes["count"].astype(np.float64)
            for i in range(len(nodes) - 1, -1, -1):
                if not leaf[i]:
                    left, right = nodes["left"][i], nodes["right"][i]
                    wl, wr = weight[left], weight[right]
                    expected[i] = (wl * expected[left] + wr * expected[right]) / (wl + wr)
                    weight[i] = wl + wr
            specs.append(
                {
                    "left": nodes["left"].astype(np.intp),
                    "right": nodes["right"].astype(np.intp),
                    "feature": nodes["feature_idx"].astype(np.intp),
                    "threshold": nodes["num_threshold"],
                    "is_leaf": leaf,
                    "expected": expected,
                    "depth": int(nodes["depth"].max()),
                }
            )
        self.design = design
        self.forest = Forest.build(specs, design.column_feature)
        self.baseline = float(np.asarray(estimator._baseline_prediction).reshape(-1)[0])
        self.reference_log_odds = self.baseline + float(self.forest.expected[self.forest.roots].sum())

    def _leaves(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        return self.forest.leaves(self.design.transform(codes, nums))

    def predict_proba(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self.baseline + self.forest.expected[self._leaves(codes, nums)].sum(axis=1))

    def explain(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.special import expit

        sums = self.forest.sum_leaves(self._leaves(codes, nums))
        return expit(self.baseline + sums[:, 0]), sums[:, 1:]

    def explain_one(self, record: Mapping[str, Any]) -> tuple[float, list[float]]:
        sums = self.forest.sum_row(self.design.row(record))
        return _expit(self.baseline + float(sums[0])), sums[1:].tolist()

    def reference(self) -> dict[str, Any]:
        return {"baseline_log_odds": self.baseline, "trees": len(self.forest.roots)}


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

    def predict_proba(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(decode_frame(codes, nums))[:, 1], dtype=np.float64)

    def explain(self, codes: np.ndarray, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _compile_fast(pipeline: Any) -> Scorer:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise UnsupportedPipeline("not a two-step Pipeline (preprocess, model)")
    design = compile_design(pipeline.steps[0][1])
    estimator = pipeline.steps[-1][1]
    if isinstance(estimator, LogisticRegression):
        if np.asarray(estimator.coef_).shape[0] != 1:
            raise UnsupportedPipeline("multinomial logistic regression")
        return LinearScorer(design, estimator)
    if isinstance(estimator, RandomForestClassifier | ForestClassifier | DecisionTreeClassifier):
        return ForestScorer(design, estimator)
    if isinstance(estimator, HistGradientBoostingClassifier):
        return BoostingScorer(design, estimator)
    raise UnsupportedPipeline(f"estimator {type(estimator).__name__}")


def compile_pipeline(pipeline: Any) -> Scorer:
    """The fastest scorer that reproduces ``pipeline.predict_proba(...)[:, 1]`` to within PROBE_TOLERANCE.

    Raises ModelNotServable when the model itself would fail on requests the API accepts.
    """
    try:
        scorer: Scorer = _compile_fast(pipeline)
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
