"""The API key store: who may call the API, with which scopes. Names, scopes and salted hashes, never tokens.

A token is ``xp_<id>_<secret>``: ``id`` (12 hex digits) names the stored entry so a request costs one dict
lookup and one SHA-256, and ``secret`` (256 random bits) is what is hashed. Tokens carry that much entropy,
so a salted SHA-256 is as strong as a slow password hash against a stolen store, and keeps authentication
in the microseconds a public prediction service needs. Comparison is constant-time, and an unknown id is
compared against a dummy hash, so timing tells an attacker nothing about which ids exist.

The store is one JSON file (``EXAMPASS_API_KEYS_FILE``, default ``EXAMPASS_HOME/api_keys.json``, mode 0600).
Writers (``exampass-apikey``) hold an exclusive ``flock`` on a sibling lock file for the whole
read-modify-write and replace the file atomically, so concurrent ``create`` calls lose nothing and a reader
never sees half a file. The API only reads it (``KeyRing``) and re-reads it when it changes, so a revoked key
is refused within seconds without a restart. Last use is recorded beside it, one empty file per key whose
modification time is the last use, so the API never rewrites the store itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

SCOPES: Final = ("predict", "feedback", "admin")
ADMIN: Final = "admin"
PUBLIC: Final = "public"
# Names a key may not take: they already mean something in the logs and the training table.
RESERVED_NAMES: Final = frozenset({PUBLIC, "curated", "kaggle", "synthetic", "production", "unattributed"})
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TOKEN_PATTERN: Final = re.compile(r"xp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
FORMAT: Final = 1
# How often the API looks at the store's file for changes, and records a key's last use.
CHECK_INTERVAL_S: Final = 1.0
LAST_USED_INTERVAL_S: Final = 60.0
_DUMMY_SALT: Final = bytes(16)


class KeyStoreError(Exception):
    """The store cannot be read or is not a key store; the message names the file and what is wrong."""


class KeyRequestError(ValueError):
    """A request about a key that cannot be done (bad name, unknown key, unknown scope)."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key: everything but the token, which is never stored."""

    name: str
    key_id: str
    scopes: frozenset[str]
    salt: str
    digest: str
    created_at: str

    def allows(self, scope: str) -> bool:
        """``admin`` holds every scope: the key that may approve a promotion may also report outcomes."""
        return scope in self.scopes or ADMIN in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.key_id,
            "scopes": sorted(self.scopes),
            "salt": self.salt,
            "sha256": self.digest,
            "created_at": self.created_at,
        }


def _hash(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def _entry(raw: object, path: Path) -> ApiKey:
    if not isinstance(raw, Mapping):
        raise KeyStoreError(f"{path}: a key entry is not an object")
    try:
        key = ApiKey(
            name=str(raw["name"]),
            key_id=str(raw["id"]),
            scopes=frozenset(str(s) for s in raw["scopes"]),
            salt=str(raw["salt"]),
            digest=str(raw["sha256"]),
            created_at=str(raw["created_at"]),
        )
        bytes.fromhex(key.salt)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"{path}: a key entry is malformed ({type(exc).__name__}: {exc})") from None
    if not NAME_PATTERN.fullmatch(key.name) or not re.fullmatch(r"[0-9a-f]{12}", key.key_id):
        raise KeyStoreError(f"{path}: key entry {key.name!r} has an invalid name or id")
    if not key.scopes <= set(SCOPES):
        raise KeyStoreError(f"{path}: key {key.name!r} has unknown scopes {sorted(key.scopes - set(SCOPES))}")
    return key


def parse_store(text: str, path: Path) -> dict[str, ApiKey]:
    """Keys by id, refusing anything that is not exactly a key store (a half-edited file is an error)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyStoreError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("keys"), list):
        raise KeyStoreError(
            f"{path}: not an ExamPass key store (expected {{'format': {FORMAT}, 'keys': [...]}})"
        )
    keys = [_entry(raw, path) for raw in data["keys"]]
    by_id = {key.key_id: key for key in keys}
    if len(by_id) != len(keys) or len({key.name for key in keys}) != len(keys):
        raise KeyStoreError(f"{path}: duplicate key names or ids")
    return by_id


def read_store(path: Path) -> dict[str, ApiKey]:
    """The keys in the file; a missing file is an empty store (no keys created yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"{path}: cannot be read ({exc})") from None
    return parse_store(text, path)


def usage_dir(path: Path) -> Path:
    """Where last-use times are kept: beside the store, so moving the store moves them too."""
    return path.with_name(path.stem + ".last_used")


