"""The figures logged with every trained model version: ROC curve and confusion matrix, as PNG files.

matplotlib is imported inside each function and draws on the Agg canvas, so only a caller that draws pays
for the import and nothing needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from exampass_pipeline.ml.modeling.metrics import _check_scores


def _save(fig: Any, path: Path | str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    tmp.replace(out)  # never leave a half-written PNG where a reader expects a finished one
    return out


def plot_roc(y_pass: Any, p_pass: Any, path: Path | str) -> Path:
    """ROC curve of the fail class (the class acted on), as a PNG, drawn on the Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y, p = _check_scores(y_pass, p_pass)
    if y.all() or not y.any():
        raise ValueError("y_pass: a ROC curve needs both passing and failing students")
    fpr, tpr, _ = roc_curve(~y, 1.0 - p)
    auc = roc_auc_score(y, p)
    fig = Figure(figsize=(5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"model (ROC-AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="chance")
    ax.set(xlabel="false fail rate (passing students flagged)", ylabel="fail recall", title="ROC, fail class")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_confusion(y_pass: Any, p_pass: Any, threshold: float | np.ndarray, path: Path | str) -> Path:
    """Confusion matrix of the served decision, as a PNG, with counts in each cell.

    ``threshold`` is one cut-off or one per student (a decision rule's cut-offs for their groups).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cuts = np.asarray(threshold, dtype=float)
    y, p = _check_scores(y_pass, p_pass, float(cuts) if cuts.ndim == 0 else None)
    matrix = confusion_matrix(y, p >= cuts, labels=[False, True])
    title = f"Confusion at threshold {float(cuts):.2f}" if cuts.ndim == 0 else "Confusion, cut-off per group"
    labels = ["fail", "pass"]
    fig = Figure(figsize=(4.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            colour = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], labels=labels)
    ax.set_yticks([0, 1], labels=labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return _save(fig, path)
