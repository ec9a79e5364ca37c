"""What can be proven about the Docker Compose stack without a Docker engine.

tests/deploy/test_stack.py builds the image and runs the stack for real; this module needs no engine and runs
in seconds, so it catches a broken file before that long test starts. Every claim the stack makes about the
code is checked against the code: Compose's own validator accepts the file, every command parses with the real CLI
of the installed entry point, and ports, paths and volumes agree with dagster.yaml, workspace.yaml, the
Dockerfile and the API settings.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

# The `compose` fixture (tests/deploy/conftest.py): docker-compose with an explicit env file.
Compose = Callable[..., subprocess.CompletedProcess[str]]

EXAMPASS_SERVICES = {
    "mlflow",
    "mlflow-users",
    "dagster-code",
    "dagster-webserver",
    "dagster-daemon",
    "api",
    "api-2",
    "bootstrap",
}
# The API replicas: one definition (a YAML anchor), reached only through the proxy.
API_REPLICAS = ("api", "api-2")
# Services on official (or stand-in) images rather than the ExamPass image.
BASE_SERVICES = {"postgres", "redis", "proxy"}
# Run once and exit (restart "no", no health check): the services that need them wait for them to complete.
ONE_SHOTS = {"mlflow-users", "bootstrap"}
# One-shots that are a script of the image run by its Python, not a console script.
IMAGE_SCRIPTS = {"bootstrap": "/opt/exampass/bootstrap.py"}
ARCHITECTURE_PORTS = {"dagster-webserver": 3000, "proxy": 8000, "mlflow": 5000}
# What .env.example must set (Compose refuses to start without them) and who may see each one.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_PIPELINE_PASSWORD",
    "MLFLOW_API_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
}


# --------------------------------------------------------------------------------------------- helpers
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in instructions:
        if op == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use KEY=VALUE form"
                env[key] = value
    return env


def dockerfile_copies(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Image path -> repository path for every COPY (files keep their name when copied into a directory)."""
    copies: dict[str, str] = {}
    workdir = PurePosixPath("/")
    for op, args in instructions:
        if op == "WORKDIR":
            workdir = workdir / args
        if op == "FROM":
            workdir = PurePosixPath("/")
        if op != "COPY" or "--from=" in args:
            continue  # COPY --from copies between stages, not from the repository
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        *sources, dest = parts
        for src in sources:
            target = workdir / dest
            if dest.endswith("/") or dest in {".", "./"} or len(sources) > 1:
                target = target / PurePosixPath(src).name
            copies[str(target).replace("/./", "/")] = src
    return copies


def click_command(prog: str) -> click.Command:
    """The click command behind an installed console script (dagster's scripts wrap a module-level `cli`)."""
    matches = list(entry_points(group="console_scripts", name=prog))
    assert matches, f"{prog!r} is not an installed console script"
    obj = matches[0].load()
    if not isinstance(obj, click.Command):
        obj = getattr(sys.modules[obj.__module__], "cli", None)
    assert isinstance(obj, click.Command), f"{prog}: entry point is not a click command"
    return obj


def parse_cli(prog: str, args: list[str]) -> dict[str, Any]:
    """Parse ``prog args`` with the program's own click definition, without running it.

    Unknown options, subcommands that do not exist, ports that are not integers and missing files all
    raise click errors exactly as the container would at start-up.
    """
    cmd = click_command(prog)
    ctx: click.Context | None = None
    rest = list(args)
    name = prog
    while isinstance(cmd, click.Group):
        ctx = cmd.make_context(name, list(rest), parent=ctx, resilient_parsing=True)
        sub_name, sub, rest = cmd.resolve_command(ctx, rest)
        if sub is None or sub_name is None:
            raise click.UsageError(f"{prog}: no such command in {args!r}")
        cmd, name = sub, sub_name
    return dict(cmd.make_context(name, list(rest), parent=ctx).params)


def service_env(config: dict[str, Any], service: str) -> dict[str, str]:
    return {
        k: "" if v is None else str(v)
        for k, v in (config["services"][service].get("environment") or {}).items()
    }


def named_mounts(config: dict[str, Any], service: str) -> dict[str, str]:
    """Container path -> named volume for the service's named-volume mounts (bind mounts excluded)."""
    declared = set(config.get("volumes") or {})
    mounts: dict[str, str] = {}
    for spec in config["services"][service].get("volumes") or []:
        if isinstance(spec, dict):
            source, target = spec.get("source"), spec["target"]
        else:
            source, target = spec.split(":")[:2]
        if source in declared:
            mounts[target] = source
    return mounts


