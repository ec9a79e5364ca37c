"""The student record, defined once.

Both the Dagster pipeline and the API import this module, so a category spelled here is the only spelling
either side accepts. It must never import dagster: the API process stays free of the orchestrator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

GENDER: Final = "gender"
RACE_ETHNICITY: Final = "race_ethnicity"
PARENTAL_EDUCATION: Final = "parental_level_of_education"
LUNCH: Final = "lunch"
TEST_PREP: Final = "test_preparation_course"
MATH_SCORE: Final = "math_score"
READING_SCORE: Final = "reading_score"
WRITING_SCORE: Final = "writing_score"

LABEL: Final = "pass_math"
PASS_MARK: Final = 50

# Exact spellings of the Kaggle file, in a stable order that encoders and reports rely on.
CATEGORIES: Final[dict[str, tuple[str, ...]]] = {
    GENDER: ("female", "male"),
    RACE_ETHNICITY: ("group A", "group B", "group C", "group D", "group E"),
    PARENTAL_EDUCATION: (
        "some high school",
        "high school",
        "some college",
        "associate's degree",
        "bachelor's degree",
        "master's degree",
    ),
    LUNCH: ("standard", "free/reduced"),
    TEST_PREP: ("none", "completed"),
}

SCORE_MIN: Final = 0
SCORE_MAX: Final = 100

CATEGORICAL_FEATURES: Final[tuple[str, ...]] = tuple(CATEGORIES)
NUMERIC_FEATURES: Final[tuple[str, ...]] = (READING_SCORE, WRITING_SCORE)
FEATURES: Final[tuple[str, ...]] = CATEGORICAL_FEATURES + NUMERIC_FEATURES
SCORES: Final[tuple[str, ...]] = (MATH_SCORE, READING_SCORE, WRITING_SCORE)
COLUMNS: Final[tuple[str, ...]] = CATEGORICAL_FEATURES + SCORES

# The published Kaggle header, mapped to our snake_case names.
KAGGLE_HEADER: Final[dict[str, str]] = {
    "gender": GENDER,
    "race/ethnicity": RACE_ETHNICITY,
    "parental level of education": PARENTAL_EDUCATION,
    "lunch": LUNCH,
    "test preparation course": TEST_PREP,
    "math score": MATH_SCORE,
    "reading score": READING_SCORE,
    "writing score": WRITING_SCORE,
}

# Segments whose fail-class recall is compared by monitoring (fairness visibility).
SEGMENTS: Final[tuple[str, ...]] = (GENDER, LUNCH, RACE_ETHNICITY)

# Model registry contract.
MODEL_NAME: Final = "exampass-pass-classifier"
CHAMPION_ALIAS: Final = "champion"
TEST_METRICS: Final[tuple[str, ...]] = (
    "test_roc_auc",
    "test_f1_fail",
    "test_recall_fail",
    "test_precision_fail",
    "test_balanced_accuracy",
    "test_accuracy",
    "test_brier",
)


def snake_case(name: str) -> str:
    """Normalise a header the way the Kaggle-to-schema mapping was derived, so near-variants still map."""
    out = name.strip().strip('"').lower()
    for ch in "/ -":
        out = out.replace(ch, "_")
    return out


def header_map(columns: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Map a file's header onto schema names, accepting the published Kaggle header or our snake_case.

    Returns the mapping (file column -> schema name) and the schema columns (``COLUMNS``) the header lacks.
    The CSV loader and the API's roster upload both read headers through here, so they accept the same files.
    """
    by_snake = {snake_case(k): v for k, v in KAGGLE_HEADER.items()}
    mapping: dict[str, str] = {}
    for column in columns:
        target = KAGGLE_HEADER.get(column) or by_snake.get(snake_case(column))
        if target and target not in mapping.values():
            mapping[column] = target
    missing = [c for c in COLUMNS if c not in mapping.values()]
    return mapping, missing


def pass_math(math_score: float) -> bool:
    """The label rule lives here so the pipeline, the feedback join and the simulator agree on it."""
    return math_score >= PASS_MARK


@dataclass(frozen=True)
class FieldError:
    """One reason a record is invalid: the field and a human sentence."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


SHOWN_MAX_CHARS = 60


def shown(value: object) -> str:
    """repr() for an error message, cut short: a rejected 100 kB string must not be echoed back whole."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX_CHARS else f"{text[: SHOWN_MAX_CHARS - 5]}...{text[-2:]}"


def validate_record(record: Mapping[str, object], *, require_math: bool = False) -> list[FieldError]:
    """Check one student against the schema.

    Shared by the CSV loader and anything else outside pydantic, so the same reasons are given everywhere.
    """
    errors: list[FieldError] = []
    needed = FEATURES + ((MATH_SCORE,) if require_math else ())
    for name in needed:
        if name not in record or record[name] is None:
            errors.append(FieldError(name, "missing"))
            continue
        value = record[name]
        if name in CATEGORIES:
            allowed = CATEGORIES[name]
            if value not in allowed:
                errors.append(
                    FieldError(
                        name, f"unknown category {shown(value)}; allowed: {', '.join(map(repr, allowed))}"
                    )
                )
        else:
            err = score_error(value)
            if err:
                errors.append(FieldError(name, err))
    return errors


def score_error(value: object) -> str | None:
    """Why a value is not a valid score, or None. Scores are whole points from 0 to 100."""
    if isinstance(value, bool):
        return f"{shown(value)} is not a number"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{shown(value)} is not a number"
    if number != number or number in (float("inf"), float("-inf")):
        return f"{shown(value)} is not a finite number"
    if number != int(number):
        return f"{shown(value)} is not a whole number"
    if not SCORE_MIN <= number <= SCORE_MAX:
        return f"{shown(value)} is outside {SCORE_MIN}-{SCORE_MAX}"
    return None
