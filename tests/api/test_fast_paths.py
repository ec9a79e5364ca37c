"""The service's shortcuts must be indistinguishable from the slow, obviously-correct paths they replace."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from exampass_api.schemas import StudentIn
from exampass_api.scorer import encode
from exampass_api.services.prediction import (
    BodyErrors,
    CpuGate,
    encode_plain,
    new_prediction_id,
    new_prediction_ids,
    parse_student,
)
from exampass_pipeline.contract import predlog, schema

ODD_VALUES: list[Any] = [
    0, 100, 101, -1, 50, 72.0, 72.5, True, False, None, "72", "female", "Female", "group A ", "", [], {},
    float("nan"), float("inf"), 10**30, "free/reduced", "none", "completed", "master's degree",
]  # fmt: skip


def _random_row(rng: random.Random) -> dict[str, Any]:
    row: dict[str, Any] = {n: rng.choice(schema.CATEGORIES[n]) for n in schema.CATEGORICAL_FEATURES}
    row.update({n: rng.randint(0, 100) for n in schema.NUMERIC_FEATURES})
    roll = rng.random()
    if roll < 0.5:
        row[rng.choice(schema.FEATURES)] = rng.choice(ODD_VALUES)
    elif roll < 0.6:
        row.pop(rng.choice(schema.FEATURES))
    elif roll < 0.7:
        row["extra"] = 1
    return row


def test_plain_shortcut_accepts_only_rows_pydantic_accepts_unchanged() -> None:
    rng = random.Random(7)
    plain = 0
    for _ in range(5000):
        row = _random_row(rng)
        fast = encode_plain([row])
        if fast is not None:
            plain += 1
            assert StudentIn.model_validate(row).__dict__ == row
            slow = encode([row])
            assert (fast[0] == slow[0]).all() and (fast[1] == slow[1]).all()
        else:
            # Refused by the shortcut: pydantic refuses it too, or pydantic changes it (e.g. 72.0 -> 72).
            with_pydantic: dict[str, Any] | None
            try:
                with_pydantic = StudentIn.model_validate(row).__dict__
            except ValidationError:
                with_pydantic = None
            if with_pydantic is not None:
                assert any(type(row[k]) is not type(v) for k, v in with_pydantic.items()), row
    assert plain > 1000  # the shortcut is actually taken
    # One odd row sends the whole batch to pydantic.
    rows = [_random_row(random.Random(i)) for i in range(50)]
    good = [r for r in rows if encode_plain([r]) is not None]
    assert encode_plain(good) is not None
    assert encode_plain([*good, {**good[0], "reading_score": 72.0}]) is None


def test_prediction_ids_are_random_version_4_uuids() -> None:
    ids = [new_prediction_id() for _ in range(2000)] + new_prediction_ids(3000)
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every random bit varies (no constant nibble besides the version/variant ones).
    ints = [uuid.UUID(t).int for t in ids]
    varying = 0
    for bit in range(128):
        varying += len({(i >> bit) & 1 for i in ints}) == 2
    assert varying == 122


@pytest.mark.parametrize("probability", [0.0, 1.0, 0.5, 0.123456789012345, 1e-4, 9.99e-5, 3.2e-7, 5e-324])
def test_log_lines_are_byte_identical_to_json_dumps(probability: float) -> None:
    record = {
        "prediction_id": str(uuid.UUID(int=5, version=4)),
        "timestamp": datetime(2026, 11, 27, 12, 0, tzinfo=UTC).isoformat(),
        "model_version": "7",
        "inputs": {
            "gender": "male",
            "race_ethnicity": "group A",
            "parental_level_of_education": "master's degree",
            "lunch": "free/reduced",
            "test_preparation_course": "completed",
            "reading_score": 0,
            "writing_score": 100,
        },
        "pass_probability": probability,
        "predicted_pass": True,
    }
    expected = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    assert predlog.encode_record(record) == expected


def test_log_writer_still_refuses_nan(tmp_path: Path) -> None:
    appender = predlog.JsonlAppender(tmp_path)
    with pytest.raises(ValueError):
        appender.append({"pass_probability": float("nan")}, datetime.now(UTC))
    assert not any(p.read_bytes() for p in tmp_path.glob("*.jsonl"))


def test_student_body_parser_agrees_with_pydantic_on_the_decoded_json() -> None:
    """/predict parses the bytes in one pass; the answer must be what validating the decoded JSON gives."""
    rng = random.Random(11)
    refused = 0
    for _ in range(2000):
        row = _random_row(rng)
        raw = json.dumps(
            row
        ).encode()  # NaN and Infinity become JSON's non-standard tokens, as clients send them
        try:
            expected: dict[str, Any] | None = StudentIn.model_validate(row).__dict__
        except ValidationError as exc:
            expected, fields = None, {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        if expected is not None:
            assert parse_student(raw) == expected, row
            continue
        refused += 1
        with pytest.raises(BodyErrors) as caught:
            parse_student(raw)
        assert {str(e["loc"][1]) for e in caught.value.errors if len(e["loc"]) > 1} == fields, row
    assert 500 < refused < 1900  # both paths exercised


def test_cpu_gate_runs_one_piece_of_work_at_a_time_off_the_event_loop() -> None:
    gate = CpuGate()
    running, most = 0, 0
    lock = threading.Lock()
    loop_thread = threading.get_ident()

    def work(i: int) -> tuple[int, int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i, threading.get_ident()

    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(gate.run(work, i) for i in range(8)))

    results = asyncio.run(main())
    assert [i for i, _ in results] == list(range(8))
    assert most == 1
    assert all(thread != loop_thread for _, thread in results)


def test_cpu_gate_passes_errors_through_and_frees_its_slot() -> None:
    gate = CpuGate()

    def fail() -> None:
        raise BodyErrors([{"type": "missing", "loc": ("body",), "msg": "empty body"}])

    async def main() -> int:
        with pytest.raises(BodyErrors):
            await gate.run(fail)
        return await asyncio.wait_for(gate.run(lambda: 7), timeout=5)

    assert asyncio.run(main()) == 7
