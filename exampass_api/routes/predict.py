"""Scoring: one student, or a batch of up to MAX_BATCH answered in order from one array call."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from exampass_api.auth import PredictCaller
from exampass_api.deps import ServiceDep, StoreDep, get_bundle
from exampass_api.errors import ERRORS, JSON, NO_MODEL, TOO_LARGE, UNAUTHORIZED, invalid
from exampass_api.responses import JSONBytes, read_limited
from exampass_api.routing import ApiRoute
from exampass_api.schemas import MAX_BATCH, MAX_BATCH_BYTES, BatchOut, PredictionOut, StudentIn
from exampass_api.service import BodyErrors, PayloadTooLarge, parse_batch

router = APIRouter(tags=["predictions"], route_class=ApiRoute)

# /predict/batch reads its body itself (to count students before validating them), so its request schema is
# declared here and added to the OpenAPI components by create_app.
BATCH_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/BatchIn"}}},
    }
}


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses={**ERRORS, **UNAUTHORIZED, **NO_MODEL},
    summary="Score one student",
)
async def predict(
    student: StudentIn,
    client: PredictCaller,
    store: StoreDep,
    service: ServiceDep,
) -> JSONBytes:
    """Pass probability, decision (the model's own threshold) and the features that moved it most."""
    # The model is captured after the body is validated, so a bad request is a 422 even with no champion.
    bundle = await get_bundle(store)
    return JSONBytes(service.predict_one(bundle, student.__dict__, client.name))


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses={**ERRORS, **UNAUTHORIZED, **TOO_LARGE, **NO_MODEL},
    openapi_extra=BATCH_BODY,
    summary=f"Score up to {MAX_BATCH} students in one call",
)
async def predict_batch(
    request: Request, client: PredictCaller, store: StoreDep, service: ServiceDep
) -> JSONBytes | JSONResponse:
    """Answers in the order sent; each student is logged as its own prediction."""
    try:
        raw = await read_limited(
            request, MAX_BATCH_BYTES, f"/predict/batch (at most {MAX_BATCH} students per request)"
        )
        batch = await run_in_threadpool(parse_batch, raw)
    except PayloadTooLarge as exc:
        return JSONResponse({"detail": str(exc)}, 413)
    except BodyErrors as exc:
        return invalid(exc.errors, request.url.path)
    bundle = await get_bundle(store)
    return JSONBytes(await run_in_threadpool(service.predict_batch, bundle, batch, client.name))
