"""How the API says no: one shape for every bad request, whichever route and whichever parser refused it.

Every bad request is a 4xx that names the field and the reason (415 for a body that is not JSON, 413 for an
oversized batch, 422 otherwise), rendered by one function so that /predict, /predict/batch and /feedback read
alike. Errors come from three places: pydantic (FastAPI's body validation), our own batch parser (which counts
students before validating them) and FastAPI's JSON reader (which answers a bare 400 for bytes it cannot even
decode); all three end up in ``validation_body``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from exampass_api.schemas import MAX_BATCH, MAX_BATCH_BYTES, MessageOut, ValidationErrorOut
from exampass_api.services.prediction import TOO_DEEP
from exampass_api.services.roster import MAX_ROSTER, MAX_ROSTER_BYTES, RosterRejected
from exampass_pipeline.contract import schema
from exampass_pipeline.contract.logfile import LogUnavailable

JSON: Final = "application/json"


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def unsupported(content_type: str | None, wanted: str = JSON) -> JSONResponse:
    got = f"got {content_type!r}" if content_type else "no Content-Type header was sent"
    what = "JSON" if wanted == JSON else wanted
    return JSONResponse({"detail": f"request body must be {what}: send Content-Type: {wanted} ({got})"}, 415)


def unreadable_body(exc: HTTPException) -> Mapping[str, Any] | None:
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


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's RequestValidationError, in our shape."""
    assert isinstance(exc, RequestValidationError)
    return invalid(exc.errors(), request.url.path)


def invalid(errors: Sequence[Mapping[str, Any]], path: str) -> JSONResponse:
    return JSONResponse(jsonable_encoder(validation_body(errors, path)), 422)


def roster_refused(exc: RosterRejected) -> JSONResponse:
    """A CSV file refused as a whole: 413 (too many rows) or 422, in the shapes the JSON routes use."""
    if exc.status == 413:
        return JSONResponse({"detail": str(exc)}, 413)
    return JSONResponse(
        {"detail": str(exc), "errors": [{"field": exc.part, "reason": exc.reason}]}, exc.status
    )


LOG_RETRY_AFTER_S: Final = 5


def log_unavailable(exc: LogUnavailable) -> JSONResponse:
    """A request the prediction log could not record: 503, never 500, and never an unlogged answer.

    Monitoring can only judge answers it can read, so an answer that could not be logged is not given; the
    client is told why and when to try again (the log resumes by itself once there is space).
    """
    detail = f"the prediction log cannot be written, so no answer is given: {exc}; retry later"
    return JSONResponse({"detail": detail}, 503, headers={"Retry-After": str(LOG_RETRY_AFTER_S)})


ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    415: {"model": MessageOut, "description": "The body is not sent as JSON."},
    422: {
        "model": ValidationErrorOut,
        "description": "A field is missing, extra or invalid; `detail` says which.",
    },
}
NO_MODEL: Final[dict[int | str, dict[str, Any]]] = {
    503: {
        "model": MessageOut,
        "description": "No champion model is loaded yet, or the prediction log cannot be written (disk full).",
    }
}
UNAUTHORIZED: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "model": MessageOut,
        "description": "No API key, a malformed header, or an unknown or revoked key.",
    },
    403: {"model": MessageOut, "description": "The key lacks the scope this endpoint needs."},
    429: {"model": MessageOut, "description": "Over the rate limit; `Retry-After` says when to try again."},
}
TOO_LARGE: Final[dict[int | str, dict[str, Any]]] = {
    413: {"model": MessageOut, "description": f"More than {MAX_BATCH} students (or {MAX_BATCH_BYTES} bytes)."}
}
CSV_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    413: {
        "model": MessageOut,
        "description": f"More than {MAX_ROSTER:,} rows (or {MAX_ROSTER_BYTES:,} bytes).",
    },
    415: {"model": MessageOut, "description": "The body is not sent as text/csv."},
    422: {
        "model": ValidationErrorOut,
        "description": "Not a CSV (empty, binary, not UTF-8), or the header lacks a column; `detail` says which.",
    },
}


def as_json(responses: Mapping[int | str, Mapping[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Error responses documented as JSON on a route whose own answer is not JSON (/predict/csv).

    FastAPI files a ``model`` under the route's media type, which would call these errors CSV.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status, response in responses.items():
        ref = f"#/components/schemas/{response['model'].__name__}"
        out[status] = {"description": response["description"], "content": {JSON: {"schema": {"$ref": ref}}}}
    return out
