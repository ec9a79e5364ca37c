"""The Dagster UI of the deployed topology, used as a person would.

The stack runs as docker-compose.yml runs it, minus the containers: the code location as a gRPC server, the
webserver and the daemon reading deploy/workspace.yaml, and the instance from deploy/dagster.yaml on the
loopback PostgreSQL. The person opens the asset graph, waves away the "Join the Dagster community" dialog with
"Skip", sees every ExamPass asset, clicks "Materialize all" on the training group and watches the run succeed.
That exercises the queued run coordinator (the daemon must dequeue it) and the default run launcher (the run
executes in the code-location process tree, which is why Compose mounts the volumes there).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import REPO_ROOT as REPO

BIN = Path(sys.executable).parent
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
RUN_TIMEOUT_MS = 420_000  # a full training run on a loaded 2-core CI box


def healthy(role: str, env: dict[str, str]) -> bool:
    """The container HEALTHCHECK script, run against the real local process."""
    done = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**env, "EXAMPASS_ROLE": role},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def open_dagster_page(page: Any, url: str) -> Any:
    """Go to a Dagster page and wait until "Materialize all" is usable, clicking "Skip" on the way if needed.

    On the first visit to a fresh instance Dagster opens a modal "Join the Dagster community" dialog, which
    hides the page underneath from the accessibility tree until it is answered. It may open a moment after
    the page itself, so after the page is ready we still give it a few seconds to show up.
    """
    materialize = page.get_by_role("button", name=re.compile(r"Materialize all")).first
    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    page.goto(url)
    materialize.or_(skip).first.wait_for()
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the dialog was answered before
        pass
    else:
        skip.click()
        skip.wait_for(state="hidden")
    materialize.wait_for()
    return materialize


def expected_asset_names() -> set[str]:
    from exampass_pipeline.definitions import build_defs

    return {key.to_user_string() for key in build_defs().resolve_asset_graph().get_all_asset_keys()}


def test_asset_graph_shows_every_asset_and_materialize_all_succeeds(
    tmp_path: Path,
    servers: Callable[..., Any],
    page: Any,
    port: Callable[[], int],
    child_env: Callable[..., dict[str, str]],
    deploy_home: Callable[[Path], Path],
    dagster_pg_database: Any,
    data_file: Path,
    snap: Callable[..., Path],
) -> None:
    home = tmp_path / "exampass"
    deploy_home(home)
    code_port, web_port = port(), port()
    env = child_env(
        home,
        **dagster_pg_database.dagster_env(home / "dagster-storage"),
        EXAMPASS_CODE_HOST="127.0.0.1",
        EXAMPASS_CODE_PORT=str(code_port),
        DAGSTER_WEBSERVER_PORT=str(web_port),
    )
    workspace = str(REPO / "deploy" / "workspace.yaml")
    # What the first start does before anyone opens the UI (`make run` and the stack train once, which creates
    # the view of labelled production rows): so the training group has no upstream that was never materialized.
    first = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "exampass_pipeline.definitions", "--select",
         "labelled_production"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    code = servers(
        "dagster-code",
        [
            str(BIN / "dagster"),
            "api",
            "grpc",
            "-m",
            "exampass_pipeline.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(code_port),
        ],
        env,
    )
    code.wait_until(lambda: healthy("code", env), 180, "gRPC health check")
    web = servers(
        "dagster-webserver",
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", workspace],
        env,
    )
    daemon = servers("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env)
    base = f"http://127.0.0.1:{web_port}"
    web.wait_http(f"{base}/server_info", timeout_s=180)
    web.wait_until(lambda: healthy("webserver", env), 60, "webserver health check")

    # 1. The asset graph shows every asset the code location defines.
    page.set_default_timeout(60_000)
    open_dagster_page(page, f"{base}/asset-groups")
    page.get_by_text("training", exact=True).first.wait_for()
    page.mouse.click(1000, 650, button="right")  # the graph's context menu, on empty canvas
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
    names = expected_asset_names()
    assert {
        "raw_students",
        "pass_classifier",
        "prediction_batches",
        "drift_report",
        "quality_report",
    } <= names
    page.get_by_text("raw_students", exact=True).first.wait_for(state="visible")
    snap(page, "dagster-asset-graph")
    # The catalog lists every asset the code location defines (the graph may draw some off screen).
    page.goto(f"{base}/assets")
    for name in sorted(names):
        page.get_by_text(name, exact=True).first.wait_for(state="visible")

    # 2. "Materialize all" on the training group queues a run; the daemon launches it; it succeeds.
    open_dagster_page(page, f"{base}/locations/exampass/asset-groups/training").click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    confirm = page.get_by_role("dialog").get_by_role("button", name="Confirm")
    toast.or_(confirm).first.wait_for()
    # Every upstream of the training group has been materialized: Dagster launches without asking.
    assert not confirm.is_visible(), "Dagster asked to confirm: an upstream of the training group is missing"
    run_id = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)  # type: ignore[union-attr]
    page.get_by_role("link", name="View").or_(page.get_by_role("button", name="View")).first.click()
    page.wait_for_url(re.compile(rf"/runs/{run_id}"))
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    status.wait_for(timeout=RUN_TIMEOUT_MS)
    snap(page, "dagster-run")
    assert status.inner_text() == "Success", f"run {run_id} ended {status.inner_text()}:\n{code.log_tail()}"

    # The run did real work: a model went into the registry as @champion.
    from mlflow import MlflowClient

    from exampass_pipeline.contract import registry, schema

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(schema.MODEL_NAME, schema.CHAMPION_ALIAS)
    assert champion.tags.get(registry.TAG_DECISION) == "promoted"
    # The daemon's container health check agrees that every daemon is heartbeating.
    daemon.wait_until(lambda: healthy("daemon", env), 120, "dagster-daemon liveness check")
