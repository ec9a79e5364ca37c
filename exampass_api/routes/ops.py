"""Operations: liveness, readiness and what is being served. Always public: probes and people need them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response

from exampass_api.core.errors import NO_MODEL
from exampass_api.core.responses import JSONBytes
from exampass_api.core.routing import ApiRoute
from exampass_api.deps import Served, Status
from exampass_api.schemas import HealthOut, MessageOut, ModelOut, ReadyOut

router = APIRouter(tags=["operations"], route_class=ApiRoute)


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health() -> JSONBytes:
    """The process answers; says nothing about the model (see /ready)."""
    return JSONBytes(b'{"status":"ok"}')


@router.get("/ready", response_model=ReadyOut, responses=NO_MODEL, summary="Readiness")
async def ready(bundle: Served, status: Status) -> JSONResponse:
    """200 once a champion model is loaded and being served, 503 until then.

    Ready means "can answer": an unreachable registry or an unreadable key store does not take a serving API
    out of a load balancer, but the body says so, for the person looking.
    """
    return JSONResponse({"status": "ready", "model_version": bundle.version, **status.parts()})


@router.get("/model", response_model=ModelOut, responses=NO_MODEL, summary="The model being served")
async def model(bundle: Served) -> JSONBytes:
    """Name, version, alias, run, decision rule, training date, test metrics, and how explanations work."""
    return JSONBytes(bundle.info_json)


NO_CARD = "this model version has no model card (it was registered before cards were written)"


@router.get(
    "/model/card",
    response_class=Response,
    responses={
        **NO_MODEL,
        200: {"content": {"text/markdown": {}}, "description": "The model card, in Markdown."},
        404: {"model": MessageOut, "description": NO_CARD},
    },
    summary="The model card of the model being served",
)
async def model_card(bundle: Served) -> Response:
    """Intended use, data and its limits, metrics overall and per group, the fairness criterion and its
    measured trade-offs, caveats: the Markdown card logged with this version (Mitchell et al., 2019)."""
    if bundle.card is None:
        raise HTTPException(404, NO_CARD)
    return Response(bundle.card, media_type="text/markdown; charset=utf-8")
