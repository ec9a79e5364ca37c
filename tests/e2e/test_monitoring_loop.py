"""The product's loop end to end: a real Dagster instance, a real API process and a real MLflow registry.

train -> 3 ordinary days + 2 days of lunch_shift with feedback -> monitoring partitions -> alert row and webhook
-> the sensor asks for a retrain -> the retrain learns from labelled production rows -> the gate decides -> the
running API serves whatever the gate chose, without a restart.
"""

from __future__ import annotations

from datetime import date

from mlflow import MlflowClient

from exampass_pipeline.cli.demo import run_story
from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings


def test_drift_alert_retrain_and_hot_swap(exampass_home: Settings) -> None:
    story = run_story(exampass_home, rows_per_day=200, seed=7, end=date(2026, 11, 25))

    assert story.first_version == "1"
    assert story.served_version_before == "1"
    assert story.api_predictions == 20

    assert [d.scenario for d in story.days] == ["none", "none", "none", "lunch_shift", "lunch_shift"]
    assert all(d.rows == 200 for d in story.days)
    for day in story.days[:3]:
        assert day.checks["no_data_drift"], f"{day.day} is undrifted and must pass"
    for day in story.days[3:]:
        assert not day.checks["no_data_drift"], f"{day.day} has a lunch shift and must fail"

    drift_alerts = [a for a in story.alerts if a[0] == "no_data_drift"]
    assert {a[1] for a in drift_alerts} == {d.day.isoformat() for d in story.days[3:]}
    assert all(a[3] == "delivered" for a in story.alerts)
    texts = [body["text"] for body in story.webhook_bodies]
    assert len(texts) == len(story.alerts)
    assert any("no_data_drift" in t and story.days[4].day.isoformat() in t for t in texts)

    assert len(story.run_requests) == 1
    assert story.retrain_success
    # Honest outcomes: at most a stray one in a hundred lies outside the 4-sd plausibility interval.
    assert 0.99 * 5 * 200 <= story.production_rows_in_training <= 5 * 200
    assert story.new_version == "2"
    assert story.decision == "promoted", f"the honest retrain must still be promoted: {story.reason}"

    registry.configure(story.settings)
    client = MlflowClient()
    champion = registry.champion_version(client)
    assert champion is not None
    expected = "2" if story.decision == "promoted" else "1"
    assert str(champion.version) == expected
    assert story.served_version_after == expected
    tag = client.get_model_version(schema.MODEL_NAME, "2").tags[registry.TAG_DECISION]
    assert tag == story.decision

    reports = sorted(p.name for p in (story.settings.reports_dir / "drift").glob("*.html"))
    assert reports == sorted(f"{d.day.isoformat()}.html" for d in story.days)
