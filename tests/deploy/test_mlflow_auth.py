"""Who may write to the registry, proven against a real `mlflow server --app-name basic-auth`.

One server for the module, on a free loopback port, with its own sqlite backend store, sqlite user store and
artifacts directory, configured by the committed deploy/mlflow-basic-auth.ini (only its database_uri is moved
into the temp dir). `exampass-mlflow-users` provisions it exactly as the Compose one-shot does. Then the
pipeline user logs, registers and promotes a model with the project's own registry helpers, the API user reads
it the way the API's ModelStore does, and every write the API user or an anonymous caller attempts must be
refused by the server.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from support import REPO_ROOT

from exampass_pipeline.cli import mlflow_users
from exampass_pipeline.cli.demo import free_port
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.ml import modeling, synthetic

AUTH_INI = REPO_ROOT / "deploy" / "mlflow-basic-auth.ini"
START_TIMEOUT_S = 180.0  # a cold start migrates two fresh sqlite stores: ~30 s on a busy 2-core box


@dataclass(frozen=True)
class Identity:
    username: str
    password: str


@dataclass
class Server:
    url: str
    port: int
    root: Path
    admin: Identity
    log: Path


@dataclass
class Users:
    """The service users as the last `exampass-mlflow-users` run left them (the rotation test changes them)."""

    pipeline: Identity
    api: Identity


@dataclass(frozen=True)
class Promoted:
    """What the pipeline user registered: version ``champion`` behind @champion, ``challenger`` not promoted."""

    experiment_id: str
    run_id: str
    model_uri: str
    champion: ModelVersion
    challenger: ModelVersion
    probabilities: list[float]
    rows: Any


# ------------------------------------------------------------------------------------------- the server
def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The whole process group: `mlflow server` runs uvicorn workers as children."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {process.returncode} before it was healthy:\n{_tail(log)}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    _stop(process)
    pytest.fail(f"mlflow server not healthy within {START_TIMEOUT_S:.0f}s:\n{_tail(log)}")


def _server_env(ini: Path, admin: Identity) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "MLFLOW_REGISTRY_"))
    }
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_AUTH_ADMIN_PASSWORD=admin.password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_urlsafe(32),
        # The GenAI job runner is irrelevant to a registry and only slows start-up and shutdown.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = configparser.ConfigParser()
    assert config.read(AUTH_INI), f"{AUTH_INI} is missing"
    config["mlflow"]["database_uri"] = f"sqlite:///{root / 'basic_auth.db'}"
    ini = root / "basic_auth.ini"
    with ini.open("w") as fh:
        config.write(fh)
    admin = Identity(config["mlflow"]["admin_username"], secrets.token_urlsafe(18))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    argv = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
        *("--serve-artifacts", "--artifacts-destination", str(root / "artifacts")),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=_server_env(ini, admin), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(process, url, log)
        yield Server(url=url, port=port, root=root, admin=admin, log=log)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """Module-wide: this server is the tracking URI, nobody is logged in, no ~/.mlflow/credentials applies."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("MLFLOW_TRACKING_URI", server.url)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_REGISTRY_URI"):
            mp.delenv(name, raising=False)
        mlflow.set_tracking_uri(server.url)
        yield mp
        # MLflow keeps the URI process-wide; later tests must not find this (stopped) server there.
        mlflow.set_tracking_uri(None)


