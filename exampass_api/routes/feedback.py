"""The real outcome of a scored student: the label monitoring and retraining learn from."""

from __future__ import annotations

from fastapi import APIRouter

from exampass_api.deps import PredLogDep
from exampass_api.errors import ERRORS, JsonBodyRoute
from exampass_api.schemas import FeedbackIn, FeedbackOut
from exampass_pipeline import schema

router = APIRouter(tags=["predictions"], route_class=JsonBodyRoute)


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    status_code=202,
    responses=ERRORS,
    summary="Record a student's real math score",
)
async def feedback(body: FeedbackIn, predlog: PredLogDep) -> FeedbackOut:
    """Appended to the feedback log; monitoring joins it to its prediction (unknown ids are orphans)."""
    predlog.log_feedback(str(body.prediction_id), body.math_score)
    return FeedbackOut(
        status="recorded",
        prediction_id=body.prediction_id,
        math_score=body.math_score,
        pass_math=schema.pass_math(body.math_score),
    )
