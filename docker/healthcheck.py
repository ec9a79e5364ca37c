"""Container health check for every role of the ExamPass image.

One image runs five services, and Docker allows one HEALTHCHECK per image; so the check asks the role (from
EXAMPASS_ROLE, set per service in docker-compose.yml) what "healthy" means instead of probing the API
everywhere and marking the webserver, daemon and code location unhealthy forever. It runs every 10-30 s in
each container and must not pay for importing pandas or dagster: the standard library only, plus grpc for the
code location (a third of a second to import, where `dagster api grpc-health-check` spends 5-10 s of CPU).

Exit 0 = healthy, 1 = unhealthy (Docker's contract); one line on stdout says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

HTTP_TIMEOUT_S = 8.0
# The dagster CLIs import all of dagster before they check anything: 5-10 s on a busy 2-core host.
COMMAND_TIMEOUT_S = 25.0


def _http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310 - loopback URL we build
            return 200 <= response.status < 300, f"{url} -> HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} -> HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} -> {exc}"


def _command_ok(argv: list[str]) -> tuple[bool, str]:
    # Console scripts live next to this interpreter (/opt/venv/bin in the image, .venv/bin elsewhere), which
    # need not be on PATH when Docker or a test runs the check.
    beside = Path(sys.executable).with_name(argv[0])
    program = shutil.which(argv[0]) or (str(beside) if beside.exists() else None)
    if program is None:
        return False, f"{argv[0]} is not installed"
    argv = [program, *argv[1:]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(argv)} timed out after {COMMAND_TIMEOUT_S:.0f}s"
    detail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, f"{' '.join(argv)} -> exit {done.returncode} {detail[-1] if detail else ''}"


def _grpc_serving(port: str) -> tuple[bool, str]:
    """Ask the code server's standard gRPC health service, as `dagster api grpc-health-check` does."""
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:  # a Dagster without grpc-health: the (slow) CLI asks the same question
        return _command_ok(["dagster", "api", "grpc-health-check", "-p", port])
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            # Dagster's code server reports the service "DagsterApi" SERVING once its definitions loaded.
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=HTTP_TIMEOUT_S
            )
    except grpc.RpcError as exc:
        return False, f"gRPC health {target} -> {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status == "SERVING", f"gRPC health {target} (DagsterApi) -> {status}"


ROLES = ("api", "webserver", "mlflow", "code", "daemon")


def check(role: str, env: dict[str, str]) -> tuple[bool, str]:
    """Probe the service behind ``role`` on loopback; ports come from the same variables the services read."""
    if role == "api":
        return _http_ok(f"http://127.0.0.1:{env.get('EXAMPASS_API_PORT', '8000')}/health")
    if role == "webserver":
        return _http_ok(f"http://127.0.0.1:{env.get('DAGSTER_WEBSERVER_PORT', '3000')}/server_info")
    if role == "mlflow":
        return _http_ok(f"http://127.0.0.1:{env.get('MLFLOW_PORT', '5000')}/health")
    if role == "code":
        return _grpc_serving(env.get("EXAMPASS_CODE_PORT", "4000"))
    if role == "daemon":
        return _command_ok(["dagster-daemon", "liveness-check"])
    return False, f"unknown EXAMPASS_ROLE {role!r}; expected one of {', '.join(ROLES)}"


def main() -> int:
    env = dict(os.environ)
    healthy, detail = check(env.get("EXAMPASS_ROLE", "api").strip(), env)
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
