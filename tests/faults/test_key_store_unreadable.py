"""The API key store becomes unreadable while the API runs, then is repaired.

Running as root, ``chmod 000`` would not stop a read, so the store is broken in ways that really make the read
fail: it becomes a directory (through a symlink swapped in atomically), bytes that are not UTF-8, and JSON
that is not a key store. Each is swapped in with ``os.replace`` so that no check ever sees a missing file
(which is a legitimately empty store). Promised: the last good keys stay in force (the key in use still
works, an unknown token is still refused) and /ready, still 200, says why; repairing the file brings it back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from api_support import Server, clone_home, run_server, use_home
from faults_support import FaultRegistry, wait_for
from support import PAGE_STUDENT

RELOAD_WITHIN_S = 30.0  # the store is looked at every keystore.CHECK_INTERVAL_S (1 s) on a request


def _keys_path(server: Server) -> Path:
    """Where api_support.run_server created this server's key store."""
    return Path(server.logs_dir).parent / f"api-keys-{urlparse(server.url).port}.json"


def _swap_in(path: Path, make: Callable[[Path], object]) -> None:
    """Build the replacement next to ``path`` and rename it over the store in one step."""
    staged = path.with_name(path.name + ".staged")
    make(staged)
    os.replace(staged, path)


def _not_utf8(staged: Path) -> None:
    staged.write_bytes(b'{"keys": [\xff\xfe]}')


def _not_a_store(staged: Path) -> None:
    staged.write_text('{"keys": "everyone"}', encoding="utf-8")


def _a_directory(staged: Path) -> None:
    target = staged.with_name("a-directory")
    target.mkdir(exist_ok=True)
    staged.symlink_to(target)


def _key_store_state(server: Server) -> str:
    response = httpx.get(f"{server.url}/ready", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return str(body["key_store"])


def _predict(server: Server, headers: dict[str, str]) -> int:
    response = httpx.post(f"{server.url}/predict", json=PAGE_STUDENT, headers=headers, timeout=30)
    return response.status_code


def test_an_unreadable_key_store_keeps_the_last_good_keys_and_ready_says_so(
    fault_registry: FaultRegistry, tmp_path: Path
) -> None:
    home = clone_home(fault_registry.home, tmp_path)
    wrong = {"Authorization": "Bearer exk_0000000000000000.notasecret"}
    with use_home(home) as settings, run_server(settings, tmp_path / "logs") as server:
        server.wait_ready()
        store = _keys_path(server)
        good = store.read_bytes()
        assert _predict(server, server.headers) == 200
        assert _key_store_state(server) == "ok"

        for breakage in (_a_directory, _not_utf8, _not_a_store):
            _swap_in(store, breakage)
            state = wait_for(
                lambda: (state := _key_store_state(server)) != "ok" and state,
                f"/ready to report the key store broken by {breakage.__name__}",
                RELOAD_WITHIN_S,
            )
            assert str(store) in state and "the last good keys stay in force" in state, state
            assert _predict(server, server.headers) == 200, "the last good key stopped working"
            assert _predict(server, wrong) == 401, "a broken store let an unknown token in"

            _swap_in(store, lambda staged: staged.write_bytes(good))
            wait_for(
                lambda: _key_store_state(server) == "ok",
                f"/ready to report the repaired key store (after {breakage.__name__})",
                RELOAD_WITHIN_S,
            )
            assert _predict(server, server.headers) == 200