def login(mp: pytest.MonkeyPatch, who: Identity | None) -> MlflowClient:
    """Switch identity the way the services do: MLflow's own variables (None = anonymous)."""
    if who is None:
        mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        mp.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        mp.setenv("MLFLOW_TRACKING_USERNAME", who.username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", who.password)
    return MlflowClient()


def users_env(server: Server, users: Users) -> dict[str, str]:
    """What the Compose one-shot service sets: the admin's login plus the two service users."""
    return {
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_TRACKING_USERNAME": server.admin.username,
        "MLFLOW_TRACKING_PASSWORD": server.admin.password,
        "MLFLOW_PIPELINE_USERNAME": users.pipeline.username,
        "MLFLOW_PIPELINE_PASSWORD": users.pipeline.password,
        "MLFLOW_API_USERNAME": users.api.username,
        "MLFLOW_API_PASSWORD": users.api.password,
    }


@pytest.fixture(scope="module")
def users(server: Server, env: pytest.MonkeyPatch) -> Users:
    """Provisioned by the installed console script in its own process, as the Compose one-shot runs it."""
    wanted = Users(
        pipeline=Identity("exampass-pipeline", secrets.token_urlsafe(18)),
        api=Identity("exampass-api", secrets.token_urlsafe(18)),
    )
    script = Path(sys.executable).with_name("exampass-mlflow-users")
    assert script.exists(), "the console script is not installed: run `uv sync --frozen --extra dev`"
    done = subprocess.run(
        [str(script)],
        env={**os.environ, **users_env(server, wanted)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"exampass-mlflow-users failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout + done.stderr
    assert out.count(": created") == 2, done.stdout
    assert out.count(": granted") == 4, done.stdout
    for secret in (server.admin.password, wanted.pipeline.password, wanted.api.password):
        assert secret not in out, "a password was printed"
    return wanted


def _fitted_pipeline() -> tuple[Any, Any]:
    frame = synthetic.sample(300, seed=1)
    pipeline = modeling.build_candidates(["logistic_regression"], seed=0)["logistic_regression"]
    pipeline.fit(frame[list(schema.FEATURES)], frame[schema.LABEL])
    return pipeline, frame


@pytest.fixture(scope="module")
def promoted(server: Server, users: Users, env: pytest.MonkeyPatch) -> Promoted:
    """The pipeline's writes, as the pipeline user: experiment, run, registered version, @champion, and a
    second (challenger) version that is registered but not promoted."""
    login(env, users.pipeline)
    experiment_id = registry.connect(server.url, None, server.root / "client-side-artifacts")
    pipeline, frame = _fitted_pipeline()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("test_roc_auc", 0.91)
        info = registry.log_model(pipeline, 0.42, frame, candidate="logistic_regression")
    client = MlflowClient()
    version = str(info.registered_model_version)
    registry.record_decision(client, version, True, "test")
    champion = client.get_model_version(schema.MODEL_NAME, version)
    # A second version of the same logged model, registered the way MLflow registers a logged model.
    challenger = mlflow.register_model(info.model_uri, schema.MODEL_NAME)
    rows = frame[list(schema.FEATURES)].head(20)
    login(env, None)
    return Promoted(
        experiment_id=experiment_id,
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        champion=champion,
        challenger=challenger,
        probabilities=[float(p) for p in pipeline.predict_proba(rows)[:, 1]],
        rows=rows,
    )


def champion_as_admin(server: Server, mp: pytest.MonkeyPatch) -> str:
    return str(login(mp, server.admin).get_model_version_by_alias(schema.MODEL_NAME, "champion").version)


# ------------------------------------------------------------------------------------------- the policy
def test_committed_policy_denies_by_default_and_holds_no_secret() -> None:
    config = configparser.ConfigParser()
    config.read(AUTH_INI)
    section = config["mlflow"]
    assert section["default_permission"] == "NO_PERMISSIONS", "the grants must be the whole of what users see"
    assert not section.get("admin_password"), "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD"
    assert section["database_uri"].startswith("sqlite:////var/lib/mlflow/auth/"), section["database_uri"]
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"


# ------------------------------------------------------------------------------------------- anonymous
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/2.0/mlflow/experiments/search?max_results=5", None),
        ("GET", f"/api/2.0/mlflow/registered-models/get?name={schema.MODEL_NAME}", None),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "anonymous-model"}),
        ("POST", "/api/2.0/mlflow/experiments/create", {"name": "anonymous-experiment"}),
    ],
    ids=["search-experiments", "get-model", "create-model", "create-experiment"],
)
def test_anonymous_requests_are_refused(
    server: Server, users: Users, method: str, path: str, body: dict[str, str] | None
) -> None:
    anonymous = httpx.request(method, server.url + path, json=body, timeout=10)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    reader = httpx.request(
        method, server.url + path, json=body, timeout=10, auth=(users.api.username, "x" * 16)
    )
    assert reader.status_code == 401, "a wrong password must be refused like no password"
    # The admin gets past authentication on the same route (an empty body makes a create a harmless 400), so
    # the 401s are about the login, not a wrong URL.
    admin_body = None if body is None else {}
    admin = httpx.request(
        method,
        server.url + path,
        json=admin_body,
        timeout=10,
        auth=(server.admin.username, server.admin.password),
    )
    assert admin.status_code == (200 if method == "GET" else 400), admin.text


