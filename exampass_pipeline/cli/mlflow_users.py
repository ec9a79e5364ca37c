"""The two MLflow users of the authenticated registry, each with exactly what its job needs.

`mlflow server --app-name basic-auth` refuses anonymous requests, but on its own it knows only the admin. This
module (console script ``exampass-mlflow-users``) runs once against such a server with the admin's credentials
and makes the deployment's two service users exist with the permissions the trust boundary asks for:

- the **pipeline** user (the Dagster code location) gets EDIT on the experiment ``exampass`` and on the
  registered model ``exampass-pass-classifier``: it may create runs, register versions and move ``@champion``,
  but not delete the model or hand permissions to anybody else (that is MANAGE, which only the admin keeps);
- the **API** user gets READ on both: it finds ``@champion``, downloads the model and reads the run's metrics,
  and every write is refused with 403.

The server's ``default_permission`` is NO_PERMISSIONS (deploy/mlflow-basic-auth.ini), so these grants are the
whole of what either user can see of ours. The experiment and the registered model are created here, as the
admin, before either user exists: whoever creates a resource in MLflow becomes its MANAGE owner, and a reader
that got there first (the API creates the experiment when it is missing) would own the registry it is meant
only to read.

Idempotent: a second run sets the passwords again (so rotating one is: change it, run this again) and puts back
any grant that drifted; a user somebody made admin is demoted, since an admin bypasses every grant. Passwords
come from the environment only and are never printed; a flag would put them in ``ps`` output and shell history.

No dagster import: this runs as a one-shot container before any Dagster process starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.server.auth.client import AuthServiceClient
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.registry import EXPERIMENT_NAME
from exampass_pipeline.contract.settings import Settings

WRITER_PERMISSION = "EDIT"
READER_PERMISSION = "READ"
MIN_PASSWORD_LENGTH = 12  # MLflow's own rule (mlflow.utils.validation._validate_password), checked up front
PLACEHOLDER = "change-me"  # what .env.example ships; a copied example must not become a live password


class ProvisionError(RuntimeError):
    """The server is in a state this tool will not paper over; the message says what to do."""


class UsersSettings(BaseModel):
    """What provisioning needs, checked before any request: taken from ``Settings`` (the one reader of the
    environment), keyed by the variables' names so every error names the variable to fix.

    The admin logs in through MLflow's own ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, which MLflow's clients
    read by themselves; they are required here only so a missing one is reported before any request is made.
    """

    model_config = ConfigDict(extra="ignore")

    tracking_uri: str = Field(validation_alias="MLFLOW_TRACKING_URI")
    admin_username: str = Field(validation_alias="MLFLOW_TRACKING_USERNAME")
    admin_password: SecretStr = Field(validation_alias="MLFLOW_TRACKING_PASSWORD")
    pipeline_username: str = Field("exampass-pipeline", validation_alias="MLFLOW_PIPELINE_USERNAME")
    pipeline_password: SecretStr = Field(validation_alias="MLFLOW_PIPELINE_PASSWORD")
    api_username: str = Field("exampass-api", validation_alias="MLFLOW_API_USERNAME")
    api_password: SecretStr = Field(validation_alias="MLFLOW_API_PASSWORD")

    @field_validator("tracking_uri")
    @classmethod
    def _a_server(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            # The value is not echoed: a URI can carry credentials.
            raise ValueError(
                "must be the http(s) URL of an MLflow server (users exist only behind `mlflow server`)"
            )
        return value.rstrip("/")

    @field_validator("admin_password", "pipeline_password", "api_password")
    @classmethod
    def _a_real_password(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if len(secret) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"must be at least {MIN_PASSWORD_LENGTH} characters")
        if PLACEHOLDER in secret:
            raise ValueError(f"still the {PLACEHOLDER!r} placeholder from .env.example")
        return value

    @model_validator(mode="after")
    def _three_different_people(self) -> UsersSettings:
        if len({self.admin_username, self.pipeline_username, self.api_username}) != 3:
            raise ValueError(
                "MLFLOW_TRACKING_USERNAME (the admin), MLFLOW_PIPELINE_USERNAME and MLFLOW_API_USERNAME must "
                "name three different users: one login that can both read and promote defeats the split"
            )
        return self


@dataclass(frozen=True)
class Account:
    """One service user and the permission it gets on the experiment and on the registered model."""

    role: str
    username: str
    password: SecretStr
    permission: str


def accounts(settings: UsersSettings) -> tuple[Account, Account]:
    return (
        Account("pipeline", settings.pipeline_username, settings.pipeline_password, WRITER_PERMISSION),
        Account("api", settings.api_username, settings.api_password, READER_PERMISSION),
    )


def _already_exists(exc: MlflowException) -> bool:
    return cast(str, exc.error_code) == "RESOURCE_ALREADY_EXISTS"


def ensure_user(client: AuthServiceClient, account: Account) -> str:
    """Create the user, or set its password if it exists; never leave it an admin. Returns what happened."""
    password = account.password.get_secret_value()
    try:
        client.create_user(account.username, password)
        return "created"
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    # The admin path of update-password: no current password is asked for, so rotation needs only the new one.
    client.update_user_password(account.username, password)
    if client.get_user(account.username).is_admin:
        client.update_user_admin(account.username, False)
        return "password set, admin rights removed"
    return "password set"


def ensure_grant(
    client: AuthServiceClient, username: str, resource_type: str, resource_id: str, permission: str
) -> str:
    """Make ``username``'s grant on one resource exactly ``permission``, whatever was there before.

    MLflow refuses a second grant on the same resource rather than updating it, so a different existing grant
    (e.g. MANAGE the user got by creating the resource itself) is revoked and granted again.
    """
    try:
        client.grant_user_permission(username, resource_type, resource_id, permission)
        return "granted"
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    if client.get_user_permission(username, resource_type, resource_id).permission == permission:
        return "kept"
    client.revoke_user_permission(username, resource_type, resource_id)
    client.grant_user_permission(username, resource_type, resource_id, permission)
    return "changed"


def ensure_resources(tracking_uri: str) -> str:
    """Create the experiment and the registered model as the admin if missing; returns the experiment id."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        experiment_id = client.create_experiment(EXPERIMENT_NAME)
    elif experiment.lifecycle_stage != "active":
        raise ProvisionError(
            f"experiment {EXPERIMENT_NAME!r} is deleted; restore it in MLflow (or purge it) and run this again"
        )
    else:
        experiment_id = experiment.experiment_id
    try:
        client.create_registered_model(schema.MODEL_NAME)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    return str(experiment_id)


