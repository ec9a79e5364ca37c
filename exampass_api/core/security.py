"""Who is calling, what they may do, and how often: the API's trust boundary.

Every route that writes or scores declares a ``Guard`` among its dependencies. The route class
(``routing.ApiRoute``) runs the guard *before* the body is read, so a caller without the right key, or over
its rate, is refused without costing a parse and without anything being logged; the route then receives the
``Client`` as an ordinary dependency and names it in every log record it writes.

* ``/feedback`` always needs a key with the ``feedback`` scope: labels teach the next model.
* The predict routes are public unless ``EXAMPASS_PUBLIC_PREDICT=false``; then they need ``predict``.
* A request that sends a token is judged by it even where none is needed: a revoked or mistyped key gets a
  401, instead of silently becoming "public" and losing its attribution.
* ``admin`` holds every scope.
* The web page (``page``) cannot send a header from a plain HTML form, so its routes also take the key from
  the session cookie its "enter your key" form sets (``SESSION_COOKIE``). That token is verified exactly like
  a Bearer token (``identify_token``), with the same 401/403/429; a header, when sent, still wins.

Rate limits (the ``limits`` library, sliding-window counters, O(1) memory per caller): callers without a key
are counted per address (the connection's own address; ``X-Forwarded-For`` only from EXAMPASS_TRUSTED_PROXIES,
which uvicorn applies), keyed callers per key name. Counters live in ``EXAMPASS_RATE_LIMIT_STORAGE`` (memory
per worker by default; a ``redis://`` URI shares them across workers and replicas).

When the shared storage does not answer (Redis stopped, unreachable, timing out), the guarded routes fail
*closed*: 503 with the reason and a ``Retry-After``, never a 500 and never an uncounted answer. Open would let a
caller beat the limit whenever Redis is down, which is exactly when the service is least able to take it;
``/health``, ``/ready``, ``/model`` and ``/metrics`` are unguarded and keep answering, so the outage is visible.
Bound the wait with redis-py's URL options, e.g. ``redis://redis:6379/0?socket_timeout=1&socket_connect_timeout=1``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from exampass_api.core.keystore import PUBLIC, KeyRing
from exampass_api.services.prediction import PredictionService
from exampass_pipeline.contract.settings import Settings

PREDICT: Final = "predict"
# The web page's session cookie: the key a person typed into the page, kept by the browser until it closes.
SESSION_COOKIE: Final = "exampass_key"
FEEDBACK: Final = "feedback"
ADMIN: Final = "admin"
# Retry-After when the limiter's storage is down: long enough not to hammer it, short for a restart.
LIMITER_RETRY_S: Final = 5


@dataclass(frozen=True)
class Client:
    """The caller of one request, as the logs name it: a key's name, or ``public``."""

    name: str
    keyed: bool
    address: str


@dataclass(frozen=True)
class Caller:
    """One request's context: who is calling, and the service that answers them.

    One dependency rather than two (a guard and a service), because FastAPI solves every dependency on every
    request: measured, each costs 10-30 us, a tenth of a bare request, on the hot path of /predict.
    """

    client: Client
    service: PredictionService


class Refused(Exception):
    """A request refused at the boundary: answered with this status, detail and headers, never logged."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, *, keyed: bool | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.keyed = keyed  # for a spent rate: whether the caller had a key (the metrics tell them apart)


def _challenge(error: str, reason: str, scope: str | None = None) -> dict[str, str]:
    # RFC 6750: the scheme, and why, so a client library can tell "send a key" from "this key is wrong".
    extra = f', scope="{scope}"' if scope else ""
    return {
        "WWW-Authenticate": f'Bearer realm="exampass", error="{error}", error_description="{reason}"{extra}'
    }


def bearer_token(header: str) -> str:
    """The token of an ``Authorization`` header, or Refused(401) saying what is wrong with it."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        reason = "malformed Authorization header: expected 'Bearer <token>'"
        raise Refused(401, reason, _challenge("invalid_request", reason))
    return checked_token(token, "Authorization header")


