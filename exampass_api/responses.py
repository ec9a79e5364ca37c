"""Response and request-body helpers shared by the routes."""

from __future__ import annotations

from fastapi import Request, Response

from exampass_api.errors import JSON
from exampass_api.service import PayloadTooLarge


class JSONBytes(Response):
    """Pre-serialised JSON bytes (orjson): response-model validation would cost more than the model."""

    media_type = JSON


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit``: by header or while streaming."""
    too_big = PayloadTooLarge(f"request body is over the {limit} byte limit of {what}; split it")
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
