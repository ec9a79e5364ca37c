"""Explanations in words and pictures for people: the page's sentence and bar chart, the roster's reasons.

The numbers are the scorer's own per-feature contributions (log-odds of passing, positive towards pass; see
``scorer``); this module only names them. Features are called by the labels teachers know from the Kaggle
file and the form ("Writing score", not ``writing_score``), and the chart is laid out here, in plain numbers,
so the template only draws it: inline SVG rendered on the server needs no JavaScript and no chart library.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from exampass_api.scorer.encoding import FloatArray, IndexArray
from exampass_pipeline.contract import schema

LABELS: Final[dict[str, str]] = {
    schema.GENDER: "Gender",
    schema.RACE_ETHNICITY: "Race/ethnicity",
    schema.PARENTAL_EDUCATION: "Parental level of education",
    schema.LUNCH: "Lunch",
    schema.TEST_PREP: "Test preparation course",
    schema.READING_SCORE: "Reading score",
    schema.WRITING_SCORE: "Writing score",
}
ROSTER_REASONS: Final = 3
# Below this size (log-odds) a contribution is shown as "no effect": it would not move a percent.
NEGLIGIBLE: Final = 0.005


EFFECTS: Final = ("hardly changes", "raises", "lowers")


def _effect_code(contribution: float) -> int:
    return 0 if -NEGLIGIBLE < contribution < NEGLIGIBLE else (1 if contribution > 0 else 2)


def effect(contribution: float) -> str:
    return EFFECTS[_effect_code(contribution)]


def feature_value(feature: str, value: Any) -> str:
    """'Writing score 50', 'Lunch free/reduced': a feature and its value as a short label."""
    return f"{LABELS[feature]} {value}"


def sentence(record: Mapping[str, Any], contributions: Sequence[float]) -> str:
    """One plain sentence about the feature that moved this student's chance most.

    "A writing score of 50 lowers the chance of passing most." Categories are quoted, because some of them
    ("some college", "none") read as ordinary words.
    """
    j = max(range(len(schema.FEATURES)), key=lambda i: abs(contributions[i]))
    feature, c = schema.FEATURES[j], contributions[j]
    if abs(c) < NEGLIGIBLE:
        return "No single detail moves this student's chance of passing much either way."
    value = record[feature]
    if feature in schema.NUMERIC_FEATURES:
        subject = f"A {LABELS[feature].lower()} of {value}"
    else:
        subject = f"{LABELS[feature]} \u201c{value}\u201d"
    return f"{subject} {effect(c)} the chance of passing most."


@functools.lru_cache(maxsize=4096)
def _reason(feature: int, value: Any, code: int) -> str:
    # Few distinct phrases exist (categories, 0-100 scores, three effects): a 10,000-row roster reuses them.
    name = schema.FEATURES[feature]
    return f"{feature_value(name, value)} ({EFFECTS[code]})"


def top_reasons(record: Mapping[str, Any], contributions: Sequence[float], order: Sequence[int]) -> list[str]:
    """'Writing score 50 (lowers)' for the first ROSTER_REASONS features of ``order``."""
    features = schema.FEATURES
    return [_reason(j, record[features[j]], _effect_code(contributions[j])) for j in order[:ROSTER_REASONS]]


def reason_texts(
    records: Sequence[Mapping[str, Any]], contributions: FloatArray, order: IndexArray
) -> list[str]:
    """``top_reasons`` of every row, joined by "; ": the roster's ``top_reasons`` column, computed in bulk.

    The effects are classified by numpy and each distinct phrase is built once, which makes a 1,000-row
    roster's reasons several times cheaper than row by row (the CSV route's speed goal depends on it).
    """
    top = order[:, :ROSTER_REASONS]
    chosen = np.take_along_axis(contributions, top, axis=1)
    codes = np.where(np.abs(chosen) < NEGLIGIBLE, 0, np.where(chosen > 0, 1, 2))
    features, reason = schema.FEATURES, _reason
    return [
        "; ".join([reason(j, record[features[j]], k) for j, k in zip(js, ks, strict=True)])
        for record, js, ks in zip(records, top.tolist(), codes.tolist(), strict=True)
    ]


def percent(probability: float) -> str:
    """A probability as a whole percent, "73 %", rounding half up (as people do, unlike round()).

    Only a certain answer is shown as 0 % or 100 %: a model that is merely very sure says "over 99 %".
    """
    whole = int(probability * 100 + 0.5)
    if whole >= 100 and probability < 1.0:
        return "over 99 %"
    if whole <= 0 and probability > 0.0:
        return "under 1 %"
    return f"{whole} %"


def threshold_percent(threshold: float) -> str:
    """A cut-off as a percent with one decimal when it has one: "60 %", "62.5 %"."""
    text = f"{threshold * 100:.1f}".removesuffix(".0")
    return f"{text} %"


# ------------------------------------------------------------------------------------------------ chart
@dataclass(frozen=True)
class Bar:
    """One feature's bar: its label, where the bar and its value text go, and which way it points."""

    label: str
    lines: list[tuple[float, str]]  # the label as drawn: (baseline y, text), two lines when it is long
    value: str
    direction: str  # "raises", "lowers" or "hardly changes": the CSS class and the words for screen readers
    y: float
    text_y: float
    x: float
    width: float
    text_x: float
    anchor: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    zero_x: float
    bar_height: int
    label_x: float
    bars: list[Bar]
    summary: str  # every bar in words: the chart's <desc>, for people who cannot see it


