"""What advice costs: /predict for a flagged student with advice against the same request without it.

    .venv/bin/python benchmarks/advice.py [--rounds 3] [--duration 5] [--loadgen auto|wrk|python]

The champion is trained and registered exactly as ``benchmarks/serve.py`` does it (the training asset's
choice on the real Kaggle file). Two ``python -m exampass_api`` servers run side by side on that champion,
identical but for EXAMPASS_ADVICE (true, the default, and false), both with the prediction log and the public
limiter on. Both are driven by the same load generator with the same body, in interleaved rounds, keeping each
one's median round (``serve.measure``), so background load on a shared machine hits them alike.

Measured:
- ``/predict`` for a student the champion flags (checked before measuring: ``predicted_pass`` false, and the
  advice present on one server and absent on the other). Goal: p99 with advice <= 2x p99 without.
- ``/predict/csv`` with the real file's first 1,000 students (about one in seven flagged, so the roster's
  ``advice`` column is filled for them), with and without advice, against ``/predict/batch`` for the same
  students. Goal: CSV rows/s with advice >= 80 % of batch rows/s, the roster's own goal in ``serve.py``.

Exit status is 0 even when a goal fails (``--strict`` makes a FAIL exit 1): the table is the deliverable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runnable as a plain script from any directory
from benchmarks.serve import (  # noqa: E402
    NEVER_REFUSED,
    PYTHON,
    REAL_CSV,
    STUDENT,
    Result,
    Target,
    free_port,
    measure,
    server,
    train_champion,
    write_bodies,
)

# Low scores: flagged by every candidate the training asset can choose, with options left to find.
FLAGGED: dict[str, Any] = {**STUDENT, "reading_score": 38, "writing_score": 35}


def check_flagged(url: str, advice: bool) -> None:
    """The measured request must be the one the goal is about: flagged, with advice exactly when it is on."""
    import httpx

    answer = httpx.post(f"{url}/predict", json=FLAGGED, timeout=60).json()
    if answer.get("predicted_pass") is not False or ("advice" in answer) != advice:
        raise SystemExit(f"the benchmark student is not flagged as expected at {url}: {answer}")


def run(champion: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Result]:
    bodies = write_bodies(champion, work)
    bodies["flagged.json"] = work / "flagged.json"
    bodies["flagged.json"].write_text(json.dumps(FLAGGED))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EXAMPASS_", "MLFLOW_"))} | {
        "EXAMPASS_HOME": str(work / "exampass"),
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
        "EXAMPASS_API_KEYS_FILE": str(work / "api_keys.json"),
        "EXAMPASS_API_WORKERS": "1",
        "EXAMPASS_RATE_LIMIT_PUBLIC": NEVER_REFUSED,
    }
    url = {name: f"http://127.0.0.1:{free_port()}" for name in ("on", "off")}
    rows = len(champion["batch"])
    targets = {
        "advice": Target("/predict, flagged, with advice", f"{url['on']}/predict", bodies["flagged.json"]),
        "plain": Target("/predict, flagged, advice off", f"{url['off']}/predict", bodies["flagged.json"]),
        "batch": Target(f"/predict/batch ({rows:,} rows)", f"{url['on']}/predict/batch", bodies["batch.json"],
                        rows=rows),
        "csv": Target(f"/predict/csv ({rows:,} rows), with advice", f"{url['on']}/predict/csv",
                      bodies["batch.csv"], content_type="text/csv", rows=rows),
        "csv_plain": Target(f"/predict/csv ({rows:,} rows), advice off", f"{url['off']}/predict/csv",
                            bodies["batch.csv"], content_type="text/csv", rows=rows),
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        for name, on in (("on", "true"), ("off", "false")):
            port = url[name].rsplit(":", 1)[1]
            env = base_env | {
                "EXAMPASS_API_PORT": port,
                "EXAMPASS_LOGS": str(work / "logs" / name),
                "EXAMPASS_ADVICE": on,
            }
            log = work / f"{name}.log"
            stack.enter_context(server([PYTHON, "-m", "exampass_api"], env, f"{url[name]}/ready", log))
        check_flagged(url["on"], advice=True)
        check_flagged(url["off"], advice=False)
        print(f"measuring: {args.rounds} interleaved rounds of {args.duration} s", flush=True)
        return measure(targets, args, work)


def goals(results: dict[str, Result]) -> list[tuple[str, bool]]:
    advice, plain = results["advice"], results["plain"]
    csv, batch = results["csv"], results["batch"]
    p99 = advice.p99_ms / plain.p99_ms
    share = csv.rows_per_s / batch.rows_per_s
    return [
        (f"p99 of a flagged /predict with advice <= 2x without ({p99:.2f}x)", p99 <= 2.0),
        (f"CSV rows/s with advice >= 80 % of batch rows/s ({share:.0%})", share >= 0.8),
        ("no failed request", all(r.failures == 0 for r in results.values())),
    ]


def report(results: dict[str, Result], champion: dict[str, Any], args: argparse.Namespace) -> None:
    plain = results["plain"]
    print(
        f"\n{os.cpu_count()} cores, one uvicorn worker per server, {args.connections} connections, median of "
        f"{args.rounds} interleaved {args.duration} s rounds; champion {champion['candidate']} "
        f"(version {champion['version']})\n"
    )
    print("| request | req/s | rows/s | p50 ms | p99 ms | p99 vs advice off | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results.values():
        print(
            f"| {r.name} | {r.rps:,.0f} | {r.rows_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.p99_ms / plain.p99_ms:.2f} | {r.failures} |"
        )
    print()
    for text, ok in goals(results):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is kept")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load on each target first")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--candidate-set", default="default", help="modeling.CANDIDATE_SETS key")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    args = parser.parse_args(argv)
    if not REAL_CSV.exists():
        raise SystemExit(f"the Kaggle file is expected at {REAL_CSV}")
    args.use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)
    work = Path(tempfile.mkdtemp(prefix="exampass-bench-advice-"))
    try:
        print(f"training the champion from {REAL_CSV.name} ...", flush=True)
        champion = train_champion(work / "exampass", args.candidate_set)
        results = run(champion, args, work)
        report(results, champion, args)
        return 1 if args.strict and not all(ok for _, ok in goals(results)) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