def checked_token(token: str, source: str) -> str:
    """``token`` if it could be an ExamPass token at all, else Refused(401) naming where it came from."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        reason = f"malformed {source}: the token has characters no ExamPass token has"
        raise Refused(401, reason, _challenge("invalid_request", reason))
    return token


class SweepingMemoryStorage(MemoryStorage):
    """limits' in-memory storage, with expired counters swept in line instead of by a timer thread.

    MemoryStorage starts a new ``threading.Timer`` thread whenever the previous one finished, which under load
    is every 10 ms; each start costs a thread and GIL hand-offs on the request path (measured: about 100 us
    per request in the serving benchmark). Here the same sweep runs in the calling thread, at most once a
    second, so counters still expire and memory stays bounded. It replaces one private hook of limits
    (pinned in uv.lock; ``tests/api/test_security.py`` checks that no thread is started).
    """

    STORAGE_SCHEME = ["exampass-memory"]
    SWEEP_INTERVAL_S = 1.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the one-shot timer the base class started
        self._next_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the name limits calls
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_INTERVAL_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def _storage(uri: str) -> Storage:
    """The configured counter storage; the default in-process one sweeps without a timer thread."""
    if uri == "memory://":
        return SweepingMemoryStorage()
    # Wrapped, so any backend's own error arrives as limits' StorageError and ``_count`` can answer 503.
    storage = storage_from_string(uri, wrap_exceptions=True)
    if not isinstance(storage, Storage):  # an asyncio storage (async+redis://...) cannot serve sync limiters
        raise ValueError(f"EXAMPASS_RATE_LIMIT_STORAGE: {uri!r} is an asyncio storage; use a plain one")
    return storage


class Access:
    """One per app: the key ring, the limiter and the two limits, built from settings at start-up."""

    def __init__(self, settings: Settings, keyring: KeyRing) -> None:
        self.keyring = keyring
        self.public_predict = settings.public_predict
        self.limiter = SlidingWindowCounterRateLimiter(_storage(settings.rate_limit_storage))
        self.public_limit: RateLimitItem = parse(settings.rate_limit_public)
        self.keyed_limit: RateLimitItem | None = (
            parse(settings.rate_limit_keyed) if settings.rate_limit_keyed else None
        )

    def identify(self, request: Request, scope: str, *, cookie: bool = False) -> Client:
        """The client of a request to a route needing ``scope``, or Refused (401, 403 or 429).

        ``cookie``: the route belongs to the web page, which may carry its key in the session cookie.
        """
        header = request.headers.get("authorization")
        if header is not None:
            return self.identify_token(request, scope, bearer_token(header))
        session = request.cookies.get(SESSION_COOKIE) if cookie else None
        if session:
            return self.identify_token(request, scope, checked_token(session, "session key"))
        return self.identify_token(request, scope, None)

    def identify_token(self, request: Request, scope: str, token: str | None) -> Client:
        """The client presenting ``token`` (None: no key at all), or Refused (401, 403 or 429)."""
        address = request.client.host if request.client else "unknown"
        if token is None:
            if scope == PREDICT and self.public_predict:
                client = Client(PUBLIC, False, address)
                self._count(client, self.public_limit, f"address {address}")
                return client
            reason = f"this endpoint needs an API key with the '{scope}' scope: send 'Authorization: Bearer <token>'"
            raise Refused(401, reason, _challenge("invalid_request", reason, scope))
        key = self.keyring.verify(token)
        if key is None:
            reason = "unknown or revoked API key"
            raise Refused(401, reason, _challenge("invalid_token", reason))
        # A public route needs no scope: any valid key is welcome there, and names its holder in the log.
        if not (scope == PREDICT and self.public_predict) and not key.allows(scope):
            reason = (
                f"the key '{key.name}' lacks the '{scope}' scope (it has: {', '.join(sorted(key.scopes))})"
            )
            raise Refused(403, reason, _challenge("insufficient_scope", reason, scope))
        client = Client(key.name, True, address)
        if self.keyed_limit is not None:
            self._count(client, self.keyed_limit, f"key '{key.name}'")
        return client

    def _count(self, client: Client, limit: RateLimitItem, who: str) -> None:
        identity = client.name if client.keyed else client.address
        kind = "keyed" if client.keyed else "public"
        try:
            if self.limiter.hit(limit, kind, identity):
                return
            reset = self.limiter.get_window_stats(limit, kind, identity).reset_time
        except StorageError as exc:
            raise Refused(
                503,
                f"rate limits unavailable: the limiter's storage did not answer ({type(exc.storage_error).__name__});"
                " retry later",
                {"Retry-After": str(LIMITER_RETRY_S)},
            ) from exc
        wait = max(1, math.ceil(reset - time.time()))
        raise Refused(
            429,
            f"rate limit of {limit} exceeded for {who}; retry after {wait} s",
            {"Retry-After": str(wait)},
            keyed=client.keyed,
        )


class Guard:
    """A route's access rule, declared as the dependency that gives the route its caller (``PredictCaller``).

    ``routing.ApiRoute`` finds it and calls ``check`` before the body is read; as a dependency it then only
    hands the already-identified client to the route. It has no sub-dependencies on purpose: each one costs
    every request on the hot path, so ``app`` documents the bearer scheme in OpenAPI by hand.
    """

    def __init__(self, scope: str, *, cookie: bool = False) -> None:
        self.scope = scope
        self.cookie = cookie

    def check(self, request: Request) -> Client:
        access: Access = request.app.state.access
        client = access.identify(request, self.scope, cookie=self.cookie)
        request.state.client = client
        return client

    async def __call__(self, request: Request) -> Caller:
        client: Client | None = getattr(request.state, "client", None)
        service: PredictionService = request.app.state.service
        return Caller(client if client is not None else self.check(request), service)


# What a route declares to be guarded and to learn its caller: ``client: FeedbackCaller``.
PredictCaller = Annotated[Caller, Depends(Guard(PREDICT))]
FeedbackCaller = Annotated[Caller, Depends(Guard(FEEDBACK))]
# The web page's predict routes: the same rule, and the key may also come from the session cookie.
PageCaller = Annotated[Caller, Depends(Guard(PREDICT, cookie=True))]
