"""secagg.auth: signatures bind method, path, body, time and nonce; replays are refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.auth import (
    AuthError,
    NonceCache,
    ReplayError,
    canonical_request,
    public_key_bytes,
    sign_request,
    verify_request,
)

NOW = 1_700_000_000.0
NONCE = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_roundtrip(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 7, "POST", "/v1/rounds/3/keys", b"{}", now=NOW, nonce=NONCE)
    assert h["X-Device-Id"] == "7" and h["X-Nonce"] == NONCE and h["X-Timestamp"] == str(int(NOW))
    ts, nonce = verify_request(
        public_key_bytes(key), h, "POST", "/v1/rounds/3/keys", b"{}", NOW + 5, 120
    )
    assert (ts, nonce) == (int(NOW), NONCE)


def test_canonical_form_is_the_contract() -> None:
    msg = canonical_request("get", "/v1/x?a=1", 12, NONCE, b"")
    assert msg == (
        b"secagg-dp/v1\nGET\n/v1/x?a=1\n12\n" + NONCE.encode() + b"\n"
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/v1/rounds/3/keys", b"{}"),
        ("POST", "/v1/rounds/4/keys", b"{}"),
        ("POST", "/v1/rounds/3/keys", b"{ }"),
        ("POST", "/v1/rounds/3/keys?x=1", b"{}"),
    ],
)
def test_any_change_breaks_the_signature(
    key: Ed25519PrivateKey, method: str, path: str, body: bytes
) -> None:
    h = sign_request(key, 7, "POST", "/v1/rounds/3/keys", b"{}", now=NOW, nonce=NONCE)
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(public_key_bytes(key), h, method, path, body, NOW, 120)


def test_other_key_fails(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW)
    other = public_key_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(AuthError):
        verify_request(other, h, "GET", "/v1/model", b"", NOW, 120)


@pytest.mark.parametrize("skew", [-121, 121, 10_000])
def test_stale_or_future_timestamp(key: Ed25519PrivateKey, skew: float) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW)
    with pytest.raises(AuthError, match="window"):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW + skew, 120)


@pytest.mark.parametrize(
    "header,value",
    [
        ("X-Timestamp", "-5"),
        ("X-Timestamp", "12.5"),
        ("X-Nonce", "XYZ"),
        ("X-Nonce", "0123456789ABCDEF0123456789ABCDEF"),
        ("X-Signature", "not base64!"),
        ("X-Signature", "AAAA"),
        ("X-Signature", "A" * 400),
    ],
)
def test_malformed_headers(key: Ed25519PrivateKey, header: str, value: str) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW)
    h[header] = value
    with pytest.raises(AuthError):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW, 120)


def test_missing_header(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW)
    del h["X-Signature"]
    with pytest.raises(AuthError, match="missing"):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW, 120)


def test_bad_public_key() -> None:
    with pytest.raises(AuthError, match="32 raw bytes"):
        verify_request(b"short", {}, "GET", "/", b"", NOW, 120)


def test_sign_rejects_bad_inputs(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="device_id"):
        sign_request(key, -1, "GET", "/", b"")
    with pytest.raises(ValueError, match="nonce"):
        sign_request(key, 1, "GET", "/", b"", nonce="zz")


def test_fresh_nonces_differ(key: Ed25519PrivateKey) -> None:
    nonces = {sign_request(key, 1, "GET", "/", b"")["X-Nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_nonce_cache_refuses_replay_then_forgets() -> None:
    cache = NonceCache(window=10)
    cache.check_and_add(1, NONCE, NOW, NOW)
    cache.check_and_add(2, NONCE, NOW, NOW)  # another device may pick the same nonce
    with pytest.raises(ReplayError):
        cache.check_and_add(1, NONCE, NOW, NOW + 1)
    cache.check_and_add(1, "f" * 32, NOW, NOW + 100)  # prunes the old entries
    assert len(cache) == 1
