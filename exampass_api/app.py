"""The HTTP surface: ``create_app()`` wires the model store, the prediction log and thin routes together.

Routes only translate HTTP to calls on ``PredictionService`` / ``ModelStore`` and back. Three choices are made
here on purpose:

* every bad request is a 4xx that names the field and the reason (415 for a body that is not JSON, 413 for an
  oversized batch, 422 otherwise), rendered by one handler so that /predict, /predict/batch and /feedback
  read alike;
* Swagger UI and ReDoc are served from the ``fastapi-offline`` package, because the default pages load their
  JavaScript from a CDN and stay blank on a machine without internet;
* answers are pre-serialised bytes (see ``service``); the declared response models document them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from exampass_api.model_store import ModelStore
from exampass_api.schemas import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    BatchIn,
    BatchOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    MessageOut,
    ModelOut,
    PredictionOut,
    ReadyOut,
    StudentIn,
    ValidationErrorOut,
)
from exampass_api.service import TOO_DEEP, BodyErrors, PayloadTooLarge, PredictionService, parse_batch
from exampass_pipeline import schema
from exampass_pipeline.predlog import PredictionLog
from exampass_pipeline.settings import Settings

log = logging.getLogger(__name__)

JSON: Final = "application/json"


class JSONBytes(Response):
    media_type = JSON


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def _unsupported(content_type: str | None) -> JSONResponse:
    got = f"got {content_type!r}" if content_type else "no Content-Type header was sent"
    return JSONResponse({"detail": f"request body must be JSON: send Content-Type: {JSON} ({got})"}, 415)


class JsonBodyRoute(APIRoute):
    """Answers 415 for a POST whose body is not declared as JSON, before FastAPI reads or validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if "POST" not in self.methods:
            return handler

        async def route(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if content_type is None:
                if request.headers.get("content-length", "") != "0":
                    return _unsupported(None)
            elif not _is_json(content_type):
                return _unsupported(content_type)
            try:
                return await handler(request)
            except HTTPException as exc:
                error = _unreadable_body(exc)
                if error is None:
                    raise
                return JSONResponse(validation_body([error], request.url.path), 422)

        return route


def _unreadable_body(exc: HTTPException) -> Mapping[str, Any] | None:
    """The error for a body FastAPI could not even parse, which it answers with a bare 400.

    That happens for bytes that are not UTF-8 and for JSON nested deeper than the parser's stack; both get
    the same 422 shape as any other malformed body (as /predict/batch, which parses its own body, gives).
    """
    cause = exc.__cause__
    if exc.status_code != 400:
        return None
    if isinstance(cause, RecursionError):
        return TOO_DEEP
    if isinstance(cause, UnicodeDecodeError):
        return {"type": "json_invalid", "loc": ("body", cause.start), "ctx": {"error": str(cause)}}
    return None


def _field_name(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _allowed_fields(path: str, loc: Sequence[Any]) -> tuple[str, ...]:
    if path.endswith("/feedback"):
        return ("prediction_id", schema.MATH_SCORE)
    if path.endswith("/batch") and len(loc) <= 2:
        return ("students",)
    return schema.FEATURES


def _describe(error: Mapping[str, Any], path: str) -> dict[str, Any]:
    """One pydantic/FastAPI error as {field, reason, allowed?}: a sentence a person can act on."""
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    field = _field_name(loc)
    leaf = str(loc[-1]) if loc else ""
    value = error.get("input")
    fields = _allowed_fields(path, loc)
    allowed: list[Any] | None = None
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        field, reason = (
            "body",
            f"malformed JSON at character {position}: {(error.get('ctx') or {}).get('error')}",
        )
    elif kind == "json_too_deep":
        field, reason = "body", "JSON nested too deeply; send a flat JSON object per student"
    elif kind == "missing" and field == "body":
        reason = f"empty body; send a JSON object with the fields {', '.join(fields)}"
    elif kind == "missing":
        reason = "missing (required field)"
    elif kind == "extra_forbidden":
        allowed = list(fields)
        reason = "unexpected field"
        if leaf == schema.MATH_SCORE:
            reason += f" ({schema.MATH_SCORE} is the label, not a feature: send it to POST /feedback)"
        reason += f"; allowed fields: {', '.join(allowed)}"
    elif kind == "literal_error" and leaf in schema.CATEGORIES:
        allowed = list(schema.CATEGORIES[leaf])
        reason = f"unknown category {schema.shown(value)}; allowed: {', '.join(map(repr, allowed))}"
    elif kind in ("model_attributes_type", "model_type", "dict_type", "batch_type"):
        reason = f"expected a JSON object with the fields {', '.join(fields)}, got {_json_type(value)}"
    elif kind in ("score_type", "score_invalid"):
        reason = str(error.get("msg", "invalid score"))
    elif kind in ("too_short", "too_long", "list_type") and leaf == "students":
        reason = f"expected a list of 1 to {MAX_BATCH} students"
    elif kind.startswith("uuid"):
        reason = f"{schema.shown(value)} is not a UUID (use the prediction_id returned by /predict)"
    else:
        reason = str(error.get("msg", "invalid value"))
    out: dict[str, Any] = {"field": field, "reason": reason}
    if allowed is not None:
        out["allowed"] = allowed
    return out


def _json_type(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return "a body that is not a JSON object"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def validation_body(errors: Sequence[Mapping[str, Any]], path: str) -> dict[str, Any]:
    items = [_describe(e, path) for e in errors]
    return {"detail": "; ".join(f"{i['field']}: {i['reason']}" for i in items), "errors": items}


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit``: by header or while streaming."""
    too_big = PayloadTooLarge(
        f"request body is over the {limit} byte limit of /predict/batch "
        f"(at most {MAX_BATCH} students per request); split it"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    415: {"model": MessageOut, "description": "The body is not sent as JSON."},
    422: {
        "model": ValidationErrorOut,
        "description": "A field is missing, extra or invalid; `detail` says which.",
    },
}
_NO_MODEL: Final[dict[int | str, dict[str, Any]]] = {
    503: {"model": MessageOut, "description": "No champion model is loaded yet."}
}

_BATCH_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/BatchIn"}}},
    }
}


def create_app(
    settings: Settings | None = None,
    *,
    store: ModelStore | None = None,
    predlog: PredictionLog | None = None,
) -> FastAPI:
    """Build the service; uvicorn calls this once per worker (``factory=True``)."""
    settings = settings or Settings.from_env()
    store = store or ModelStore(settings)
    predlog = predlog or PredictionLog(settings.logs_dir)
    service = PredictionService(predlog)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        try:
            yield
        finally:
            await store.stop()
            predlog.close()

    app = FastAPIOffline(
        title="ExamPass prediction service",
        version="1.0.0",
        description=(
            "Predicts whether a student passes the maths exam (math score >= 50) from five background "
            "fields and the reading and writing scores, with the MLflow model behind "
            f"`{schema.MODEL_NAME}@{schema.CHAMPION_ALIAS}`. Every answered prediction is appended to the "
            "prediction log that monitoring reads; report the real outcome with POST /feedback."
        ),
        lifespan=lifespan,
    )
    app.router.route_class = JsonBodyRoute
    app.state.store = store
    app.state.predlog = predlog
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(jsonable_encoder(validation_body(exc.errors(), request.url.path)), 422)

    def unavailable() -> JSONResponse:
        return JSONResponse({"detail": store.unavailable_reason}, 503)

    @app.post(
        "/predict",
        response_model=PredictionOut,
        responses={**_ERRORS, **_NO_MODEL},
        summary="Score one student",
        tags=["predictions"],
    )
    async def predict(student: StudentIn) -> Response:  # type: ignore[valid-type]
        """Pass probability, decision (the model's own threshold) and the features that moved it most."""
        bundle = store.bundle
        if bundle is None:
            return unavailable()
        return JSONBytes(service.predict_one(bundle, student.__dict__))

    @app.post(
        "/predict/batch",
        response_model=BatchOut,
        responses={
            **_ERRORS,
            413: {
                "model": MessageOut,
                "description": f"More than {MAX_BATCH} students (or {MAX_BATCH_BYTES} bytes).",
            },
            **_NO_MODEL,
        },
        openapi_extra=_BATCH_BODY,
        summary=f"Score up to {MAX_BATCH} students in one call",
        tags=["predictions"],
    )
    async def predict_batch(request: Request) -> Response:
        """Answers in the order sent; each student is logged as its own prediction."""
        try:
            raw = await _read_limited(request, MAX_BATCH_BYTES)
            batch = await run_in_threadpool(parse_batch, raw)
        except PayloadTooLarge as exc:
            return JSONResponse({"detail": str(exc)}, 413)
        except BodyErrors as exc:
            return JSONResponse(jsonable_encoder(validation_body(exc.errors, request.url.path)), 422)
        bundle = store.bundle
        if bundle is None:
            return unavailable()
        return JSONBytes(await run_in_threadpool(service.predict_batch, bundle, batch))

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        status_code=202,
        responses=_ERRORS,
        summary="Record a student's real math score",
        tags=["predictions"],
    )
    async def feedback(body: FeedbackIn) -> FeedbackOut:
        """Appended to the feedback log; monitoring joins it to its prediction (unknown ids are orphans)."""
        predlog.log_feedback(str(body.prediction_id), body.math_score)
        return FeedbackOut(
            status="recorded",
            prediction_id=body.prediction_id,
            math_score=body.math_score,
            pass_math=schema.pass_math(body.math_score),
        )

    @app.get("/health", response_model=HealthOut, summary="Liveness", tags=["operations"])
    async def health() -> JSONBytes:
        """The process answers; says nothing about the model (see /ready)."""
        return JSONBytes(b'{"status":"ok"}')

    @app.get("/ready", response_model=ReadyOut, responses=_NO_MODEL, summary="Readiness", tags=["operations"])
    async def ready() -> Response:
        """200 once a champion model is loaded and being served, 503 until then."""
        bundle = store.bundle
        if bundle is None:
            return unavailable()
        return JSONResponse({"status": "ready", "model_version": bundle.version})

    @app.get(
        "/model",
        response_model=ModelOut,
        responses=_NO_MODEL,
        summary="The model being served",
        tags=["operations"],
    )
    async def model() -> Response:
        """Name, version, alias, run, threshold, training date, test metrics, and how explanations work."""
        bundle = store.bundle
        if bundle is None:
            return unavailable()
        return JSONBytes(bundle.info_json)

    def openapi() -> dict[str, Any]:
        # /predict/batch reads its body itself (to count students before validating them), so its schema is
        # added here by hand.
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            batch = BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in batch.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["BatchIn"] = batch
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