def test_health_stays_open_for_the_container_health_check(server: Server) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", REPO_ROOT / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    healthy, detail = healthcheck.check("mlflow", {"MLFLOW_PORT": str(server.port)})
    assert healthy, detail
    unhealthy, _ = healthcheck.check("mlflow", {"MLFLOW_PORT": str(free_port())})
    assert not unhealthy


# -------------------------------------------------------------------------------------------- pipeline
def test_pipeline_user_registers_a_version_and_moves_the_alias(
    server: Server, promoted: Promoted, env: pytest.MonkeyPatch
) -> None:
    assert champion_as_admin(server, env) == str(promoted.champion.version)
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{schema.MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    run = client.get_run(promoted.run_id)
    assert run.info.experiment_id == promoted.experiment_id
    assert client.get_experiment(promoted.experiment_id).name == registry.EXPERIMENT_NAME
    assert promoted.champion.tags[registry.TAG_DECISION] == "promoted"
    assert not (server.root / "client-side-artifacts").exists(), "artifacts must go through the server"


def test_pipeline_user_can_neither_delete_the_model_nor_grant_access(
    server: Server, users: Users, promoted: Promoted, env: pytest.MonkeyPatch
) -> None:
    """EDIT, not MANAGE: a compromised pipeline cannot wipe the registry or hand the API user write access."""
    from mlflow.server import get_app_client

    client = login(env, users.pipeline)
    with pytest.raises(MlflowException) as refused:
        client.delete_registered_model(schema.MODEL_NAME)
    assert refused.value.get_http_status_code() == 403, refused.value
    with pytest.raises(MlflowException) as refused:
        get_app_client("basic-auth", tracking_uri=server.url).grant_user_permission(
            users.api.username, "experiment", promoted.experiment_id, "EDIT"
        )
    assert refused.value.get_http_status_code() == 403, refused.value
    assert champion_as_admin(server, env) == str(promoted.champion.version)


# ------------------------------------------------------------------------------------------------- API
def test_api_user_reads_the_champion_like_the_model_store(
    users: Users, promoted: Promoted, env: pytest.MonkeyPatch
) -> None:
    client = login(env, users.api)
    version = registry.champion_version(client)
    assert version is not None, "the API user cannot see @champion"
    assert version.version == promoted.champion.version
    loaded = registry.load_version(version, client)
    assert loaded.threshold == pytest.approx(0.42)
    assert loaded.metrics == {"test_roc_auc": pytest.approx(0.91)}
    scored = loaded.pipeline.predict_proba(promoted.rows)[:, 1]
    assert [float(p) for p in scored] == pytest.approx(promoted.probabilities)


def _register_version(client: MlflowClient, p: Promoted) -> object:
    return mlflow.register_model(p.model_uri, schema.MODEL_NAME)


API_WRITES: dict[str, Callable[[MlflowClient, Promoted], object]] = {
    "register-version": _register_version,
    "move-alias": lambda c, p: c.set_registered_model_alias(
        schema.MODEL_NAME, schema.CHAMPION_ALIAS, p.challenger.version
    ),
    "delete-alias": lambda c, p: c.delete_registered_model_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS),
    "create-run": lambda c, p: c.create_run(p.experiment_id),
    "tag-version": lambda c, p: c.set_model_version_tag(schema.MODEL_NAME, p.challenger.version, "x", "y"),
    "delete-version": lambda c, p: c.delete_model_version(schema.MODEL_NAME, p.champion.version),
}


@pytest.mark.parametrize("write", list(API_WRITES), ids=list(API_WRITES))
def test_api_user_cannot_write(
    server: Server, users: Users, promoted: Promoted, env: pytest.MonkeyPatch, write: str
) -> None:
    client = login(env, users.api)
    with pytest.raises(MlflowException) as refused:
        API_WRITES[write](client, promoted)
    assert refused.value.error_code == "PERMISSION_DENIED", refused.value
    assert refused.value.get_http_status_code() == 403
    # Nothing moved: still the same champion and the same two versions.
    assert champion_as_admin(server, env) == str(promoted.champion.version)
    versions = MlflowClient().search_model_versions(f"name = '{schema.MODEL_NAME}'")
    assert len(versions) == 2


