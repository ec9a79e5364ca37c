"""What a prediction request does once its body is valid: score, log, answer. Kept apart from the routes.

The order matters for the log contract: the prediction line is written (one ``os.write``) before the answer is
built, so every 200 has its line, and nothing is written for a request that fails before scoring. Answers are
serialised with orjson straight to bytes; FastAPI's response-model validation would cost more than the model.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import numpy as np
import orjson
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from exampass_api.schemas import EXPLANATION_TOP_K, MAX_BATCH, BatchIn, StudentIn
from exampass_api.scorer import CODES, FEATURES, encode, top_contributions
from exampass_api.scorer.encoding import FloatArray, IndexArray
from exampass_api.services.advice import advise
from exampass_api.services.model_store import Bundle, ModelStore
from exampass_pipeline.contract import schema
from exampass_pipeline.contract.predlog import PredictionLog

T = TypeVar("T")


def new_prediction_id() -> str:
    """A version-4 UUID from the process's Mersenne Twister rather than ``os.urandom`` (~20 us a call here).

    Ids need to be unique, not secret: the generator is seeded from the OS at start and re-seeded after a
    fork, and 122 random bits make a collision across processes and years negligible.
    """
    n = (random.getrandbits(128) & _UUID_MASK) | _UUID_V4
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_prediction_ids(n: int) -> list[str]:
    """``n`` version-4 UUIDs at once: one random draw, then hex digits and dashes laid out by numpy."""
    raw = np.frombuffer(random.randbytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _HEX_POSITIONS] = _HEX_DIGITS[nibbles]
    joined = text.tobytes().decode("ascii")
    return [joined[i : i + 36] for i in range(0, 36 * n, 36)]


_HEX_DIGITS: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_POSITIONS: Final = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
# Clear the version nibble and the two variant bits, then set version 4 and the RFC 4122 variant (0b10).
_UUID_MASK: Final = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_V4: Final = (0x4 << 76) | (0x2 << 62)


class PayloadTooLarge(Exception):
    """The request is over a size limit: answered 413 with this message, which states the limit."""


class BatchTooLarge(PayloadTooLarge):
    """More students than MAX_BATCH, detected before any of them is validated."""

    def __init__(self, count: int) -> None:
        super().__init__(
            f"batch of {count} students is over the limit of {MAX_BATCH} students per request; "
            f"split it into batches of at most {MAX_BATCH}"
        )


class BodyErrors(Exception):
    """Pydantic-style error dicts (loc starts with 'body'), rendered by the app's validation handler."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        super().__init__("invalid body")
        self.errors = list(errors)


TOO_DEEP: Final[Mapping[str, Any]] = {"type": "json_too_deep", "loc": ("body",), "msg": "nested too deeply"}
_NOT_A_BATCH: Final = f'expected a JSON object {{"students": [...]}} with 1 to {MAX_BATCH} students'


@dataclass(frozen=True)
class ParsedBatch:
    """Validated students, plus their scorer encoding when the shortcut already computed it."""

    records: list[dict[str, Any]]
    codes: np.ndarray | None = None
    nums: np.ndarray | None = None


def load_json(raw: bytes) -> Any:
    """Body bytes to a JSON value, or BodyErrors saying what is wrong with the document.

    orjson parses a large body several times faster than the standard library; it refuses NaN/Infinity,
    which the standard parser accepts, so a body orjson refuses is re-read by ``json`` to tell a malformed
    document from a non-finite score (which gets the per-field message).
    """
    if not raw.strip():
        raise BodyErrors([{"type": "missing", "loc": ("body",), "msg": "empty body", "input": None}])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except RecursionError as exc:  # orjson stops at 1,024 levels; the standard parser hits the stack
            raise BodyErrors([TOO_DEEP]) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            pos = getattr(exc, "pos", getattr(exc, "start", 0))
            error = getattr(exc, "msg", str(exc))
            raise BodyErrors(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", pos),
                        "msg": "JSON decode error",
                        "ctx": {"error": error},
                    }
                ]
            ) from exc


def _body_errors(exc: ValidationError) -> BodyErrors:
    return BodyErrors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])


