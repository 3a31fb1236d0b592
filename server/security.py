"""Device authentication on the server side (see ``secagg.auth`` for the wire format).

Every device request after registration is signed with the device's long-term Ed25519 key.
Unknown device or bad/missing signature or stale timestamp -> 401; a reused nonce -> 409;
a device above its request rate or its nonce quota -> 429.

Order of the checks, and why (threat: one device, or anyone on the network, must not be
able to lock other devices out):

1. signature and timestamp window (401): nobody can act in another device's name;
2. replay check, read only (409): a captured request replayed by a third party costs its
   device nothing, not even a rate-limit token;
3. the device's token bucket (429): refused requests store nothing;
4. the nonce is stored, in SQLite (``Store.record_nonce``), under a *per-device* quota
   (429 past it). Only the device itself can fill its quota, and only for itself; a full
   quota never turns into a 401 for anybody. The store survives a restart, so a request
   captured before a crash cannot be replayed after it either; rows expire with the
   timestamp window.

A request refused with 429 leaves no nonce behind, so it could be replayed within the
window; that replay is the device's own signed request, which it was about to resend
anyway, and every round-bound message is refused a second time by the round state (409).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.requests import Request

from secagg.auth import (
    HEADER_DEVICE_ID,
    AuthError,
    ReplayError,
    normalize_audience,
    parse_device_id,
    parse_public_key,
    verify_request,
)
from server.errors import ApiError
from server.limits import TokenBuckets
from server.store import Store

__all__ = ["Authenticator", "default_nonce_quota", "path_with_query"]


def path_with_query(request: Request) -> str:
    """The path and query exactly as the device signed them."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else request.url.path
    path = path.split("?", 1)[0]
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def request_audience(request: Request) -> str:
    """The origin the request was addressed to (scheme and Host header), normalized; the
    audience a device signs (``secagg.auth``) must equal it unless
    :attr:`Authenticator.audience` pins the server's public origin (set that behind a
    proxy that rewrites Host or terminates TLS, and to refuse requests signed for
    another server that are relayed here with their Host header intact)."""
    host = request.headers.get("host", "")
    try:
        return normalize_audience(f"{request.url.scheme}://{host}")
    except ValueError as err:
        raise AuthError(f"cannot tell which server the request was meant for: {err}") from err


def default_nonce_quota(rate: float, burst: int, window: float) -> int:
    """Nonces one device can have stored at once when it sends at its full rate.

    A nonce is kept until its timestamp + ``window``; the timestamp may lie up to
    ``window`` in the future, so a nonce lives at most ``2 * window`` seconds, during which
    the token bucket lets through at most ``burst + rate * 2 * window`` requests. The quota
    is therefore never the binding limit for a device that respects its rate; it bounds
    the storage per device independently of the rate settings.
    """
    return int(burst + math.ceil(rate * 2.0 * window))


def _retry_after(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}


class Authenticator:
    """Verifies signed requests against the registered public keys (see module docstring)."""

    #: The server's public origin (``https://host[:port]``) that signed requests must name;
    #: None: the origin each request was addressed to (:func:`request_audience`).
    audience: str | None = None

    def __init__(
        self,
        store: Store,
        window: float,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.time,
        *,
        nonce_quota: int | None = None,
        max_buckets: int = 100_000,
    ) -> None:
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        quota = default_nonce_quota(rate, burst, window) if nonce_quota is None else nonce_quota
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise ValueError(f"nonce_quota must be an int >= 1, got {nonce_quota!r}")
        self.store = store
        self.window = float(window)
        self.nonce_quota = quota
        self.buckets = TokenBuckets(rate, burst, max_keys=max_buckets)
        # many simulated devices share one address: a looser bucket per address
        self.anon_buckets = TokenBuckets(rate * 10, burst * 10, max_keys=max_buckets)
        self._clock = clock
        self._keys: dict[int, object] = {}

    def _public_key(self, device_id: int) -> object:
        key = self._keys.get(device_id)
        if key is None:
            raw = self.store.device_key(device_id)
            if raw is None:
                raise AuthError(f"unknown device {device_id}")
            key = parse_public_key(raw)
            self._keys[device_id] = key
        return key

    def has_credentials(self, request: Request) -> bool:
        return HEADER_DEVICE_ID in request.headers

    def authenticate(self, request: Request, body: bytes) -> int:
        """Return the verified device id of ``request`` or raise AuthError/ReplayError/429."""
        headers = request.headers
        device_id = parse_device_id(headers)
        key = self._public_key(device_id)
        now = self._clock()
        ts, nonce = verify_request(
            key,  # type: ignore[arg-type]
            headers,
            request.method,
            path_with_query(request),
            body,
            now,
            self.window,
            audience=self.audience or request_audience(request),
        )
        if self.store.nonce_seen(device_id, nonce, now):
            raise ReplayError(f"nonce {nonce} of device {device_id} was already used")
        wait = self.buckets.take(("device", device_id))
        if wait is not None:
            raise ApiError(
                429,
                f"device {device_id} exceeds its request rate; retry in {wait:.2f} s",
                headers=_retry_after(wait),
            )
        verdict = self.store.record_nonce(
            device_id, nonce, float(ts) + self.window, now, self.nonce_quota
        )
        if verdict.outcome == "replay":  # pragma: no cover - a race with the check above
            raise ReplayError(f"nonce {nonce} of device {device_id} was already used")
        if verdict.outcome == "quota":
            raise ApiError(
                429,
                f"device {device_id} has {self.nonce_quota} requests in the "
                f"{self.window:g} s authentication window; retry in {verdict.retry_after:.0f} s",
                headers=_retry_after(verdict.retry_after),
            )
        return device_id

    def client_host(self, request: Request) -> str:
        return request.client.host if request.client else "?"

    def limit_anonymous(self, request: Request) -> None:
        """Rate limit an unauthenticated route per client address (registration, predict)."""
        host = self.client_host(request)
        wait = self.anon_buckets.take(host)
        if wait is not None:
            raise ApiError(
                429,
                f"too many requests from {host}; retry in {wait:.2f} s",
                headers=_retry_after(wait),
            )