def volume_of(config: dict[str, Any], service: str, path: str | Path) -> str | None:
    path = PurePosixPath(str(path))
    for target, volume in named_mounts(config, service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return volume
    return None


def published(config: dict[str, Any], service: str) -> dict[int, tuple[str, int]]:
    """Container port -> (host ip, host port)."""
    out: dict[int, tuple[str, int]] = {}
    for spec in config["services"][service].get("ports") or []:
        if isinstance(spec, dict):
            out[int(spec["target"])] = (spec.get("host_ip", "0.0.0.0"), int(spec["published"]))
            continue
        spec = spec.split("/")[0]
        parts = spec.rsplit(":", 2)
        host_ip, host_port, container = parts if len(parts) == 3 else ("0.0.0.0", *parts)
        out[int(container)] = (host_ip, int(host_port))
    return out


def flag(args: list[str], *names: str) -> str:
    for i, arg in enumerate(args):
        if arg in names:
            return args[i + 1]
    raise AssertionError(f"none of {names} in {args}")


# -------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pyproject(repo: Path) -> dict[str, Any]:
    return tomllib.loads((repo / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def docker(repo: Path) -> list[tuple[str, str]]:
    return dockerfile_instructions(repo / "docker" / "Dockerfile")


@pytest.fixture(scope="module")
def image_files(docker: list[tuple[str, str]], repo: Path) -> dict[str, Path]:
    return {dest: repo / src for dest, src in dockerfile_copies(docker).items()}


@pytest.fixture(scope="module")
def root_workspace(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / "workspace.yaml").read_text())


# ------------------------------------------------------------------------------------------- validator
def test_compose_validator_accepts_the_file(compose: Compose) -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_validator_is_not_a_rubber_stamp(compose_bin: str, repo: Path, tmp_path: Path) -> None:
    """The same validator rejects a one-key typo, so its acceptance above means something."""
    broken = (repo / "docker-compose.yml").read_text().replace("    ports:\n", "    portz:\n", 1)
    assert "portz" in broken
    (tmp_path / "docker-compose.yml").write_text(broken)
    done = subprocess.run(
        [compose_bin, "--env-file", str(repo / ".env.example"), "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "portz" in done.stderr


def test_stack_has_the_services_the_issue_lists(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == EXAMPASS_SERVICES | BASE_SERVICES
    for name in EXAMPASS_SERVICES:
        svc = services[name]
        assert svc["image"].startswith("exampass:"), name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        assert svc.get("command"), f"{name} must say which role it runs"
    assert services["postgres"]["image"].startswith("postgres:")
    assert "healthcheck" in services["postgres"]


# -------------------------------------------------------------------------------------------- commands
def test_every_command_is_a_real_entry_point_that_parses(
    compose_config: dict[str, Any], image_files: dict[str, Path], pyproject: dict[str, Any]
) -> None:
    declared_scripts = pyproject["project"]["scripts"]
    for name in sorted(EXAMPASS_SERVICES):
        prog, *args = compose_config["services"][name]["command"]
        if name in IMAGE_SCRIPTS:
            # `python /opt/exampass/x.py`: the script must be one the Dockerfile copies, and it must compile.
            assert prog == "python" and args == [IMAGE_SCRIPTS[name]], name
            assert IMAGE_SCRIPTS[name] in image_files, f"{name}: the image has no {IMAGE_SCRIPTS[name]}"
            compile(image_files[IMAGE_SCRIPTS[name]].read_text(), IMAGE_SCRIPTS[name], "exec")
            continue
        scripts = {ep.name: ep for ep in entry_points(group="console_scripts", name=prog)}
        assert prog in scripts, f"{name}: {prog!r} is not an installed console script"
        if prog.startswith("exampass"):
            # Our own scripts: the installed one must be the one pyproject declares, and it must import.
            assert scripts[prog].value == declared_scripts[prog], name
            assert callable(scripts[prog].load()), name
            assert args == [], f"{name}: {prog} takes its settings from the environment, not arguments"
            continue
        # Paths inside the image are checked against the repository file the Dockerfile copies there.
        local_args = [str(image_files[a]) if a in image_files else a for a in args]
        try:
            parse_cli(prog, local_args)
        except click.ClickException as exc:
            pytest.fail(
                f"{name}: `{prog} {' '.join(args)}` is rejected by {prog}'s CLI: {exc.format_message()}"
            )


def test_parse_cli_rejects_what_the_container_would_reject() -> None:
    with pytest.raises(click.NoSuchOption):
        parse_cli("dagster", ["api", "grpc", "--no-such-flag"])
    with pytest.raises(click.UsageError):
        parse_cli("dagster", ["api", "no-such-subcommand"])
    with pytest.raises(click.BadParameter):
        parse_cli("dagster-webserver", ["-p", "three-thousand"])


def test_code_location_serves_the_module_the_workspace_names(
    compose_config: dict[str, Any], root_workspace: dict[str, Any], pyproject: dict[str, Any], repo: Path
) -> None:
    import dagster as dg

    args = compose_config["services"]["dagster-code"]["command"]
    assert args[:3] == ["dagster", "api", "grpc"]
    module = flag(args, "-m", "--module-name")
    local = [entry["python_module"] for entry in root_workspace["load_from"] if "python_module" in entry]
    assert [m["module_name"] for m in local] == [module]
    assert pyproject["tool"]["dagster"]["module_name"] == module
    deploy_ws = yaml.safe_load((repo / "deploy" / "workspace.yaml").read_text())
    (grpc,) = [entry["grpc_server"] for entry in deploy_ws["load_from"]]
    assert (
        grpc["location_name"]
        == local[0]["location_name"]
        == pyproject["tool"]["dagster"]["code_location_name"]
    )
    location = importlib.import_module(module)
    assert callable(location.defs), "the documented shape: a @dg.definitions function named defs"
    dg.Definitions.validate_loadable(location.build_defs())


# ----------------------------------------------------------------------------------------------- ports
def test_ports_agree_with_the_architecture_and_the_settings(compose_config: dict[str, Any]) -> None:
    from exampass_pipeline.contract.settings import Settings

    services = compose_config["services"]
    web = services["dagster-webserver"]["command"]
    assert int(flag(web, "-p", "--port")) == ARCHITECTURE_PORTS["dagster-webserver"]
    assert int(service_env(compose_config, "dagster-webserver")["DAGSTER_WEBSERVER_PORT"]) == 3000
    mlflow_cmd = services["mlflow"]["command"]
    mlflow_port = int(flag(mlflow_cmd, "--port", "-p"))
    assert mlflow_port == ARCHITECTURE_PORTS["mlflow"]
    assert int(service_env(compose_config, "mlflow")["MLFLOW_PORT"]) == mlflow_port

    api_env = service_env(compose_config, "api")
    saved = dict(os.environ)
    try:
        os.environ.update(api_env)
        settings = Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert settings.api_host == "0.0.0.0", "inside a container the API must listen beyond loopback"

    assert settings.api_port == ARCHITECTURE_PORTS["proxy"]
    for name, port in {"dagster-webserver": 3000, "mlflow": mlflow_port, "proxy": settings.api_port}.items():
        ports = published(compose_config, name)
        assert port in ports, f"{name} does not publish container port {port}: {ports}"
        assert ports[port][1] == ARCHITECTURE_PORTS[name], (
            f"{name}: default host port should be {ARCHITECTURE_PORTS[name]}"
        )

    for name in ("dagster-code", "dagster-webserver", "dagster-daemon", *API_REPLICAS):
        assert service_env(compose_config, name)["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}", (
            name
        )


def test_only_the_api_is_published_beyond_loopback(compose_config: dict[str, Any]) -> None:
    """By default: the API's proxy on every interface, the Dagster UI (no login) and MLflow on loopback."""
    exposure = {name: published(compose_config, name) for name in compose_config["services"]}
    assert exposure["proxy"] == {8000: ("0.0.0.0", 8000)}
    assert exposure["dagster-webserver"] == {3000: ("127.0.0.1", 3000)}
    assert exposure["mlflow"] == {5000: ("127.0.0.1", 5000)}
    beyond_loopback = {
        name for name, ports in exposure.items() if any(ip != "127.0.0.1" for ip, _ in ports.values())
    }
    assert beyond_loopback == {"proxy"}
    unpublished = {name for name, ports in exposure.items() if not ports}
    assert unpublished == {
        "postgres",
        "redis",
        "dagster-code",
        "dagster-daemon",
        "mlflow-users",
        "bootstrap",
        *API_REPLICAS,
    }


def test_each_binding_has_its_own_switch(compose: Compose) -> None:
    """Opening one UI to the network must not open the other, nor take the API off it."""
    done = compose("config", DAGSTER_BIND="10.0.0.5", API_BIND="127.0.0.1", MLFLOW_PUBLISHED_PORT="5500")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert published(config, "dagster-webserver") == {3000: ("10.0.0.5", 3000)}
    assert published(config, "mlflow") == {5000: ("127.0.0.1", 5500)}
    assert published(config, "proxy") == {8000: ("127.0.0.1", 8000)}


def test_webserver_and_daemon_reach_the_code_server(compose_config: dict[str, Any], repo: Path) -> None:
    from dagster._core.workspace.config_schema import process_workspace_config

    code_cmd = compose_config["services"]["dagster-code"]["command"]
    code_port = int(flag(code_cmd, "-p", "--port"))
    assert flag(code_cmd, "-h", "--host") == "0.0.0.0"
    raw = yaml.safe_load((repo / "deploy" / "workspace.yaml").read_text())
    for name in ("dagster-webserver", "dagster-daemon"):
        env = service_env(compose_config, name)
        saved = dict(os.environ)
        try:
            os.environ.update(env)
            result = process_workspace_config(raw)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert result.success, result.errors
        (entry,) = result.value["load_from"]
        assert entry["grpc_server"]["host"] == "dagster-code", name
        assert int(entry["grpc_server"]["port"]) == code_port, name
        deps = compose_config["services"][name]["depends_on"]
        assert deps["dagster-code"]["condition"] == "service_healthy", name


# -------------------------------------------------------------------------------------------- instance
def _instance_config(home: Path, env: dict[str, str]) -> dict[str, Any]:
    from dagster._core.instance.config import dagster_instance_config

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        config, _ = dagster_instance_config(str(home))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return dict(config)


def run_limits(raw: dict[str, Any]) -> tuple[int | None, list[dict[str, Any]]]:
    """The run-queue limits a dagster.yaml asks for, whichever of Dagster's three spellings it uses."""
    queue = dict((raw.get("run_coordinator") or {}).get("config") or {})
    queue.update(raw.get("run_queue") or {})
    queue.update((raw.get("concurrency") or {}).get("runs") or {})
    tags = sorted(queue.get("tag_concurrency_limits") or [], key=lambda d: (d["key"], str(d.get("value"))))
    return queue.get("max_concurrent_runs"), tags


def resolve(value: Any, env: dict[str, str]) -> Any:
    """A StringSource/IntSource value as the instance will see it: {'env': NAME} reads the service's env."""
    return env[value["env"]] if isinstance(value, dict) and set(value) == {"env"} else value


def test_deploy_instance_config_is_valid_and_keeps_the_duckdb_rule(
    compose_config: dict[str, Any], image_files: dict[str, Path], repo: Path, tmp_path: Path
) -> None:
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        env = service_env(compose_config, name)
        home = env["DAGSTER_HOME"]
        assert f"{home}/dagster.yaml" in image_files, f"{name}: the image has no dagster.yaml in {home}"
        source = image_files[f"{home}/dagster.yaml"]
        assert source == repo / "deploy" / "dagster.yaml"
        (tmp_path / "dagster.yaml").write_text(source.read_text())
        config = _instance_config(tmp_path, env)
        pg = config["storage"]["postgres"]["postgres_db"]
        assert resolve(pg["hostname"], env) == "postgres", name
        assert resolve(pg["db_name"], env) == service_env(compose_config, "postgres")["POSTGRES_DB"], name
        assert resolve(pg["username"], env) == service_env(compose_config, "postgres")["POSTGRES_USER"], name
        assert int(resolve(pg["port"], env)) == 5432, name
        assert config["telemetry"]["enabled"] is False
        assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
        storage_dir = resolve(config["compute_logs"]["config"]["base_dir"], env)
        assert volume_of(compose_config, name, storage_dir) == "dagster-storage", name

    deploy = yaml.safe_load((repo / "deploy" / "dagster.yaml").read_text())
    local = yaml.safe_load((repo / "dagster.yaml").read_text())
    assert run_limits(deploy) == run_limits(local), (
        "deploy/dagster.yaml and dagster.yaml disagree on run limits"
    )
    max_runs, tags = run_limits(deploy)
    assert max_runs == 1 or any(t["limit"] == 1 for t in tags), "DuckDB has one writer: runs must not overlap"


def test_local_instance_config_is_valid(repo: Path, tmp_path: Path) -> None:
    """dagster.yaml (local) must load too: the rule above is only worth comparing if Dagster accepts it."""
    (tmp_path / "dagster.yaml").write_text((repo / "dagster.yaml").read_text())
    config = _instance_config(tmp_path, {})
    assert config["telemetry"]["enabled"] is False


# --------------------------------------------------------------------------------------------- volumes
def test_state_lives_on_named_volumes_shared_where_needed(compose_config: dict[str, Any]) -> None:
    from exampass_pipeline.contract.settings import Settings

    def settings_for(service: str) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(service_env(compose_config, service))
            return Settings.from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    code, api = settings_for("dagster-code"), settings_for("api")
    # Runs execute in the code-location container: the warehouse, reports and logs must persist there.
    assert volume_of(compose_config, "dagster-code", code.duckdb_path) == "warehouse"
    assert volume_of(compose_config, "dagster-code", code.reports_dir) == "reports"
    # The monitoring assets read exactly the log files the API writes.
    assert api.logs_dir == code.logs_dir
    assert volume_of(compose_config, "api", api.predictions_dir) == "prediction-logs"
    assert volume_of(compose_config, "dagster-code", code.predictions_dir) == "prediction-logs"
    assert volume_of(compose_config, "dagster-code", code.feedback_dir) == "prediction-logs"
    # The Kaggle file is mounted read-only, never baked into the image.
    data_mounts = [
        v
        for v in compose_config["services"]["dagster-code"]["volumes"]
        if str(code.data_path.parent) in str(v)
    ]
    assert data_mounts and all(
        (v.get("read_only") if isinstance(v, dict) else str(v).endswith(":ro")) for v in data_mounts
    )
    artifacts = flag(compose_config["services"]["mlflow"]["command"], "--artifacts-destination")
    assert volume_of(compose_config, "mlflow", artifacts) == "mlflow-artifacts"
    assert volume_of(compose_config, "postgres", "/var/lib/postgresql/data") == "postgres-data"
    assert set(compose_config["volumes"]) == {
        "postgres-data",
        "mlflow-artifacts",
        "mlflow-auth",
        "warehouse",
        "reports",
        "prediction-logs",
        "dagster-storage",
        "api-keys",
    }
    # Keys made with `exampass-apikey` inside the api container must outlive the container.
    assert volume_of(compose_config, "api", api.api_keys_file) == "api-keys"


def test_mlflow_user_store_is_the_committed_policy_on_its_own_volume(
    compose_config: dict[str, Any], image_files: dict[str, Path], repo: Path
) -> None:
    import configparser

    mlflow_svc = compose_config["services"]["mlflow"]
    assert parse_cli("mlflow", mlflow_svc["command"][1:])["app_name"] == "basic-auth"
    ini_path = service_env(compose_config, "mlflow")["MLFLOW_AUTH_CONFIG_PATH"]
    assert image_files.get(ini_path) == repo / "deploy" / "mlflow-basic-auth.ini", (
        f"MLFLOW_AUTH_CONFIG_PATH={ini_path} is not the committed policy the image copies"
    )
    ini = configparser.ConfigParser()
    ini.read(image_files[ini_path])
    database = ini["mlflow"]["database_uri"]
    assert database.startswith("sqlite:////"), database
    assert volume_of(compose_config, "mlflow", database.removeprefix("sqlite:///")) == "mlflow-auth"


def test_compose_refuses_to_start_without_each_secret(compose: Compose, repo: Path, tmp_path: Path) -> None:
    """No default password anywhere: drop any one secret from .env.example and Compose names it and stops."""
    lines = (repo / ".env.example").read_text().splitlines()
    for secret in sorted(REQUIRED_SECRETS):
        without = [line for line in lines if not line.startswith(f"{secret}=")]
        assert len(without) == len(lines) - 1, f".env.example must set {secret} exactly once"
        env_file = tmp_path / f"without-{secret}.env"
        env_file.write_text("\n".join(without) + "\n")
        done = compose("config", "-q", env_file=env_file)
        assert done.returncode != 0, f"Compose started without {secret}"
        # The last line is the verdict (docker-compose 1.29 prints the whole environment block before it).
        assert done.stderr.strip().splitlines()[-1].endswith(f": set {secret} in .env"), done.stderr


def test_env_example_documents_every_variable(repo: Path) -> None:
    """Every ${VAR} Compose reads is in .env.example; every secret has a placeholder the tool refuses."""
    from exampass_pipeline.cli.mlflow_users import PLACEHOLDER

    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (repo / "docker-compose.yml").read_text()))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (repo / "docker-compose.yml").read_text()))
    assert required == REQUIRED_SECRETS
    example = (repo / ".env.example").read_text()
    set_here = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, flags=re.M))
    documented = set(re.findall(r"^#\s*([A-Z0-9_]+)=", example, flags=re.M)) | set(set_here)
    assert used - documented == set(), f".env.example does not mention {sorted(used - documented)}"
    assert set(set_here) == REQUIRED_SECRETS, "only the secrets are set; optional settings stay commented out"
    for name, value in set_here.items():
        assert PLACEHOLDER in value, f"{name} in .env.example must be an obvious placeholder"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=repo, check=False)
    assert ignored.returncode == 0, ".env holds the real secrets and must be git-ignored"
    assert (
        subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=repo, check=False).returncode == 1
    )


