"""Device authentication on the server side (see ``secagg.auth`` for the wire format).

Every device request after registration is signed with the device's long-term Ed25519 key.
Unknown device or bad/missing signature or stale timestamp -> 401; a reused nonce -> 409;
a device above its request rate -> 429. Rate limiting happens after the signature check,
so nobody can exhaust an honest device's budget by sending requests in its name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.requests import Request

from secagg.auth import (
    HEADER_DEVICE_ID,
    AuthError,
    NonceCache,
    normalize_audience,
    parse_device_id,
    parse_public_key,
    verify_request,
)
from server.errors import ApiError
from server.limits import TokenBuckets
from server.store import Store

__all__ = ["Authenticator", "path_with_query"]


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


class Authenticator:
    """Verifies signed requests against the registered public keys."""

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
    ) -> None:
        self.store = store
        self.window = window
        self.nonces = NonceCache(window)
        self.buckets = TokenBuckets(rate, burst)
        # many simulated devices share one address: a looser bucket per address
        self.anon_buckets = TokenBuckets(rate * 10, burst * 10)
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
        self.nonces.check_and_add(device_id, nonce, ts, now)
        wait = self.buckets.take(("device", device_id))
        if wait is not None:
            raise ApiError(
                429,
                f"device {device_id} exceeds its request rate; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return device_id

    def limit_anonymous(self, request: Request) -> None:
        """Rate limit an unauthenticated route per client address (registration, predict)."""
        host = request.client.host if request.client else "?"
        wait = self.anon_buckets.take(host)
        if wait is not None:
            raise ApiError(
                429,
                f"too many requests from {host}; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
