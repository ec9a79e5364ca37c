"""The real outcome of a scored student: the label monitoring and retraining learn from."""

from __future__ import annotations

from fastapi import APIRouter

from exampass_api.core.errors import ERRORS, UNAUTHORIZED
from exampass_api.core.routing import ApiRoute
from exampass_api.core.security import FeedbackCaller
from exampass_api.schemas import FeedbackIn, FeedbackOut
from exampass_pipeline.contract import schema

router = APIRouter(tags=["predictions"], route_class=ApiRoute)


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    status_code=202,
    responses={**ERRORS, **UNAUTHORIZED},
    summary="Record a student's real math score",
)
async def feedback(body: FeedbackIn, caller: FeedbackCaller) -> FeedbackOut:
    """Appended to the feedback log with the key's name; monitoring joins it to its prediction.

    Needs a key with the `feedback` scope: these labels teach the next model, so every one must be
    attributable (unknown prediction ids are counted as orphans).
    """
    caller.service.predlog.log_feedback(str(body.prediction_id), body.math_score, client=caller.client.name)
    return FeedbackOut(
        status="recorded",
        prediction_id=body.prediction_id,
        math_score=body.math_score,
        pass_math=schema.pass_math(body.math_score),
    )