def test_secrets_come_from_the_environment_and_reach_only_who_needs_them(
    compose: Compose, repo: Path
) -> None:
    """Each secret set in the environment lands where it is used, and nowhere else; none is in a command line."""
    secrets = {name: f"{name.lower().replace('_', '-')}-s3cret-from-env" for name in REQUIRED_SECRETS}
    done = compose("config", **secrets)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    seen: dict[str, set[str]] = {name: set() for name in secrets}
    for service, spec in config["services"].items():
        assert not any(v in " ".join(spec.get("command") or []) for v in secrets.values()), service
        for value in service_env(config, service).values():
            for name, secret in secrets.items():
                if secret in value:
                    seen[name].add(service)
    assert seen == {
        "POSTGRES_PASSWORD": {"postgres", "mlflow", "dagster-code", "dagster-webserver", "dagster-daemon"},
        "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-users"},
        "MLFLOW_FLASK_SERVER_SECRET_KEY": {"mlflow"},
        "MLFLOW_PIPELINE_PASSWORD": {"mlflow-users", "dagster-code"},
        # The bootstrap only looks for @champion, so it gets the API's READ-only login.
        "MLFLOW_API_PASSWORD": {"mlflow-users", *API_REPLICAS, "bootstrap"},
    }
    assert (
        ":postgres-password-s3cret-from-env@postgres:"
        in service_env(config, "mlflow")["MLFLOW_BACKEND_STORE_URI"]
    )
    for secret in secrets.values():
        assert secret not in (repo / "docker-compose.yml").read_text()


