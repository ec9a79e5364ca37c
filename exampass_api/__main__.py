"""``exampass-api`` / ``python -m exampass_api``: run the service under uvicorn.

Host, port, worker count and the model poll interval come from the environment (EXAMPASS_API_HOST,
EXAMPASS_API_PORT, EXAMPASS_API_WORKERS, EXAMPASS_MODEL_POLL_S) through ``Settings``, so ``make serve``,
Docker and the tests configure it the same way; the flags only override them for one run. The app is built
by a factory so each worker process owns its own model store and log descriptors (appends stay atomic
across processes because every line is one O_APPEND write).
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

from exampass_api.core.keystore import KeyStoreError, read_store
from exampass_api.core.metrics_dir import prepare_multiprocess_dir, remove_multiprocess_dir
from exampass_pipeline.contract.settings import Settings


def _log_config(level: str) -> dict[str, object]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["exampass_api"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exampass-api", description="Serve the ExamPass champion model.")
    settings = Settings.for_command(parser)
    parser.add_argument("--host", default=settings.api_host, help="default: EXAMPASS_API_HOST or 127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=settings.api_port, help="default: EXAMPASS_API_PORT or 8000"
    )
    parser.add_argument(
        "--workers", type=int, default=settings.api_workers, help="default: EXAMPASS_API_WORKERS or 1"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: the prediction log has them)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers / EXAMPASS_API_WORKERS must be at least 1, got {args.workers}")
    try:  # a broken key store must stop the service here, with its reason, not in every worker
        read_store(settings.api_keys_file)
    except KeyStoreError as exc:
        parser.exit(1, f"exampass-api: cannot start: {exc}\n")
    # Several workers count into one directory so a scrape of any of them reports the whole service.
    metrics_dir = prepare_multiprocess_dir(args.workers)
    try:
        _run(args, settings)
    finally:
        remove_multiprocess_dir(metrics_dir)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "exampass_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=_log_config(args.log_level),
        access_log=args.access_log,
        # The client address is the connection's own unless it comes from a proxy the operator trusts:
        # anonymous rate limits are per address, so a client-supplied X-Forwarded-For must not move it.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or "",
    )


if __name__ == "__main__":
    main()
