"""Response and request-body helpers shared by the routes."""

from __future__ import annotations

from typing import Final

from fastapi import Request, Response

from exampass_api.core.errors import JSON
from exampass_api.services.prediction import PayloadTooLarge


class JSONBytes(Response):
    """Pre-serialised JSON bytes (orjson): response-model validation would cost more than the model."""

    media_type = JSON


class CsvBytes(Response):
    """A CSV answer (``roster.to_csv``), offered to a browser as a file to save."""

    media_type = "text/csv"  # Starlette adds "; charset=utf-8" to text types

    def __init__(self, content: bytes, status_code: int = 200) -> None:
        disposition = 'attachment; filename="exampass-predictions.csv"'
        super().__init__(content, status_code, {"Content-Disposition": disposition})


CSV_EXAMPLE_IN: Final = (
    "student,gender,race/ethnicity,parental level of education,lunch,test preparation course,"
    "reading score,writing score\r\n"
    "S-01,female,group B,bachelor's degree,standard,none,72,74\r\n"
    "S-02,male,grp B,high school,free/reduced,none,41,38\r\n"
)
CSV_EXAMPLE_OUT: Final = (
    "student,gender,race/ethnicity,parental level of education,lunch,test preparation course,"
    "reading score,writing score,pass_probability,predicted_pass,top_reasons,advice,error\r\n"
    "S-01,female,group B,bachelor's degree,standard,none,72,74,0.9731,true,"
    "Writing score 74 (raises); Gender female (lowers); Reading score 72 (raises),,\r\n"
    "S-02,male,grp B,high school,free/reduced,none,41,38,,,,,"
    "\"race/ethnicity: unknown category 'grp B'; allowed: 'group A', 'group B', 'group C', 'group D', "
    "'group E'\"\r\n"
)


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit``: by header or while streaming."""
    too_big = PayloadTooLarge(f"request body is over the {limit} byte limit of {what}; split it")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise too_big
        # The server frames the body by its Content-Length, so a declared size within the limit is the size.
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
