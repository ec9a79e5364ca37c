"""Poisoning benchmark: targeted feedback campaigns through the real API, then the real retrain and gate.

    .venv/bin/python benchmarks/poisoning.py [--sizes 0.05 0.15 0.30] [--honest-seeds 2] [--candidate-set default]

Every run starts from one champion trained by the training assets on the Kaggle file (trained once; each run
gets a copy of that home), then, with the real ``exampass-api`` process and real keys:

1. **honest traffic**: three schools score 200 synthetic students each (``/predict/batch``, their own key) and
   report their true maths scores (``/feedback``);
2. **a campaign** from one school's compromised key (``grades-export``, scope ``feedback``) against the
   students of ``group E``, sized so that its rows are 5, 15 or 30 % of the rows the retrain learns from:
   * ``all_fail``: every targeted student reported failing (a score drawn from 20-45);
   * ``shade``: plausible-looking lies, each score 12 points below the truth, so passing students become
     near-misses;
   * ``hide``: this benchmark's own design, the opposite goal: the group's *failing* students reported as
     just passing (52-58), so the flag misses them and they do not get help;
3. the day is ingested by the monitoring partition and the retrain job runs; the gate decides.

The API logs by UTC day and today's partition does not exist until the day ends, so the day's log files are
filed as yesterday's before ingestion. Nothing else is staged: keys, auth, logging, screening, the cap, the
gate and the registry are the product's own.

Measured on 20,000 clean synthetic students the campaign never touched: the served model's ROC-AUC and the
targeted group's mean pass probability, before and after. Goal: no campaign moves the group by more than 0.02
or the ROC-AUC by more than 0.005 through a promotion. The honest part retrains on honest drift scenarios and
counts promotions under the new gate and under the gate before this issue (current test split alone).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # runnable as a plain script from any directory

from exampass_api.core.keystore import create_key  # noqa: E402
from exampass_pipeline.cli.demo import ApiProcess  # noqa: E402
from exampass_pipeline.cli.simulate_api import inputs_of  # noqa: E402
from exampass_pipeline.contract import predlog, registry, schema  # noqa: E402
from exampass_pipeline.ml import synthetic  # noqa: E402

DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "data" / "StudentsPerformance.csv"
GROUP = "group E"
SCHOOLS = ("school-1", "school-2", "school-3")
HONEST_PER_SCHOOL = 200
CURATED_ROWS = 1000
ATTACKS = ("all_fail", "shade", "hide")
GOAL_GROUP_SHIFT = 0.02
GOAL_AUC_DROP = 0.005


@dataclass
class Outcome:
    run: str
    decision: str
    old_gate_promotes: bool
    auc_before: float
    auc_after: float
    group_before: float
    group_after: float
    challenger_group: float
    quarantined: int  # the campaign's rows
    honest_quarantined: int  # everybody else's
    reason: str

    @property
    def within_goal(self) -> bool:
        return (
            abs(self.group_after - self.group_before) <= GOAL_GROUP_SHIFT
            and self.auc_before - self.auc_after <= GOAL_AUC_DROP
        )


def campaign_size(fraction: float) -> int:
    """Rows k such that k is ``fraction`` of the table the retrain learns from (curated + honest + k)."""
    base = CURATED_ROWS + len(SCHOOLS) * HONEST_PER_SCHOOL
    return int(round(fraction * base / (1 - fraction)))


def lies(attack: str, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if attack == "all_fail":
        return rng.integers(20, 46, size=len(truth))
    if attack == "shade":
        return np.clip(truth - 12, 0, 100)
    failing = truth < schema.PASS_MARK
    return np.where(failing, rng.integers(52, 59, size=len(truth)), truth)


class Traffic:
    """Requests to the running API as one client: score students, then report maths scores."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})

    def score(self, students: pd.DataFrame) -> list[str]:
        ids: list[str] = []
        payloads = [inputs_of(row) for row in students.to_dict("records")]
        for start in range(0, len(payloads), 1000):
            answer = self.http.post("/predict/batch", json={"students": payloads[start : start + 1000]})
            answer.raise_for_status()
            ids += [p["prediction_id"] for p in answer.json()["predictions"]]
        return ids

    def report(self, ids: list[str], math: np.ndarray) -> None:
        for pid, score in zip(ids, math, strict=True):
            self.http.post(
                "/feedback", json={"prediction_id": pid, "math_score": int(score)}
            ).raise_for_status()


