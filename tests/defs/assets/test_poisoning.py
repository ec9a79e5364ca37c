"""A poisoned feedback stream, end to end in Dagster: screened out, or held by the gate with an alert.

Feedback is written with the API's own log writer, attributed to a key name as the API does; the retrain is
the real retrain job on a real instance, MLflow registry and warehouse.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from exampass_pipeline.cli import approve as cli
from exampass_pipeline.cli.runs import materialize_monitoring, materialize_training
from exampass_pipeline.contract import predlog, registry, schema
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.defs.jobs import RETRAIN
from exampass_pipeline.ml import synthetic

DAY = datetime(2026, 11, 20, 9, tzinfo=UTC)
GROUP = "group E"


def write_feedback(
    settings: Settings, rows: pd.DataFrame, client: str, math: np.ndarray, offset_s: int
) -> None:
    """Predictions and the reported maths scores of ``rows``, as the API logs them for ``client``."""
    log = predlog.PredictionLog(settings.logs_dir)
    for i, student in enumerate(rows.to_dict("records")):
        at = DAY + timedelta(seconds=offset_s + i)
        inputs = {
            k: (int(v) if k in schema.NUMERIC_FEATURES else str(v))
            for k, v in student.items()
            if k in schema.FEATURES
        }
        pid = log.log_prediction(inputs, 0.9, True, "1", client=client, at=at)["prediction_id"]
        log.log_feedback(pid, int(math[i]), client=client, at=at + timedelta(hours=2))
    log.close()


def campaign_and_honest_traffic(settings: Settings, attack: str) -> pd.DataFrame:
    students = synthetic.sample(3000, seed=21)
    honest = students.iloc[:450]
    for k, school in enumerate(("school-1", "school-2", "school-3")):
        part = honest.iloc[k::3]
        write_feedback(settings, part, school, part[schema.MATH_SCORE].to_numpy(), 1000 * k)
    targets = students.iloc[450:][students.iloc[450:][schema.RACE_ETHNICITY] == GROUP].head(120)
    truth = targets[schema.MATH_SCORE].to_numpy()
    lies = np.full(len(truth), 25) if attack == "flip" else np.clip(truth - 12, 0, 100)
    write_feedback(settings, targets, "grades-export", lies, 5000)
    return targets


def retrain(instance: dg.DagsterInstance, settings: Settings) -> dg.ExecuteInProcessResult:
    assert materialize_monitoring(instance, settings, DAY.date().isoformat()).success
    result = materialize_training(instance, settings, selection=RETRAIN, candidate_set="fast")
    assert result.success
    return result


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset))
    return {k: v.value for k, v in event.materialization.metadata.items()}


def group_mean(settings: Settings, version: str) -> float:
    """The group's mean pass probability on clean students the campaign never touched."""
    clean = synthetic.sample(4000, seed=99)
    clean = clean[clean[schema.RACE_ETHNICITY] == GROUP]
    registry.configure(settings)
    client = MlflowClient()
    model = registry.load_version(client.get_model_version(schema.MODEL_NAME, version), client)
    return float(model.pass_probability(clean).mean())


def test_a_label_flip_campaign_is_quarantined_and_changes_nothing_served(exampass_home: Settings) -> None:
    with dg.instance_for_test() as instance:
        assert materialize_training(instance, exampass_home, candidate_set="fast").success
        before = group_mean(exampass_home, "1")
        targets = campaign_and_honest_traffic(exampass_home, "flip")
        result = retrain(instance, exampass_home)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["feedback_plausibility"].passed
    assert "grades-export" in str(checks["feedback_plausibility"].description)
    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        quarantined = conn.execute(
            "SELECT count(*) FROM exampass.feedback_quarantine WHERE client = 'grades-export'"
        ).fetchone()
        trained = conn.execute(
            "SELECT count(*) FROM exampass.students WHERE client = 'grades-export'"
        ).fetchone()
        counts = conn.execute(
            "SELECT reported, quarantined FROM exampass.feedback_screening WHERE client = 'grades-export'"
        ).fetchall()
        alerts = conn.execute("SELECT check_name FROM exampass.alerts").fetchall()
    # A report of 25 is plausible for the few students whose background predicts a score near 40.
    assert quarantined[0] >= 0.95 * len(targets) and trained[0] == len(targets) - quarantined[0]
    assert counts == [(len(targets), quarantined[0])]
    assert ("feedback_plausibility",) in alerts
    served = registry.champion_version(MlflowClient())
    assert served is not None
    assert abs(group_mean(exampass_home, str(served.version)) - before) <= 0.02


def test_lies_that_slip_past_screening_are_held_for_approval_with_an_alert(
    exampass_home: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Screening switched off, so the gate alone must stop plausible lies against one group."""
    monkeypatch.setenv("EXAMPASS_PLAUSIBILITY_WIDTH", "1000")
    monkeypatch.setenv("EXAMPASS_CLIENT_BIAS_MIN_GAP", "1000")
    monkeypatch.setenv("EXAMPASS_CLIENT_MAX_SHARE", "0.9")
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        assert materialize_training(instance, settings, candidate_set="fast").success
        campaign_and_honest_traffic(settings, "shade")
        result = retrain(instance, settings)
    evaluation = metadata(result, "model_evaluation")
    assert evaluation["decision"] == "pending_approval", evaluation["reason"]
    assert "race_ethnicity=group E" in str(evaluation["reason"]) and "exampass-approve 2" in str(
        evaluation["reason"]
    )
    client = MlflowClient()
    assert str(registry.champion_version(client).version) == "1", "the champion keeps serving"
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as conn:
        alert = conn.execute(
            "SELECT severity, message, figures FROM exampass.alerts WHERE check_name = 'champion_gate'"
        ).fetchone()
    assert alert is not None and alert[0] == "WARN"
    assert "group E" in alert[1] and "exampass-approve 2" in alert[2]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "head-of-maths")
    assert cli.approve_main(["2", "--note", "checked the grade export by hand"]) == 0
    approved = client.get_model_version(schema.MODEL_NAME, "2")
    assert str(registry.champion_version(client).version) == "2"
    assert approved.tags[registry.TAG_APPROVED_BY] == "head-of-maths"
    assert approved.tags[registry.TAG_DECISION] == "promoted"
    with pytest.raises(SystemExit):
        cli.approve_main(["2"])
    assert "not waiting for approval" in capsys.readouterr().err
