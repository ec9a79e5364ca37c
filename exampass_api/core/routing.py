"""The route class every ExamPass route uses: the boundary checks that run before FastAPI reads a body.

In order, for every request to a route:

1. its ``Guard`` (``auth``): no key, a wrong key, a missing scope or a spent rate is refused with 401, 403
   or 429 before anything else happens, so a refused request costs no parse and is never logged;
2. for a POST, the body's declared media type (415 for anything the route does not take: JSON by default,
   CSV for ``CsvRoute``, forms for ``FormRoute``);
3. a body FastAPI cannot even decode (not UTF-8, nested past the parser's stack), which it answers with a
   bare 400, becomes the 422 shape every other malformed body gets.

A route whose endpoint takes only its request and its caller (the predict routes and the page's POSTs read
their own bodies) is then called directly; every other route goes on through FastAPI's request handler.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from exampass_api.core.errors import JSON, invalid, is_json, log_unavailable, unreadable_body, unsupported
from exampass_api.core.metrics import Meter
from exampass_api.core.security import Caller, Guard, Refused
from exampass_pipeline.contract.logfile import LogUnavailable

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def refusal(exc: Refused) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)


class ApiRoute(APIRoute):
    """A route whose POST body is JSON (``accepts``), guarded as its dependencies declare."""

    accepts: ClassVar[tuple[str, ...]] = (JSON,)

    def accepted(self, content_type: str) -> bool:
        return is_json(content_type)

    def refuse(self, request: Request, exc: Refused) -> Response:
        """How this route answers a request its guard refused (the page renders it as a message)."""
        return refusal(exc)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        guards = [dep.call for dep in self.dependant.dependencies if isinstance(dep.call, Guard)]
        checks_body = "POST" in (self.methods or set())
        direct = self._direct_call()

        path = self.path_format

        async def serve(request: Request, meter: Meter | None) -> Response:
            try:
                for guard in guards:
                    client = guard.check(request)
            except Refused as exc:
                if meter is not None:
                    meter.refused(path, exc.status, keyed=exc.keyed)
                return self.refuse(request, exc)
            if checks_body:
                content_type = request.headers.get("content-type")
                if content_type is None:
                    if request.headers.get("content-length", "") != "0":
                        return self._unsupported(path, None, meter)
                elif not self.accepted(content_type):
                    return self._unsupported(path, content_type, meter)
            try:
                if direct is not None:
                    request_name, caller_name = direct
                    caller = Caller(client, request.app.state.service)
                    response: Response = await self.endpoint(**{request_name: request, caller_name: caller})
                    return response
                return await handler(request)
            except LogUnavailable as exc:  # a full disk is a 503 with its reason, never a 500
                return log_unavailable(exc)
            except HTTPException as exc:
                error = unreadable_body(exc)
                if error is None:
                    raise
                return invalid([error], request.url.path)

        async def route(request: Request) -> Response:
            meter: Meter | None = request.app.state.meter
            if meter is None:
                return await serve(request, None)
            # Counted here, in the path every request already takes (no middleware): an answer by its status,
            # an exception by the status its handler will give it (HTTPException's, 422 for validation, else 500).
            started = time.perf_counter()
            try:
                response = await serve(request, meter)
            except HTTPException as exc:
                meter.request(path, request.method, exc.status_code, started)
                raise
            except RequestValidationError:
                meter.request(path, request.method, 422, started)
                raise
            except Exception:
                meter.request(path, request.method, 500, started)
                raise
            meter.request(path, request.method, response.status_code, started)
            return response

        return route

    def _unsupported(self, path: str, content_type: str | None, meter: Meter | None) -> Response:
        if meter is not None:
            meter.refused(path, 415)
        return unsupported(content_type, self.accepts[0])

    def _direct_call(self) -> tuple[str, str] | None:
        """(request, caller) parameter names when the endpoint takes exactly those two and answers a Response.

        Such an endpoint reads its own body, so FastAPI's request handler has nothing to do for it but solve
        the guard dependency again and inspect the answer: measured, 20-30 us of a /predict request. It is
        called directly, with the client its guard just identified; every other route goes through FastAPI.
        """
        dependant = self.dependant
        if len(dependant.dependencies) != 1 or not inspect.iscoroutinefunction(self.endpoint):
            return None
        guard = dependant.dependencies[0]
        other_inputs = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.http_connection_param_name,
            dependant.security_scopes_param_name,
        )
        if (
            isinstance(guard.call, Guard)
            and guard.name
            and dependant.request_param_name
            and not any(other_inputs)
        ):
            return dependant.request_param_name, guard.name
        return None


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class CsvRoute(ApiRoute):
    """A route that takes a CSV file as its body (spreadsheets and curl send it as text/csv)."""

    accepts: ClassVar[tuple[str, ...]] = ("text/csv", "application/csv", "text/plain")

    def accepted(self, content_type: str) -> bool:
        return _media(content_type) in self.accepts


class FormRoute(ApiRoute):
    """A route of the web page: HTML forms post urlencoded fields or multipart files."""

    accepts: ClassVar[tuple[str, ...]] = ("multipart/form-data", "application/x-www-form-urlencoded")

    def accepted(self, content_type: str) -> bool:
        return _media(content_type) in self.accepts