def test_anonymous_cannot_move_the_alias(server: Server, promoted: Promoted, env: pytest.MonkeyPatch) -> None:
    client = login(env, None)
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(
            schema.MODEL_NAME, schema.CHAMPION_ALIAS, promoted.challenger.version
        )
    assert refused.value.get_http_status_code() == 401, refused.value
    assert champion_as_admin(server, env) == str(promoted.champion.version)


# ----------------------------------------------------------------------------------------- the tool again
def test_rerun_repairs_drift_and_rotates_passwords(
    server: Server,
    users: Users,
    promoted: Promoted,
    env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Running the tool again is how passwords rotate, and it undoes grants or admin rights added by hand."""
    from mlflow.server import get_app_client

    login(env, server.admin)
    admin = get_app_client("basic-auth", tracking_uri=server.url)
    admin.revoke_user_permission(users.api.username, "registered_model", schema.MODEL_NAME)
    admin.grant_user_permission(users.api.username, "registered_model", schema.MODEL_NAME, "MANAGE")
    admin.update_user_admin(users.pipeline.username, True)

    old = replace(users)
    rotated = Users(
        pipeline=Identity(users.pipeline.username, secrets.token_urlsafe(18)),
        api=Identity(users.api.username, secrets.token_urlsafe(18)),
    )
    for name, value in users_env(server, rotated).items():
        env.setenv(name, value)
    assert mlflow_users.main([]) == 0
    out = capsys.readouterr()
    assert "created" not in out.out
    assert out.out.count(": password set") == 2, out.out
    assert "admin rights removed" in out.out
    assert f"READ on registered_model '{schema.MODEL_NAME}': changed" in out.out
    assert out.out.count(": kept") == 3, out.out
    for secret in (server.admin.password, rotated.pipeline.password, rotated.api.password):
        assert secret not in out.out + out.err
    users.pipeline, users.api = rotated.pipeline, rotated.api

    assert not admin.get_user(rotated.pipeline.username).is_admin
    for stale in (old.pipeline, old.api):
        with pytest.raises(MlflowException) as refused:
            login(env, stale).get_model_version_by_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS)
        assert refused.value.get_http_status_code() == 401
    api = login(env, rotated.api)
    assert registry.champion_version(api) is not None, "the new API password must work"
    with pytest.raises(MlflowException) as refused:
        api.set_registered_model_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS, promoted.challenger.version)
    assert refused.value.get_http_status_code() == 403, "the MANAGE grant added by hand must be gone"
    login(env, rotated.pipeline).set_model_version_tag(
        schema.MODEL_NAME, promoted.challenger.version, "k", "v"
    )
    assert champion_as_admin(server, env) == str(promoted.champion.version)


# ------------------------------------------------------------------------------------- refused settings
@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("MLFLOW_API_PASSWORD", "short-pass", "at least 12 characters"),
        ("MLFLOW_PIPELINE_PASSWORD", "change-me-to-something-long", "placeholder"),
        ("MLFLOW_API_USERNAME", "exampass-pipeline", "three different users"),
        ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db", "http(s) URL of an MLflow server"),
        ("MLFLOW_API_PASSWORD", None, "MLFLOW_API_PASSWORD: not set"),
    ],
)
def test_the_tool_refuses_unsafe_settings_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str | None,
    why: str,
) -> None:
    good = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens: a request would fail
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "admin-password-long-enough",
        "MLFLOW_PIPELINE_USERNAME": "exampass-pipeline",
        "MLFLOW_PIPELINE_PASSWORD": "pipeline-password-long-enough",
        "MLFLOW_API_USERNAME": "exampass-api",
        "MLFLOW_API_PASSWORD": "api-password-long-enough",
    }
    for name, setting in good.items():
        monkeypatch.setenv(name, setting)
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        mlflow_users.main([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert why in err and variable in err, err
    assert value is None or "password" not in variable.lower() or value not in err, "the value was echoed"
