"""Request authentication for the HTTP transport (both sides: device signs, server verifies).

Threat model
------------
The server is honest-but-curious about *values* (it must not learn any single device's
update; secure aggregation handles that), but it must know *who* is talking: masks,
shares and dropout decisions are bound to device ids, so a network attacker who could
impersonate a device could, for example, make the server declare an honest device dropped
and ask its neighbours for its secret-key shares. Every device request after registration
is therefore signed with the device's long-term Ed25519 identity key.

Wire format (CONTRACT.md, "HTTP API v1")::

    X-Device-Id:  decimal device id
    X-Timestamp:  unix seconds (integer)
    X-Nonce:      32 lowercase hex characters (16 random bytes from the OS CSPRNG)
    X-Signature:  base64 Ed25519 signature over
        b"secagg-dp/v2\\n" + METHOD + "\\n" + audience + "\\n" + device_id + "\\n"
        + path_with_query + "\\n" + timestamp + "\\n" + nonce + "\\n"
        + sha256(body).hexdigest()

The signature binds the method, the audience (the origin of the server the device meant
to talk to, ``scheme://host[:port]``, see :func:`normalize_audience`), the claimed device
id, the exact path and query (so it cannot be moved to another route or round), the body
digest, and a fresh (timestamp, nonce) pair. Binding the device id means a request
cannot be replayed under another id that registered the same public key (replay caches
are kept per device); binding the audience means a request made for one server does not
verify at another server where the device registered the same key. The verifier rejects
timestamps outside a window and the server remembers nonces for that window, so a captured
request cannot be replayed (:class:`NonceCache`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "AuthError",
    "ReplayError",
    "NonceCache",
    "DOMAIN",
    "HEADER_DEVICE_ID",
    "HEADER_TIMESTAMP",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "canonical_request",
    "normalize_audience",
    "sign_request",
    "verify_request",
    "parse_public_key",
    "parse_device_id",
    "public_key_bytes",
]

DOMAIN = b"secagg-dp/v2\n"
HEADER_DEVICE_ID = "X-Device-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"

_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}$")
_MAX_HEADER = 256


class AuthError(Exception):
    """A request's authentication headers are missing, malformed, stale or do not verify."""