def parse_student(raw: bytes) -> dict[str, Any]:
    """One student's body bytes to a validated record, in one pydantic pass over the bytes.

    Declaring the student as a FastAPI body parameter costs about 40 us more per request (FastAPI decodes
    the JSON, then validates the dict): a fifth of a /predict answer. A body pydantic cannot parse as JSON
    is re-read by ``load_json``, so malformed, empty or non-finite input gets the same errors as on
    /predict/batch.
    """
    try:
        return StudentIn.model_validate_json(raw).__dict__
    except ValidationError as exc:
        if not any(e["type"] == "json_invalid" for e in exc.errors()):
            raise _body_errors(exc) from exc
    data = load_json(raw)
    try:
        return StudentIn.model_validate(data).__dict__
    except ValidationError as exc:
        raise _body_errors(exc) from exc


def parse_batch(raw: bytes) -> ParsedBatch:
    """Body bytes to validated student records, counting them before validating any."""
    data = load_json(raw)
    if (
        isinstance(data, dict)
        and isinstance(data.get("students"), list)
        and len(data["students"]) > MAX_BATCH
    ):
        raise BatchTooLarge(len(data["students"]))
    if not isinstance(data, dict):
        raise BodyErrors([{"type": "batch_type", "loc": ("body",), "msg": _NOT_A_BATCH, "input": data}])
    students = data.get("students")
    if data.keys() == {"students"} and isinstance(students, list) and students:
        encoded = encode_plain(students)
        if encoded is not None:
            return ParsedBatch(students, *encoded)
    try:
        batch = BatchIn.model_validate(data)
    except ValidationError as exc:
        raise _body_errors(exc) from exc
    return ParsedBatch([student.__dict__ for student in batch.students])


_KEYS: Final = frozenset(schema.FEATURES)
_G, _R, _P, _L, _T = (CODES[name] for name in schema.CATEGORICAL_FEATURES)
_GENDER, _RACE, _PARENT, _LUNCH, _PREP = schema.CATEGORICAL_FEATURES
_READING, _WRITING = schema.NUMERIC_FEATURES


