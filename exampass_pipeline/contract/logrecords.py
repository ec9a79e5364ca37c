"""What a log record must hold to be trusted: the reference reader's checks of one parsed JSON object.

Kept apart from ``predlog`` (the format, the writer, the reader) so each stays a readable size; the reasons
raised here are the quarantine reasons every reader reports (``predlog.parse_line``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from exampass_pipeline.contract import schema

__all__ = ["CLIENT", "UNATTRIBUTED", "check_feedback", "check_prediction"]


def _parse_timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("timestamp is not a string")
    ts = datetime.fromisoformat(value)
    if ts.tzinfo is None:
        raise ValueError("timestamp has no timezone")
    return ts.astimezone(UTC)


# Lines written before clients were recorded have none; they stay usable, marked as such.
UNATTRIBUTED = "unattributed"
CLIENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def _client(obj: Mapping[str, Any]) -> str:
    client = obj.get("client", UNATTRIBUTED)
    if not isinstance(client, str) or not CLIENT.fullmatch(client):
        raise ValueError(f"client {schema.shown(client)} is not a client name")
    return client


def check_prediction(obj: Mapping[str, Any]) -> dict[str, Any]:
    uuid.UUID(str(obj["prediction_id"]))
    inputs = obj["inputs"]
    if not isinstance(inputs, Mapping):
        raise ValueError("inputs is not an object")
    errors = schema.validate_record(inputs)
    if errors:
        raise ValueError("; ".join(map(str, errors)))
    p = obj["pass_probability"]
    if not isinstance(p, int | float) or isinstance(p, bool) or not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError(f"pass_probability {p!r} is not a probability")
    if not isinstance(obj["predicted_pass"], bool):
        raise ValueError("predicted_pass is not a boolean")
    return {
        "prediction_id": str(obj["prediction_id"]),
        "timestamp": _parse_timestamp(obj["timestamp"]),
        "model_version": str(obj["model_version"]),
        "client": _client(obj),
        **{
            name: inputs[name] if name in schema.CATEGORIES else int(inputs[name]) for name in schema.FEATURES
        },
        "pass_probability": float(p),
        "predicted_pass": obj["predicted_pass"],
    }


def check_feedback(obj: Mapping[str, Any]) -> dict[str, Any]:
    uuid.UUID(str(obj["prediction_id"]))
    err = schema.score_error(obj["math_score"])
    if err:
        raise ValueError(f"math_score: {err}")
    return {
        "prediction_id": str(obj["prediction_id"]),
        "timestamp": _parse_timestamp(obj["timestamp"]),
        "client": _client(obj),
        "math_score": int(obj["math_score"]),
    }
