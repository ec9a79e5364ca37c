"""Shared state as FastAPI dependencies: what a route needs is declared in its signature, not looked up.

``create_app`` puts one ModelStore and one PredictionService on ``app.state``. The routes that score or write
get both their caller and the service from one dependency, their guard (``auth.Caller``): each dependency
costs every request, and those routes are the hot path. The operations routes get the served model here.
The dependencies are ``async`` on purpose: a plain function would be run in the thread pool for every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from exampass_api.core.security import Access
from exampass_api.services.model_store import Bundle, ModelStore
from exampass_api.services.prediction import PredictionService


async def get_bundle(request: Request) -> Bundle:
    """The model this request is answered with; 503 (with the reason) while no champion is loaded."""
    service: PredictionService = request.app.state.service
    return service.bundle()


Served = Annotated[Bundle, Depends(get_bundle)]


class Health:
    """What the service depends on beyond the loaded model, as /ready reports it."""

    def __init__(self, store: ModelStore, access: Access) -> None:
        self.store = store
        self.access = access

    def parts(self) -> dict[str, str]:
        self.access.keyring.refresh()
        problem = self.access.keyring.problem
        key_store = "ok" if problem is None else f"{problem}; the last good keys stay in force"
        registry = self.store.registry_problem
        return {"registry": registry or "ok", "key_store": key_store}


async def get_status(request: Request) -> Health:
    return Health(request.app.state.store, request.app.state.access)


Status = Annotated[Health, Depends(get_status)]