# -------------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write(path: Path, keys: Mapping[str, ApiKey]) -> None:
    """Replace the store atomically: a temp file (0600) in the same folder, fsync, rename."""
    body = json.dumps({"format": FORMAT, "keys": [k.to_json() for k in keys.values()]}, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".api_keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise KeyRequestError(
            f"name: {name!r} is not a key name (1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
        )
    if name in RESERVED_NAMES:
        raise KeyRequestError(f"name: {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
    return name


def check_scopes(scopes: list[str]) -> frozenset[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise KeyRequestError(f"scope: {unknown or 'none'} given; choose one or more of {', '.join(SCOPES)}")
    return frozenset(scopes)


def _new_key(name: str, scopes: frozenset[str]) -> tuple[ApiKey, str]:
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    key = ApiKey(name, key_id, scopes, salt.hex(), _hash(salt, secret), created)
    return key, f"xp_{key_id}_{secret}"


def create_key(path: Path, name: str, scopes: list[str]) -> str:
    """Add a key and return its token, which exists nowhere else: the caller shows it once."""
    check_name(name)
    wanted = check_scopes(scopes)
    with _locked(path):
        keys = read_store(path)
        if any(k.name == name for k in keys.values()):
            raise KeyRequestError(f"name: a key named {name!r} exists; revoke or rotate it instead")
        key, token = _new_key(name, wanted)
        _write(path, {**keys, key.key_id: key})
    return token


def rotate_key(path: Path, name: str) -> str:
    """A new token for an existing name and its scopes; the old token stops working at once."""
    with _locked(path):
        keys = read_store(path)
        old = next((k for k in keys.values() if k.name == name), None)
        if old is None:
            raise KeyRequestError(f"name: no key named {name!r}")
        key, token = _new_key(name, old.scopes)
        _write(path, {**{i: k for i, k in keys.items() if i != old.key_id}, key.key_id: key})
    _forget_usage(path, old.key_id)
    return token


def revoke_key(path: Path, name: str) -> ApiKey:
    with _locked(path):
        keys = read_store(path)
        old = next((k for k in keys.values() if k.name == name), None)
        if old is None:
            raise KeyRequestError(f"name: no key named {name!r}")
        _write(path, {i: k for i, k in keys.items() if i != old.key_id})
    _forget_usage(path, old.key_id)
    return old


def _forget_usage(path: Path, key_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (usage_dir(path) / key_id).unlink()


def last_used(path: Path, key: ApiKey) -> datetime | None:
    try:
        stamp = (usage_dir(path) / key.key_id).stat().st_mtime
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(stamp, UTC).replace(microsecond=0)


# -------------------------------------------------------------------------------------------------- reading
@dataclass
class KeyRing:
    """The API's view of the store: loaded at start-up (a broken store stops the API), then kept current.

    At most every CHECK_INTERVAL_S a request stats the file; when its identity changed it is re-read. A store
    that became unreadable or corrupt while the API runs keeps the last good keys serving and logs the error
    once: an operator's typo must not lock every client out, and it must not let anyone in either.
    """

    path: Path
    keys: dict[str, ApiKey] = field(default_factory=dict)
    _stamp: tuple[int, int, int, int] | None = None
    _checked: float = 0.0
    _reported: str | None = None
    _used: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        ring = cls(Path(path))
        ring.keys = read_store(ring.path)
        ring._stamp = ring._identity()
        ring._checked = time.monotonic()
        if not ring.keys:
            log.warning(
                "no API keys in %s: routes that need a key refuse everyone (see exampass-apikey)", path
            )
        return ring

    @property
    def problem(self) -> str | None:
        """Why the store's current contents are not in force (the last good keys are), or None."""
        return self._reported

    def _identity(self) -> tuple[int, int, int, int] | None:
        # ctime too: a chmod that makes the store unreadable changes nothing else, and must be noticed.
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def refresh(self, *, now: bool = False) -> None:
        """Re-read the store if the file changed; keep the last good keys if it cannot be read.

        ``now`` skips the interval: a token whose id is unknown may belong to a key created a moment ago, and
        looking costs one ``stat`` (the file is only re-read when it really changed).
        """
        started = time.monotonic()
        if not now and started - self._checked < CHECK_INTERVAL_S:
            return
        with self._lock:
            self._checked = started
            stamp = self._identity()
            if stamp == self._stamp:
                return
            try:
                keys = read_store(self.path)
            except KeyStoreError as exc:
                if str(exc) != self._reported:
                    self._reported = str(exc)
                    log.error("API key store changed but cannot be used; keeping the last good keys: %s", exc)
                return
            self.keys, self._stamp, self._reported = keys, stamp, None
            log.info("API key store reloaded: %d key(s)", len(keys))

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to, or None; constant-time in the secret whatever the id."""
        self.refresh()
        match = TOKEN_PATTERN.fullmatch(token)
        key_id, secret = match.groups() if match else ("", token)
        key = self.keys.get(key_id)
        if key is None and match:
            self.refresh(now=True)
            key = self.keys.get(key_id)
        salt = bytes.fromhex(key.salt) if key else _DUMMY_SALT
        expected = key.digest if key else "0" * 64
        if hmac.compare_digest(_hash(salt, secret), expected) and key is not None:
            self._note_use(key)
            return key
        return None

    def _note_use(self, key: ApiKey) -> None:
        now = time.monotonic()
        if now - self._used.get(key.key_id, -LAST_USED_INTERVAL_S) < LAST_USED_INTERVAL_S:
            return
        self._used[key.key_id] = now
        folder = usage_dir(self.path)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            os.close(os.open(folder / key.key_id, os.O_WRONLY | os.O_CREAT, 0o600))
            os.utime(folder / key.key_id)
        except OSError as exc:  # a read-only store is a deployment choice, not a reason to refuse a client
            log.warning("could not record the last use of key %s: %s", key.name, exc)
