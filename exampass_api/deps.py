"""Shared state as FastAPI dependencies: what a route needs is declared in its signature, not looked up.

``create_app`` puts one ModelStore, one PredictionLog and one PredictionService on ``app.state``; these
functions hand them to routes. ``Served`` is the model a request is answered with: read once from the store,
so a hot swap in the middle of a request cannot mix two versions, and a 503 when nothing is loaded yet.
The dependencies are ``async`` on purpose: a plain function would be run in the thread pool for every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from exampass_api.model_store import Bundle, ModelStore
from exampass_api.service import PredictionService
from exampass_pipeline.predlog import PredictionLog
from exampass_pipeline.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_predlog(request: Request) -> PredictionLog:
    predlog: PredictionLog = request.app.state.predlog
    return predlog


async def get_service(request: Request) -> PredictionService:
    service: PredictionService = request.app.state.service
    return service


async def get_bundle(store: Annotated[ModelStore, Depends(get_store)]) -> Bundle:
    """The model this request is answered with; 503 (with the reason) while no champion is loaded."""
    bundle = store.bundle
    if bundle is None:
        raise HTTPException(503, store.unavailable_reason)
    return bundle


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
PredLogDep = Annotated[PredictionLog, Depends(get_predlog)]
ServiceDep = Annotated[PredictionService, Depends(get_service)]
Served = Annotated[Bundle, Depends(get_bundle)]
