"""Settings and resource wiring that operators touch: every threshold from the environment, refused when malformed."""

from __future__ import annotations

import dagster as dg
import pytest
from support import STATE_VARS

from exampass_pipeline.contract.settings import Settings, SettingsError, ThresholdValues, threshold_env_var
from exampass_pipeline.defs.resources import Thresholds, build_resources


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from the defaults, whatever an earlier test or the developer's shell set."""
    for name in STATE_VARS:
        monkeypatch.delenv(name, raising=False)


def test_every_threshold_can_be_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Thresholds()
    for name, field in ThresholdValues.model_fields.items():
        value = getattr(defaults, name)
        monkeypatch.setenv(threshold_env_var(name), str(value * 2 if field.annotation is int else value / 2))
    overridden = build_resources(Settings.from_env())["thresholds"]
    assert isinstance(overridden, Thresholds)
    for name, field in ThresholdValues.model_fields.items():
        got = getattr(overridden, name)
        assert type(got) is field.annotation
        assert got == (
            getattr(defaults, name) * 2 if field.annotation is int else getattr(defaults, name) / 2
        )


def test_unset_and_blank_variables_keep_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPASS_DRIFT_ALPHA", "  ")
    monkeypatch.delenv("EXAMPASS_MIN_STUDENT_ROWS", raising=False)
    assert Thresholds(**Settings.from_env().thresholds()) == Thresholds()


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("EXAMPASS_MIN_STUDENT_ROWS", "lots", "'lots' is not a whole number"),
        ("EXAMPASS_MIN_STUDENT_ROWS", "2.5", "'2.5' is not a whole number"),
        ("EXAMPASS_DRIFT_ALPHA", "5%", "'5%' is not a number"),
        ("EXAMPASS_DRIFT_ALPHA", "1.5", "'1.5' must be less than 1"),
        ("EXAMPASS_API_PORT", "80a", "'80a' is not a whole number"),
        ("EXAMPASS_MODEL_POLL_S", "0", "'0' must be greater than 0"),
        ("EXAMPASS_PARTITIONS_START", "2026-13-01", "'2026-13-01' is not a date \\(YYYY-MM-DD\\)"),
    ],
)
def test_a_malformed_setting_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=f"^{var}: {reason}$"):
        Settings.from_env()


def test_every_problem_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPASS_API_PORT", "80a")
    monkeypatch.setenv("EXAMPASS_SEGMENT_MIN_FAIL", "few")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    assert "EXAMPASS_API_PORT" in str(caught.value) and "EXAMPASS_SEGMENT_MIN_FAIL" in str(caught.value)


def test_paths_derive_from_home_unless_set(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("EXAMPASS_HOME", "/srv/exampass")
    monkeypatch.setenv("EXAMPASS_LOGS", "/var/log/exampass")
    for name in ("EXAMPASS_DUCKDB", "EXAMPASS_REPORTS", "DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert str(settings.duckdb_path) == "/srv/exampass/warehouse.duckdb"
    assert str(settings.logs_dir) == "/var/log/exampass"
    assert settings.mlflow_tracking_uri == "sqlite:////srv/exampass/mlflow/mlflow.db"
    assert settings.from_environment("logs_dir") == "EXAMPASS_LOGS"
    assert settings.from_environment("duckdb_path") is None


def test_secrets_reach_dagster_as_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook URL and a tracking URI with a password are shown in the UI by name, never by value."""
    monkeypatch.setenv("EXAMPASS_ALERT_WEBHOOK", "https://hooks.example/secret-token")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg2://u:hunter2@db/mlflow")
    resources = build_resources(Settings.from_env())
    shown = repr(resources["alerter"]) + repr(resources["mlflow_registry"])
    assert "secret-token" not in shown and "hunter2" not in shown
    assert "EXAMPASS_ALERT_WEBHOOK" in shown and "MLFLOW_TRACKING_URI" in shown
    with dg.build_resources({"alerter": resources["alerter"]}) as live:
        assert live.alerter.webhook_url == "https://hooks.example/secret-token"


def test_without_the_variables_nothing_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXAMPASS_ALERT_WEBHOOK", raising=False)
    resources = build_resources(Settings.from_env())
    with dg.build_resources({"alerter": resources["alerter"]}) as live:
        assert live.alerter.webhook_url == ""
