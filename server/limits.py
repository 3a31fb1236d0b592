"""Request limits: body size (413 before the body is read), rate and concurrency (429).

Size is enforced twice: :class:`BodySizeLimit` (pure ASGI middleware, outermost) refuses a
declared ``Content-Length`` above the route's limit at once and counts streamed bytes for
bodies without one; :func:`read_body` reads a body into a local buffer under a limit
without caching it on the request object (a masked input must not outlive its request).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import ApiError

__all__ = [
    "BodySizeLimit",
    "ConcurrencyLimiter",
    "RequestLimits",
    "TokenBuckets",
    "UploadGate",
    "read_body",
]


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
    """A token bucket per key (device id or client address): ``rate`` per s, ``burst`` max.

    The table is bounded: past ``max_keys`` keys the least recently used bucket is evicted
    (LRU), never the whole table. Evicting a bucket hands its key a fresh burst; that is
    exactly what happens anyway to a key idle for ``burst / rate`` seconds, so the eviction
    is lossless as long as ``max_keys`` distinct keys do not all arrive within that time.
    An attacker who makes that happen needs ``max_keys`` distinct keys (addresses or
    registered devices), and every one of them already had its own fresh burst, so it
    gains nothing; a key in active use is recently used and is evicted last. (The old
    table cleared every bucket at once when it grew past its size, which gave every
    limited key, the attacker's included, a fresh burst.)
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: Any) -> float | None:
        """Take one token; return None if allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            old = self._buckets.pop(key, None)
            tokens, last = old if old is not None else (self.burst, now)
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)  # re-inserted last: most recently used
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


class ConcurrencyLimiter:
    """At most ``per_key`` requests in flight per key and ``total`` in all (non-blocking).

    Used for long-polls: a long-poll holds a connection and a coroutine for up to a minute,
    so without a bound one client could open thousands. :meth:`slot` refuses with 429 at
    once instead of queueing (a queued long-poll would hold the connection all the same).
    Single event loop: no lock needed, the counters change only between awaits.
    """

    def __init__(self, per_key: int, total: int, what: str = "requests") -> None:
        if isinstance(per_key, bool) or not isinstance(per_key, int) or per_key < 1:
            raise ValueError(f"per_key must be an int >= 1, got {per_key!r}")
        if isinstance(total, bool) or not isinstance(total, int) or total < per_key:
            raise ValueError(f"total must be an int >= per_key ({per_key}), got {total!r}")
        self.per_key = per_key
        self.total = total
        self.what = what
        self._in_flight: dict[Any, int] = {}
        self._count = 0

    def in_flight(self, key: Any = None) -> int:
        return self._count if key is None else self._in_flight.get(key, 0)

    @asynccontextmanager
    async def slot(self, key: Any, retry_after: float = 1.0) -> AsyncIterator[None]:
        """Hold one slot of ``key`` for the body of the ``async with``; 429 if none is free."""
        held = self._in_flight.get(key, 0)
        if held >= self.per_key or self._count >= self.total:
            scope = "from this client" if held >= self.per_key else "in total"
            raise ApiError(
                429,
                f"too many concurrent {self.what} {scope} (limit "
                f"{self.per_key if held >= self.per_key else self.total}); retry shortly",
                headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            )
        self._in_flight[key] = held + 1
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            left = self._in_flight.get(key, 1) - 1
            if left <= 0:
                self._in_flight.pop(key, None)
            else:
                self._in_flight[key] = left


class UploadGate:
    """At most ``slots`` masked-input bodies read by the app at once; the rest wait.

    ``queue`` (None: unbounded) refuses uploads past ``slots + queue`` with 429 and
    ``Retry-After``. It is off by default, because refusing does not save memory: the
    device sends its body right after the headers, and the ASGI server has buffered up to
    about 320 KiB of it (uvicorn's 64 KiB high-water mark plus one socket read of up to
    256 KiB) before the route can answer, whether the answer is "wait" or "429". Measured
    with 1000 devices at d = 1e5 (``benchmarks/load.py``), refusing only made devices
    retry in lockstep and miss the stage deadline. So the server's memory in the masked
    input stage is O(d) for the sum and the ``slots`` bodies being added, plus up to that
    buffer per upload still in flight; bounding the latter needs the device to wait for a
    slot before it sends its body (``Expect: 100-continue``, or an admission step).
    """

    def __init__(self, slots: int, queue: int | None = None) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"upload slots must be an int >= 1, got {slots!r}")
        bad_queue = isinstance(queue, bool) or not isinstance(queue, int) or queue < 0
        if queue is not None and bad_queue:
            raise ValueError(f"upload queue must be None or an int >= 0, got {queue!r}")
        self.slots = slots
        self.queue = queue
        self._admitted = 0  # reading or waiting to read
        self._sem: asyncio.Semaphore | None = None

    @property
    def admitted(self) -> int:
        return self._admitted

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.queue is not None and self._admitted >= self.slots + self.queue:
            raise ApiError(
                429,
                f"{self._admitted} masked inputs are being received; retry in a second",
                headers={"Retry-After": "1"},
            )
        if self._sem is None:  # created inside the running event loop
            self._sem = asyncio.Semaphore(self.slots)
        self._admitted += 1
        try:
            async with self._sem:
                yield
        finally:
            self._admitted -= 1


class RequestLimits:
    """Per-app limits that are not per-request: concurrent long-polls and body uploads.

    - ``device_polls``: long-polls in flight per authenticated device (a device needs one).
    - ``anon_polls``: unauthenticated long-polls in flight per client address and in total
      (the dashboard needs one per open page).
    - ``uploads``: masked-input bodies read by the app at the same time (:class:`UploadGate`);
      each is ``packed_size(d, b)`` bytes, so the app holds O(slots * d) of them, not
      O(n * d). (What the ASGI server buffers before the app reads is discussed there.)
    """

    def __init__(
        self,
        device_polls: int = 4,
        anon_polls_per_host: int = 16,
        anon_polls_total: int = 1024,
        upload_slots: int = 4,
        upload_queue: int | None = None,
    ) -> None:
        self.device_polls = ConcurrencyLimiter(device_polls, 1 << 30, "long-polls")
        self.anon_polls = ConcurrencyLimiter(
            anon_polls_per_host, anon_polls_total, "unauthenticated long-polls"
        )
        self.uploads = UploadGate(upload_slots, upload_queue)
