"""Two API replicas behind the proxy, in the running stack: one service to a caller, however it is split.

Uses the session's stack (tests/deploy/conftest.py), after tests/deploy/test_stack.py. What a caller must not be
able to tell: which replica answered. A key made once works on both; the rate limit is counted once in Redis,
not once per replica; every answered prediction is in the one log both replicas write, and only those; the
metrics and the contract for bad input hold through the proxy. Each replica is also asked directly, from
inside its own container, so "both answered" is seen, not assumed.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import partial
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from stack_support import Stack, http, wait_for
from support import PAGE_STUDENT

REPLICAS = ("api", "api-2")
LOCAL = "http://127.0.0.1:8000"  # a replica asked on its own loopback, inside its container
PREDICT_200 = ("exampass_http_requests_total", {"route": "/predict", "method": "POST", "status": "200"})

# Runs inside a container with the image's Python: POST each body to URL, print the statuses as JSON.
POSTER = """
import json, sys, urllib.error, urllib.request
url, token, count, body = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
statuses = []
for _ in range(count):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            statuses.append(answer.status)
    except urllib.error.HTTPError as exc:
        statuses.append(exc.code)
print(json.dumps(statuses))
"""
GETTER = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())
"""


def inside(stack: Stack, service: str, script: str, *args: str) -> str:
    """Run ``script`` with the image's Python in ``service``'s container; its standard output."""
    return stack.compose("exec", "-T", service, "python", "-c", script, *args, timeout=600).stdout


def post_from(
    stack: Stack, service: str, url: str, body: dict[str, Any], count: int = 1, token: str = ""
) -> list[int]:
    out = inside(stack, service, POSTER, url, token, str(count), json.dumps(body))
    return list(json.loads(out.strip().splitlines()[-1]))


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def replica_count(stack: Stack, service: str, sample: tuple[str, dict[str, str]]) -> float:
    """One replica's own counter, asked on its own loopback (never through the proxy)."""
    values = scrape(inside(stack, service, GETTER, "http://127.0.0.1:8000/metrics"))
    name, labels = sample
    return values.get((name, frozenset(labels.items())), 0.0)


def public_limit(stack: Stack) -> int:
    """The per-address limit the replicas run with, as Compose hands it to them (e.g. 60/minute -> 60)."""
    config = yaml.safe_load(stack.compose("config").stdout)
    text = str(config["services"]["api"]["environment"]["EXAMPASS_RATE_LIMIT_PUBLIC"])
    assert text == config["services"]["api-2"]["environment"]["EXAMPASS_RATE_LIMIT_PUBLIC"]
    match = re.fullmatch(r"(\d+)\s*/\s*(?:1\s+)?minute", text.strip())
    assert match, f"this test counts a per-minute limit, not {text!r}"
    return int(match.group(1))


def test_a_key_made_once_works_on_every_replica(stack: Stack) -> None:
    name = f"replicas-{uuid.uuid4().hex[:6]}"
    done = stack.compose("exec", "-T", "api", "exampass-apikey", "create", name, "--scope", "feedback")
    token = done.stdout.strip().splitlines()[-1]
    for service in REPLICAS:
        ready = json.loads(inside(stack, service, GETTER, f"{LOCAL}/ready").strip().splitlines()[-1])
        assert ready["model_version"] == stack.champion(), (service, ready)
        assert post_from(stack, service, f"{LOCAL}/predict", dict(PAGE_STUDENT)) == [200], service
        wait_for(
            f"{service} to accept the key made in api", partial(key_status, stack, service, token, 422), 120
        )
    assert stack.compose("exec", "-T", "api", "exampass-apikey", "revoke", name).returncode == 0
    for service in REPLICAS:
        wait_for(f"{service} to refuse the revoked key", partial(key_status, stack, service, token, 401), 120)


def key_status(stack: Stack, service: str, token: str, expected: int) -> bool:
    """Whether ``service`` answers ``expected`` to feedback with ``token``: 422 (the key passed, the body is
    incomplete) or 401 (the key is refused)."""
    return post_from(stack, service, f"{LOCAL}/feedback", {"prediction_id": "x"}, token=token) == [expected]


def test_the_rate_limit_is_counted_once_across_replicas_and_every_answer_is_logged(stack: Stack) -> None:
    """From a fresh address (the code server's container), limit + 20 predictions through the proxy.

    Limits kept per replica would let about twice the limit through; one count in Redis lets exactly the
    limit through. The log grows by exactly the answered predictions (a refused one is never logged), and
    both replicas answered some of them."""
    limit = public_limit(stack)
    before_lines = stack.prediction_log_lines()
    before = {s: replica_count(stack, s, PREDICT_200) for s in REPLICAS}
    statuses = post_from(
        stack, "dagster-code", "http://proxy:8000/predict", dict(PAGE_STUDENT), count=limit + 20
    )
    assert statuses.count(200) == limit, f"{statuses.count(200)} answered with a limit of {limit}: {statuses}"
    assert statuses.count(429) == 20, statuses
    grown = {s: replica_count(stack, s, PREDICT_200) - before[s] for s in REPLICAS}
    assert all(n > 0 for n in grown.values()), f"the proxy sent every request to one replica: {grown}"
    assert sum(grown.values()) == limit, grown
    assert stack.prediction_log_lines() - before_lines == limit, "every answer logged, and no refusal"


def test_metrics_are_scraped_through_the_proxy(stack: Stack) -> None:
    status, body, headers = http("GET", stack.url("api", "/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain"), (status, body[:200])
    values = scrape(body.decode())
    served = {
        dict(labels).get("pid"): v
        for (name, labels), v in values.items()
        if name == "exampass_model_version_served"
    }
    assert served and set(served.values()) == {float(stack.champion())}, served
    assert values.get((PREDICT_200[0], frozenset(PREDICT_200[1].items())), 0.0) >= 1


def test_unusual_requests_get_a_4xx_through_the_proxy_never_a_5xx(stack: Stack) -> None:
    json_type = {"Content-Type": "application/json"}
    student = dict(PAGE_STUDENT)
    cases: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("POST", "/predict", b"{", json_type),
        ("POST", "/predict", b"null", json_type),
        ("POST", "/predict", json.dumps({**student, "reading_score": 1e309}).encode(), json_type),
        ("POST", "/predict", json.dumps({**student, "reading_score": "NaN"}).encode(), json_type),
        (
            "POST",
            "/predict",
            json.dumps({k: v for k, v in student.items() if k != "lunch"}).encode(),
            json_type,
        ),
        ("POST", "/predict", json.dumps({**student, "math_score": 80}).encode(), json_type),
        ("POST", "/predict", json.dumps(student).encode(), {"Content-Type": "text/plain"}),
        ("POST", "/predict", b"\xff\xfe" * 64, json_type),
        ("POST", "/predict", b"[" * 100_000, json_type),
        ("POST", "/predict/csv", b"\x00\x01\x02garbage", {"Content-Type": "text/csv"}),
        ("POST", "/predict/batch", b"{" + b" " * (10 * 1024 * 1024 + 512 * 1024) + b"}", json_type),
        ("GET", "/predict", None, {}),
        ("GET", "/../../etc/passwd", None, {}),
        ("POST", "/feedback", b"{}", {**json_type, "Authorization": "Bearer nope"}),
    ]
    seen = []
    for method, path, body, headers in cases:
        status, answer, _ = http(method, stack.url("api", path), body, headers, timeout=60)
        seen.append((method, path, status))
        assert 400 <= status < 500, f"{method} {path} (body {str(body)[:60]}): {status} {answer[:300]!r}"
    assert any(status == 422 for _, _, status in seen), seen
