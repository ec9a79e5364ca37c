"""What would change the verdict: the smallest changes a school can make that turn a flag into a pass.

Only three inputs are things a school can act on: the test preparation course (enrol the student) and, with
tutoring, the reading and writing scores. Gender, race/ethnicity, parental education and lunch are never
changed here, so they can never appear as advice (``ACTIONABLE`` is the whole vocabulary, and a test checks
every category of every other feature).

Exact, for any model family, and every verdict returned is taken from ``explain_one`` and ``threshold_for``,
the very calls ``/predict`` makes, so the probability is bit-for-bit what ``/predict`` answers for the changed
student and one point less is checked to fail. How the candidate is found depends on the model:
- linear scorers (the logistic and the score model, the champions so far): in closed form, since the linear
  predictor rises by a fixed amount per point and the link is increasing (``_closed_form_rise``);
- forests and boosting, which are not monotone in a score: every candidate value (each reading score above
  the student's, each writing score, each equal rise of both, with and without the course) is scored in one
  array call of at most 601 rows and each kind's first pass confirmed (``_grid_rises``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from exampass_api.scorer import CODES, encode
from exampass_api.scorer.linear import LinearScorer
from exampass_api.services import reasons
from exampass_api.services.model_store import Bundle
from exampass_pipeline.contract import schema

COURSE: Final = schema.TEST_PREP
COURSE_DONE: Final = "completed"
READING, WRITING = schema.NUMERIC_FEATURES
ACTIONABLE: Final = (COURSE, READING, WRITING)
_COURSE_COLUMN: Final = schema.CATEGORICAL_FEATURES.index(COURSE)
_COURSE_DONE_CODE: Final = CODES[COURSE][COURSE_DONE]

NOTHING_PASSES: Final = (
    "No change to the test preparation course or the reading and writing scores within "
    f"{schema.SCORE_MIN}-{schema.SCORE_MAX} turns this prediction into a pass."
)


@dataclass(frozen=True)
class _Family:
    """One kind of option: which scores rise with ``d`` and whether the course is completed too."""

    name: str
    raises: tuple[str, ...]
    course: bool


def _families(record: Mapping[str, Any]) -> list[_Family]:
    with_course = record[COURSE] != COURSE_DONE
    families = []
    for course in (False, True) if with_course else (False,):
        families += [
            _Family("reading" + ("+course" if course else ""), (READING,), course),
            _Family("writing" + ("+course" if course else ""), (WRITING,), course),
            _Family("both" + ("+course" if course else ""), (READING, WRITING), course),
        ]
    return families


def _changed(record: Mapping[str, Any], family: _Family, rise: int) -> dict[str, Any]:
    student = dict(record)
    for feature in family.raises:
        student[feature] = int(record[feature]) + rise
    if family.course:
        student[COURSE] = COURSE_DONE
    return student


def _passes(bundle: Bundle, student: Mapping[str, Any]) -> tuple[float, bool]:
    """The probability and verdict exactly as /predict computes them for ``student``."""
    proba, _ = bundle.scorer.explain_one(student)
    return proba, bool(proba >= bundle.threshold_for(student))


def _option(
    record: Mapping[str, Any], student: Mapping[str, Any], scored: tuple[float, bool]
) -> dict[str, Any]:
    proba, predicted = scored
    change = {f: student[f] for f in ACTIONABLE if student[f] != record[f]}
    points = sum(int(student[f]) - int(record[f]) for f in schema.NUMERIC_FEATURES)
    return {"change": change, "pass_probability": proba, "predicted_pass": predicted, "points": points}


def _grid(record: Mapping[str, Any], families: list[_Family]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Every candidate of every family as the scorer's arrays, built from the student's one encoded row.

    Built in numpy in one broadcast rather than as 600 records through ``encode``: the same arrays (scores
    are whole numbers, exact in float64) at a small fraction of the cost, which is what keeps advice inside
    twice /predict's p99.
    """
    base_codes, base_nums = encode([record])
    raises = np.array(
        [[f in family.raises for f in schema.NUMERIC_FEATURES] for family in families], dtype=bool
    )
    headroom = schema.SCORE_MAX - base_nums[0]
    tops = np.where(raises, headroom, np.inf).min(axis=1).clip(min=0).astype(np.intp)
    family = np.repeat(np.arange(len(families)), tops)
    rises = (np.arange(len(family)) - np.repeat(np.cumsum(tops) - tops, tops) + 1).astype(np.float64)
    nums = base_nums + rises[:, None] * raises[family]
    codes = np.repeat(base_codes, len(family), axis=0)
    with_course = np.array([f.course for f in families], dtype=bool)[family]
    codes[with_course, _COURSE_COLUMN] = _COURSE_DONE_CODE
    return codes, nums, tops.tolist()


def _smallest_rise(
    bundle: Bundle, record: Mapping[str, Any], family: _Family, passing: np.ndarray
) -> dict[str, Any] | None:
    """The option of the smallest rise whose changed student passes by /predict's own calls, or None.

    The grid's verdicts (``passing``, from the batch scorer) find the candidate; the one-row path confirms it,
    and a rise the grid rejected one below is re-checked, so a last-bit difference between numpy's and the
    pure-Python sum at the cut-off can never make the answer wrong or not minimal.
    """
    for index in np.flatnonzero(passing).tolist():
        student = _changed(record, family, index + 1)
        scored = _passes(bundle, student)
        if not scored[1]:
            continue
        while student[family.raises[0]] > record[family.raises[0]] + 1:
            lower = _changed(record, family, student[family.raises[0]] - record[family.raises[0]] - 1)
            below = _passes(bundle, lower)
            if not below[1]:
                break
            student, scored = lower, below
        return _option(record, student, scored)
    return None


