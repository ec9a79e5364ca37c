"""`make screenshots`: regenerate the README's pictures from a real run of the whole system.

The pictures are only worth showing if they are what a user gets, so nothing here is staged: a fresh
EXAMPASS_HOME is trained with `exampass-train`, three ordinary days and two days of a lunch-programme shift
are written with `exampass-simulate --write-logs`, monitored with `exampass-backfill --no-retrain` (the drift
check fails and its alert goes to a local Slack-style webhook), then the real Dagster webserver and MLflow
server are started on free loopback ports and Debian's Chromium (never a downloaded browser) takes the
pictures:

  deploy/screenshots/asset-graph.png           the Dagster asset graph, every group expanded
  deploy/screenshots/drift-check-failed.png    the failed no_data_drift check on the drift_report asset
  deploy/screenshots/drift-alert.png           the run that failed it: check event and the alert it delivered
  deploy/screenshots/evidently-report.png      the Evidently drift report of a drifted day
  deploy/screenshots/mlflow-model-version.png  the champion's page in the MLflow model registry
  deploy/screenshots/page-student.png          the page at /: one student's answer, its chart and sentence
  deploy/screenshots/page-roster.png           the page at /: a class roster ranked by risk, two bad rows

The page pictures come from the real `exampass-api` on the same champion: one student typed into the form,
and a roster of 24 students from the Kaggle file (two of them mistyped) uploaded as a teacher would.
`--only page` trains and takes just those two, skipping the monitoring run (minutes instead of many).

Usage: python deploy/screenshots.py [--out DIR] [--home DIR] [--keep] [--only all|page]
Needs the Kaggle file (EXAMPASS_DATA) and /usr/bin/chromium (`bash .ci/system-deps.sh`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from exampass_pipeline.cli.demo import WebhookReceiver, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
# Flags for a sandbox-less CI container with no network: nothing may phone home or wait for a GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1440, "height": 900}
SCENARIO = "lunch_shift"
NORMAL_DAYS, DRIFT_DAYS = 3, 2
CLEARED_VARS = ("EXAMPASS_", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def say(text: str) -> None:
    print(f"[screenshots] {text}", flush=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def run(step: str, argv: list[str], env: dict[str, str]) -> str:
    """Run one product command; its output is shown only when it fails, which is when it is needed."""
    say(step)
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


@contextmanager
def server(name: str, argv: list[str], env: dict[str, str], ready_url: str, logs: Path) -> Iterator[None]:
    """A server in its own process group, stopped (the whole group, by its id) when the block ends."""
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not http_ok(ready_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} did not come up at {ready_url}:\n{tail}")
            time.sleep(0.5)
        say(f"{name} is up at {ready_url.rsplit('/', 1)[0]}")
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def prepare(home: Path, env: dict[str, str], inbox: WebhookReceiver) -> tuple[date, date]:
    """Train, simulate ordinary then drifted days, and monitor them; returns (first drifted day, last day)."""
    last = datetime.now(UTC).date() - timedelta(days=1)
    first = last - timedelta(days=NORMAL_DAYS + DRIFT_DAYS - 1)
    drift_start = last - timedelta(days=DRIFT_DAYS - 1)
    run("training (exampass-train) ...", [str(BIN / "exampass-train")], env)
    run(
        f"writing {NORMAL_DAYS} ordinary + {DRIFT_DAYS} {SCENARIO} days of logs (exampass-simulate) ...",
        [
            str(BIN / "exampass-simulate"),
            "--write-logs",
            "--days",
            str(NORMAL_DAYS + DRIFT_DAYS),
            "--end-date",
            last.isoformat(),
            "--scenario",
            SCENARIO,
            "--drift-start",
            drift_start.isoformat(),
            "--feedback-delay-days",
            "0",
            "--seed",
            "7",
        ],
        env,
    )
    run(
        f"monitoring {first} .. {last} (exampass-backfill --no-retrain) ...",
        [str(BIN / "exampass-backfill"), first.isoformat(), last.isoformat(), "--no-retrain"],
        {**env, "EXAMPASS_ALERT_WEBHOOK": inbox.url},
    )
    say(f"the webhook received {len(inbox.bodies)} alert(s)")
    if not inbox.bodies:
        raise SystemExit(
            f"no alert was raised for the {SCENARIO} days: nothing to show as a failed drift check"
        )
    return drift_start, last


def dismiss_community_dialog(page: Any) -> None:
    """Answer "Skip" to the first-visit "Join the Dagster community" dialog, if it shows up."""
    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=8_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the dialog was already answered
        return
    skip.click()
    skip.wait_for(state="hidden")


def shoot_dagster(page: Any, base: str, out: Path, alert_run_id: str) -> list[Path]:
    materialize = page.get_by_role("button", name=re.compile(r"Materialize all")).first
    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    page.goto(f"{base}/asset-groups")
    materialize.or_(skip).first.wait_for()
    dismiss_community_dialog(page)
    page.mouse.click(1000, 650, button="right")  # the graph's context menu, on empty canvas
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
    page.get_by_text("drift_report", exact=True).first.wait_for()
    page.wait_for_timeout(1500)  # let the graph settle its layout and fit to the viewport
    graph = out / "asset-graph.png"
    page.screenshot(path=str(graph))

    # The failed check as the asset's page shows it: verdict, message and the figures behind it.
    page.goto(f"{base}/assets/drift_report?view=checks")
    page.get_by_text("no_data_drift", exact=True).first.click()
    page.get_by_text("Failed", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    check = out / "drift-check-failed.png"
    page.screenshot(path=str(check))

    # The run that evaluated it: the failed check event next to the alert it raised and delivered.
    page.goto(f"{base}/runs/{alert_run_id}")
    log_filter = page.get_by_placeholder(re.compile("^Filter")).first
    log_filter.wait_for()
    log_filter.fill("no_data_drift")
    page.get_by_text(re.compile(r"alert no_data_drift .* recorded")).first.wait_for()
    page.wait_for_timeout(1000)
    alert = out / "drift-alert.png"
    page.screenshot(path=str(alert))
    return [graph, check, alert]


def shoot_report(page: Any, html: Path, out: Path) -> Path:
    """The whole page: ExamPass's verdict on top, Evidently's drift table below it."""
    page.goto(html.as_uri())
    page.get_by_text("Data Drift Summary", exact=True).first.wait_for()
    page.wait_for_timeout(1500)
    path = out / "evidently-report.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def shoot_mlflow(page: Any, base: str, out: Path, version: str) -> Path:
    from exampass_pipeline.contract import schema

    page.goto(f"{base}/#/models/{schema.MODEL_NAME}/versions/{version}")
    page.get_by_text(re.compile(rf"Version {version}\b")).first.wait_for()
    page.get_by_text(schema.CHAMPION_ALIAS).first.wait_for()
    close_assistant = page.get_by_role("button", name="Close", exact=True)
    try:  # MLflow 3 opens its chat assistant in a side panel; it is not part of the model's page
        close_assistant.wait_for(state="visible", timeout=5_000)
        close_assistant.click()
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: no assistant panel in this version
        pass
    page.wait_for_timeout(1500)
    path = out / "mlflow-model-version.png"
    page.screenshot(path=str(path))
    return path


# The student typed into the form: a real kind of case, at risk, whose reasons are worth reading.
PAGE_STUDENT = {
    "Gender": "male",
    "Race/ethnicity": "group C",
    "Parental level of education": "high school",
    "Lunch": "free/reduced",
    "Test preparation course": "none",
    "Reading score": "52",
    "Writing score": "46",
}
ROSTER_SIZE = 24


def roster_file(data: Path, path: Path) -> Path:
    """The first students of the Kaggle file as a class roster: an id column, the published header, and two
    rows mistyped the way people mistype them ("grp B", a score of 105)."""
    import csv

    with open(data, newline="", encoding="utf-8-sig") as source:
        rows = list(csv.reader(source))[: ROSTER_SIZE + 1]
    header, students = rows[0], rows[1:]
    students[5][header.index("race/ethnicity")] = "grp B"
    students[13][header.index("writing score")] = "105"
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["student", *header])
        writer.writerows([f"7B-{i + 1:02}", *row] for i, row in enumerate(students))
    return path


def shoot_page(page: Any, base: str, out: Path, roster: Path) -> list[Path]:
    """The page as a teacher uses it: one student through the form, then a roster through the upload."""
    page.goto(f"{base}/")
    for label, value in PAGE_STUDENT.items():
        field = page.get_by_label(label, exact=True)
        if label.endswith("score"):
            field.fill(value)
        else:
            field.select_option(value)
    page.get_by_role("button", name="Predict").click()
    page.locator("#pass-probability").wait_for()
    page.evaluate("window.scrollTo(0, 0)")
    student = out / "page-student.png"
    page.screenshot(path=str(student))
    page.get_by_label("Class roster (CSV file)").set_input_files(str(roster))
    page.get_by_role("button", name="Score roster").click()
    page.locator("#ranked").wait_for()
    page.locator("#roster-title").evaluate("element => element.scrollIntoView()")
    shot = out / "page-roster.png"
    page.screenshot(path=str(shot))
    return [student, shot]


def api_server(env: dict[str, str], logs: Path) -> tuple[str, Any]:
    """`exampass-api` on a free loopback port (its readiness is a loaded champion)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api_env = {**env, "EXAMPASS_API_HOST": "127.0.0.1", "EXAMPASS_API_PORT": str(port)}
    return base, server("exampass-api", [str(BIN / "exampass-api")], api_env, f"{base}/ready", logs)


