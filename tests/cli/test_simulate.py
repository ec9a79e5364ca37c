"""The traffic simulator against real parts: a fitted model registered in a real MLflow sqlite store, the real
prediction-log reader, and a real HTTP server (the product API when it exists, else a minimal one)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from support import point_at_home

from exampass_pipeline.cli import simulate
from exampass_pipeline.contract import predlog, registry, schema
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.ml import synthetic

DAYS = [date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)]


def _point_env_at(mp: pytest.MonkeyPatch, home: Path) -> Settings:
    return point_at_home(mp, home, EXAMPASS_MODEL_POLL_S="3600")


def _fit_pipeline() -> Pipeline:
    train = synthetic.sample(1000, seed=0)
    pipe = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer(
                    [
                        ("cat", OneHotEncoder(handle_unknown="ignore"), list(schema.CATEGORICAL_FEATURES)),
                        ("num", StandardScaler(), list(schema.NUMERIC_FEATURES)),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )
    return pipe.fit(train[list(schema.FEATURES)], train[schema.LABEL])


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, registry.LoadedModel, Path]]:
    """One registered, promoted model per module (the environment points at its home while the tests run),
    plus a copy of the same store taken before registration: a real, migrated store with no champion, so the
    no-champion test does not pay for creating a second one."""
    home = tmp_path_factory.mktemp("sim") / "exampass"
    empty = tmp_path_factory.mktemp("sim-empty") / "exampass"
    with pytest.MonkeyPatch.context() as mp:
        settings = _point_env_at(mp, home)
        experiment_id = registry.configure(settings)
        shutil.copytree(home, empty)
        pipe = _fit_pipeline()
        with mlflow.start_run(experiment_id=experiment_id):
            example = synthetic.sample(5, seed=1)
            info = registry.log_model(pipe, 0.6, example, candidate="logreg")
        registry.record_decision(MlflowClient(), str(info.registered_model_version), True, "test champion")
        model = registry.load_champion()
        assert model is not None
        yield settings, model, empty


@pytest.fixture(scope="module")
def champion(homes) -> tuple[Settings, registry.LoadedModel]:
    settings, model, _ = homes
    return settings, model


@pytest.fixture(scope="module")
def empty_home(homes) -> Path:
    return homes[2]


@pytest.fixture
def env(champion, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Re-point the environment (and MLflow) at the champion's home for tests that run the CLI or the API."""
    settings, _ = champion
    _point_env_at(monkeypatch, settings.home)
    registry.configure(settings)
    return settings


def _read(logs_dir: Path, kind: str, days: list[date]) -> dict[date, predlog.ReadResult]:
    return {day: predlog.read_day(logs_dir, kind, day) for day in days}


@pytest.fixture(scope="module")
def history(champion, tmp_path_factory) -> tuple[Path, list[simulate.DaySummary]]:
    _, model = champion
    logs_dir = tmp_path_factory.mktemp("history") / "logs"
    summaries = simulate.write_history(
        logs_dir,
        model,
        DAYS,
        rows_per_day=60,
        feedback_rate=0.5,
        feedback_delay_days=2,
        seed=7,
        progress=False,
    )
    return logs_dir, summaries


def test_write_history_writes_each_day_with_the_champion_scores(champion, history):
    _, model = champion
    logs_dir, summaries = history
    assert sorted(p.name for p in (logs_dir / "predictions").iterdir()) == [
        f"{d.isoformat()}.jsonl" for d in DAYS
    ]
    ids: set[str] = set()
    for day, result in _read(logs_dir, predlog.PREDICTIONS, DAYS).items():
        assert result.quarantined == []
        records = result.records
        assert len(records) == 60
        stamps = [r["timestamp"] for r in records]
        assert stamps == sorted(stamps)
        assert all(ts.date() == day for ts in stamps)
        assert {r["model_version"] for r in records} == {model.version}
        frame = pd.DataFrame(records)
        expected = model.pipeline.predict_proba(frame[list(schema.FEATURES)])[:, 1]
        np.testing.assert_allclose(frame["pass_probability"], expected, rtol=1e-9)
        assert (frame["predicted_pass"] == (frame["pass_probability"] >= model.thresholds(frame))).all()
        ids.update(frame["prediction_id"])
    assert len(ids) == 180  # unique ids across days
    assert [s.day for s in summaries] == DAYS
    assert all(s.rows == 60 and s.feedback_given == 30 and s.scenario == "none" for s in summaries)