def encode_plain(rows: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The scorer's (codes, nums) for rows StudentIn would accept *unchanged*, or None if any row is not such.

    "Plain" means: a dict with exactly the seven keys, categories spelled as in the schema, scores that are
    ints from 0 to 100. A batch made only of such rows (what a well-behaved client sends) skips pydantic,
    whose per-field score validator costs more per row than scoring the row, and is encoded in the same
    pass. Anything else (a 72.0, a typo, a bool) goes to StudentIn, which stays the only judge of validity
    and the only author of error messages: this shortcut only ever says yes to a subset of what StudentIn
    accepts unchanged (tested against it).
    """
    codes: list[tuple[int, int, int, int, int]] = []
    nums: list[tuple[int, int]] = []
    low, high = schema.SCORE_MIN, schema.SCORE_MAX
    try:
        for row in rows:
            if type(row) is not dict or row.keys() != _KEYS:
                return None
            reading, writing = row[_READING], row[_WRITING]
            if type(reading) is not int or type(writing) is not int:
                return None
            if not (low <= reading <= high and low <= writing <= high):
                return None
            # A value that is not one of the schema's strings is not a key: KeyError (or TypeError).
            codes.append(
                (_G[row[_GENDER]], _R[row[_RACE]], _P[row[_PARENT]], _L[row[_LUNCH]], _T[row[_PREP]])
            )
            nums.append((reading, writing))
    except (KeyError, TypeError):
        return None
    return np.array(codes, dtype=np.intp), np.array(nums, dtype=np.float64)


@dataclass(frozen=True)
class Scored:
    """One scoring of validated rows, in their order: what every multi-row answer is built from.

    /predict/batch, /predict/csv and the web page all go through ``PredictionService.score``, so a student
    gets the same float, the same decision and the same threshold whichever way they were sent.
    """

    version: str
    prediction_ids: list[str]
    probabilities: list[float]
    decisions: list[bool]
    thresholds: list[float]  # the cut-off applied to each row (``Bundle.thresholds``)
    contributions: FloatArray  # (n, len(FEATURES)) log-odds of passing, in FEATURES order
    order: IndexArray  # (n, top_k) feature indices by |contribution|, largest first (ties: schema order)


class CpuGate:
    """Runs the heavy part of a request (parsing and scoring a batch or a roster) in the thread pool, one at a time.

    That work holds the GIL almost throughout, so threads cannot run it in parallel; several at once only
    thrash the GIL. Measured with wrk on one worker: 1,000-student batches gave 73-85k rows/s one request at a
    time and 37-44k rows/s with 8 at once. Waiting for the gate costs nothing: the requests queue on the event
    loop, which keeps answering /predict in between. One gate per process, because the GIL is per process.
    """

    def __init__(self) -> None:
        self._slot = asyncio.Semaphore(1)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slot:
            return await run_in_threadpool(fn, *args)


class PredictionService:
    """Scores with whatever Bundle the caller captured, and logs through the shared PredictionLog."""

    def __init__(
        self, predlog: PredictionLog, store: ModelStore, top_k: int = EXPLANATION_TOP_K, advice: bool = True
    ) -> None:
        self.predlog = predlog
        self.store = store
        self.top_k = top_k
        self.advice = advice
        self.cpu = CpuGate()

    def advice_for(self, bundle: Bundle, record: Mapping[str, Any], passed: bool) -> dict[str, Any] | None:
        """The one place that decides whether a student gets advice: flagged, and advice not switched off."""
        return advise(bundle, record) if self.advice and not passed else None

    def bundle(self) -> Bundle:
        """The model this request is answered with, read once (a swap mid-request cannot mix versions);
        503 with the reason while no champion is loaded."""
        bundle = self.store.bundle
        if bundle is None:
            raise HTTPException(503, self.store.unavailable_reason)
        return bundle

    def predict_one(self, bundle: Bundle, record: Mapping[str, Any], client: str) -> bytes:
        proba, contributions = bundle.scorer.explain_one(record)
        predicted = proba >= bundle.threshold_for(record)
        prediction_id = new_prediction_id()
        self.predlog.log_prediction(
            record, proba, predicted, bundle.version, prediction_id=prediction_id, client=client
        )
        answer = {
            "prediction_id": prediction_id,
            "pass_probability": proba,
            "predicted_pass": predicted,
            "model_version": bundle.version,
            "explanation": top_contributions(record, contributions, self.top_k),
        }
        advice = self.advice_for(bundle, record, predicted)
        if advice is not None:
            answer["advice"] = advice
        return orjson.dumps(answer)

    def score(
        self,
        bundle: Bundle,
        records: list[dict[str, Any]],
        client: str,
        codes: np.ndarray | None = None,
        nums: np.ndarray | None = None,
    ) -> Scored:
        """Score validated records in one array call, then log one line per row (in order, with ``client``).

        ``codes``/``nums`` are the records' scorer encoding when the caller already has it. Nothing is
        logged for an empty list.
        """
        version = bundle.version
        if not records:
            empty = np.zeros((0, len(FEATURES)))
            return Scored(version, [], [], [], [], empty, np.zeros((0, 0), dtype=np.intp))
        if codes is None or nums is None:
            codes, nums = encode(records)
        proba, contributions = bundle.scorer.explain(codes, nums)
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, : self.top_k]
        ids = new_prediction_ids(len(records))
        probabilities = proba.tolist()
        cutoffs = bundle.thresholds(codes)
        decisions = (proba >= cutoffs).tolist()
        self.predlog.log_predictions(
            records, probabilities, decisions, version, ids, datetime.now(UTC), client=client
        )
        return Scored(version, ids, probabilities, decisions, cutoffs.tolist(), contributions, order)

    def predict_batch(self, bundle: Bundle, batch: ParsedBatch, client: str) -> bytes:
        """All rows in one array call (``score``), answered in order."""
        records = batch.records
        scored = self.score(bundle, records, client, batch.codes, batch.nums)
        top = np.take_along_axis(scored.contributions, scored.order, axis=1)
        version = scored.version
        answers = []
        rows = zip(
            records,
            scored.prediction_ids,
            scored.probabilities,
            scored.decisions,
            scored.order.tolist(),
            top.tolist(),
            strict=True,
        )
        for record, prediction_id, p, decision, features, values in rows:
            answers.append(
                {
                    "prediction_id": prediction_id,
                    "pass_probability": p,
                    "predicted_pass": decision,
                    "model_version": version,
                    "explanation": [
                        {"feature": FEATURES[j], "value": record[FEATURES[j]], "contribution": c}
                        for j, c in zip(features, values, strict=True)
                    ],
                }
            )
        return orjson.dumps({"model_version": version, "predictions": answers})
