"""Which model is being served: loads ``@champion`` from MLflow, polls the alias, swaps atomically.

Everything a request needs (the loaded model, its compiled scorer, the /model description) is built off the
event loop into one immutable ``Bundle`` and published with a single reference assignment. A request reads
``store.bundle`` once and uses that object to the end, so during a swap it is answered wholly by the old
model or wholly by the new one, never by a half-loaded mixture, and nothing has to be locked on the hot path.

A version that fails to load (a broken artifact, a model that cannot score every valid request) never
replaces a working one: the error is logged, reported by /ready and /predict while nothing is served, and the
load is retried with a doubling back-off (from one poll interval up to ten minutes).

With several workers (EXAMPASS_API_WORKERS) each process polls on its own, so for up to one poll interval
after a promotion different workers may answer with different versions; every answer and log line says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson

from exampass_api.schemas import EXPLANATION_TOP_K
from exampass_api.scorer import Scorer, compile_pipeline
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings

log = logging.getLogger(__name__)

NO_CHAMPION: Final = "no champion model registered yet: materialize the training assets"
# The first load happens before the server accepts connections, so that a server that has a champion is ready
# when it starts listening; but an unreachable tracking server must not keep the service from starting.
STARTUP_LOAD_TIMEOUT_S: Final = 60.0
MAX_RETRY_S: Final = 600.0


def _iso_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _decision_info(model: registry.LoadedModel) -> dict[str, Any]:
    """How /model describes the decision rule: what it equalises, over which groups, and every cut-off."""
    rule = model.decision
    data = rule.to_dict()
    return {
        "kind": rule.kind,
        "summary": rule.summary(),
        "criterion": rule.criterion,
        "features": list(rule.features),
        "uses_race_ethnicity": schema.RACE_ETHNICITY in rule.features,
        "target_fail_recall": rule.target_fail_recall,
        "fallback_threshold": rule.threshold,
        "cutoffs": data["cutoffs"],
        "fitted_on": rule.fitted_on,
    }


@dataclass(frozen=True)
class Bundle:
    """One servable model version. Immutable: it is replaced, never changed.

    ``cutoffs`` is the model's decision rule as a flat table over every combination of the categorical
    features (``DecisionRule.table()``), indexed by the scorer's codes through ``strides``; ``cutoff_by_value``
    the same numbers keyed by the rule's own feature values, for one-record requests.
    """

    model: registry.LoadedModel
    scorer: Scorer
    version: str
    threshold: float
    info: dict[str, Any]
    info_json: bytes
    cutoffs: np.ndarray
    strides: np.ndarray
    rule_features: tuple[str, ...]
    cutoff_by_value: dict[tuple[str, ...], float]
    card: str | None = None

    @classmethod
    def build(cls, model: registry.LoadedModel, scorer: Scorer, card: str | None = None) -> Bundle:
        rule = model.decision
        table = rule.table()
        strides = np.array([s // table.itemsize for s in table.strides], dtype=np.intp)
        by_value = {cell: float(v) for cell, v in rule.cutoffs.items()}
        info = {
            "name": schema.MODEL_NAME,
            "version": model.version,
            "alias": schema.CHAMPION_ALIAS,
            "run_id": model.run_id,
            "threshold": float(model.threshold),
            "trained_at": _iso_ms(model.created_at_ms),
            "candidate": model.candidate,
            "test_metrics": {k: float(v) for k, v in sorted(model.metrics.items())},
            "loaded_at": datetime.now(UTC).isoformat(),
            "scorer": scorer.kind,
            "explanation": {
                "method": scorer.method,
                "units": scorer.units,
                "top_k": EXPLANATION_TOP_K,
                "reference": scorer.reference(),
                "reference_value": scorer.reference_value,
                "reference_log_odds": scorer.reference_log_odds,
            },
            "decision": _decision_info(model),
        }
        if card is not None:
            info["model_card"] = "/model/card"
        return cls(
            model=model,
            scorer=scorer,
            version=model.version,
            threshold=float(model.threshold),
            info=info,
            info_json=orjson.dumps(info),
            cutoffs=np.ascontiguousarray(table).reshape(-1),
            strides=strides,
            rule_features=rule.features,
            cutoff_by_value=by_value,
            card=card,
        )

    def thresholds(self, codes: np.ndarray) -> np.ndarray:
        """The pass-probability cut-off applied to each encoded row (``scorer.encode`` codes).

        Every decision goes through here (and ``threshold_for``): one lookup in the rule's table per row,
        the same numbers ``registry.LoadedModel.thresholds`` gives the pipeline.
        """
        if not self.rule_features:
            return np.full(len(codes), self.threshold)
        out: np.ndarray = self.cutoffs[codes @ self.strides]
        return out

    def threshold_for(self, record: Mapping[str, Any]) -> float:
        """The cut-off for one validated student record."""
        if not self.rule_features:
            return self.threshold
        return self.cutoff_by_value.get(tuple(record[f] for f in self.rule_features), self.threshold)


class ModelStore:
    """Holds the current Bundle and keeps it in step with the registry alias."""

    def __init__(self, settings: Settings, *, poll_s: float | None = None) -> None:
        self.settings = settings
        self.poll_s = float(settings.model_poll_s if poll_s is None else poll_s)
        if not self.poll_s > 0:
            raise ValueError(
                f"EXAMPASS_MODEL_POLL_S must be a positive number of seconds, got {self.poll_s!r}"
            )
        self.bundle: Bundle | None = None
        self.last_error: str | None = None
        # Why the last check of the alias failed (MLflow unreachable, a version that would not load), None when
        # it succeeded: /ready reports it, while the loaded champion keeps serving.
        self.registry_problem: str | None = None
        self._configured = False
        self._reported: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # version -> (monotonic retry time, current delay)
        self._task: asyncio.Task[None] | None = None

    @property
    def unavailable_reason(self) -> str:
        """Why nothing is served: the contract sentence, plus the load error if a champion failed to load."""
        if self.last_error:
            return f"{NO_CHAMPION} ({self.last_error}; retrying every {self.poll_s:g} s)"
        return NO_CHAMPION

    def refresh(self) -> bool:
        """Check the alias once; swap in the version behind it if that changed. Blocking: run it off-loop."""
        import mlflow
        from mlflow import MlflowClient

        if not self._configured:
            registry.configure(self.settings, create_experiment=False)
            self._configured = True
        # MLflow's URIs are process-global: set them on every check, so nothing else in the process moves us.
        mlflow.set_tracking_uri(self.settings.mlflow_tracking_uri)
        if self.settings.mlflow_registry_uri:
            mlflow.set_registry_uri(self.settings.mlflow_registry_uri)
        client = MlflowClient()
        version = registry.champion_version(client)
        if version is None:
            if self.bundle is not None:
                log.warning(
                    "alias @%s disappeared; still serving version %s",
                    schema.CHAMPION_ALIAS,
                    self.bundle.version,
                )
            return False
        current = self.bundle
        if current is not None and current.version == str(version.version):
            return False
        retry = self._retry.get(str(version.version))
        if retry is not None and time.monotonic() < retry[0]:
            return False  # this version failed to load recently; wait out its back-off
        try:
            loaded = registry.load_version(version, client)
            card = registry.load_model_card(loaded.run_id, client)
            bundle = Bundle.build(loaded, compile_pipeline(loaded.pipeline), card)
        except Exception:
            # Retry a broken version with a doubling delay (capped), not at every poll: each attempt
            # downloads the artifacts again.
            delay = min(MAX_RETRY_S, 2 * retry[1]) if retry else self.poll_s
            self._retry[str(version.version)] = (time.monotonic() + delay, delay)
            raise
        self._retry.pop(bundle.version, None)
        self.bundle = bundle  # the swap: one reference assignment
        self.last_error = None
        # Move everything alive now (MLflow, scikit-learn, the model) out of the cyclic GC's reach: a full
        # collection would otherwise walk hundreds of thousands of objects every few thousand requests and
        # show up as latency spikes. Only the garbage collector stops looking; reference counting still
        # frees a replaced model.
        gc.freeze()
        log.info(
            "serving %s version %s (%s, %s scorer; %s)",
            schema.MODEL_NAME,
            bundle.version,
            loaded.candidate,
            bundle.scorer.kind,
            loaded.decision.summary(),
        )
        return True

    def refresh_safely(self) -> bool:
        """refresh(), with every failure logged (once per distinct error), kept for /ready, never raised."""
        try:
            swapped = self.refresh()
        except Exception as exc:  # noqa: BLE001 - any failure must leave the current model serving
            message = f"{type(exc).__name__}: {exc}"
            self.last_error = message if self.bundle is None else None
            unreachable = isinstance(exc, registry.RegistryError)
            self.registry_problem = f"{'unreachable' if unreachable else 'error'}: {message}"
            if message not in self._reported:
                self._reported.add(message)
                log.exception("could not refresh the champion model; keeping what is served")
            return False
        self.registry_problem = None
        return swapped

    async def start(self) -> None:
        """First load before serving (bounded by STARTUP_LOAD_TIMEOUT_S), then poll in the background."""
        first = asyncio.ensure_future(asyncio.to_thread(self.refresh_safely))
        try:
            await asyncio.wait_for(asyncio.shield(first), STARTUP_LOAD_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "model registry did not answer within %.0f s; starting without a model",
                STARTUP_LOAD_TIMEOUT_S,
            )
        self._task = asyncio.create_task(self._poll(first), name="exampass-model-poll")

    async def _poll(self, first: asyncio.Future[bool]) -> None:
        await first
        while True:
            await asyncio.sleep(self.poll_s)
            await asyncio.to_thread(self.refresh_safely)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
