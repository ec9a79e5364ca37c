"""deploy/stack.sh gives each project a subnet nobody else uses (the proxy's fixed address lives in it).

A fixed subnet failed CI once: the host's own network (a cloud VPC's 172.31.0.0/16) overlapped it, and a
restore beside the original project would have collided the same way. This needs an engine (it reads and
creates networks) but no image: ``stack.sh compose config`` only interpolates.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from stack_support import docker_engine
from support import REPO_ROOT, require

STACK_SCRIPT = REPO_ROOT / "deploy" / "stack.sh"


def chosen(project: str, env_file: Path, **extra: str) -> dict[str, str]:
    """The subnet, Docker's range and the proxy address stack.sh hands Compose for PROJECT."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "EXAMPASS_ENV_FILE": str(env_file), **extra}
    for name in ("EXAMPASS_SUBNET", "EXAMPASS_SUBNET_DYNAMIC", "EXAMPASS_PROXY_IP"):
        if name not in extra:
            env.pop(name, None)
    done = subprocess.run(
        ["bash", str(STACK_SCRIPT), "compose", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(done.stdout)
    ipam = config["networks"]["default"]["ipam"]["config"][0]
    return {
        "subnet": ipam["subnet"],
        "range": ipam["ip_range"],
        "proxy": config["services"]["proxy"]["networks"]["default"]["ipv4_address"],
        "trusted": config["services"]["api"]["environment"]["EXAMPASS_TRUSTED_PROXIES"],
    }


@pytest.fixture()
def env_file(tmp_path: Path) -> Path:
    """The committed example's variables: only interpolation is exercised here."""
    ok, reason = docker_engine()
    require(ok, reason)
    path = tmp_path / "stack.env"
    path.write_text((REPO_ROOT / ".env.example").read_text())
    return path


@pytest.fixture()
def network() -> Iterator[Callable[[str, str], None]]:
    """``network(name, subnet)`` creates a Docker network; all are removed after the test."""
    made: list[str] = []

    def create(name: str, subnet: str) -> None:
        done = subprocess.run(
            ["docker", "network", "create", "--subnet", subnet, name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        made.append(name)

    yield create
    for name in made:
        subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=60, check=False)


def test_each_project_gets_a_free_subnet_and_keeps_it(
    env_file: Path, network: Callable[[str, str], None]
) -> None:
    project = f"exampass-subnet-{uuid.uuid4().hex[:8]}"
    first = chosen(project, env_file)
    subnet = ipaddress.ip_network(first["subnet"])
    proxy = ipaddress.ip_address(first["proxy"])
    assert proxy in subnet and proxy not in ipaddress.ip_network(first["range"])
    assert first["trusted"] == first["proxy"], "the replicas trust the proxy's address, and only it"

    # Another network takes that subnet (another project, a VPN, a host route): the project moves past it.
    network(f"{project}-blocker", str(subnet))
    moved = chosen(project, env_file)
    assert not ipaddress.ip_network(moved["subnet"]).overlaps(subnet), moved

    # Once the project's own network exists, its subnet is kept (an `up` never has to recreate the network).
    network(f"{project}_default", moved["subnet"])
    assert chosen(project, env_file)["subnet"] == moved["subnet"]


def test_the_operator_s_subnet_wins_and_must_be_a_24(env_file: Path) -> None:
    project = f"exampass-subnet-{uuid.uuid4().hex[:8]}"
    mine = chosen(project, env_file, EXAMPASS_SUBNET="10.77.5.0/24")
    assert mine == {
        "subnet": "10.77.5.0/24",
        "range": "10.77.5.128/25",
        "proxy": "10.77.5.10",
        "trusted": "10.77.5.10",
    }
    done = subprocess.run(
        ["bash", str(STACK_SCRIPT), "compose", "config"],
        env={
            **os.environ,
            "COMPOSE_PROJECT_NAME": project,
            "EXAMPASS_ENV_FILE": str(env_file),
            "EXAMPASS_SUBNET": "10.77.0.0/16",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "EXAMPASS_SUBNET=10.77.0.0/16" in done.stderr, done.stderr