def test_feedback_arrives_late_in_later_day_files(history):
    logs_dir, summaries = history
    predictions = {
        r["prediction_id"]: r
        for res in _read(logs_dir, predlog.PREDICTIONS, DAYS).values()
        for r in res.records
    }
    feedback_days = [DAYS[0] + timedelta(days=i) for i in range(len(DAYS) + 3)]
    feedback = _read(logs_dir, predlog.FEEDBACK, feedback_days)
    assert all(res.quarantined == [] for res in feedback.values())
    lines = [(day, r) for day, res in feedback.items() for r in res.records]
    assert len(lines) == 90  # 50 % of 3 x 60
    later = 0
    for file_day, rec in lines:
        pred = predictions[rec["prediction_id"]]  # every label belongs to a logged prediction
        assert rec["timestamp"].date() == file_day
        delay = rec["timestamp"] - pred["timestamp"]
        assert timedelta(0) <= delay <= timedelta(days=2)
        later += file_day > pred["timestamp"].date()
    assert later >= 20  # with delays up to 2 days, most labels land in a later file
    for s in summaries:
        assert s.feedback_lines == len(feedback[s.day].records)
    stamps = [r["timestamp"] for r in feedback[DAYS[1]].records]
    assert stamps == sorted(stamps)


def test_drift_start_switches_the_scenario_on_that_day(champion, tmp_path):
    _, model = champion
    days = simulate.history_days(date(2024, 4, 4), 4)
    summaries = simulate.write_history(
        tmp_path,
        model,
        days,
        rows_per_day=300,
        scenario="lunch_shift",
        drift_start=days[2],
        seed=3,
        progress=False,
    )
    assert [s.scenario for s in summaries] == ["none", "none", "lunch_shift", "lunch_shift"]
    shares = []
    for day in days:
        records = predlog.read_day(tmp_path, predlog.PREDICTIONS, day).records
        shares.append(np.mean([r[schema.LUNCH] == "free/reduced" for r in records]))
    assert max(shares[:2]) < 0.45 and min(shares[2:]) > 0.6, shares
    # More free/reduced lunches mean lower scores, which the champion sees as lower pass probabilities.
    assert summaries[3].mean_pass_probability < summaries[0].mean_pass_probability


def test_same_seed_same_students_per_day_but_fresh_ids(champion, tmp_path):
    _, model = champion
    kwargs: dict[str, Any] = dict(rows_per_day=20, feedback_rate=0.0, seed=11, progress=False)
    simulate.write_history(tmp_path / "a", model, DAYS[:2], **kwargs)
    simulate.write_history(tmp_path / "b", model, DAYS[1:], **kwargs)
    a = predlog.read_day(tmp_path / "a", predlog.PREDICTIONS, DAYS[1]).records
    b = predlog.read_day(tmp_path / "b", predlog.PREDICTIONS, DAYS[1]).records
    strip = ["prediction_id"]
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == [
        {k: v for k, v in r.items() if k not in strip} for r in b
    ]
    assert not {r["prediction_id"] for r in a} & {r["prediction_id"] for r in b}
    assert not (tmp_path / "a" / "feedback").exists()  # feedback_rate 0 writes no labels


def test_bad_arguments_write_nothing(champion, tmp_path):
    _, model = champion
    for kwargs, field_name in (
        ({"feedback_delay_days": 8}, "feedback_delay_days"),
        ({"feedback_rate": 1.5}, "feedback_rate"),
        ({"scenario": "pandemic"}, "scenario"),
        ({"rows_per_day": 0}, "rows_per_day"),
    ):
        with pytest.raises(ValueError, match=field_name):
            simulate.write_history(tmp_path / "logs", model, DAYS, **{"progress": False, **kwargs})
    assert not (tmp_path / "logs").exists()


def test_cli_write_logs_uses_the_registered_champion(env, champion, tmp_path, capsys):
    _, model = champion
    logs_dir = tmp_path / "cli-logs"
    argv = ["--write-logs", "--days", "2", "--end-date", "2024-05-02", "--rows-per-day", "25", "--seed", "5"]
    argv += ["--scenario", "prep_collapse", "--feedback-rate", "0.4", "--logs-dir", str(logs_dir)]
    assert simulate.main(argv) == 0
    out = capsys.readouterr().out
    for day in ("2024-05-01", "2024-05-02"):
        records = predlog.read_day(logs_dir, predlog.PREDICTIONS, date.fromisoformat(day)).records
        assert len(records) == 25
        assert {r["model_version"] for r in records} == {model.version}
        assert all(r[schema.TEST_PREP] == "none" for r in records)
        assert day in out
    assert "prep_collapse" in out


def test_cli_defaults_to_yesterday_and_the_settings_logs_dir(env, monkeypatch, tmp_path):
    monkeypatch.setenv("EXAMPASS_LOGS", str(tmp_path / "env-logs"))
    assert simulate.main(["--write-logs", "--days", "1", "--rows-per-day", "5", "--feedback-rate", "0"]) == 0
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    records = predlog.read_day(tmp_path / "env-logs", predlog.PREDICTIONS, yesterday).records
    if not records:  # the UTC day rolled over between the run and this check
        records = predlog.read_day(
            tmp_path / "env-logs", predlog.PREDICTIONS, yesterday - timedelta(days=1)
        ).records
    assert len(records) == 5