def alert_run(drifted_day: date) -> str:
    """The monitoring run of the last drifted day, from the Dagster instance in DAGSTER_HOME."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": drifted_day.isoformat()}), limit=1)
    if not runs:
        raise SystemExit(f"no monitoring run for {drifted_day}")
    return runs[0].run_id


def browser(driver: Any, home: Path) -> Any:
    context = driver.chromium.launch_persistent_context(
        str(home / "chromium-profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=VIEWPORT,
    )
    context.set_default_timeout(90_000)
    return context


def shoot_everything(
    home: Path, env: dict[str, str], inbox: WebhookReceiver, args: argparse.Namespace
) -> list[Path]:
    """Train, simulate and monitor, then photograph Dagster, Evidently, MLflow and the page."""
    _, last = prepare(home, env, inbox)
    os.environ.update(env)  # this process reads the registry below
    from exampass_pipeline.contract import registry
    from exampass_pipeline.contract.settings import Settings

    settings = Settings.from_env()
    registry.configure(settings)
    champion = registry.champion_version()
    if champion is None:
        raise SystemExit("training registered no @champion")
    report = settings.reports_dir / "drift" / f"{last.isoformat()}.html"
    if not report.is_file():
        raise SystemExit(f"no Evidently report at {report}")

    from playwright.sync_api import sync_playwright

    logs = home / "server-logs"
    web_port, mlflow_port = free_port(), free_port()
    web_argv = [
        str(BIN / "dagster-webserver"),
        "-h",
        "127.0.0.1",
        "-p",
        str(web_port),
        "-w",
        str(REPO / "workspace.yaml"),
    ]
    mlflow_argv = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        "--backend-store-uri", settings.mlflow_tracking_uri,
    ]  # fmt: skip
    web, mlflow_base = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{mlflow_port}"
    api_base, api = api_server(env, logs)
    with (
        server("dagster-webserver", web_argv, env, f"{web}/server_info", logs),
        server("mlflow", mlflow_argv, env, f"{mlflow_base}/health", logs),
        api,
        sync_playwright() as driver,
    ):
        context = browser(driver, home)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            written = shoot_dagster(page, web, args.out, alert_run(last))
            written.append(shoot_report(page, report, args.out))
            written.append(shoot_mlflow(page, mlflow_base, args.out, champion.version))
            written += shoot_page(page, api_base, args.out, roster_file(args.data, home / "class-7b.csv"))
        finally:
            context.close()
    return written


def shoot_page_only(home: Path, env: dict[str, str], args: argparse.Namespace) -> list[Path]:
    """Train, then photograph the page alone."""
    from playwright.sync_api import sync_playwright

    run("training (exampass-train) ...", [str(BIN / "exampass-train")], env)
    api_base, api = api_server(env, home / "server-logs")
    with api, sync_playwright() as driver:
        context = browser(driver, home)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            return shoot_page(page, api_base, args.out, roster_file(args.data, home / "class-7b.csv"))
        finally:
            context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the README screenshots from a real run.")
    parser.add_argument("--out", type=Path, default=REPO / "deploy" / "screenshots", help="where the PNGs go")
    parser.add_argument(
        "--home", type=Path, default=None, help="EXAMPASS_HOME to build (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary EXAMPASS_HOME for inspection")
    parser.add_argument(
        "--only", choices=["all", "page"], default="all", help="page: only the two pictures of the page at /"
    )
    args = parser.parse_args(argv)

    if not CHROMIUM.exists():
        parser.error(f"{CHROMIUM} not found: run `bash .ci/system-deps.sh` (Debian's chromium package)")
    data = Path(
        os.environ.get("EXAMPASS_DATA") or REPO / ".." / "shared" / "data" / "StudentsPerformance.csv"
    )
    if not data.is_file():
        parser.error(f"the Kaggle StudentsPerformance.csv is needed: set EXAMPASS_DATA (looked at {data})")
    args.data = data.resolve()
    home = (args.home or Path(tempfile.mkdtemp(prefix="exampass-screenshots-"))).resolve()
    if home.exists() and any(home.iterdir()):
        parser.error(f"{home} is not empty: screenshots start from a fresh EXAMPASS_HOME")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_VARS)}
    env.update(
        EXAMPASS_HOME=str(home),
        EXAMPASS_DATA=str(args.data),
        DAGSTER_HOME=str(home / "dagster"),
        PYTHONUNBUFFERED="1",
    )
    (home / "server-logs").mkdir(parents=True, exist_ok=True)
    inbox = WebhookReceiver()
    try:
        if args.only == "page":
            written = shoot_page_only(home, env, args)
        else:
            written = shoot_everything(home, env, inbox, args)
        for path in written:
            say(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        return 0
    finally:
        inbox.close()
        if args.home is None and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        elif args.keep:
            say(f"kept {home}")


if __name__ == "__main__":
    sys.exit(main())
