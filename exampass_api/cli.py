"""``exampass-apikey``: create, list, rotate and revoke the keys that may write to (or read from) the API.

The token is printed once, as the last line of standard output, so a script can capture it with
``token=$(exampass-apikey create NAME --scope feedback | tail -n 1)``; it is stored nowhere. Everything else
goes to standard error or is a listing that never contains a token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exampass_api.core.keystore import (
    SCOPES,
    KeyRequestError,
    KeyStoreError,
    create_key,
    last_used,
    read_store,
    revoke_key,
    rotate_key,
)
from exampass_pipeline.contract.settings import Settings, restrict_new_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exampass-apikey",
        description="Manage ExamPass API keys (stored hashed in EXAMPASS_API_KEYS_FILE; tokens are shown once).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print its token once")
    create.add_argument(
        "name", help="who holds it, e.g. grades-export (appears in every log record it writes)"
    )
    create.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="repeat for several scopes"
    )
    commands.add_parser("list", help="names, scopes, created and last-used times (never tokens)")
    rotate = commands.add_parser("rotate", help="a new token for a key; the old one stops working")
    rotate.add_argument("name")
    revoke = commands.add_parser("revoke", help="delete a key; the API refuses it within seconds")
    revoke.add_argument("name")
    return parser


def _listing(settings: Settings) -> str:
    keys = sorted(read_store(settings.api_keys_file).values(), key=lambda k: k.name)
    if not keys:
        return f"no keys in {settings.api_keys_file}"
    rows = [("name", "scopes", "created", "last used")]
    for key in keys:
        used = last_used(settings.api_keys_file, key)
        rows.append(
            (key.name, ",".join(sorted(key.scopes)), key.created_at, used.isoformat() if used else "never")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.for_command(parser)
    restrict_new_files()
    path = settings.api_keys_file
    try:
        if args.command == "create":
            token = create_key(path, args.name, args.scope)
            print(f"created key {args.name!r} with scope(s) {', '.join(sorted(set(args.scope)))} in {path}")
            print(
                "the token below is shown once and stored nowhere; send it as 'Authorization: Bearer <token>'"
            )
            print(token)
        elif args.command == "rotate":
            token = rotate_key(path, args.name)
            print(f"rotated key {args.name!r}: the old token no longer works")
            print(token)
        elif args.command == "revoke":
            revoke_key(path, args.name)
            print(f"revoked key {args.name!r}; a running API refuses it within a few seconds")
        else:
            print(_listing(settings))
    except KeyRequestError as exc:
        parser.error(str(exc))
    except KeyStoreError as exc:
        print(f"exampass-apikey: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
