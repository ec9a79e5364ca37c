"""Request and response models of the prediction service, generated from ``exampass_pipeline.contract.schema``.

The category types are built from ``schema.CATEGORIES`` rather than typed out again, so a category can only be
renamed in one place and the API, the pipeline and the prediction log can never disagree on a spelling.

Scores accept whole numbers only. JSON has one number type, so ``72.0`` is taken as ``72``; ``72.5``, ``NaN``,
``Infinity``, ``true`` and ``"72"`` are refused, because each of them is a client bug that a silent coercion
would turn into a wrong prediction and a poisoned monitoring log. The reasons come from
``schema.score_error``, the same sentences the CSV loader uses.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from exampass_pipeline.contract import schema

MAX_BATCH: Final = 1000
# A student object is under 250 bytes even pretty-printed; 2 kB each leaves room for any formatting while
# letting a 100 MB upload be refused from its Content-Length alone.
MAX_BATCH_BYTES: Final = MAX_BATCH * 2048
# One student on /predict: far above any real request (a 100 kB bad value still gets its 422 naming the field),
# far below what an anonymous caller could use to exhaust memory.
MAX_STUDENT_BYTES: Final = 1024 * 1024
EXPLANATION_TOP_K: Final = 5

EXAMPLE_STUDENT: Final[dict[str, Any]] = {
    schema.GENDER: "female",
    schema.RACE_ETHNICITY: "group B",
    schema.PARENTAL_EDUCATION: "bachelor's degree",
    schema.LUNCH: "standard",
    schema.TEST_PREP: "none",
    schema.READING_SCORE: 72,
    schema.WRITING_SCORE: 74,
}
EXAMPLE_STUDENT_2: Final[dict[str, Any]] = {
    schema.GENDER: "male",
    schema.RACE_ETHNICITY: "group A",
    schema.PARENTAL_EDUCATION: "high school",
    schema.LUNCH: "free/reduced",
    schema.TEST_PREP: "none",
    schema.READING_SCORE: 41,
    schema.WRITING_SCORE: 38,
}
EXAMPLE_PREDICTION_ID: Final = "3f1c2a9e-8d4b-4e7a-9c55-0b6f4d2e7a10"


def _whole_score(value: object) -> int:
    """Refuse anything that is not a whole number of points, before pydantic's lax int coercion sees it."""
    if isinstance(value, str):
        raise PydanticCustomError(
            "score_type", "{value} is a string; send a whole number", {"value": schema.shown(value)}
        )
    reason = schema.score_error(value)
    if reason is not None:
        raise PydanticCustomError("score_invalid", "{reason}", {"reason": reason})
    assert isinstance(value, int | float)  # score_error refused every other type
    return int(value)


# The range sits on the int itself (before the validator in the Annotated list) so OpenAPI shows it as
# minimum/maximum; the validator runs first and already refuses out-of-range values with the schema's words.
Score = Annotated[
    int,
    Field(ge=schema.SCORE_MIN, le=schema.SCORE_MAX, description="Whole points, 0 to 100."),
    BeforeValidator(_whole_score),
]

_DESCRIPTIONS: Final[dict[str, str]] = {
    schema.GENDER: "As spelled in the Kaggle file.",
    schema.RACE_ETHNICITY: "Anonymised group, as spelled in the Kaggle file.",
    schema.PARENTAL_EDUCATION: "Highest level of education of the parents, as spelled in the Kaggle file.",
    schema.LUNCH: "Lunch programme: a proxy for family income.",
    schema.TEST_PREP: "Whether the student completed the test preparation course.",
    schema.READING_SCORE: "Reading exam score, whole points 0-100.",
    schema.WRITING_SCORE: "Writing exam score, whole points 0-100.",
}


def _feature_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in schema.FEATURES:
        if name in schema.CATEGORIES:
            category = Literal[schema.CATEGORIES[name]]  # type: ignore[valid-type]
            fields[name] = (category, Field(description=_DESCRIPTIONS[name]))
        else:
            fields[name] = (Score, Field(description=_DESCRIPTIONS[name]))
    return fields


StudentIn = create_model(
    "StudentIn",
    __config__=ConfigDict(
        extra="forbid",
        title="StudentIn",
        json_schema_extra={"examples": [EXAMPLE_STUDENT]},
    ),
    __doc__="One student: exactly the seven model features, categories spelled as in the Kaggle file.",
    **_feature_fields(),
)


class BatchIn(BaseModel):
    """Up to MAX_BATCH students scored in one call, answered in the same order."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"students": [EXAMPLE_STUDENT, EXAMPLE_STUDENT_2]}]}
    )

    students: list[StudentIn] = Field(
        min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} students."
    )


class Contribution(BaseModel):
    """How much one feature moved this student's prediction, relative to the reference student."""

    feature: Literal[schema.FEATURES]  # type: ignore[valid-type]
    value: str | int = Field(description="The value sent for this feature.")
    contribution: float = Field(
        description="Signed change in the units GET /model names under explanation.units: maths points of "
        "expected score for the score model, log-odds of passing for the classifiers. Positive pushed "
        "towards pass, negative towards fail."
    )


