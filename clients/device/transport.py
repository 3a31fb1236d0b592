"""The device's HTTP transport: signed requests to the secagg-dp server, and its identity.

Every request after registration is signed with the device's long-term Ed25519 key
(:func:`secagg.auth.sign_request`) over method, path+query, timestamp, nonce, the body
hash, the device id and the audience (the server's base URL), so a network attacker can
neither impersonate nor replay it.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "DeviceError", "MAX_WAIT_S", "ServerClient", "ServerRejected", "generate_identity",
    "load_or_create_identity", "public_key_bytes",
]

MAX_WAIT_S = 60.0


class DeviceError(RuntimeError):
    """The device cannot go on (bad configuration, unknown to the server, ...)."""


class ServerRejected(Exception):
    """The server answered a device request with a 4xx/5xx status."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------- identity


def generate_identity() -> Ed25519PrivateKey:
    """A fresh long-term Ed25519 identity key (OS CSPRNG, via ``cryptography``)."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key the server registers."""
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    """Load a raw 32-byte Ed25519 private key from ``path``, creating it (mode 0600) if absent.

    Persisting the key lets a restarted device keep its device id (the server answers the
    same public key with the same id).
    """
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise DeviceError(f"key file {path} holds {len(raw)} bytes, expected 32 (raw Ed25519)")
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = generate_identity()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return key


# --------------------------------------------------------------------------- transport


class ServerClient:
    """The device's HTTP transport: httpx plus request signing.

    Every request after registration carries ``X-Device-Id``, ``X-Timestamp``,
    ``X-Nonce`` and ``X-Signature`` from :func:`secagg.auth.sign_request`, computed over
    the exact path and query string httpx sends.
    """

    def __init__(
        self,
        base_url: str,
        signing_key: Ed25519PrivateKey,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.signing_key = signing_key
        self.device_id: int | None = None
        self._timeout = timeout
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=2.0),  # below uvicorn's 5 s keep-alive
        )
        self._own_http = http is None

    def close(self) -> None:
        """Close the underlying httpx client if this object created it."""
        if self._own_http:
            self._http.close()

    # -- low level
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        sign: bool = True,
        retries_429: int = 20,
    ) -> httpx.Response:
        """Send one (signed) request; raise :class:`ServerRejected` on a status >= 400.

        429 (rate limited) is retried with the server's ``Retry-After`` (bounded), since
        a device that gives up there would be counted as a dropout for no reason.
        """
        import json as _json

        body = b""
        headers: dict[str, str] = {}
        if json_body is not None:
            body = _json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif content is not None:
            body = content
            headers["Content-Type"] = content_type or "application/octet-stream"
        resent = False
        attempt = 0
        while True:
            req = self._http.build_request(
                method,
                path,
                params=dict(params) if params else None,
                content=body if body else None,
                headers=headers,
                timeout=timeout if timeout is not None else self._timeout,
            )
            if sign:  # a fresh timestamp and nonce for every (re)send
                req.headers.update(self._auth_headers(method, req.url.raw_path.decode(), body))
            try:
                resp = self._http.send(req)
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError,
                    httpx.WriteError):
                # Typically the keep-alive race: the server closed an idle connection just
                # as this request went out on it. Resend once on a new connection.
                if resent:
                    raise
                resent = True
                continue
            if resp.status_code == 429 and attempt < retries_429:
                attempt += 1
                delay = _retry_after(resp.headers.get("Retry-After"))
                time.sleep(delay)  # rate-limit backoff, not a polling loop
                continue
            break
        if resent and method == "POST" and resp.status_code == 409:
            # the first copy may have arrived before the connection broke; if it did not,
            # the next stage will tell (this device is then out of the round)
            return resp
        if resp.status_code >= 400:
            raise ServerRejected(resp.status_code, _detail(resp), method, path)
        return resp

    def _auth_headers(self, method: str, path_with_query: str, body: bytes) -> dict[str, str]:
        from secagg.auth import sign_request

        if self.device_id is None:
            raise DeviceError("device is not registered yet; cannot sign requests")
        headers = sign_request(
            self.signing_key, self.device_id, method, path_with_query, body, audience=self.base_url
        )
        return {str(k): str(v) for k, v in headers.items()}

    # -- API
    def register(self) -> int:
        """``POST /v1/devices`` with the raw public key; returns and remembers the device id."""
        pk = base64.b64encode(public_key_bytes(self.signing_key)).decode()
        resp = self.request("POST", "/v1/devices", json_body={"public_key": pk}, sign=False)
        device_id = int(resp.json()["device_id"])
        self.device_id = device_id
        return device_id

    def status(self) -> dict[str, Any]:
        """``GET /v1/status`` (public)."""
        return dict(self.request("GET", "/v1/status", sign=False).json())

    def current(self, wait: float, after: int, skip_round: int | None = None) -> dict[str, Any]:
        """Long-poll ``GET /v1/rounds/current`` until the state version exceeds ``after``
        (and, with ``skip_round``, the server has left that round)."""
        wait = max(0.0, min(wait, MAX_WAIT_S))
        params: dict[str, Any] = {"wait": _fmt_wait(wait), "after": after}
        if skip_round is not None:
            params["skip_round"] = skip_round
        resp = self.request(
            "GET",
            "/v1/rounds/current",
            params=params,
            timeout=wait + self._timeout,
            sign=self.device_id is not None,
        )
        return dict(resp.json())

    def model(self) -> tuple[np.ndarray, int | None]:
        """``GET /v1/model``: float32 little-endian flat weights and their version."""
        resp = self.request("GET", "/v1/model")
        weights = np.frombuffer(resp.content, dtype="<f4").astype(np.float32)
        version = resp.headers.get("X-Model-Version")
        return weights, (int(version) if version is not None else None)

    def get_json(self, path: str) -> dict[str, Any]:
        """Signed GET returning a JSON object."""
        return dict(self.request("GET", path).json())

    def post_json(self, path: str, payload: Mapping[str, Any]) -> None:
        """Signed POST of a JSON object (expects 2xx)."""
        self.request("POST", path, json_body=dict(payload))

    def post_bytes(self, path: str, data: bytes) -> None:
        """Signed POST of an octet-stream body (the packed masked input)."""
        self.request("POST", path, content=data, content_type="application/octet-stream")


def _fmt_wait(wait: float) -> str:
    return str(int(wait)) if float(wait).is_integer() else f"{wait:.3f}"


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.05), 5.0) if value is not None else 0.2
    except ValueError:
        return 0.2


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:300]


