"""The whole training graph, materialized for real into a Dagster test instance with MLflow on sqlite."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pytest
from mlflow import MlflowClient

from exampass_pipeline.contract import registry, schema
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.definitions import materializable
from exampass_pipeline.defs.jobs import STUDENTS, TRAINING
from exampass_pipeline.defs.resources import build_resources


def train(
    instance: dg.DagsterInstance,
    settings: Settings,
    candidate_set: str = "default",
    **resource_overrides: object,
) -> dg.ExecuteInProcessResult:
    resources = {**build_resources(settings), **resource_overrides}
    return dg.materialize(
        materializable(),
        selection=TRAINING,
        instance=instance,
        resources=resources,
        run_config={"ops": {"pass_classifier": {"config": {"candidate_set": candidate_set}}}},
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def test_training_graph_registers_a_champion_then_gates_a_weaker_model(exampass_home: Settings) -> None:
    with dg.instance_for_test() as instance:
        first = train(instance, exampass_home)
        assert first.success
        checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
        assert checks == {
            "students_schema": True,
            "students_no_nulls": True,
            "students_min_rows": True,
            "students_pass_rate": True,
            "splits_disjoint_and_sized": True,
            "trusted_set_is_curated": True,
            "feedback_plausibility": True,
        }
        registry.configure(exampass_home)
        client = MlflowClient()
        champion = registry.champion_version(client)
        assert champion is not None and str(champion.version) == "1"
        assert champion.tags[registry.TAG_DECISION] == "promoted"
        run = client.get_run(champion.run_id)
        assert run.info.status == "FINISHED"
        assert set(schema.TEST_METRICS) <= set(run.data.metrics)
        assert run.data.metrics["test_roc_auc"] > 0.9
        assert run.data.tags["dagster_run_id"] == first.run_id
        assert run.data.params["train_table_sha256"]
        assert any(k.startswith("val_roc_auc__") for k in run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(champion.run_id, "evaluation")}
        assert artifacts == {
            "evaluation/roc_curve.png",
            "evaluation/confusion_matrix.png",
            "evaluation/fairness.json",
        }
        assert registry.MODEL_CARD_PATH in {a.path for a in client.list_artifacts(champion.run_id)}
        assert "test_fail_recall_gap_lunch" in run.data.metrics
        evaluation = metadata(first, "model_evaluation")
        assert evaluation["decision"] == "promoted"
        assert Path(str(evaluation["roc_curve"])).stat().st_size > 1000
        card = metadata(first, "pass_classifier")
        assert str(card["mlflow_run"]).endswith(champion.run_id)

        second = train(instance, exampass_home, candidate_set="weak")
        assert second.success
        assert str(registry.champion_version(client).version) == "1"
        weak = client.get_model_version(schema.MODEL_NAME, "2")
        assert weak.tags[registry.TAG_DECISION] == "rejected"
        assert "registered but not served" in weak.tags[registry.TAG_REASON]
        assert metadata(second, "model_evaluation")["decision"] == "rejected"
        weak_metrics = client.get_run(weak.run_id).data.metrics
        assert weak_metrics["test_roc_auc"] < run.data.metrics["test_roc_auc"]


def test_blocking_check_stops_training_and_the_mlflow_run_is_ended(
    exampass_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set the way an operator would: the environment, read by Settings.
    monkeypatch.setenv("EXAMPASS_MIN_STUDENT_ROWS", "5000")
    with dg.instance_for_test() as instance:
        result = train(instance, Settings.from_env())
        assert not result.success
        failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
        assert [e.check_name for e in failed] == ["students_min_rows"]
        assert "1000 rows; the minimum is 5000 (set EXAMPASS_MIN_STUDENT_ROWS" in str(failed[0].description)
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "pass_classifier" not in materialized
        registry.configure(exampass_home)
        assert registry.champion_version() is None
        runs = mlflow.search_runs(experiment_names=[registry.EXPERIMENT_NAME], output_format="list")
        assert all(r.info.status != "RUNNING" for r in runs)
        with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
            alerts = conn.execute("SELECT check_name, severity FROM exampass.alerts").fetchall()
        assert alerts == [("students_min_rows", "ERROR")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("gender,lunch\nfemale,standard\n", "missing column"),
        ("", "the file is empty"),
    ],
)
def test_bad_file_fails_and_keeps_the_previous_table(
    exampass_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, expected: str
) -> None:
    with dg.instance_for_test() as instance:
        resources = build_resources(exampass_home)
        good = dg.materialize(materializable(), selection=STUDENTS, instance=instance, resources=resources)
        assert good.success
        bad_file = tmp_path / "bad.csv"
        bad_file.write_text(content)
        monkeypatch.setenv("EXAMPASS_DATA", str(bad_file))
        bad_settings = Settings.from_env()
        result = dg.materialize(
            materializable(),
            selection=STUDENTS,
            instance=instance,
            resources=build_resources(bad_settings),
            raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
        assert str(bad_file) in message and expected in message
        with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
            assert conn.execute("SELECT count(*) FROM exampass.students").fetchone() == (1000,)
            assert conn.execute("SELECT count(*) FROM exampass.raw_students").fetchone() == (1000,)


def test_without_a_data_file_training_uses_the_synthetic_sample(
    exampass_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPASS_DATA", str(tmp_path / "absent.csv"))
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            materializable(),
            selection=["raw_students"],
            instance=instance,
            resources=build_resources(settings),
        )
        meta = metadata(result, "raw_students")
        assert meta["source"] == "synthetic"
        assert meta["dagster/row_count"] == 1000
        logs = [e.message for e in instance.all_logs(result.run_id) if e.level >= 30]
        assert any("SYNTHETIC" in m for m in logs)
