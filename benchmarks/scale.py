"""A day of N predictions through the day's ingestion: wall time, peak RSS, nothing lost, idempotent.

For each size: write one day of predictions plus 30 % feedback in the exact log format (numpy-built lines,
written as segments, a few damaged lines mixed in), then materialize ``prediction_batches`` for that day as ONE
process under ``/usr/bin/time -v`` (a fresh Dagster instance and warehouse), check that partition rows +
duplicates + quarantined lines == prediction lines written, re-materialize and compare a digest of the
partition, and report the log's bytes per prediction plain and gzip-compressed (closed segments).

    .venv/bin/python benchmarks/scale.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from datetime import date
from pathlib import Path

import numpy as np

from exampass_pipeline.contract import predlog, schema

DAY = date(2026, 11, 20)
SEGMENT_ROWS = 500_000
BAD_EVERY = 100_000


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64).view(np.uint64)
    return np.array([str(uuid.UUID(int=(int(a) << 64) | int(b))) for a, b in raw])


def _day_lines(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Prediction and feedback lines of one day, byte-identical to ``predlog.encode_record``'s."""
    rng = np.random.default_rng(seed)
    ids = _uuids(rng, n)
    micro = np.sort(rng.integers(0, 86_400 * 10**6, n))
    base = np.datetime64(DAY.isoformat(), "us")
    stamps = np.datetime_as_string(base + micro.astype("timedelta64[us]"), unit="us")
    cats = {
        name: np.array(values)[rng.integers(0, len(values), n)] for name, values in schema.CATEGORIES.items()
    }
    scores = {name: rng.integers(0, 101, n) for name in schema.NUMERIC_FEATURES}
    prob = np.round(rng.random(n), 6)
    preds = []
    for i in range(n):
        inputs = ",".join(
            f'"{k}":"{cats[k][i]}"' if k in cats else f'"{k}":{scores[k][i]}' for k in schema.FEATURES
        )
        p = float(prob[i])
        preds.append(
            f'{{"prediction_id":"{ids[i]}","timestamp":"{stamps[i]}+00:00","model_version":"3",'
            f'"client":"school-{i % 3 + 1}","inputs":{{{inputs}}},"pass_probability":{p!r},'
            f'"predicted_pass":{"true" if p >= 0.5 else "false"}}}'
        )
    labelled = rng.choice(n, size=int(n * 0.3), replace=False)
    math = rng.integers(0, 101, len(labelled))
    feedback = [
        f'{{"prediction_id":"{ids[j]}","timestamp":"{stamps[j]}+00:00","client":"school-1","math_score":{m}}}'
        for j, m in zip(labelled, math, strict=True)
    ]
    return preds, feedback, ids


def write_day(logs: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Segments of SEGMENT_ROWS lines, built a segment at a time so the writer's memory stays small; one in
    BAD_EVERY lines damaged, one id repeated, and a torn last line as a killed writer leaves."""
    sizes = {"prediction_lines": 0, "plain_bytes": 0, "gzip_bytes": 0}
    folders = {kind: logs / kind / DAY.isoformat() for kind in (predlog.PREDICTIONS, predlog.FEEDBACK)}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    first = ""
    for k, start in enumerate(range(0, n, SEGMENT_ROWS)):
        preds, feedback, _ = _day_lines(min(SEGMENT_ROWS, n - start), seed * 1_000_003 + k)
        for i in range(0, len(preds), BAD_EVERY):
            preds[i] = preds[i].replace('"lunch":"', '"lunch":"x')
        if start + SEGMENT_ROWS >= n:
            preds.append(preds[-1])  # a duplicate
        first = first or preds[1]
        sizes["prediction_lines"] += len(preds)
        for kind, lines in ((predlog.PREDICTIONS, preds), (predlog.FEEDBACK, feedback)):
            data = ("\n".join(lines) + "\n").encode()
            sizes["plain_bytes"] += len(data)
            packed = gzip.compress(data, compresslevel=6)
            sizes["gzip_bytes"] += len(packed)
            (folders[kind] / f"00-1-{k:04d}.jsonl.gz").write_bytes(packed)
    with open(folders[predlog.PREDICTIONS] / "23-2-0000.jsonl", "w") as fh:
        fh.write(first[:50])  # a writer killed mid-line
    sizes["prediction_lines"] += 1
    return sizes


def child(home: str) -> None:
    """The measured process: one materialization of the day's ingestion, as the monitoring job runs it."""
    import dagster as dg

    from exampass_pipeline.contract.settings import Settings
    from exampass_pipeline.definitions import materializable
    from exampass_pipeline.defs.resources import build_resources

    settings = Settings.from_env()
    settings.ensure_dirs()
    (Path(home) / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(Path(home) / "dagster")) as instance:
        result = dg.materialize(
            materializable(),
            selection=["prediction_batches"],
            partition_key=DAY.isoformat(),
            instance=instance,
            resources=build_resources(settings),
        )
        event = result.get_asset_materialization_events()[0]
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        print("META " + json.dumps({k: v for k, v in meta.items() if isinstance(v, int | float)}))


def _timed(home: Path) -> tuple[float, float, dict[str, int]]:
    env = {**os.environ, "EXAMPASS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("EXAMPASS_LOGS_DIR", None)
    out = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, __file__, "--child", str(home)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"the measured run failed:\n{out.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    assert wall and rss, out.stderr[-2000:]
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    meta = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("META "))[5:])
    return seconds, int(rss.group(1)) / 1e6, meta


def _digest(home: Path) -> tuple[int, str]:
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        row = conn.execute(
            "SELECT count(*), sum(hash(prediction_id, timestamp, pass_probability, math_score, feedback_client))"
            " FROM exampass.prediction_batches"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    print(
        "| predictions | wall s | peak RSS GB | partition + dup + quarantined = lines | idempotent |"
        " B/pred plain | B/pred gzip |"
    )
    print("| ---: | ---: | ---: | :--- | :---: | ---: | ---: |")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="exampass-scale-") as tmp:
            home = Path(tmp) / "exampass"
            sizes = write_day(home / "logs", n)
            wall, rss, meta = _timed(home)
            first = _digest(home)
            _timed(home)
            same = _digest(home) == first
            accounted = meta["dagster/row_count"] + meta["duplicate_predictions"] + meta["quarantined_lines"]
            ok = "yes" if accounted == sizes["prediction_lines"] else "NO"
            print(
                f"| {n:,} | {wall:.1f} | {rss:.2f} | {meta['dagster/row_count']:,} + "
                f"{meta['duplicate_predictions']} + {meta['quarantined_lines']} = {accounted:,} of "
                f"{sizes['prediction_lines']:,} ({ok}) | {'yes' if same else 'NO'} | "
                f"{sizes['plain_bytes'] / n:.0f} | {sizes['gzip_bytes'] / n:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
