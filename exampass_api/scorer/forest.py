"""Tree ensembles as flat arrays, and the random forest / extra trees / single tree scorer built on them.

Explanation: path attribution (Saabas, the ``treeinterpreter`` method). Every node holds the expected model
output of the training samples that reached it; walking a row from the root to its leaf, each split moves
the expectation, and that move is credited to the feature the split tested. The moves telescope, so the
contributions add up exactly to ``output(x) - output(root)``. Because the path to a leaf is unique, the
moves are summed per leaf once at load time (``Forest``), and boosting reuses the same table.

A forest averages probabilities, so its path contributions (in probability) are rescaled by one common
factor per row so that they add up to ``logit(p) - logit(p_root)``, with probabilities clipped to
``[1/(2T), 1 - 1/(2T)]`` (half a tree's vote, T trees) so that a unanimous forest stays finite.

The arithmetic mirrors scikit-learn's: float32 features against float64 thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from exampass_api.scorer.base import Scorer
from exampass_api.scorer.encoding import (
    N_FEATURES,
    BoolArray,
    Design,
    FloatArray,
    IndexArray,
    UnsupportedPipeline,
    _logit,
)


class TreeSpec(TypedDict):
    """One fitted tree in the common form that both scikit-learn's trees and boosting's predictors reduce to."""

    left: IndexArray  # child when x <= threshold; ignored at leaves
    right: IndexArray  # child otherwise; ignored at leaves
    feature: IndexArray  # design-matrix column tested; ignored at leaves
    threshold: FloatArray
    is_leaf: BoolArray
    expected: FloatArray  # expected output of the training samples reaching the node
    depth: int


@dataclass(frozen=True)
class Forest:
    """Many trees flattened into one node table, plus each leaf's path attribution, computed once at load.

    The Saabas attribution of a row depends only on the leaf it reaches in each tree (the path to a leaf is
    unique), so it is precomputed per leaf; scoring is then "find the leaves, gather, sum".
    """

    left: IndexArray  # (n_nodes,) child when x <= threshold; a leaf points at itself
    right: IndexArray  # (n_nodes,) child otherwise; a leaf points at itself
    feature: IndexArray  # (n_nodes,) column tested (0 at leaves)
    threshold: FloatArray  # (n_nodes,)
    expected: FloatArray  # (n_nodes,) expected output of the training samples reaching the node
    leaf_moves: FloatArray  # (n_nodes, N_FEATURES) summed expectation moves per feature from the root
    is_leaf: BoolArray  # (n_nodes,) bool
    roots: IndexArray  # (n_trees,)
    depth: int
    sums: FloatArray  # (1 + N_FEATURES, n_nodes): expected, then leaf_moves, for "sum over reached leaves"

    @classmethod
    def build(cls, trees: Sequence[TreeSpec], column_feature: IndexArray) -> Forest:
        """Concatenate the trees' node arrays (children offset to their global index) and precompute moves."""
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

    def leaves_of_row(self, x: FloatArray) -> IndexArray:
        """One row: decide every node's direction in one shot, then hop all trees one level per gather.

        At n=1 numpy's per-call overhead dominates: a few calls over every node beat several calls per level.
        """
        nxt = np.where(x[self.feature] > self.threshold, self.right, self.left)
        node = self.roots
        for _ in range(self.depth):
            node = nxt[node]
        return node

    def sum_row(self, x: FloatArray) -> FloatArray:
        """One row: [sum of the reached leaves' outputs, summed path moves per feature...] (1 + N_FEATURES,).

        ``take`` along the contiguous node axis is the cheapest gather-and-reduce numpy offers at this size.
        """
        sums: FloatArray = self.sums.take(self.leaves_of_row(x), axis=1).sum(axis=1)
        return sums

    def sum_leaves(self, leaves: IndexArray) -> FloatArray:
        """Many rows: (n, 1 + N_FEATURES), as a sparse leaf-indicator matrix times the per-node table."""
        from scipy.sparse import csr_matrix

        n, n_trees = leaves.shape
        indicator = csr_matrix(
            (np.ones(leaves.size), leaves.reshape(-1), np.arange(0, n * n_trees + 1, n_trees)),
            shape=(n, self.sums.shape[1]),
        )
        return np.asarray(indicator @ self.sums.T)

    def leaves(self, X: FloatArray) -> IndexArray:
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
    reference_log_odds: float  # always set here (the base class allows None for the fallback)

    def __init__(self, design: Design, estimator: Any) -> None:
        trees = list(getattr(estimator, "estimators_", None) or [estimator])
        if len(estimator.classes_) != 2 or getattr(estimator, "n_outputs_", 1) != 1:
            raise UnsupportedPipeline("forest is not a single-output binary classifier")
        if estimator.n_features_in_ != design.width:
            raise UnsupportedPipeline("forest width does not match the encoder")
        specs: list[TreeSpec] = []
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

    def _leaves(self, codes: IndexArray, nums: FloatArray) -> IndexArray:
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

    def predict_proba(self, codes: IndexArray, nums: FloatArray) -> FloatArray:
        proba: FloatArray = self.forest.expected[self._leaves(codes, nums)].sum(axis=1) / self.n_trees
        return proba

    def explain(self, codes: IndexArray, nums: FloatArray) -> tuple[FloatArray, FloatArray]:
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

    def _factors(self, proba: FloatArray) -> FloatArray:
        """One factor per row taking the summed tree moves (which add up to T * (p - p_root)) to log-odds."""
        clipped = np.clip(proba, self.eps, 1 - self.eps)
        total = (proba - self.root_proba) * self.n_trees
        dlogit = _logit(clipped) - self.reference_log_odds
        slope = 1.0 / (self.n_trees * clipped * (1.0 - clipped))
        safe = np.abs(total) > 1e-9
        return np.where(safe, dlogit / np.where(safe, total, 1.0), slope)

    def reference(self) -> dict[str, Any]:
        return {"expected_pass_probability": self.root_proba, "trees": self.n_trees}
