"""Resource wiring that operators touch: thresholds from the environment, refused when malformed."""

from __future__ import annotations

import pytest

from exampass_pipeline.resources import Thresholds, build_resources, threshold_env_var, thresholds_from_env
from exampass_pipeline.settings import Settings


def test_every_threshold_can_be_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Thresholds()
    for name, field in Thresholds.model_fields.items():
        value = getattr(defaults, name)
        monkeypatch.setenv(threshold_env_var(name), str(value * 2 if field.annotation is int else value / 2))
    overridden = thresholds_from_env()
    for name, field in Thresholds.model_fields.items():
        got = getattr(overridden, name)
        assert type(got) is field.annotation
        assert got == (
            getattr(defaults, name) * 2 if field.annotation is int else getattr(defaults, name) / 2
        )


def test_unset_and_blank_variables_keep_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPASS_DRIFT_ALPHA", "  ")
    monkeypatch.delenv("EXAMPASS_MIN_STUDENT_ROWS", raising=False)
    assert thresholds_from_env() == Thresholds()


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("EXAMPASS_MIN_STUDENT_ROWS", "lots", "'lots' is not a whole number"),
        ("EXAMPASS_MIN_STUDENT_ROWS", "2.5", "'2.5' is not a whole number"),
        ("EXAMPASS_DRIFT_ALPHA", "5%", "'5%' is not a number"),
    ],
)
def test_a_malformed_threshold_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, exampass_home: Settings, var: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"^{var}: {reason}$"):
        build_resources(exampass_home)


def test_a_malformed_api_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPASS_API_PORT", "80a")
    with pytest.raises(ValueError, match="^EXAMPASS_API_PORT: '80a' is not a whole number$"):
        Settings.from_env()