def provision(settings: UsersSettings, report: Callable[[str], None] = print) -> None:
    """Resources, users, grants: everything the deployment needs, reported line by line without secrets.

    Reported as it goes, so a run that fails half-way shows in the container log how far it got.
    """
    client = get_app_client("basic-auth", tracking_uri=settings.tracking_uri)
    assert isinstance(client, AuthServiceClient), f"basic-auth's client is {type(client)}"
    experiment_id = ensure_resources(settings.tracking_uri)
    report(f"experiment {EXPERIMENT_NAME!r} (id {experiment_id}) and model {schema.MODEL_NAME!r} exist")
    targets = (("experiment", experiment_id), ("registered_model", schema.MODEL_NAME))
    for account in accounts(settings):
        report(f"{account.role} user {account.username!r}: {ensure_user(client, account)}")
        for resource_type, resource_id in targets:
            done = ensure_grant(client, account.username, resource_type, resource_id, account.permission)
            report(f"  {account.permission} on {resource_type} {resource_id!r}: {done}")


def _settings_error(exc: ValidationError) -> str:
    """One line per problem, naming the environment variable and never echoing its value."""
    problems = []
    for error in exc.errors(include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {'not set' if error['type'] == 'missing' else message}")
    return "; ".join(problems)


def _from_settings(settings: Settings, tracking_uri: str | None) -> dict[str, Any]:
    """The provisioning inputs by variable name; unset ones are left out, so they are reported as not set."""
    values: dict[str, Any] = {
        "MLFLOW_TRACKING_URI": tracking_uri or settings.mlflow_tracking_uri,
        "MLFLOW_TRACKING_USERNAME": settings.mlflow_tracking_username,
        "MLFLOW_TRACKING_PASSWORD": settings.mlflow_tracking_password,
        "MLFLOW_PIPELINE_USERNAME": settings.mlflow_pipeline_username,
        "MLFLOW_PIPELINE_PASSWORD": settings.mlflow_pipeline_password,
        "MLFLOW_API_USERNAME": settings.mlflow_api_username,
        "MLFLOW_API_PASSWORD": settings.mlflow_api_password,
    }
    return {name: value for name, value in values.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exampass-mlflow-users",
        description=(
            "Create or update the pipeline (EDIT) and API (READ) users of a basic-auth MLflow server. "
            "Reads MLFLOW_TRACKING_URI, the admin's MLFLOW_TRACKING_USERNAME/_PASSWORD, "
            "MLFLOW_PIPELINE_USERNAME/_PASSWORD and MLFLOW_API_USERNAME/_PASSWORD from the environment."
        ),
    )
    parser.add_argument("--tracking-uri", help="the MLflow server (default: $MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    environment = Settings.for_command(parser)
    try:
        settings = UsersSettings.model_validate(_from_settings(environment, args.tracking_uri))
    except ValidationError as exc:
        parser.error(_settings_error(exc))
    try:
        provision(settings, lambda line: print(line, flush=True))
    except (MlflowException, ProvisionError) as exc:
        # MLflow's messages carry the server's answer (e.g. 401 for a wrong admin password), never a password.
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
