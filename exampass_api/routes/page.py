"""The web page for people: ``GET /`` and the forms it posts. The work is done in ``exampass_api.web.page``.

Not part of the JSON API, so not in the OpenAPI schema. The predict forms are guarded like /predict
(``PageCaller``: public unless EXAMPASS_PUBLIC_PREDICT=false, and then the key may come from the session
cookie the key form sets); the guard runs before the body is read, and its refusals are shown on the page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from exampass_api.core.security import PageCaller
from exampass_api.web import page

router = APIRouter(route_class=page.PageRoute, include_in_schema=False)


@router.get("/")
async def home(request: Request) -> Response:
    """The form for one student, the roster upload, and what model is being served."""
    return page.render(request, page.base_view(request))


@router.post("/page/predict")
async def predict_student(request: Request, caller: PageCaller) -> Response:
    return await page.predict_student(request, caller.client.name, caller.service)


@router.post("/page/roster")
async def score_roster(request: Request, caller: PageCaller) -> Response:
    return await page.score_roster(request, caller.client.name, caller.service)


@router.post("/page/key")
async def set_key(request: Request) -> Response:
    """Keep an API key for this browser session, once it is verified like a Bearer token."""
    return await page.set_key(request)


@router.post("/page/forget-key")
async def forget_key(request: Request) -> Response:
    return page.forget_key(request)
