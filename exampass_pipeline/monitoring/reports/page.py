"""What the drift and quality reports share: the ExamPass section's HTML, the page that puts it on top of
Evidently's dashboard (or stands alone when Evidently drew nothing), the atomic write and the flat numbers.
One stylesheet and one table renderer keep the two reports looking and reading alike.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROBABILITY = "pass_probability"

_STYLE = """
<style>
  .exampass { font-family: -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 16px 24px; color: #222; }
  .exampass h1 { font-size: 22px; margin: 0 0 8px 0; }
  .exampass h2 { font-size: 17px; margin: 18px 0 6px 0; }
  .exampass table { border-collapse: collapse; margin: 6px 0 12px 0; font-size: 13px; }
  .exampass th, .exampass td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
  .exampass th { background: #f3f3f3; }
  .exampass td.l, .exampass th.l { text-align: left; }
  .exampass .pass { color: #1b7f3b; font-weight: 600; }
  .exampass .fail { color: #b3261e; font-weight: 600; }
  .exampass .warn { color: #a15c00; font-weight: 600; }
  .exampass .note { color: #555; font-size: 13px; max-width: 1000px; }
</style>
"""


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        return f"{number:.3g}" if abs(number) < 1e-3 and number != 0 else f"{number:.3f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f"<th class='l'>{html.escape(h)}</th>" if i < left else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='l'>{_fmt(v)}</td>" if i < left else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status(status: str) -> str:
    return f"<span class='{html.escape(status)}'>{html.escape(status.upper())}</span>"


def _page(title: str, sections: str, evidently_html: str | None, evidently_note: str) -> str:
    """Our section on top of Evidently's standalone page, or a plain page when Evidently drew nothing."""
    ours = (
        f"<div class='exampass'><h1>{html.escape(title)}</h1>{sections}"
        f"<h2>Evidently</h2><p class='note'>{html.escape(evidently_note)}</p></div>"
    )
    if evidently_html and "<body>" in evidently_html:
        page = (
            evidently_html.replace("<head>", "<head>" + _STYLE, 1)
            if "<head>" in evidently_html
            else evidently_html
        )
        return page.replace("<body>", "<body>" + ours, 1)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
        f"<body>{ours}</body></html>"
    )


def _write(path: Path, text: str) -> None:
    """Write via a temp file and rename: a reader (or a crash) never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # mkstemp made it 0600: reports show students' data, so they stay owner-only
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(numbers: dict[str, Any]) -> dict[str, float | int]:
    """Numbers only, NaN dropped: a metric that does not exist on a day is absent from the trend, not NaN."""
    out: dict[str, float | int] = {}
    for key, value in numbers.items():
        if isinstance(value, bool | np.bool_):
            out[key] = int(value)
        elif isinstance(value, int | np.integer):
            out[key] = int(value)
        elif isinstance(value, float | np.floating) and not math.isnan(value):
            out[key] = float(value)
    return out


def _require(frame: pd.DataFrame, columns: Sequence[str], which: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{which}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{which}: missing column(s) {', '.join(missing)}")
