"""Every path and environment setting, derived from EXAMPASS_HOME.

Read at call time, not import time, so tests and the CLI can point a process at a fresh home by setting
environment variables. The production path (Postgres, an MLflow server, object storage) is reached only by
setting the standard variables; no code here knows about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".exampass"
DEFAULT_DATA = "data/StudentsPerformance.csv"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_number(name: str, default: str, kind: type[int] | type[float]) -> int | float:
    """A numeric setting; a typo names the variable, instead of int()'s bare message from deep in a stack."""
    text = _env(name, default)
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}: {text!r} is not {what}") from None


@dataclass(frozen=True)
class Settings:
    """Resolved settings for one process."""

    home: Path
    data_path: Path
    dagster_home: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str | None
    duckdb_path: Path
    logs_dir: Path
    reports_dir: Path
    alert_webhook: str | None
    api_host: str
    api_port: int
    api_workers: int
    model_poll_s: float

    @property
    def predictions_dir(self) -> Path:
        return self.logs_dir / "predictions"

    @property
    def feedback_dir(self) -> Path:
        return self.logs_dir / "feedback"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("EXAMPASS_HOME", DEFAULT_HOME)).expanduser().absolute()
        mlflow_db = home / "mlflow" / "mlflow.db"
        return cls(
            home=home,
            data_path=Path(_env("EXAMPASS_DATA", DEFAULT_DATA)).expanduser().absolute(),
            dagster_home=Path(_env("DAGSTER_HOME", str(home / "dagster"))).expanduser().absolute(),
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}"),
            mlflow_registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or None,
            duckdb_path=Path(_env("EXAMPASS_DUCKDB", str(home / "warehouse.duckdb"))).expanduser().absolute(),
            logs_dir=Path(_env("EXAMPASS_LOGS", str(home / "logs"))).expanduser().absolute(),
            reports_dir=Path(_env("EXAMPASS_REPORTS", str(home / "reports"))).expanduser().absolute(),
            alert_webhook=os.environ.get("EXAMPASS_ALERT_WEBHOOK") or None,
            api_host=_env("EXAMPASS_API_HOST", "127.0.0.1"),
            api_port=int(env_number("EXAMPASS_API_PORT", "8000", int)),
            api_workers=int(env_number("EXAMPASS_API_WORKERS", "1", int)),
            model_poll_s=float(env_number("EXAMPASS_MODEL_POLL_S", "30", float)),
        )

    def ensure_dirs(self) -> None:
        """Create the local folders; a no-op for the parts that configuration moved elsewhere."""
        for path in (self.home, self.dagster_home, self.logs_dir, self.reports_dir, self.duckdb_path.parent):
            path.mkdir(parents=True, exist_ok=True)
        if self.mlflow_tracking_uri.startswith("sqlite:///"):
            Path(self.mlflow_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
            self.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    return Settings.from_env()
