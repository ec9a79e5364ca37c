"""Operations: liveness, readiness and what is being served. Always public: probes and people need them."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from exampass_api.deps import Served
from exampass_api.errors import NO_MODEL
from exampass_api.responses import JSONBytes
from exampass_api.routing import ApiRoute
from exampass_api.schemas import HealthOut, ModelOut, ReadyOut

router = APIRouter(tags=["operations"], route_class=ApiRoute)


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health() -> JSONBytes:
    """The process answers; says nothing about the model (see /ready)."""
    return JSONBytes(b'{"status":"ok"}')


@router.get("/ready", response_model=ReadyOut, responses=NO_MODEL, summary="Readiness")
async def ready(bundle: Served) -> JSONResponse:
    """200 once a champion model is loaded and being served, 503 until then."""
    return JSONResponse({"status": "ready", "model_version": bundle.version})


@router.get("/model", response_model=ModelOut, responses=NO_MODEL, summary="The model being served")
async def model(bundle: Served) -> JSONBytes:
    """Name, version, alias, run, threshold, training date, test metrics, and how explanations work."""
    return JSONBytes(bundle.info_json)