class ReplayError(AuthError):
    """A (device, nonce) pair was seen before inside the validity window: a replay."""


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte encoding of an Ed25519 public key (of a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def parse_public_key(raw: bytes) -> Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key; raises :class:`AuthError` if it is not one."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != 32:
        n = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise AuthError(f"public key must be 32 raw bytes, got {n!r}")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError as err:  # pragma: no cover - every 32-byte string parses today
        raise AuthError(f"not an Ed25519 public key: {err}") from err


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_audience(url: str) -> str:
    """The origin ``scheme://host[:port]`` of ``url`` in one canonical spelling: scheme
    and host lower-case, the default port (80 / 443) dropped, path, query and fragment
    ignored. Device and server both normalize, so ``http://Host:80/`` and
    ``http://host`` are the same audience. Raises ``ValueError`` for anything that is not
    an http(s) URL with a host (user info is refused)."""
    if not isinstance(url, str) or not url or len(url) > _MAX_HEADER or "\n" in url:
        raise ValueError(f"audience must be an http(s) URL, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise ValueError(f"audience must be an http(s) URL, got {url!r}: {err}") from err
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        raise ValueError(f"audience must be an http(s) URL with a host, got {url!r}")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def canonical_request(
    method: str,
    path: str,
    timestamp: int | str,
    nonce: str,
    body: bytes,
    *,
    device_id: int,
    audience: str,
) -> bytes:
    """The exact bytes that are signed (see the module docstring); ``audience`` is
    normalized with :func:`normalize_audience`."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id must be an int >= 0, got {device_id!r}")
    digest = hashlib.sha256(body).hexdigest()
    aud = normalize_audience(audience)
    text = f"{method.upper()}\n{aud}\n{device_id}\n{path}\n{timestamp}\n{nonce}\n{digest}"
    return DOMAIN + text.encode("utf-8")


def sign_request(
    key: Ed25519PrivateKey,
    device_id: int,
    method: str,
    path: str,
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
    *,
    audience: str,
) -> dict[str, str]:
    """Headers that authenticate one request of ``device_id`` signed with ``key``.

    ``path`` is the path with its query string exactly as sent (``/v1/rounds/3/keys`` or
    ``/v1/rounds/current?wait=30&after=4``). ``audience`` is the server's URL as the
    device addresses it (its base URL; only the origin counts). ``now`` and ``nonce`` are
    injectable for tests; by default the clock and 16 bytes of the OS CSPRNG are used.
    """
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id must be an int >= 0, got {device_id!r}")
    ts = int(time.time() if now is None else now)
    nonce = os.urandom(16).hex() if nonce is None else nonce
    if not _NONCE_RE.match(nonce):
        raise ValueError(f"nonce must be 32 lowercase hex characters, got {nonce!r}")
    signature = key.sign(
        canonical_request(method, path, ts, nonce, body, device_id=device_id, audience=audience)
    )
    return {
        HEADER_DEVICE_ID: str(device_id),
        HEADER_TIMESTAMP: str(ts),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        raise AuthError(f"missing header {name}")
    if len(value) > _MAX_HEADER:
        raise AuthError(f"header {name} is too long ({len(value)} characters)")
    return value


def parse_device_id(headers: Mapping[str, str]) -> int:
    """The claimed device id of a request (not yet verified); raises :class:`AuthError`."""
    raw = _header(headers, HEADER_DEVICE_ID)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise AuthError(f"{HEADER_DEVICE_ID} must be a non-negative integer, got {raw!r}")
    return int(raw)


def verify_request(
    public_key: bytes | Ed25519PublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    now: float,
    window: float,
    *,
    audience: str,
) -> tuple[int, str]:
    """Check a request's signature and freshness; return ``(timestamp, nonce)``.

    ``audience`` is the origin this server answers at (:func:`normalize_audience`); the
    device id signed is the request's ``X-Device-Id``, so ``public_key`` must be the key
    registered for that id. Raises :class:`AuthError` when a header is missing or
    malformed, the timestamp is more than ``window`` seconds from ``now`` (either
    direction), or the signature does not verify under ``public_key`` (also when it was
    made for another device id or another audience). Replay detection (nonce reuse) is
    the caller's job with a :class:`NonceCache`, because it needs state across requests.
    """
    pub = public_key if isinstance(public_key, Ed25519PublicKey) else parse_public_key(public_key)
    device_id = parse_device_id(headers)
    try:
        aud = normalize_audience(audience)
    except ValueError as err:
        raise AuthError(f"server audience is misconfigured: {err}") from err
    ts_raw = _header(headers, HEADER_TIMESTAMP)
    if not ts_raw.isascii() or not ts_raw.isdigit() or len(ts_raw) > 12:
        raise AuthError(f"{HEADER_TIMESTAMP} must be integer unix seconds, got {ts_raw!r}")
    ts = int(ts_raw)
    if abs(now - ts) > window:
        raise AuthError(f"timestamp {ts} is outside the {window:g} s window around {int(now)}")
    nonce = _header(headers, HEADER_NONCE)
    if not _NONCE_RE.match(nonce):
        raise AuthError(f"{HEADER_NONCE} must be 32 lowercase hex characters, got {nonce!r}")
    sig_raw = _header(headers, HEADER_SIGNATURE)
    try:
        signature = base64.b64decode(sig_raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as err:
        raise AuthError(f"{HEADER_SIGNATURE} is not base64: {sig_raw[:40]!r}") from err
    if len(signature) != 64:
        raise AuthError(f"{HEADER_SIGNATURE} must decode to 64 bytes, got {len(signature)}")
    if not _METHOD_RE.match(method.upper()):
        raise AuthError(f"unsupported method {method!r}")
    try:
        pub.verify(
            signature,
            canonical_request(method, path, ts_raw, nonce, body, device_id=device_id, audience=aud),
        )
    except InvalidSignature as err:
        raise AuthError("signature does not verify") from err
    return ts, nonce


class NonceCache:
    """Remembers (device, nonce) pairs for the authentication window to stop replays.

    A nonce only has to be remembered while its timestamp is still acceptable: after
    ``window`` seconds the timestamp check rejects the replay anyway. Thread-safe.
    The cache lives in memory: after a server restart a request captured in the last
    ``window`` seconds could be replayed once, but every round-bound message names a round
    id, and rounds in flight at a crash are aborted, so such a replay is refused by the
    protocol state (409) instead.
    """

    def __init__(self, window: float, max_entries: int = 1_000_000) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self._window = float(window)
        self._max = int(max_entries)
        self._seen: dict[tuple[int, str], float] = {}
        self._expiry: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()

    def check_and_add(self, device_id: int, nonce: str, timestamp: float, now: float) -> None:
        """Record the nonce; raise :class:`ReplayError` if the pair was seen already."""
        with self._lock:
            self._prune(now)
            key = (device_id, nonce)
            if key in self._seen:
                raise ReplayError(f"nonce {nonce} of device {device_id} was already used")
            if len(self._seen) >= self._max:
                raise AuthError("too many requests in the authentication window; retry later")
            # Keep it until its timestamp can no longer pass the window check.
            until = float(timestamp) + self._window
            self._seen[key] = until
            heapq.heappush(self._expiry, (until, device_id, nonce))

    def _prune(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, device_id, nonce = heapq.heappop(self._expiry)
            self._seen.pop((device_id, nonce), None)

    def __len__(self) -> int:
        return len(self._seen)