def test_cli_without_champion_exits_2_with_the_reason(empty_home, monkeypatch, tmp_path, capsys):
    _point_env_at(monkeypatch, empty_home)
    assert simulate.main(["--write-logs", "--days", "1", "--logs-dir", str(tmp_path / "logs")]) == 2
    assert simulate.NO_CHAMPION in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_cli_rejects_bad_options_naming_them(capsys):
    for argv, name in (
        (["--write-logs", "--feedback-rate", "1.5"], "--feedback-rate"),
        (["--write-logs", "--feedback-delay-days", "9"], "--feedback-delay-days"),
        (["--write-logs", "--end-date", "2024-13-01"], "--end-date"),
        (["--write-logs", "--scenario", "pandemic"], "--scenario"),
        (["--api", "http://x", "--write-logs"], "--write-logs"),
        (["--api", "http://x", "--drift-start", "2024-01-01"], "--drift-start"),
    ):
        with pytest.raises(SystemExit) as info:
            simulate.main(argv)
        assert info.value.code == 2
        assert name in capsys.readouterr().err


# --- --api mode -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(champion) -> Iterator[tuple[str, Settings, str]]:
    """A real uvicorn server in a thread, on a free port, serving the product app; plus a feedback key."""
    import uvicorn

    from exampass_api.app import create_app
    from exampass_api.core.keystore import create_key

    settings, _ = champion
    with pytest.MonkeyPatch.context() as mp:
        _point_env_at(mp, settings.home)
        registry.configure(settings)
        token = create_key(settings.api_keys_file, "simulator", ["feedback"])
        mp.setenv("EXAMPASS_API_KEY", token)  # what the CLI sends
        app = create_app()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", settings, token
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()


def _logged(settings: Settings, kind: str, ids: set[str], expected: int) -> list[dict[str, Any]]:
    """Records of ``kind`` with these ids from today's (and yesterday's) file, waiting briefly for them."""
    deadline = time.monotonic() + 10
    while True:
        today = datetime.now(UTC).date()
        found = [
            r
            for day in (today - timedelta(days=1), today)
            for r in predlog.read_day(settings.logs_dir, kind, day).records
            if r["prediction_id"] in ids
        ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_drive_api_predicts_and_sends_feedback(api, champion):
    url, settings, token = api
    _, model = champion
    result = simulate.drive_api(
        url, 30, scenario="lunch_shift", feedback_rate=0.5, seed=1, progress=False, api_key=token
    )
    assert result.errors == 0, result.first_error
    assert result.predictions == 30 and result.feedback == 15
    assert result.model_versions == {model.version: 30}
    ids = set(result.prediction_ids)
    assert len(ids) == 30
    predictions = _logged(settings, predlog.PREDICTIONS, ids, 30)
    assert len(predictions) == 30
    assert np.mean([r[schema.LUNCH] == "free/reduced" for r in predictions]) > 0.45
    feedback = _logged(settings, predlog.FEEDBACK, ids, 15)
    assert len(feedback) == 15
    assert {r["client"] for r in feedback} == {"simulator"}
    assert {r["client"] for r in predictions} == {"simulator"}
    # The reported maths scores are the synthetic students' own: same seed, same students.
    students = synthetic.sample(
        30, seed=int(np.random.default_rng(1).integers(2**63)), scenario="lunch_shift"
    )
    assert {r["math_score"] for r in feedback} <= set(students[schema.MATH_SCORE])


def test_drive_api_batch_mode_answers_in_order(api, champion):
    url, settings, _ = api
    result = simulate.drive_api(url, 25, feedback_rate=0.0, seed=2, batch=True, progress=False)
    assert result.errors == 0, result.first_error
    assert result.predictions == 25 and result.feedback == 0
    logged = _logged(settings, predlog.PREDICTIONS, set(result.prediction_ids), 25)
    by_id = {r["prediction_id"]: r for r in logged}
    students = synthetic.sample(25, seed=int(np.random.default_rng(2).integers(2**63)))
    for pid, student in zip(result.prediction_ids, students.to_dict("records"), strict=True):
        assert by_id[pid][schema.READING_SCORE] == student[schema.READING_SCORE]
        assert by_id[pid][schema.GENDER] == student[schema.GENDER]


def test_drive_api_without_a_key_gets_its_feedback_refused(api):
    url, settings, _ = api
    result = simulate.drive_api(url, 4, feedback_rate=1.0, seed=4, progress=False)
    assert result.predictions == 4 and result.feedback == 0 and result.errors == 4
    assert "HTTP 401" in str(result.first_error)
    assert not _logged(settings, predlog.FEEDBACK, set(result.prediction_ids), 1)
    predictions = _logged(settings, predlog.PREDICTIONS, set(result.prediction_ids), 4)
    assert {r["client"] for r in predictions} == {"public"}


def test_cli_api_mode_and_unreachable_api(api, capsys):
    url, _, _ = api
    assert simulate.main(["--api", url, "-n", "5", "--seed", "3"]) == 0
    assert "5 predictions" in capsys.readouterr().out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert simulate.main(["--api", dead, "-n", "2"]) == 2
    assert "cannot reach the API" in capsys.readouterr().err
