"""secagg.auth: signatures bind method, audience, device id, path, body, time and nonce;
replays are refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.auth import (
    AuthError,
    NonceCache,
    ReplayError,
    canonical_request,
    normalize_audience,
    public_key_bytes,
    sign_request,
    verify_request,
)

NOW = 1_700_000_000.0
NONCE = "0123456789abcdef0123456789abcdef"
AUD = "https://agg.example:8443"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_roundtrip(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 7, "POST", "/v1/rounds/3/keys", b"{}", now=NOW, nonce=NONCE, audience=AUD)
    assert h["X-Device-Id"] == "7" and h["X-Nonce"] == NONCE and h["X-Timestamp"] == str(int(NOW))
    ts, nonce = verify_request(
        public_key_bytes(key), h, "POST", "/v1/rounds/3/keys", b"{}", NOW + 5, 120, audience=AUD
    )
    assert (ts, nonce) == (int(NOW), NONCE)


def test_canonical_form_is_the_contract() -> None:
    msg = canonical_request("get", "/v1/x?a=1", 12, NONCE, b"", device_id=7, audience=AUD)
    assert msg == (
        b"secagg-dp/v2\nGET\nhttps://agg.example:8443\n7\n/v1/x?a=1\n12\n" + NONCE.encode() + b"\n"
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
    h = sign_request(key, 7, "POST", "/v1/rounds/3/keys", b"{}", now=NOW, nonce=NONCE, audience=AUD)
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(public_key_bytes(key), h, method, path, body, NOW, 120, audience=AUD)


def test_other_key_fails(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW, audience=AUD)
    other = public_key_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(AuthError):
        verify_request(other, h, "GET", "/v1/model", b"", NOW, 120, audience=AUD)


@pytest.mark.parametrize("skew", [-121, 121, 10_000])
def test_stale_or_future_timestamp(key: Ed25519PrivateKey, skew: float) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW, audience=AUD)
    with pytest.raises(AuthError, match="window"):
        verify_request(
            public_key_bytes(key), h, "GET", "/v1/model", b"", NOW + skew, 120, audience=AUD
        )


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
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW, audience=AUD)
    h[header] = value
    with pytest.raises(AuthError):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW, 120, audience=AUD)


def test_missing_header(key: Ed25519PrivateKey) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW, audience=AUD)
    del h["X-Signature"]
    with pytest.raises(AuthError, match="missing"):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW, 120, audience=AUD)


def test_bad_public_key() -> None:
    with pytest.raises(AuthError, match="32 raw bytes"):
        verify_request(b"short", {}, "GET", "/", b"", NOW, 120, audience=AUD)


def test_sign_rejects_bad_inputs(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="device_id"):
        sign_request(key, -1, "GET", "/", b"", audience=AUD)
    with pytest.raises(ValueError, match="nonce"):
        sign_request(key, 1, "GET", "/", b"", nonce="zz", audience=AUD)


def test_fresh_nonces_differ(key: Ed25519PrivateKey) -> None:
    nonces = {sign_request(key, 1, "GET", "/", b"", audience=AUD)["X-Nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_nonce_cache_refuses_replay_then_forgets() -> None:
    cache = NonceCache(window=10)
    cache.check_and_add(1, NONCE, NOW, NOW)
    cache.check_and_add(2, NONCE, NOW, NOW)  # another device may pick the same nonce
    with pytest.raises(ReplayError):
        cache.check_and_add(1, NONCE, NOW, NOW + 1)
    cache.check_and_add(1, "f" * 32, NOW, NOW + 100)  # prunes the old entries
    assert len(cache) == 1


def test_signature_does_not_transfer_to_another_device_id(key: Ed25519PrivateKey) -> None:
    """The same public key registered twice (ids 1 and 2): a request of device 1 must not
    verify as device 2, whose replay cache has never seen its nonce. Before the device id
    was signed it did."""
    h = sign_request(key, 1, "POST", "/v1/rounds/3/keys", b"{}", now=NOW, audience=AUD)
    h["X-Device-Id"] = "2"
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(
            public_key_bytes(key), h, "POST", "/v1/rounds/3/keys", b"{}", NOW, 120, audience=AUD
        )


@pytest.mark.parametrize(
    "other", ["https://agg.example", "http://agg.example:8443", "https://other.example:8443"]
)
def test_signature_does_not_transfer_to_another_server(key: Ed25519PrivateKey, other: str) -> None:
    h = sign_request(key, 1, "GET", "/v1/model", b"", now=NOW, audience=AUD)
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(public_key_bytes(key), h, "GET", "/v1/model", b"", NOW, 120, audience=other)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://testserver", "http://testserver"),
        ("HTTP://TestServer:80/", "http://testserver"),
        ("https://h.example:443/api/v1?x=1", "https://h.example"),
        ("https://h.example:8443", "https://h.example:8443"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ],
)
def test_audience_is_the_normalized_origin(url: str, origin: str) -> None:
    assert normalize_audience(url) == origin


@pytest.mark.parametrize(
    "bad", ["", "testserver", "ftp://h", "http://", "http://u:p@h", "http://h:99999", "http://h\n"]
)
def test_audience_rejects_non_origins(bad: str) -> None:
    with pytest.raises(ValueError, match="audience"):
        normalize_audience(bad)