def file_as_yesterday(logs: Path) -> str:
    """Move today's day files to yesterday's name: the partition the pipeline can ingest now."""
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    for kind in (predlog.PREDICTIONS, predlog.FEEDBACK):
        source = predlog.day_file(logs / kind, today)
        target = predlog.day_file(logs / kind, yesterday)
        if source.exists():
            target.write_bytes(
                target.read_bytes() + source.read_bytes() if target.exists() else source.read_bytes()
            )
            source.unlink()
    return yesterday.isoformat()


class Bench:
    """One trained champion home, copied per run; the clean students every run is measured on."""

    def __init__(self, work: Path, data: Path, candidate_set: str) -> None:
        self.work, self.data, self.candidate_set = work, data, candidate_set
        self.clean = synthetic.sample(20_000, seed=424242)
        self.template = work / "template"
        self._env(self.template)
        import dagster as dg

        from exampass_pipeline.cli.runs import materialize_training

        with dg.instance_for_test() as instance:
            result = materialize_training(instance, self._settings(), candidate_set=candidate_set)
            assert result.success, "training the champion failed"

    def _env(self, home: Path) -> None:
        for name in list(os.environ):
            if name.startswith(("EXAMPASS_", "MLFLOW_")) or name == "DAGSTER_HOME":
                del os.environ[name]
        os.environ.update(
            {
                "EXAMPASS_HOME": str(home),
                "EXAMPASS_DATA": str(self.data),
                "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                "EXAMPASS_RATE_LIMIT_PUBLIC": "100000/minute",
                "EXAMPASS_MODEL_POLL_S": "1",
            }
        )

    def _settings(self) -> Any:
        from exampass_pipeline.contract.settings import Settings

        return Settings.from_env()

    def served(self) -> registry.LoadedModel:
        registry.configure(self._settings())
        model = registry.load_champion()
        assert model is not None
        return model

    def measure(self, model: registry.LoadedModel) -> tuple[float, float]:
        from sklearn.metrics import roc_auc_score

        p = model.pass_probability(self.clean)
        group = (self.clean[schema.RACE_ETHNICITY] == GROUP).to_numpy()
        return float(roc_auc_score(self.clean[schema.LABEL], p)), float(p[group].mean())

    def run(self, name: str, honest: dict[str, str], campaign: tuple[str, int] | None, seed: int) -> Outcome:
        """honest: school -> scenario of its 200 students; campaign: (attack, rows) from grades-export."""
        home = self.work / name
        shutil.copytree(self.template, home)
        self._env(home)
        settings = self._settings()
        before = self.served()
        tokens = {
            client: create_key(settings.api_keys_file, client, ["feedback"])
            for client in [*honest, "grades-export"]
        }
        api = ApiProcess(dict(os.environ), home / "api.log")
        rng = np.random.default_rng(seed)
        try:
            api.wait_ready()
            for i, (school, scenario) in enumerate(honest.items()):
                students = synthetic.sample(HONEST_PER_SCHOOL, seed=seed * 100 + i, scenario=scenario)
                traffic = Traffic(api.url, tokens[school])
                traffic.report(traffic.score(students), students[schema.MATH_SCORE].to_numpy())
            if campaign is not None:
                attack, rows = campaign
                pool = synthetic.sample(rows * 12, seed=seed * 100 + 99)
                targets = pool[pool[schema.RACE_ETHNICITY] == GROUP].head(rows)
                traffic = Traffic(api.url, tokens["grades-export"])
                traffic.report(
                    traffic.score(targets), lies(attack, targets[schema.MATH_SCORE].to_numpy(), rng)
                )
        finally:
            api.stop()
        return self._retrain(name, settings, before)

    def _retrain(self, name: str, settings: Any, before: registry.LoadedModel) -> Outcome:
        import dagster as dg
        from mlflow import MlflowClient

        from exampass_pipeline.cli.runs import materialize_monitoring, materialize_training
        from exampass_pipeline.defs.jobs import RETRAIN

        day = file_as_yesterday(settings.logs_dir)
        with dg.instance_for_test() as instance:
            materialize_monitoring(instance, settings, day)
            result = materialize_training(
                instance, settings, selection=RETRAIN, candidate_set=self.candidate_set
            )
        assert result.success, f"{name}: the retrain failed"
        meta = {
            e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()
        }
        evaluation = meta["model_evaluation"]
        old_gate = (
            float(evaluation.get("gate_test_roc_auc_candidate", 1))
            >= float(evaluation.get("gate_test_roc_auc_champion", 0)) - settings.promotion_margin
        )
        after = self.served()
        client = MlflowClient()
        challenger = registry.load_version(
            client.get_model_version(schema.MODEL_NAME, str(evaluation["model_version"])), client
        )
        auc_before, group_before = self.measure(before)
        auc_after, group_after = self.measure(after)
        with duckdb.connect(str(settings.duckdb_path), read_only=True) as conn:
            by_client = dict(
                conn.execute(
                    "SELECT client, sum(quarantined) FROM exampass.feedback_screening GROUP BY 1"
                ).fetchall()
            )
        return Outcome(
            name,
            str(evaluation["decision"]),
            old_gate,
            auc_before,
            auc_after,
            group_before,
            group_after,
            self.measure(challenger)[1],
            int(by_client.get("grades-export", 0)),
            int(sum(v for k, v in by_client.items() if k != "grades-export")),
            str(evaluation["reason"])[:160],
        )