class AdviceChange(BaseModel):
    """The changed inputs only; never gender, race/ethnicity, parental education or lunch."""

    model_config = ConfigDict(extra="forbid")

    test_preparation_course: Literal["completed"] | None = None
    reading_score: int | None = Field(None, ge=schema.SCORE_MIN, le=schema.SCORE_MAX)
    writing_score: int | None = Field(None, ge=schema.SCORE_MIN, le=schema.SCORE_MAX)


class AdviceOption(BaseModel):
    """One change that turns the served decision into a pass, and what /predict answers for the changed student."""

    change: AdviceChange
    pass_probability: float = Field(ge=0.0, le=1.0, description="Exactly /predict's for the changed student.")
    predicted_pass: bool = Field(description="Always true: only changes that pass are offered.")
    points: int = Field(description="Score points added in all (reading + writing); the course counts 0.")


class Advice(BaseModel):
    """What would change the verdict: an association in past data, not a promise about one student."""

    options: list[AdviceOption] = Field(
        description="Completing the course alone; the smallest reading score, the smallest writing score and "
        "the smallest equal rise of both, each alone and with the course. A kind that cannot pass within "
        "0-100 is left out."
    )
    cheapest: int | None = Field(
        description="Index into options of the fewest score points added (fewer changed inputs on a tie); "
        "null when nothing passes."
    )
    note: str | None = Field(description="Set when no change within the valid range passes.")


_EXAMPLE_ADVICE: Final[dict[str, Any]] = {
    "options": [
        {
            "change": {"test_preparation_course": "completed"},
            "pass_probability": 0.62,
            "predicted_pass": True,
            "points": 0,
        },
        {"change": {"reading_score": 64}, "pass_probability": 0.5512, "predicted_pass": True, "points": 6},
    ],
    "cheapest": 0,
    "note": None,
}


_EXAMPLE_PREDICTION: Final[dict[str, Any]] = {
    "prediction_id": EXAMPLE_PREDICTION_ID,
    "pass_probability": 0.9731,
    "predicted_pass": True,
    "model_version": "3",
    "explanation": [
        {"feature": schema.WRITING_SCORE, "value": 74, "contribution": 1.42},
        {"feature": schema.GENDER, "value": "female", "contribution": -0.61},
        {"feature": schema.READING_SCORE, "value": 72, "contribution": 0.33},
        {"feature": schema.LUNCH, "value": "standard", "contribution": 0.29},
        {"feature": schema.RACE_ETHNICITY, "value": "group B", "contribution": -0.12},
    ],
}


class PredictionOut(BaseModel):
    """One answered prediction; the same record, minus the explanation, is appended to the prediction log."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_PREDICTION]})

    prediction_id: uuid.UUID = Field(
        description="Quote it in POST /feedback when the real math score is known."
    )
    pass_probability: float = Field(ge=0.0, le=1.0)
    predicted_pass: bool = Field(
        description="pass_probability >= the cut-off the model's decision rule sets for this student's group "
        "(GET /model: decision); false means the student is flagged for help."
    )
    model_version: str
    explanation: list[Contribution] = Field(
        description=f"The {EXPLANATION_TOP_K} features with the largest |contribution|, largest first."
    )
    advice: Advice | None = Field(
        None,
        description="Only for a flagged student (predicted_pass false): the smallest changes to the test "
        "preparation course and the reading and writing scores that turn the decision into a pass, each "
        "scored exactly as /predict would score the changed student.",
        json_schema_extra={"examples": [_EXAMPLE_ADVICE]},
    )


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model_version": "3", "predictions": [_EXAMPLE_PREDICTION]}]}
    )

    model_version: str
    predictions: list[PredictionOut]


class FeedbackIn(BaseModel):
    """The real math score of a student who was scored earlier; monitoring joins it to the prediction."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prediction_id": EXAMPLE_PREDICTION_ID, "math_score": 63}]},
    )

    prediction_id: uuid.UUID
    math_score: Score


class FeedbackOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "recorded",
                    "prediction_id": EXAMPLE_PREDICTION_ID,
                    "math_score": 63,
                    "pass_math": True,
                }
            ]
        }
    )

    status: Literal["recorded"]
    prediction_id: uuid.UUID
    math_score: int
    pass_math: bool = Field(description=f"math_score >= {schema.PASS_MARK}: the label monitoring will use.")


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ready", "model_version": "3", "registry": "ok", "key_store": "ok"}]
        }
    )

    status: Literal["ready"]
    model_version: str
    registry: str = Field(
        description="'ok', or why the last check of the MLflow registry failed; the loaded model keeps serving "
        "and a version promoted meanwhile is picked up once the registry answers again."
    )
    key_store: str = Field(
        description="'ok', or why the API key store cannot be read; the last good keys stay in force."
    )