def _headroom(record: Mapping[str, Any], family: _Family) -> int:
    return min(schema.SCORE_MAX - int(record[f]) for f in family.raises)


def _closed_form_rise(
    bundle: Bundle, scorer: LinearScorer, record: Mapping[str, Any], family: _Family
) -> dict[str, Any] | None:
    """The smallest passing rise for a linear scorer: one division, then /predict's own calls at the edge.

    The linear predictor rises by ``slope`` per point and the link is increasing, so the rise that reaches the
    group cut-off is ``ceil((eta_cut - eta) / slope)``. That estimate is only a starting point: the verdict is
    then taken from ``explain_one`` and ``threshold_for`` and the rise moved down while one point less still
    passes, or up while it does not, so rounding at the cut-off can never make the answer wrong or not minimal.
    """
    top = _headroom(record, family)
    if top < 1:
        return None
    start = _changed(record, family, 0)
    slope = sum(scorer.score_slopes()[f] for f in family.raises)
    rise = 1
    if slope > 0:
        need = scorer.linear_predictor_for(bundle.threshold_for(start)) - scorer.linear_predictor_one(start)
        estimate = need / slope
        rise = top if estimate > top else max(1, math.ceil(estimate)) if math.isfinite(estimate) else 1
    student = _changed(record, family, rise)
    scored = _passes(bundle, student)
    while not scored[1] and slope > 0 and rise < top:
        rise += 1
        student = _changed(record, family, rise)
        scored = _passes(bundle, student)
    if not scored[1]:
        return None
    while rise > 1:
        lower = _changed(record, family, rise - 1)
        below = _passes(bundle, lower)
        if not below[1]:
            break
        rise, student, scored = rise - 1, lower, below
    return _option(record, student, scored)


def _grid_rises(bundle: Bundle, record: Mapping[str, Any], families: list[_Family]) -> list[dict[str, Any]]:
    """Any other model family: every candidate scored in one array call, each family's first pass confirmed."""
    codes, nums, spans = _grid(record, families)
    if not sum(spans):
        return []
    verdicts = bundle.scorer.predict_proba(codes, nums) >= bundle.thresholds(codes)
    options, start = [], 0
    for family, span in zip(families, spans, strict=True):
        option = _smallest_rise(bundle, record, family, verdicts[start : start + span])
        start += span
        if option is not None:
            options.append(option)
    return options


def advise(bundle: Bundle, record: Mapping[str, Any]) -> dict[str, Any]:
    """Options that turn a flagged student into a pass, smallest first within each kind.

    The options: completing the course alone (when not completed); the smallest reading score, the smallest
    writing score and the smallest equal rise of both, each alone and with the course. A kind with no passing
    value in range is left out; when none passes, ``options`` is empty and ``note`` says so. ``cheapest`` is
    the option with the fewest score points added (the course counts as none), fewer changed inputs first.
    """
    options: list[dict[str, Any]] = []
    if record[COURSE] != COURSE_DONE:
        course = {**record, COURSE: COURSE_DONE}
        course_only = _option(record, course, _passes(bundle, course))
        if course_only["predicted_pass"]:
            options.append(course_only)
    families = _families(record)
    scorer = bundle.scorer
    if isinstance(scorer, LinearScorer):
        found = [_closed_form_rise(bundle, scorer, record, family) for family in families]
        options += [option for option in found if option is not None]
    else:
        options += _grid_rises(bundle, record, families)
    if not options:
        return {"options": [], "cheapest": None, "note": NOTHING_PASSES}
    cheapest = min(range(len(options)), key=lambda i: (options[i]["points"], len(options[i]["change"])))
    return {"options": options, "cheapest": cheapest, "note": None}


def sentence(option: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """One option in a teacher's words: "A reading score of 64 (now 58) and completing the course would ..."."""
    change = option["change"]
    parts = []
    scores = [f for f in schema.NUMERIC_FEATURES if f in change]
    if len(scores) == 2 and change[READING] - record[READING] == change[WRITING] - record[WRITING]:
        rise = change[READING] - record[READING]
        parts.append(
            f"raising both reading and writing by {rise} points (to {change[READING]} and {change[WRITING]})"
        )
    else:
        for feature in scores:
            label = feature.split("_")[0]
            parts.append(f"a {label} score of {change[feature]} (now {record[feature]})")
    if COURSE in change:
        parts.append("completing the test preparation course")
    text = " and ".join(parts)
    verdict = "pass" if option["predicted_pass"] else "still flagged"
    chance = reasons.percent(option["pass_probability"])
    return f"{text[0].upper()}{text[1:]} would raise the chance to {chance} ({verdict})."


def cheapest_sentence(advice: Mapping[str, Any] | None, record: Mapping[str, Any]) -> str:
    """The roster's one-column summary: the cheapest option in words, or the stated "nothing passes"."""
    if advice is None:
        return ""
    if advice["cheapest"] is None:
        return str(advice["note"])
    return sentence(advice["options"][advice["cheapest"]], record)


def sentences(advice: Mapping[str, Any] | None, record: Mapping[str, Any]) -> list[str]:
    """The page's list: every option in words, or the stated "nothing passes"; nothing for no advice."""
    if advice is None:
        return []
    return [sentence(option, record) for option in advice["options"]] or [str(advice["note"])]