def table(outcomes: list[Outcome], campaigns: bool = False) -> str:
    """Markdown rows; the goal column only for campaigns (honest change is meant to move the model)."""
    head = (
        "| run | decision | old gate | ROC-AUC before → after | group E mean P(pass) before → after "
        "| challenger's group E | quarantined: campaign / honest | within goal |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {o.run} | {o.decision} | {'promote' if o.old_gate_promotes else 'reject'} | "
        f"{o.auc_before:.4f} → {o.auc_after:.4f} | {o.group_before:.3f} → {o.group_after:.3f} | "
        f"{o.challenger_group:.3f} | {o.quarantined} / {o.honest_quarantined} | "
        f"{('yes' if o.within_goal else 'NO') if campaigns else 'n/a'} |"
        for o in outcomes
    ]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.15, 0.30])
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--honest-seeds", type=int, default=2)
    parser.add_argument(
        "--honest-scenarios", nargs="+", default=["none", "lunch_shift", "new_school", "score_decline"]
    )
    parser.add_argument("--candidate-set", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="exampass-poisoning-"))
    bench = Bench(work, args.data.resolve(), args.candidate_set)
    honest = dict.fromkeys(SCHOOLS, "none")
    attacks: list[Outcome] = []
    for attack in args.attacks:
        for size in args.sizes:
            rows = campaign_size(size)
            attacks.append(bench.run(f"{attack} {size:.0%} ({rows} rows)", honest, (attack, rows), seed=7))
            print(table(attacks[-1:], campaigns=True).splitlines()[-1], flush=True)
    drift: list[Outcome] = []
    for scenario in args.honest_scenarios:
        for seed in range(args.honest_seeds):
            drift.append(
                bench.run(f"honest {scenario} #{seed}", dict.fromkeys(SCHOOLS, scenario), None, seed + 11)
            )
            print(table(drift[-1:]).splitlines()[-1], flush=True)
    exam = [
        bench.run("harder_exam, 3 schools", dict.fromkeys(SCHOOLS, "harder_exam"), None, 31),
        bench.run("harder_exam, 1 school", {"school-1": "harder_exam"}, None, 32),
    ]
    print("\n## Campaigns\n" + table(attacks, campaigns=True))
    print("\n## Honest drift\n" + table(drift))
    print("\n## A real change of the world\n" + table(exam))
    new = sum(o.decision == "promoted" for o in drift)
    old = sum(o.old_gate_promotes for o in drift)
    print(f"\nhonest retrains promoted: {new}/{len(drift)} with the defences, {old}/{len(drift)} before them")
    breached = [o.run for o in attacks if not o.within_goal]
    print(
        "goal (no campaign moves group E > 0.02 or ROC-AUC > 0.005 through a promotion):",
        "MET" if not breached else f"MISSED by {breached}",
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