CHART_WIDTH: Final = 640
LABEL_RIGHT: Final = 250.0  # labels end here (text-anchor end)
LABEL_CHARS: Final = 30  # longer labels ("Parental level of education some high school") take two lines
PLOT_LEFT, PLOT_RIGHT = 262.0, 630.0
VALUE_ROOM: Final = 52.0  # room beside the longest bar for its value text
BAR_HEIGHT, BAR_GAP, TOP = 22, 14, 8


def chart(record: Mapping[str, Any], contributions: Sequence[float]) -> Chart:
    """All seven features as horizontal bars from a zero line, largest effect on top.

    Bars to the right raise the chance of passing, bars to the left lower it; each carries its signed size
    in log-odds. The scale fits the largest bar, so the picture compares features within one student.
    """
    order = sorted(range(len(schema.FEATURES)), key=lambda i: abs(contributions[i]), reverse=True)
    zero = (PLOT_LEFT + PLOT_RIGHT) / 2
    largest = max((abs(contributions[i]) for i in order), default=0.0)
    scale = (zero - PLOT_LEFT - VALUE_ROOM) / largest if largest > 0 else 0.0
    bars: list[Bar] = []
    for row, j in enumerate(order):
        c = float(contributions[j])
        length = abs(c) * scale
        feature = schema.FEATURES[j]
        left = c < 0
        label = feature_value(feature, record[feature])
        y = TOP + row * (BAR_HEIGHT + BAR_GAP)
        middle = y + BAR_HEIGHT / 2
        if len(label) <= LABEL_CHARS:
            lines = [(middle + 5, label)]
        else:
            lines = [(middle - 3, LABELS[feature]), (middle + 13, str(record[feature]))]
        bars.append(
            Bar(
                label=label,
                lines=lines,
                value=f"{c:+.2f}",
                direction=effect(c),
                y=y,
                text_y=middle + 5,
                x=zero - length if left else zero,
                width=max(length, 1.0),
                text_x=zero - length - 6 if left else zero + length + 6,
                anchor="end" if left else "start",
            )
        )
    height = TOP * 2 + len(bars) * (BAR_HEIGHT + BAR_GAP)
    summary = "; ".join(f"{b.label} {b.direction} the chance ({b.value} log-odds)" for b in bars) + "."
    return Chart(CHART_WIDTH, height, zero, BAR_HEIGHT, LABEL_RIGHT, bars, summary)
