"""Shared state as FastAPI dependencies: what a route needs is declared in its signature, not looked up.

``create_app`` puts one ModelStore and one PredictionService on ``app.state``. The routes that score or write
get both their caller and the service from one dependency, their guard (``auth.Caller``): each dependency
costs every request, and those routes are the hot path. The operations routes get the served model here.
The dependencies are ``async`` on purpose: a plain function would be run in the thread pool for every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from exampass_api.model_store import Bundle, ModelStore


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_bundle(store: Annotated[ModelStore, Depends(get_store)]) -> Bundle:
    """The model this request is answered with; 503 (with the reason) while no champion is loaded."""
    bundle = store.bundle
    if bundle is None:
        raise HTTPException(503, store.unavailable_reason)
    return bundle


Served = Annotated[Bundle, Depends(get_bundle)]
