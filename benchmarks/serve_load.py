"""What ``benchmarks/serve.py`` runs in processes of their own: the bare server and the load generator.

    python benchmarks/serve_load.py bare PORT
    BENCH_AUTH='Bearer …' python benchmarks/serve_load.py loadgen URL BODY SECONDS CONNECTIONS CONTENT_TYPE

Kept apart from the orchestration so each file reads at one sitting; ``WRK_SCRIPT`` is the same measurement
for wrk, when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Module level on purpose: with postponed annotations FastAPI resolves the endpoint's parameter type here.
from exampass_api.schemas import StudentIn

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = auth end
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_s": %f, "p50_ms": %f, "p99_ms": %f, "non2xx": %d, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# ----------------------------------------------------------------------------------------------------------
# The bare server and the Python load generator (run as subprocesses of this same file)
# ----------------------------------------------------------------------------------------------------------


def bare_app() -> Any:
    """The floor: same framework, same request model and validation, no model, no log."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/predict")
    async def predict(student: StudentIn) -> dict[str, bool]:  # type: ignore[valid-type]
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_bare(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float], counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status.split(b" ", 2)[1].startswith(b"2"):
                counts["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError):
        counts["errors"] += 1
    finally:
        writer.close()


def run_python_loadgen(
    url: str, body_file: Path, duration: float, connections: int, content_type: str, auth: str
) -> dict[str, float]:
    """Keep-alive HTTP/1.1 clients on raw asyncio streams: cheap enough not to be the bottleneck."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    body = body_file.read_bytes()
    authorization = f"Authorization: {auth}\r\n" if auth else ""
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: {content_type}\r\n{authorization}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    counts = {"non2xx": 0, "errors": 0}

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(
            *(_connection(host, int(port), request, deadline, latencies, counts) for _ in range(connections))
        )
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")
        )

    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "non2xx": counts["non2xx"],
        "errors": counts["errors"],
    }


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        run_bare(int(sys.argv[2]))
    elif sys.argv[1] == "loadgen":
        figures = run_python_loadgen(
            sys.argv[2],
            Path(sys.argv[3]),
            float(sys.argv[4]),
            int(sys.argv[5]),
            sys.argv[6],
            os.environ.get("BENCH_AUTH", ""),  # a token stays out of the process list
        )
        print("RESULT " + json.dumps(figures))