class ExplanationInfo(BaseModel):
    method: str
    units: str = Field(description="Units of every contribution: 'maths points' or 'log-odds'.")
    top_k: int
    reference: dict[str, Any] = Field(
        description="The reference student the contributions are measured from."
    )
    reference_value: float | None = Field(
        description="The reference student's value in `units` (expected maths score, or log-odds): the "
        "contributions add up to the student's value minus this. Null where they are not additive."
    )
    reference_log_odds: float | None


class CutoffOut(BaseModel):
    """One group's cut-off: the values of the rule's features, and the pass-probability threshold."""

    model_config = ConfigDict(extra="allow")

    threshold: float = Field(ge=0.0, le=1.0)


class DecisionOut(BaseModel):
    """How a pass probability becomes the served decision (the flag is ``not predicted_pass``)."""

    kind: Literal["single_threshold", "group_thresholds"]
    summary: str
    criterion: str = Field(description="What the cut-offs were chosen for.")
    features: list[str] = Field(description="The features whose combination selects a student's cut-off.")
    uses_race_ethnicity: bool = Field(
        description="Whether race/ethnicity is one of them (the card says why)."
    )
    target_fail_recall: float | None = Field(
        description="The expected share of failing students flagged, the same in every group."
    )
    fallback_threshold: float = Field(description="The single cut-off, for a group without its own.")
    cutoffs: list[CutoffOut]
    fitted_on: str = Field(description="The students the cut-offs were computed on (no labels used).")


class ModelOut(BaseModel):
    """What is being served, so an analyst can tie a prediction back to a run and its test metrics."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": schema.MODEL_NAME,
                    "version": "3",
                    "alias": schema.CHAMPION_ALIAS,
                    "run_id": "5b0f1d2c3e4a4b6c8d9e0f1a2b3c4d5e",
                    "threshold": 0.62,
                    "trained_at": "2026-11-27T15:47:00.123000+00:00",
                    "candidate": "score_regression",
                    "test_metrics": {"test_roc_auc": 0.97, "test_recall_fail": 0.81},
                    "loaded_at": "2026-11-27T15:48:02.000000+00:00",
                    "scorer": "score",
                    "explanation": {
                        "method": "exact linear decomposition of the expected maths score (points)",
                        "units": "maths points",
                        "top_k": EXPLANATION_TOP_K,
                        "reference": {schema.READING_SCORE: 69.2, schema.GENDER: "uniform over 2 categories"},
                        "reference_value": 65.5,
                        "reference_log_odds": None,
                    },
                    "decision": {
                        "kind": "group_thresholds",
                        "summary": "pass when P(pass) >= the cut-off of the student's lunch x gender x "
                        "race_ethnicity group",
                        "criterion": "equal fail-class recall",
                        "features": [schema.LUNCH, schema.GENDER, schema.RACE_ETHNICITY],
                        "uses_race_ethnicity": True,
                        "target_fail_recall": 0.8,
                        "fallback_threshold": 0.62,
                        "cutoffs": [
                            {
                                schema.LUNCH: "standard",
                                schema.GENDER: "female",
                                schema.RACE_ETHNICITY: "group A",
                                "threshold": 0.64,
                            }
                        ],
                        "fitted_on": "100000 students drawn from the population model refitted on 800 "
                        "training rows",
                    },
                    "model_card": "/model/card",
                }
            ]
        },
    )

    name: str
    version: str
    alias: str
    run_id: str | None
    threshold: float
    trained_at: str | None = Field(description="Creation time of the registered version, ISO 8601 UTC.")
    candidate: str
    test_metrics: dict[str, float]
    loaded_at: str
    scorer: str = Field(
        description="Which compiled scorer serves it: score, linear, forest, boosting or pipeline."
    )
    explanation: ExplanationInfo
    decision: DecisionOut
    model_card: str | None = Field(
        None, description="Where the version's model card is (GET /model/card), when it has one."
    )


class ErrorItem(BaseModel):
    field: str
    reason: str
    allowed: list[Any] | None = None


class ValidationErrorOut(BaseModel):
    """422 body: `detail` is one readable sentence per problem; `errors` is the same, structured."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "gender: unknown category 'f'; allowed: 'female', 'male'",
                    "errors": [
                        {"field": "gender", "reason": "unknown category 'f'", "allowed": ["female", "male"]}
                    ],
                }
            ]
        }
    )

    detail: str
    errors: list[ErrorItem]


class MessageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"detail": "no champion model registered yet: materialize the training assets"}]
        }
    )

    detail: str
