"""The MLflow model registry contract: how a model is logged, found by alias, loaded and promoted.

The training asset writes through here and the API reads through here, so the two can never disagree on where
the decision threshold lives or which types a skops file may contain. Loading never unpickles: the artifact is
fetched through MLflow and opened with skops against *our* allow-list, not the list the model file carries.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.contract.score_model import (
    ScoreProbitClassifier as ScoreProbitClassifier,  # for the API
)
from exampass_pipeline.contract.settings import Settings

EXPERIMENT_NAME = "exampass"
ARTIFACT_PATH = "model"

# Everything a model of ours may contain beyond what skops trusts by default. A candidate that needs more
# fails at logging time (skops refuses), long before the API would refuse it.
TRUSTED_TYPES: list[str] = [
    # Our one estimator class (least squares on the maths score): numbers and arrays only. Versions
    # registered before the packages moved name it by its old module, which exampass_pipeline.score_model keeps.
    f"{ScoreProbitClassifier.__module__}.{ScoreProbitClassifier.__qualname__}",
    f"exampass_pipeline.score_model.{ScoreProbitClassifier.__qualname__}",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.utils._bunch.Bunch",
    "collections.OrderedDict",
    "numpy.dtype",
]

# Version tags written by the champion gate.
TAG_DECISION = "champion_decision"
TAG_REASON = "champion_reason"
TAG_THRESHOLD = "threshold"
TAG_APPROVED_BY = "approved_by"
TAG_APPROVED_AT = "approved_at"
TAG_APPROVAL_NOTE = "approval_note"
# The MLmodel metadata keys holding DecisionRule.to_dict(), next to "threshold", and the expected figures of
# the rules compared when it was chosen (modeling.Selection.rule_comparison; the model card shows them).
META_RULE = "decision_rule"
META_RULE_COMPARISON = "rule_comparison"
# The model card: a Markdown artifact at the root of the version's run (model_card.render).
MODEL_CARD_PATH = "model_card.md"


# MLflow's client retries a failing HTTP request 7 times with a doubling back-off and a 120 s timeout each:
# minutes of hanging per request while a tracking server is down. ExamPass bounds it (a request gives up after
# at most 4 attempts of 30 s plus 1+2+4 s of back-off), so a training run with MLflow gone fails within a few
# minutes and says so, and the API's poll comes round again instead of hanging. MLflow's own variables, when
# an operator sets them, win.
HTTP_RETRY_POLICY: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_retries() -> None:
    """Apply HTTP_RETRY_POLICY where the environment has not chosen otherwise (MLflow reads it per request)."""
    for name, value in HTTP_RETRY_POLICY.items():
        os.environ.setdefault(name, value)


def _database_store(uri: str) -> bool:
    """A tracking URI that is a database (sqlite, or Postgres/MySQL on a server without an MLflow server).

    With no tracking server nobody else decides where artifacts go, and MLflow's default is ./mlruns relative
    to whatever directory the process started in; EXAMPASS_HOME is the only place that is always right.
    """
    return uri.split(":", 1)[0].split("+", 1)[0] in {"sqlite", "postgresql", "mysql", "mssql"}


def configure(settings: Settings, *, create_experiment: bool = True) -> str:
    """Point this process at the configured tracking store and make sure our experiment exists."""
    settings.ensure_dirs()
    return connect(
        settings.mlflow_tracking_uri,
        settings.mlflow_registry_uri,
        settings.mlflow_artifacts_dir,
        create_experiment=create_experiment,
    )


def connect(
    tracking_uri: str, registry_uri: str | None, artifacts_dir: Path, *, create_experiment: bool = True
) -> str:
    """Point this process at one tracking store and make sure our experiment exists; returns its id.

    ``create_experiment=False`` is for readers (the API): in an authenticated registry whoever creates a
    resource owns it, so a reader must never be the one to create it; it gets "" when it is missing.

    With a database store (sqlite, or Postgres without a tracking server) the artifacts go to
    ``artifacts_dir`` (under EXAMPASS_HOME); with a tracking server the server decides where artifacts live, so
    we leave it unset.
    """
    bound_retries()
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None and not create_experiment:
        return ""
    if experiment is None:
        location = artifacts_dir.as_uri() if _database_store(tracking_uri) else None
        try:
            return mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
            assert experiment is not None
    return str(experiment.experiment_id)


def log_model(
    pipeline: Any,
    threshold: float,
    example: pd.DataFrame,
    *,
    candidate: str,
    rule: DecisionRule | None = None,
    rule_comparison: pd.DataFrame | None = None,
    register: bool = True,
    pip_requirements: list[str] | None = None,
) -> Any:
    """Log a fitted sklearn Pipeline to the active run with skops and register it.

    The decision travels inside the MLmodel metadata, so whoever loads a version also gets the rule it was
    fitted with: ``threshold`` (the single cut-off, all an older reader knows) and ``decision_rule`` (the
    full rule, ``DecisionRule.to_dict()``; a single cut-off at ``threshold`` when ``rule`` is None). A rule
    whose fallback differs from ``threshold`` is refused: the two must never tell different stories.
    ``rule_comparison`` (rules x expected figures) is stored as ``rule_comparison`` for the model card.
    Requirements default to the exact installed versions of what a skops sklearn model
    needs: MLflow's own inference re-imports the model in a subprocess and scans every installed distribution,
    30-60 s per registration on a busy 2-core box, to arrive at the same list.
    """
    if pip_requirements is None:
        pip_requirements = pinned_requirements()
    rule = DecisionRule.single(threshold) if rule is None else rule
    if rule.threshold != float(threshold):
        raise ValueError(f"rule: its threshold {rule.threshold!r} differs from threshold {threshold!r}")
    example = example[list(schema.FEATURES)].head(5)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values; scores are never missing by contract.
        warnings.simplefilter("ignore", UserWarning)
        signature = mlflow.models.infer_signature(example, pipeline.predict_proba(example))
    return mlflow.sklearn.log_model(
        pipeline,
        name=ARTIFACT_PATH,
        serialization_format="skops",
        skops_trusted_types=TRUSTED_TYPES,
        signature=signature,
        input_example=example,
        registered_model_name=schema.MODEL_NAME if register else None,
        metadata={
            "threshold": float(threshold),
            "candidate": candidate,
            "features": list(schema.FEATURES),
            META_RULE: rule.to_dict(),
            **({} if rule_comparison is None else {META_RULE_COMPARISON: _comparison_data(rule_comparison)}),
        },
        pyfunc_predict_fn="predict_proba",
        pip_requirements=pip_requirements,
    )


def _comparison_data(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """rules x figures as plain floats (YAML cannot hold numpy scalars)."""
    return {str(r): {str(c): float(v) for c, v in row.items()} for r, row in table.iterrows()}


def pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas")
    ]


class RegistryError(RuntimeError):
    """MLflow could not be asked (down, restarting, a permission error): the state of the registry is unknown.

    Never read as "no champion": a gate that took an unreachable registry for an empty one would promote any
    challenger without a comparison. Callers fail closed: the step fails, the champion stays.
    """


def registry_error(what: str, exc: BaseException) -> RegistryError:
    """A RegistryError whose message names MLflow, what was being done and the error itself."""
    return RegistryError(f"MLflow registry error while {what}: {type(exc).__name__}: {exc}")


def _not_found(exc: MlflowException) -> bool:
    """MLflow's own answer "that does not exist": the model, or its alias (which MLflow reports as an invalid
    parameter, so the message is checked too). Anything else is an error, not an answer."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc).lower()
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def champion_version(client: MlflowClient | None = None) -> ModelVersion | None:
    """The version behind @champion; None only when MLflow says there is none. Any other failure raises
    RegistryError (fail closed: see the class)."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise registry_error(f"reading @{schema.CHAMPION_ALIAS}", exc) from exc
    except OSError as exc:  # a connection refused before MLflow wrapped it
        raise registry_error(f"reading @{schema.CHAMPION_ALIAS}", exc) from exc


def find_version(client: MlflowClient, version: str) -> ModelVersion | None:
    """One registered version of our model; None only when MLflow says it does not exist (RegistryError
    for any other failure)."""
    try:
        return client.get_model_version(schema.MODEL_NAME, str(version))
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise registry_error(f"reading version {version}", exc) from exc


@dataclass
class LoadedModel:
    """A model version ready to score: the sklearn Pipeline plus everything needed to describe it.

    ``rule`` is the served decision (from the MLmodel metadata); ``threshold`` its single fallback cut-off.
    A model logged before rules existed gets a single-cut-off rule at its threshold.
    """

    pipeline: Any
    threshold: float
    version: str
    run_id: str | None
    candidate: str
    created_at_ms: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    rule: DecisionRule | None = None
    rule_comparison: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.rule is None:
            self.rule = DecisionRule.single(float(self.threshold))

    @property
    def decision(self) -> DecisionRule:
        """The rule, never None (``__post_init__`` fills it in)."""
        assert self.rule is not None
        return self.rule

    def pass_probability(self, frame: pd.DataFrame) -> np.ndarray:
        """P(pass) for each student of ``frame`` (columns schema.FEATURES)."""
        return np.asarray(self.pipeline.predict_proba(frame[list(schema.FEATURES)])[:, 1], dtype=float)

    def thresholds(self, frame: pd.DataFrame) -> np.ndarray:
        """The cut-off applied to each student: every decision the pipeline makes goes through here."""
        return self.decision.for_frame(frame)

    def predicted_pass(self, frame: pd.DataFrame) -> np.ndarray:
        """The served decision (the flag is ``~predicted_pass``), exactly as the API makes it."""
        return self.pass_probability(frame) >= self.thresholds(frame)


def _read_mlmodel(model_dir: Path) -> dict[str, Any]:
    with open(model_dir / "MLmodel") as fh:
        mlmodel: dict[str, Any] = yaml.safe_load(fh)
    return mlmodel


def load_version(version: ModelVersion, client: MlflowClient | None = None) -> LoadedModel:
    """Fetch one registered version through MLflow and open it with skops and our own allow-list."""
    import skops.io

    client = client or MlflowClient()
    uri = f"models:/{version.name}/{version.version}"
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    mlmodel = _read_mlmodel(model_dir)
    flavor = mlmodel.get("flavors", {}).get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise ValueError(
            f"{uri} is not a skops model (format {flavor.get('serialization_format')!r}); refusing"
        )
    pipeline = skops.io.load(model_dir / flavor["pickled_model"], trusted=TRUSTED_TYPES)
    meta = mlmodel.get("metadata") or {}
    metrics: dict[str, float] = {}
    if version.run_id:
        run = client.get_run(version.run_id)
        metrics = {k: v for k, v in run.data.metrics.items() if k in schema.TEST_METRICS}
    threshold = float(meta.get("threshold", version.tags.get(TAG_THRESHOLD, 0.5)))
    return LoadedModel(
        pipeline=pipeline,
        threshold=threshold,
        version=str(version.version),
        run_id=version.run_id,
        candidate=str(meta.get("candidate", "unknown")),
        created_at_ms=version.creation_timestamp,
        metrics=metrics,
        rule=DecisionRule.from_dict(meta.get(META_RULE), threshold),
        rule_comparison=pd.DataFrame(meta[META_RULE_COMPARISON]).T
        if meta.get(META_RULE_COMPARISON)
        else None,
    )


def log_model_card(client: MlflowClient, run_id: str, markdown: str) -> None:
    """Store a version's model card (``model_card.render``) as ``model_card.md`` on its run."""
    client.log_text(run_id, markdown, MODEL_CARD_PATH)