def test_services_log_in_to_mlflow_as_the_users_the_one_shot_creates(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-code logs in as the pipeline user, the API as the reader, and both wait for `mlflow-users`."""
    from exampass_pipeline.cli.mlflow_users import UsersSettings, _from_settings
    from exampass_pipeline.contract.settings import Settings

    secrets = {name: f"{name.lower().replace('_', '-')}-long-enough" for name in REQUIRED_SECRETS}
    done = compose("config", **secrets)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    for name, value in service_env(config, "mlflow-users").items():
        monkeypatch.setenv(name, value)
    # Validates exactly what the one-shot will read.
    users = UsersSettings.model_validate(_from_settings(Settings.from_env(), None))
    assert users.tracking_uri == service_env(config, "api")["MLFLOW_TRACKING_URI"]
    logins = {
        name: (env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD"))
        for name in services
        for env in [service_env(config, name)]
    }
    assert logins["dagster-code"] == (users.pipeline_username, users.pipeline_password.get_secret_value())
    assert logins["api"] == (users.api_username, users.api_password.get_secret_value())
    assert logins["bootstrap"] == logins["api"], "the bootstrap reads MLflow as the READ-only API user"
    assert logins["mlflow-users"] == (users.admin_username, users.admin_password.get_secret_value())
    assert service_env(config, "mlflow")["MLFLOW_AUTH_ADMIN_USERNAME"] == users.admin_username
    for name in ("dagster-webserver", "dagster-daemon", "postgres", "mlflow"):
        assert logins[name] == (None, None), f"{name} runs no MLflow client and gets no MLflow login"

    assert services["mlflow-users"]["restart"] == "no"
    assert services["mlflow-users"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    for name in ("dagster-code", "api", "bootstrap"):
        condition = services[name]["depends_on"]["mlflow-users"]["condition"]
        assert condition == "service_completed_successfully", name


# ----------------------------------------------------------------------------------------------- image
def test_dockerfile_is_one_python_as_non_root(
    docker: list[tuple[str, str]], image_files: dict[str, Path], repo: Path
) -> None:
    bases = [args for op, args in docker if op == "FROM"]
    assert bases[1:-1] == ["deps AS builder"], "dependencies, then the project on top, then the final stage"
    assert bases[0].endswith(" AS deps"), bases[0]
    final = bases[-1]
    assert final == bases[0].removesuffix(" AS deps"), "the build and the final stage start from one image"
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim-\w+|python:3\.\d+-slim(-\w+)?", final), final
    version = dockerfile_args(docker)["PYTHON_VERSION"]
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}", (
        "image and CI should run one Python"
    )
    users = [args for op, args in docker if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the containers must not run as root"
    for dest, src in image_files.items():
        assert src.exists(), f"COPY {src.relative_to(repo)} -> {dest}: the file is not in the repository"


def dockerfile_args(docker: list[tuple[str, str]]) -> dict[str, str]:
    return dict(re.findall(r"ARG (\w+)=(\S+)", "\n".join(f"{op} {a}" for op, a in docker)))


def locked_version(lock: dict[str, Any], name: str) -> str:
    (version,) = [p["version"] for p in lock["package"] if p["name"] == name]
    return str(version)


def uv_syncs(docker: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """(position in the Dockerfile, argv) of every `uv sync` the image runs."""
    found = []
    for i, (op, args) in enumerate(docker):
        if op == "RUN":
            for command in args.split("&&"):
                argv = shlex.split(command)
                if argv[:2] == ["uv", "sync"]:
                    found.append((i, argv))
    return found


def test_dockerfile_installs_exactly_the_lock(
    docker: list[tuple[str, str]], pyproject: dict[str, Any], repo: Path, tmp_path: Path
) -> None:
    """uv (the version the lock pins) installs uv.lock as it is: dependencies first, then our code."""
    lock = tomllib.loads((repo / "uv.lock").read_text())
    args = dockerfile_args(docker)
    assert args["UV_VERSION"] == locked_version(lock, "uv"), "the image's uv must be the one uv.lock pins"
    runs = [args for op, args in docker if op == "RUN"]
    assert any('pip install "uv==${UV_VERSION}"' in run for run in runs)
    assert not any(re.search(r"pip install (?!\"uv==)", run) for run in runs), "pip must not resolve anything"
    env = dockerfile_env(docker)
    assert env["UV_PROJECT_ENVIRONMENT"] == env["VIRTUAL_ENV"]
    assert env["PATH"].startswith(f"{env['UV_PROJECT_ENVIRONMENT']}/bin:"), "console scripts must be on PATH"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"

    syncs = uv_syncs(docker)
    assert len(syncs) == 2, syncs
    (deps_at, deps), (code_at, code) = syncs
    copied_at = {src: i for i, (op, a) in enumerate(docker) if op == "COPY" for src in shlex.split(a)[:-1]}
    assert copied_at["uv.lock"] < deps_at < copied_at["exampass_pipeline"] < code_at, (
        "the dependency layer must come from the lock alone, before the code is copied"
    )
    for argv in (deps, code):
        assert "--frozen" in argv or "--locked" in argv, argv
        assert "--no-dev" in argv
        extras = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra"]
        assert sorted(extras) == ["auth", "deploy"], argv
        assert "--all-extras" not in argv
    assert "--no-install-project" in deps and "--no-editable" not in code, (
        "the project is installed editable: Dagster's load_from_defs_folder needs pyproject.toml above it"
    )
    assert not any(re.search(r"rm -rf[^&]*exampass_(pipeline|api)", run) for run in runs), (
        "the source tree is what the editable install points at; it must stay in the image"
    )
    for extra in ("auth", "deploy"):
        assert extra in pyproject["project"]["optional-dependencies"], extra

    # The same command, on a copy of what the Dockerfile copied before it, against the real uv.lock.
    for name in ("pyproject.toml", "uv.lock"):
        (tmp_path / name).write_bytes((repo / name).read_bytes())
    uv = Path(sys.executable).with_name("uv")
    done = subprocess.run(
        [str(uv), *deps[1:], "--dry-run", "--offline", "--python", sys.executable],
        cwd=tmp_path,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    installs = {m.group(1).lower() for m in re.finditer(r"^ \+ ([\w.-]+)==", done.stderr + done.stdout, re.M)}
    for needed in (
        "mlflow",
        "flask-wtf",
        "dagster-postgres",
        "psycopg2-binary",
        "dagster-webserver",
        "uvicorn",
    ):
        assert needed in installs, f"the image would lack {needed}"
        assert f"{needed}=={locked_version(lock, needed)}" in done.stderr + done.stdout
    for dev_only in ("pytest", "ruff", "mypy", "playwright"):
        assert dev_only not in installs, f"the image would install the dev tool {dev_only}"


def test_the_lock_matches_pyproject(repo: Path) -> None:
    """--frozen trusts uv.lock as it is, so the lock itself must be current with pyproject.toml."""
    uv = Path(sys.executable).with_name("uv")
    done = subprocess.run(
        [str(uv), "lock", "--check", "--offline"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"uv.lock is stale; run `uv lock`:\n{done.stderr}"


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `**` crosses directories, `*` and `?` do not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out.strip("/") + r"\Z")


def test_dockerignore_lets_every_copied_file_through(repo: Path, image_files: dict[str, Path]) -> None:
    rules = [
        (line.startswith("!"), dockerignore_regex(line.lstrip("!").strip()))
        for line in (repo / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(rel: str) -> bool:
        """Last matching rule wins; a rule matching a parent directory applies to everything under it."""
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for negate, regex in rules:
            if any(regex.match(prefix) for prefix in prefixes):
                verdict = not negate
        return verdict

    for src in image_files.values():
        files = (
            [src]
            if src.is_file()
            else [p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        assert files, src
        for path in files:
            rel = path.relative_to(repo).as_posix()
            if rel.startswith("docker/build-ca/") and not rel.endswith((".crt", "/.keep")):
                continue  # the folder's README is left out on purpose (asserted below)
            assert not ignored(rel), f"{rel} is copied by the Dockerfile but excluded by .dockerignore"
    for never in (
        ".venv/bin/python",
        ".exampass/warehouse.duckdb",
        "data/StudentsPerformance.csv",
        ".git/HEAD",
        ".env",
    ):
        assert ignored(never), f"{never} would be sent to the Docker daemon"
    assert ignored("exampass_pipeline/__pycache__/schema.cpython-311.pyc")
    assert ignored("exampass.egg-info/PKG-INFO")
    # The build machine's extra CAs must reach the builder stage (deploy/stack.sh puts them there).
    assert not ignored("docker/build-ca/extra-1-proxy.crt")
    assert not ignored("docker/build-ca/.keep"), "the folder must reach the builder even without a CA"
    # Copied before `uv sync`: a file there that changes would reinstall every dependency.
    assert ignored("docker/build-ca/README.md")
    # BuildKit would prefer a Dockerfile-specific ignore file and the legacy builder never reads one: with
    # both, the two builders would send different contexts.
    assert not (repo / "docker" / "Dockerfile.dockerignore").exists()


def test_build_ca_reaches_only_the_builder_stage(docker: list[tuple[str, str]], repo: Path) -> None:
    """The extra CAs are copied into the build stages; the final stage takes only what KEEP_BUILD_CA left."""
    stages: list[list[tuple[str, str]]] = []
    for op, args in docker:
        if op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((op, args))
    deps, _, final = stages
    assert any(op == "COPY" and args.startswith("docker/build-ca/") for op, args in deps)
    assert not any(op == "COPY" and "build-ca" in args and "--from=" not in args for op, args in final)
    from_stages = {
        tuple(args.split()[:2]) for op, args in final if op == "COPY" and args.startswith("--from=")
    }
    assert from_stages == {
        ("--from=deps", "/opt/runtime-ca/"),
        ("--from=deps", "/opt/venv"),  # the dependencies: a layer that changes only with uv.lock
        ("--from=builder", "/opt/project-layer/"),
        ("--from=builder", "/opt/exampass"),
    }
    assert "ARG KEEP_BUILD_CA=false" in "\n".join(f"{op} {a}" for op, a in deps)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/build-ca/extra-1-proxy.crt"], cwd=repo, check=False
    )
    assert ignored.returncode == 0, "the copied CA certificates must be git-ignored"


def test_image_paths_match_the_compose_paths(
    compose_config: dict[str, Any], docker: list[tuple[str, str]]
) -> None:
    """`docker run exampass` alone and the Compose services must agree on where state lives."""
    image_env = dockerfile_env(docker)
    for name in ("dagster-code", "api"):
        for key, value in service_env(compose_config, name).items():
            if key.startswith("EXAMPASS_") and key in image_env and key not in {"EXAMPASS_ROLE"}:
                assert image_env[key] == value, (
                    f"{name}: {key} is {value} in compose, {image_env[key]} in the image"
                )
    assert image_env["DAGSTER_HOME"] == service_env(compose_config, "dagster-code")["DAGSTER_HOME"]
    assert image_env["EXAMPASS_API_HOST"] == "0.0.0.0"


def test_every_service_has_a_health_check_the_image_understands(
    compose_config: dict[str, Any], docker: list[tuple[str, str]], image_files: dict[str, Path]
) -> None:
    (health,) = [args for op, args in docker if op == "HEALTHCHECK"]
    script = re.search(r'"(/[^"]+\.py)"', health)
    assert script and script.group(1) in image_files, "HEALTHCHECK must run a script the image contains"
    sys.path.insert(0, str(image_files[script.group(1)].parent))
    try:
        healthcheck = importlib.import_module(image_files[script.group(1)].stem)
    finally:
        sys.path.pop(0)
    assert dockerfile_env(docker)["EXAMPASS_ROLE"] == "api", "the image's default command is the API"
    services = compose_config["services"]
    # `disable: true`, which docker-compose 1.29 writes out as the test ["NONE"].
    one_shots = {
        n
        for n in EXAMPASS_SERVICES
        if (hc := services[n].get("healthcheck") or {}).get("disable") or hc.get("test") == ["NONE"]
    }
    assert one_shots == ONE_SHOTS == {n for n in EXAMPASS_SERVICES if services[n]["restart"] == "no"}, (
        "only a service that exits when done may go without a health check"
    )
    long_running = EXAMPASS_SERVICES - ONE_SHOTS
    for name in long_running:
        role = service_env(compose_config, name).get("EXAMPASS_ROLE")
        assert role in healthcheck.ROLES, (
            f"{name}: EXAMPASS_ROLE={role!r}, the HEALTHCHECK knows {healthcheck.ROLES}"
        )
    assert set(healthcheck.ROLES) == {service_env(compose_config, n)["EXAMPASS_ROLE"] for n in long_running}
    healthy, detail = healthcheck.check("nonsense", {})
    assert not healthy and "unknown EXAMPASS_ROLE" in detail


def test_replicas_share_state_limits_and_trust_only_the_proxy(
    compose_config: dict[str, Any], repo: Path
) -> None:
    """Two identical replicas: one log volume, one key store, one Redis; X-Forwarded-For from the proxy alone."""
    from exampass_pipeline.contract.settings import Settings

    services = compose_config["services"]
    first, second = (services[name] for name in API_REPLICAS)
    assert first["environment"] == second["environment"]
    assert first["volumes"] == second["volumes"]
    env = service_env(compose_config, "api")
    settings = Settings.from_env()
    assert env["EXAMPASS_RATE_LIMIT_STORAGE"].startswith("redis://redis:6379/")
    assert env["PROMETHEUS_MULTIPROC_DIR"], "each replica's workers add up in their own directory"
    proxy_ip = services["proxy"]["networks"]["default"]["ipv4_address"]
    assert env["EXAMPASS_TRUSTED_PROXIES"] == proxy_ip
    subnet = compose_config["networks"]["default"]["ipam"]["config"][0]
    assert ipaddress.ip_address(proxy_ip) in ipaddress.ip_network(subnet["subnet"])
    assert ipaddress.ip_address(proxy_ip) not in ipaddress.ip_network(subnet["ip_range"]), (
        "the proxy's fixed address must lie outside the range Docker hands out to the other containers"
    )
    for name in API_REPLICAS:
        assert services["proxy"]["depends_on"][name]["condition"] == "service_started"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    nginx = (repo / "deploy" / "nginx.conf").read_text()
    assert {f"server {name}:{settings.api_port}" for name in API_REPLICAS} <= {
        line.strip().split(" max_fails")[0] for line in nginx.splitlines()
    }
    # Overwritten, never appended ($proxy_add_x_forwarded_for would keep what the client planted).
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx
    assert "proxy_add_x_forwarded_for" not in nginx
