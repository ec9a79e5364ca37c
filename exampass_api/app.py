"""The HTTP surface: ``create_app()`` wires settings, the model store, the prediction log and the routers.

Routes live in ``exampass_api.routes`` and only translate HTTP to calls on ``PredictionService`` /
``ModelStore`` and back; shared state reaches them as dependencies (``exampass_api.deps``). Choices made here:

* every bad request is rendered by ``errors`` in one shape, whichever parser refused it;
* the web page at ``/`` (``routes.page``, ``page``) is rendered on the server from packaged templates, with
  its stylesheet under ``/static``: no CDN, no JavaScript;
* Swagger UI and ReDoc are served from the ``fastapi-offline`` package, because the default pages load their
  JavaScript from a CDN and stay blank on a machine without internet;
* answers are pre-serialised bytes (see ``service``); the declared response models document them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from exampass_api.core import metrics
from exampass_api.core.errors import on_validation_error
from exampass_api.core.keystore import KeyRing
from exampass_api.core.routing import ApiRoute
from exampass_api.core.security import Access, Guard
from exampass_api.routes import feedback, ops, page, predict
from exampass_api.schemas import BatchIn
from exampass_api.services.model_store import ModelStore
from exampass_api.services.prediction import PredictionService
from exampass_api.web.page import STATIC_DIR
from exampass_pipeline.contract import schema
from exampass_pipeline.contract.predlog import PredictionLog
from exampass_pipeline.contract.settings import Settings, restrict_new_files

DESCRIPTION = (
    "Predicts whether a student passes the maths exam (math score >= 50) from five background fields and the "
    f"reading and writing scores, with the MLflow model behind `{schema.MODEL_NAME}@{schema.CHAMPION_ALIAS}`. "
    "Every answered prediction is appended to the prediction log that monitoring reads; report the real "
    "outcome with POST /feedback (an API key with the `feedback` scope: `exampass-apikey create`)."
)


# Every router of the service: the app includes these, and the OpenAPI pass below walks their routes (FastAPI
# keeps included routers behind an internal wrapper in ``app.routes``; the routers' own lists are public).
ROUTERS: tuple[APIRouter, ...] = (predict.router, feedback.router, ops.router, metrics.router, page.router)


def api_routes() -> Iterator[APIRoute]:
    """Every route the service answers, from its routers (ExamPass includes them without a prefix)."""
    for router in ROUTERS:
        yield from (route for route in router.routes if isinstance(route, APIRoute))


def create_app(
    settings: Settings | None = None,
    *,
    store: ModelStore | None = None,
    predlog: PredictionLog | None = None,
) -> FastAPI:
    """Build the service; uvicorn calls this once per worker (``factory=True``)."""
    settings = settings or Settings.from_env()
    restrict_new_files()
    # Read now, so a corrupt or unreadable key store stops the service at start-up with its reason.
    access = Access(settings, KeyRing.load(settings.api_keys_file))
    meter = metrics.meter_for(settings)
    store = store or (metrics.MeteredModelStore(settings) if meter else ModelStore(settings))
    predlog = predlog or PredictionLog(settings.logs_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.start()
        try:
            yield
        finally:
            await store.stop()
            predlog.close()
            metrics.worker_stopped()

    app = FastAPIOffline(
        title="ExamPass prediction service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Off unless asked for: with no provider configured FastAPI still probes for one on every request
        # (measured: about 35 us, a sixth of a /predict answer).
        telemetry=None if settings.telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.router.route_class = ApiRoute
    app.state.settings = settings
    app.state.store = store
    app.state.predlog = predlog
    app.state.meter = meter
    app.state.service = PredictionService(
        metrics.MeteredLog(predlog) if meter else predlog, store, advice=settings.advice
    )
    app.state.access = access
    app.add_exception_handler(RequestValidationError, on_validation_error)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, plus what the routes do outside FastAPI's view: the request body of
    /predict/batch (it reads its body itself) and the bearer scheme of every guarded route."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        batch = BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name, definition in batch.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["BatchIn"] = batch
        components["securitySchemes"] = {"HTTPBearer": BEARER_SCHEME}
        for route in api_routes():
            if any(isinstance(d.call, Guard) for d in route.dependant.dependencies):
                for method in route.methods or ():
                    operation = doc["paths"].get(route.path_format, {}).get(method.lower())
                    if operation is not None:
                        operation["security"] = [{"HTTPBearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema


BEARER_SCHEME: dict[str, str] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An ExamPass API key (`exampass-apikey create NAME --scope ...`).",
}