def load_model_card(run_id: str | None, client: MlflowClient | None = None) -> str | None:
    """The model card of a version's run, or None when the run has none (versions logged before cards).

    "Has none" is what the run's artifact listing says; an error listing or downloading it raises, so a
    registry hiccup never silently serves a model without its card.
    """
    if not run_id:
        return None
    client = client or MlflowClient()
    if MODEL_CARD_PATH not in {item.path for item in client.list_artifacts(run_id)}:
        return None
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_CARD_PATH)
    return Path(path).read_text(encoding="utf-8")


def load_champion(client: MlflowClient | None = None) -> LoadedModel | None:
    client = client or MlflowClient()
    version = champion_version(client)
    return None if version is None else load_version(version, client)


PENDING = "pending_approval"


def record_decision(
    client: MlflowClient, version: str, promoted: bool, reason: str, *, status: str | None = None
) -> None:
    """Write the gate's verdict on the version and, when it won, move the alias.

    ``status`` is ``promoted``, ``rejected`` or ``pending_approval`` (held until a person approves it with
    ``approve``); by default it follows ``promoted``.
    """
    decision = status or ("promoted" if promoted else "rejected")
    # The verdict tag is written last: if MLflow fails half-way, the version stays undecided (never
    # "promoted" without the alias having moved).
    client.set_model_version_tag(schema.MODEL_NAME, version, TAG_REASON, reason)
    if promoted:
        client.set_registered_model_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS, version)
    client.set_model_version_tag(schema.MODEL_NAME, version, TAG_DECISION, decision)


class ApprovalError(ValueError):
    """A version that cannot be approved (unknown, or not waiting for approval); the message says why."""


def approve(client: MlflowClient, version: str, approver: str, note: str = "") -> ModelVersion:
    """Serve a version the gate held for approval, and record who approved it and when.

    Only versions whose decision is ``pending_approval`` qualify: a plain regression (``rejected``) is never
    served, and approving twice is refused rather than silently re-promoting an older version.
    """
    try:
        found = client.get_model_version(schema.MODEL_NAME, version)
    except MlflowException as exc:
        raise ApprovalError(f"version: {schema.MODEL_NAME} has no version {version!r}") from exc
    decision = found.tags.get(TAG_DECISION)
    if decision != PENDING:
        raise ApprovalError(f"version: {version} is {decision or 'undecided'}, not waiting for approval")
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    for key, value in {TAG_APPROVED_BY: approver, TAG_APPROVED_AT: stamp, TAG_APPROVAL_NOTE: note}.items():
        client.set_model_version_tag(schema.MODEL_NAME, version, key, value)
    reason = f"approved by {approver} at {stamp}" + (f" ({note})" if note else "")
    record_decision(client, version, True, reason + "; was: " + found.tags.get(TAG_REASON, ""))
    return found
