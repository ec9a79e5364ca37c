"""Scoring: one student, a batch of up to MAX_BATCH, or a CSV roster; many rows are one array call."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from exampass_api.core.errors import (
    CSV_ERRORS,
    ERRORS,
    JSON,
    NO_MODEL,
    TOO_LARGE,
    UNAUTHORIZED,
    as_json,
    invalid,
    roster_refused,
)
from exampass_api.core.responses import CSV_EXAMPLE_IN, CSV_EXAMPLE_OUT, CsvBytes, JSONBytes, read_limited
from exampass_api.core.routing import ApiRoute, CsvRoute
from exampass_api.core.security import PredictCaller
from exampass_api.schemas import MAX_BATCH, MAX_BATCH_BYTES, MAX_STUDENT_BYTES, BatchOut, PredictionOut
from exampass_api.services.prediction import BodyErrors, PayloadTooLarge, parse_batch, parse_student
from exampass_api.services.roster import (
    MAX_ROSTER,
    MAX_ROSTER_BYTES,
    RosterRejected,
    parse_roster,
    scored_csv,
)

router = APIRouter(tags=["predictions"], route_class=ApiRoute)


def _json_body(schema_name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        }
    }


# /predict and /predict/batch read their bodies themselves (one parse of the bytes; a batch is counted before
# it is validated), so their request schemas are declared here; create_app adds them to the components.
STUDENT_BODY: Final = _json_body("StudentIn")
BATCH_BODY: Final = _json_body("BatchIn")


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses={**ERRORS, **UNAUTHORIZED, **TOO_LARGE, **NO_MODEL},
    openapi_extra=STUDENT_BODY,
    summary="Score one student",
)
async def predict(request: Request, caller: PredictCaller) -> JSONBytes | JSONResponse:
    """Pass probability, decision (the model's own threshold) and the features that moved it most."""
    try:
        student = parse_student(await read_limited(request, MAX_STUDENT_BYTES, "/predict (one student)"))
    except PayloadTooLarge as exc:
        return JSONResponse({"detail": str(exc)}, 413)
    except BodyErrors as exc:
        return invalid(exc.errors, request.url.path)
    # The model is captured after the body is validated, so a bad request is a 422 even with no champion.
    bundle = caller.service.bundle()
    return JSONBytes(caller.service.predict_one(bundle, student, caller.client.name))


@router.post(
    "/predict/batch",
    response_model=BatchOut,
    responses={**ERRORS, **UNAUTHORIZED, **TOO_LARGE, **NO_MODEL},
    openapi_extra=BATCH_BODY,
    summary=f"Score up to {MAX_BATCH} students in one call",
)
async def predict_batch(request: Request, caller: PredictCaller) -> JSONBytes | JSONResponse:
    """Answers in the order sent; each student is logged as its own prediction."""
    try:
        raw = await read_limited(
            request, MAX_BATCH_BYTES, f"/predict/batch (at most {MAX_BATCH} students per request)"
        )
        batch = await caller.service.cpu.run(parse_batch, raw)
    except PayloadTooLarge as exc:
        return JSONResponse({"detail": str(exc)}, 413)
    except BodyErrors as exc:
        return invalid(exc.errors, request.url.path)
    bundle = caller.service.bundle()
    return JSONBytes(
        await caller.service.cpu.run(caller.service.predict_batch, bundle, batch, caller.client.name)
    )


async def predict_csv(request: Request, caller: PredictCaller) -> Response:
    """A roster in, the same rows out with `pass_probability`, `predicted_pass`, `top_reasons`, `advice`, `error`.

    Both header spellings work (the Kaggle file's, or snake_case), extra columns ride along, and a maths
    column is never scored. A bad row gets its `error` and no probability; every valid row is scored and
    logged like a batch. Only a file that is not a CSV, lacks a model column or has more than 10,000 rows
    is refused as a whole.
    """
    try:
        raw = await read_limited(request, MAX_ROSTER_BYTES, f"/predict/csv (at most {MAX_ROSTER:,} rows)")
        roster = await caller.service.cpu.run(parse_roster, raw)
    except PayloadTooLarge as exc:
        return JSONResponse({"detail": str(exc)}, 413)
    except RosterRejected as exc:
        return roster_refused(exc)
    bundle = caller.service.bundle()
    return CsvBytes(
        await caller.service.cpu.run(scored_csv, caller.service, bundle, roster, caller.client.name)
    )


router.add_api_route(
    "/predict/csv",
    predict_csv,
    methods=["POST"],
    route_class_override=CsvRoute,
    response_class=CsvBytes,
    responses={
        200: {"description": "The roster, scored.", "content": {"text/csv": {"example": CSV_EXAMPLE_OUT}}},
        **as_json({**CSV_ERRORS, **UNAUTHORIZED, **NO_MODEL}),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE_IN}},
        }
    },
    summary=f"Score a class roster sent as CSV (up to {MAX_ROSTER:,} rows)",
)
