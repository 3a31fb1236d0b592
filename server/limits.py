"""Request limits: body size (413 before the body is read), per-device rate (429).

Size is enforced twice: :class:`BodySizeLimit` (pure ASGI middleware, outermost) refuses a
declared ``Content-Length`` above the route's limit at once and counts streamed bytes for
bodies without one; :func:`read_body` reads a body into a local buffer under a limit
without caching it on the request object (a masked input must not outlive its request).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ApiError

__all__ = ["BodySizeLimit", "TokenBuckets", "read_body"]


class _TooLarge(Exception):
    pass


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k.lower() == b"content-length":
            try:
                n = int(v)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


class BodySizeLimit:
    """ASGI middleware: 413 for bodies above ``limit_for(path)`` bytes, before reading them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _declared_length(scope.get("headers", []))
        if declared == -1:
            await _reject(send, 400, "invalid Content-Length header")
            return
        if declared is not None and declared > limit:
            await _reject(send, 413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
            return
        seen = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # swallow whatever the app made of the error; we answer 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await _reject(send, 413, f"body exceeds the limit of {limit} bytes")


async def _reject(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int) -> bytes:
    """Read the whole body into a local buffer (not cached on ``request``); 413 past ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes")
    return bytes(buf)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object body; 400 with the reason otherwise (never echoes the body)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # incl. JSONDecodeError, huge int literals
        raise ApiError(400, f"body is not valid JSON: {type(err).__name__}") from err
    if not isinstance(data, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(data).__name__}")
    return data


class TokenBuckets:
    """A token bucket per key (device id or client address): ``rate`` per s, ``burst`` max."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: Any) -> float | None:
        """Take one token; return None if allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            return (1.0 - tokens) / self.rate
