"""Request authentication and wire messages: every check at its boundary, with its exact
refusal (issue 16: mutation testing found a replay accepted at the edge of the window,
headers whose lower-case spelling was never verified, signatures in a non-canonical
base64 spelling, and length / type checks of the wire messages that no test pinned)."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.auth import (
    DOMAIN,
    AuthError,
    NonceCache,
    ReplayError,
    canonical_request,
    normalize_audience,
    parse_device_id,
    parse_public_key,
    public_key_bytes,
    sign_request,
    verify_request,
)
from secagg.errors import MalformedMessageError
from secagg.messages import (
    SHARE_CIPHERTEXT_BYTES,
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    b64encode,
)
from tests.matching import exact as _exact

NOW = 1_700_000_000
NONCE = "00112233445566778899aabbccddeeff"
AUD = "https://agg.example:8443"
PATH = "/v1/rounds/3/keys"
#: A fixed test identity (Ed25519 signing is deterministic, so signatures are known answers).
#: (Nothing from secagg runs at import: a mutant must fail a test, not the collection.)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes_raw()


def _signed(device_id: int = 7, now: float = NOW, body: bytes = b"{}") -> dict[str, str]:
    return sign_request(KEY, device_id, "POST", PATH, body, now=now, nonce=NONCE, audience=AUD)


def _verify(headers: dict[str, str], now: float = NOW, window: float = 120, **kw: Any) -> Any:
    args: dict[str, Any] = {"public_key": PUB, "method": "POST", "path": PATH, "body": b"{}"}
    args.update(kw)
    return verify_request(
        args["public_key"],
        headers,
        args["method"],
        args["path"],
        args["body"],
        now,
        window,
        audience=args.get("audience", AUD),
    )


# ------------------------------------------------------------------ signing


def test_signed_headers_are_the_signature_of_the_contract_bytes() -> None:
    """The whole header set of a request, against the canonical bytes written out by hand
    and signed with the same key (device id 0 is a valid id)."""
    body = b'{"a": 1}'
    want_msg = (
        DOMAIN
        + b"POST\nhttps://agg.example:8443\n0\n"
        + PATH.encode()
        + b"\n"
        + str(NOW).encode()
        + b"\n"
        + NONCE.encode()
        + b"\n"
        + hashlib.sha256(body).hexdigest().encode()
    )
    assert canonical_request("post", PATH, NOW, NONCE, body, device_id=0, audience=AUD) == want_msg
    h = sign_request(KEY, 0, "POST", PATH, body, now=NOW + 0.9, nonce=NONCE, audience=AUD)
    assert h == {
        "X-Device-Id": "0",
        "X-Timestamp": str(NOW),
        "X-Nonce": NONCE,
        "X-Signature": base64.b64encode(KEY.sign(want_msg)).decode(),
    }
    assert _verify(h, body=body) == (NOW, NONCE)


def test_sign_request_body_defaults_to_empty() -> None:
    h = sign_request(KEY, 3, "GET", "/v1/model", now=NOW, nonce=NONCE, audience=AUD)
    assert _verify(h, method="GET", path="/v1/model", body=b"") == (NOW, NONCE)


@pytest.mark.parametrize("bad", [-1, True, "7", 7.0, None])
def test_device_id_must_be_a_non_negative_int(bad: object) -> None:
    msg = _exact(f"device_id must be an int >= 0, got {bad!r}")
    with pytest.raises(ValueError, match=msg):
        canonical_request("GET", "/", NOW, NONCE, b"", device_id=bad, audience=AUD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=msg):
        sign_request(KEY, bad, "GET", "/", b"", now=NOW, nonce=NONCE, audience=AUD)  # type: ignore[arg-type]


def test_public_key_bytes_of_either_half() -> None:
    raw = KEY.public_key().public_bytes_raw()
    assert public_key_bytes(KEY) == public_key_bytes(KEY.public_key()) == raw == PUB
    assert parse_public_key(raw).public_bytes_raw() == raw


@pytest.mark.parametrize(
    ("raw", "shown"),
    [(b"x" * 31, "31"), (bytearray(33), "33"), ("k" * 32, "'str'"), (None, "'NoneType'")],
)
def test_parse_public_key_names_the_bad_length_or_type(raw: object, shown: str) -> None:
    with pytest.raises(AuthError, match=_exact(f"public key must be 32 raw bytes, got {shown}")):
        parse_public_key(raw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ audience


@pytest.mark.parametrize("bad", [123, b"http://h", None, ["http://h"]])
def test_audience_must_be_a_string(bad: object) -> None:
    with pytest.raises(ValueError, match=_exact(f"audience must be an http(s) URL, got {bad!r}")):
        normalize_audience(bad)  # type: ignore[arg-type]


def test_audience_length_cap_is_256_characters() -> None:
    at_cap = "http://" + "a" * 249
    assert len(at_cap) == 256 and normalize_audience(at_cap) == at_cap
    over = at_cap + "a"
    with pytest.raises(ValueError, match=_exact(f"audience must be an http(s) URL, got {over!r}")):
        normalize_audience(over)


def test_a_misconfigured_server_audience_is_an_auth_error_naming_it() -> None:
    with pytest.raises(
        AuthError, match=re.escape("server audience is misconfigured: ") + ".*'ftp://h'"
    ):
        _verify(_signed(), audience="ftp://h")


# ------------------------------------------------------------------ verification


def test_header_names_in_lower_case_verify() -> None:
    """HTTP header names are case-insensitive; a transport that lower-cases them (ASGI,
    HTTP/2) hands a plain dict with lower-case keys."""
    h = {k.lower(): v for k, v in _signed().items()}
    assert parse_device_id(h) == 7
    assert _verify(h) == (NOW, NONCE)


def test_verify_accepts_a_parsed_public_key_object() -> None:
    assert _verify(_signed(), public_key=KEY.public_key()) == (NOW, NONCE)


@pytest.mark.parametrize(("raw", "want"), [("0", 0), ("9" * 18, 10**18 - 1)])
def test_device_id_header_accepted_up_to_18_digits(raw: str, want: int) -> None:
    assert parse_device_id({"X-Device-Id": raw}) == want


@pytest.mark.parametrize("raw", ["1" + "0" * 18, "-5", "+7", " 7", "7.0", "\u0663", "\u00b2", ""])
def test_device_id_header_refused(raw: str) -> None:
    msg = _exact(f"X-Device-Id must be a non-negative integer, got {raw!r}")
    with pytest.raises(AuthError, match=msg):
        parse_device_id({"X-Device-Id": raw})
    h = _signed()
    h["X-Device-Id"] = raw
    with pytest.raises(AuthError, match=msg):
        _verify(h)


def test_header_length_cap_is_256_characters() -> None:
    h = _signed()
    h["X-Nonce"] = "a" * 256  # at the cap: read, then refused by the nonce rule
    with pytest.raises(
        AuthError, match=_exact(f"X-Nonce must be 32 lowercase hex characters, got {'a' * 256!r}")
    ):
        _verify(h)
    h["X-Nonce"] = "a" * 257
    with pytest.raises(AuthError, match=_exact("header X-Nonce is too long (257 characters)")):
        _verify(h)
    del h["X-Nonce"]
    with pytest.raises(AuthError, match=_exact("missing header X-Nonce")):
        _verify(h)


@pytest.mark.parametrize("skew", [-120, 120])
def test_timestamp_exactly_at_the_window_edge_is_accepted(skew: int) -> None:
    assert _verify(_signed(), now=NOW + skew) == (NOW, NONCE)
    beyond = NOW + skew + (1 if skew > 0 else -1)
    msg = f"timestamp {NOW} is outside the 120 s window around {beyond}"
    with pytest.raises(AuthError, match=_exact(msg)):
        _verify(_signed(), now=beyond)


def test_timestamp_header_has_at_most_12_digits() -> None:
    far = 10**12 - 1  # 12 digits: parsed (and in the window of a clock that far ahead)
    assert _verify(_signed(now=far), now=far) == (far, NONCE)
    h = _signed(now=10**12)
    with pytest.raises(
        AuthError, match=_exact(f"X-Timestamp must be integer unix seconds, got {str(10**12)!r}")
    ):
        _verify(h, now=10**12)


@pytest.mark.parametrize("raw", ["-5", "12.5", "1e9", "\u00b9"])
def test_timestamp_header_refused_with_its_value(raw: str) -> None:
    h = _signed()
    h["X-Timestamp"] = raw
    with pytest.raises(
        AuthError, match=_exact(f"X-Timestamp must be integer unix seconds, got {raw!r}")
    ):
        _verify(h)


def test_nonce_header_refused_with_its_value() -> None:
    h = _signed()
    h["X-Nonce"] = NONCE.upper()
    with pytest.raises(
        AuthError,
        match=_exact(f"X-Nonce must be 32 lowercase hex characters, got {NONCE.upper()!r}"),
    ):
        _verify(h)


def test_signature_must_be_strict_base64_of_64_bytes() -> None:
    """A valid signature spelled with a stray character is not base64: lenient decoding
    would let many header values stand for one signature."""
    h = _signed()
    good = h["X-Signature"]
    for bad in (good[:10] + "*" + good[10:], good[:10] + "\n" + good[10:], good + "é"):
        h["X-Signature"] = bad
        with pytest.raises(AuthError, match=_exact(f"X-Signature is not base64: {bad[:40]!r}")):
            _verify(h)
    h["X-Signature"] = base64.b64encode(bytes(63)).decode()
    with pytest.raises(AuthError, match=_exact("X-Signature must decode to 64 bytes, got 63")):
        _verify(h)
    h["X-Signature"] = good
    assert _verify(h) == (NOW, NONCE)


def test_unsupported_method_named() -> None:
    with pytest.raises(AuthError, match=_exact("unsupported method 'PO ST'")):
        _verify(_signed(), method="PO ST")


def test_tampered_request_does_not_verify() -> None:
    with pytest.raises(AuthError, match=_exact("signature does not verify")):
        _verify(_signed(), path=PATH + "?x=1")


# ------------------------------------------------------------------ replay cache


def test_replay_at_the_edge_of_the_window_is_refused() -> None:
    """A captured request still verifies exactly ``window`` seconds after its timestamp;
    the nonce cache must still remember it then (and may forget it one second later,
    when the timestamp check refuses it anyway)."""
    cache = NonceCache(window=120)
    h = _signed()
    ts, nonce = _verify(h)
    cache.check_and_add(7, nonce, ts, NOW)
    ts, nonce = _verify(h, now=NOW + 120)  # still inside the window
    with pytest.raises(ReplayError, match=_exact(f"nonce {NONCE} of device 7 was already used")):
        cache.check_and_add(7, nonce, ts, NOW + 120)
    cache.check_and_add(8, "f" * 32, NOW + 121, NOW + 121)  # prunes the first entry
    assert len(cache) == 1
    with pytest.raises(AuthError, match="outside"):
        _verify(h, now=NOW + 121)


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(window=10, max_entries=2)
    cache.check_and_add(1, "a" * 32, NOW, NOW)
    cache.check_and_add(1, "b" * 32, NOW, NOW)
    with pytest.raises(
        AuthError, match=_exact("too many requests in the authentication window; retry later")
    ) as err:
        cache.check_and_add(1, "c" * 32, NOW, NOW)
    assert not isinstance(err.value, ReplayError)
    assert len(cache) == 2
    cache.check_and_add(1, "c" * 32, NOW + 11, NOW + 11)  # the old ones expired
    assert len(cache) == 1


@pytest.mark.parametrize("bad", [0, -1, 0.0])
def test_nonce_cache_window_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match=_exact(f"window must be > 0 seconds, got {bad!r}")):
        NonceCache(window=bad)


def test_nonce_cache_accepts_a_sub_second_window() -> None:
    cache = NonceCache(window=0.5)
    cache.check_and_add(1, NONCE, NOW, NOW)
    with pytest.raises(ReplayError):
        cache.check_and_add(1, NONCE, NOW, NOW + 0.5)
    cache.check_and_add(1, NONCE, NOW + 1, NOW + 1)


# ------------------------------------------------------------------ wire messages

CT = bytes(range(SHARE_CIPHERTEXT_BYTES))
PK = bytes(range(32))
SIG = bytes(range(64))
SHARE = bytes(range(33))


def _errors() -> list[tuple[Any, str]]:
    """(constructor call, exact message) for each field check of each message."""
    return [
        (lambda: AdvertiseKeys(-1, 2, PK, PK), "round_id must be >= 0, got -1"),
        (lambda: AdvertiseKeys(True, 2, PK, PK), "round_id must be an int, got True"),
        (lambda: AdvertiseKeys(1, "2", PK, PK), "sender must be an int, got '2'"),
        (lambda: AdvertiseKeys(1, -2, PK, PK), "sender must be >= 0, got -2"),
        (lambda: AdvertiseKeys(1, 2, PK[:31], PK), "c_pk must be 32 bytes, got 31"),
        (lambda: AdvertiseKeys(1, 2, "k" * 32, PK), "c_pk must be bytes, got str"),
        (lambda: AdvertiseKeys(1, 2, PK, PK + b"x"), "s_pk must be 32 bytes, got 33"),
        (lambda: AdvertiseKeys(1, 2, PK, bytearray(PK)), "s_pk must be bytes, got bytearray"),
        (lambda: AdvertiseKeys(1, 2, PK, PK, SIG[:63]), "signature must be 64 bytes, got 63"),
        (lambda: AdvertiseKeys(1, 2, PK, PK, ""), "signature must be bytes, got str"),
        (lambda: ShareKeys(-1, 2, {}), "round_id must be >= 0, got -1"),
        (lambda: ShareKeys(1, None, {}), "sender must be an int, got None"),
        (lambda: ShareKeys(1, 2, [(3, CT)]), "ciphertexts must be a mapping, got list"),
        (lambda: ShareKeys(1, 2, {-3: CT}), "ciphertexts key must be >= 0, got -3"),
        (
            lambda: ShareKeys(1, 2, {3: CT[:-1]}),
            f"ciphertexts[3] must be {SHARE_CIPHERTEXT_BYTES} bytes, "
            f"got {SHARE_CIPHERTEXT_BYTES - 1}",
        ),
        (lambda: ShareKeys(1, 2, {3: None}), "ciphertexts[3] must be bytes, got NoneType"),
        (lambda: MaskedInput(-1, 2, b""), "round_id must be >= 0, got -1"),
        (lambda: MaskedInput(1, 2.0, b""), "sender must be an int, got 2.0"),
        (lambda: MaskedInput(1, 2, "data"), "data must be bytes, got str"),
        (lambda: ConsistencyCheck(-1, 2, SIG), "round_id must be >= 0, got -1"),
        (lambda: ConsistencyCheck(1, -2, SIG), "sender must be >= 0, got -2"),
        (lambda: ConsistencyCheck(1, 2, SIG[:63]), "signature must be 64 bytes, got 63"),
        (lambda: ConsistencyCheck(1, 2, SIG + b"x"), "signature must be 64 bytes, got 65"),
        (lambda: ConsistencyCheck(1, 2, None), "signature must be bytes, got NoneType"),
        (lambda: UnmaskRequest(-1, (), ()), "round_id must be >= 0, got -1"),
        (lambda: UnmaskRequest(1, (2, 1), ()), "survivors must be sorted and unique, got [2, 1]"),
        (lambda: UnmaskRequest(1, "12", ()), "survivors must be a sequence of ids, got str"),
        (
            lambda: UnmaskRequest(1, tuple(range(25, 0, -1)), ()),
            f"survivors must be sorted and unique, got {list(range(25, 5, -1))}",  # first 20
        ),
        (lambda: UnmaskRequest(1, (1, -1), ()), "survivors entry must be >= 0, got -1"),
        (lambda: UnmaskRequest(1, (1,), (3, 3)), "dropped must be sorted and unique, got [3, 3]"),
        (lambda: UnmaskRequest(1, (1,), {3}), "dropped must be a sequence of ids, got set"),
        (lambda: UnmaskRequest(1, (1,), ("3",)), "dropped entry must be an int, got '3'"),
        (lambda: UnmaskRequest(1, (1,), (), {1: SIG[:1]}), "signatures[1] must be 64 bytes, got 1"),
        (lambda: UnmaskRequest(1, (1,), (), {"1": SIG}), "signatures key must be an int, got '1'"),
        (lambda: UnmaskRequest(1, (1,), (), [SIG]), "signatures must be a mapping, got list"),
        (lambda: UnmaskShares(-1, 2, {}, {}), "round_id must be >= 0, got -1"),
        (lambda: UnmaskShares(1, -2, {}, {}), "sender must be >= 0, got -2"),
        (
            lambda: UnmaskShares(1, 2, {1: SHARE[:32]}, {}),
            "self_mask_shares[1] must be 33 bytes, got 32",
        ),
        (
            lambda: UnmaskShares(1, 2, {}, {1: SHARE + b"x"}),
            "secret_key_shares[1] must be 33 bytes, got 34",
        ),
        (lambda: UnmaskShares(1, 2, {}, {-1: SHARE}), "secret_key_shares key must be >= 0, got -1"),
        (lambda: UnmaskShares(1, 2, None, {}), "self_mask_shares must be a mapping, got NoneType"),
        (
            lambda: UnmaskShares(1, 2, {1: SHARE, 2: SHARE}, {2: SHARE, 1: SHARE, 3: SHARE}),
            "both shares given for peers [1, 2]",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_errors())))
def test_every_field_check_refuses_with_the_field_and_value(case: int) -> None:
    make, message = _errors()[case]
    with pytest.raises(MalformedMessageError, match=_exact(message)):
        make()


def test_boundary_values_are_accepted_and_normalised() -> None:
    """Id 0 and round 0 are valid; byte strings of exactly the right length pass; a
    message keeps its own copies of the maps and sequences it was given."""
    a = AdvertiseKeys(0, 0, PK, PK, SIG)
    assert (a.round_id, a.sender, a.signature) == (0, 0, SIG)
    cts = {3: CT, 0: CT}
    s = ShareKeys(0, 0, cts)
    b, sk = {1: SHARE}, {0: SHARE}
    u = UnmaskShares(0, 0, b, sk)
    sigs = {0: SIG}
    r = UnmaskRequest(0, [0, 1], [2], sigs)
    cts[5], b[5], sk[5], sigs[5] = CT, SHARE, SHARE, SIG  # the caller's maps change later
    assert s.ciphertexts == {3: CT, 0: CT} and type(s.ciphertexts) is dict
    assert (u.self_mask_shares, u.secret_key_shares) == ({1: SHARE}, {0: SHARE})
    assert (r.survivors, r.dropped, r.signatures) == ((0, 1), (2,), {0: SIG})
    m = MaskedInput(0, 0, bytearray(b"\x01\x02"))
    assert m.data == b"\x01\x02" and type(m.data) is bytes
    assert MaskedInput(1, 2, memoryview(b"xy")).data == b"xy"
    assert MaskedInput(1, 2, b"").data == b""


def _d(msg: Any, **change: Any) -> dict[str, Any]:
    return {**msg.to_dict(), **change}


def _adv() -> AdvertiseKeys:
    return AdvertiseKeys(1, 2, PK, PK, SIG)


def _shk() -> ShareKeys:
    return ShareKeys(1, 2, {3: CT, 10: CT})


def _req() -> UnmaskRequest:
    return UnmaskRequest(1, (1, 2), (3,), {1: SIG})


def test_to_dict_is_the_documented_json() -> None:
    assert _shk().to_dict() == {
        "type": "share_keys",
        "round_id": 1,
        "sender": 2,
        "ciphertexts": {"3": b64encode(CT), "10": b64encode(CT)},
    }
    assert _req().to_dict() == {
        "type": "unmask_request",
        "round_id": 1,
        "survivors": [1, 2],
        "dropped": [3],
        "signatures": {"1": base64.b64encode(SIG).decode()},
    }


def test_optional_fields_may_be_absent_or_null() -> None:
    d = _adv().to_dict()
    del d["signature"]
    assert AdvertiseKeys.from_dict(d) == AdvertiseKeys(1, 2, PK, PK, None)
    assert AdvertiseKeys.from_dict({**d, "signature": None}).signature is None
    r = _req().to_dict()
    del r["signatures"], r["type"]
    assert UnmaskRequest.from_dict(r) == UnmaskRequest(1, (1, 2), (3,), None)


def _from_dict_errors() -> list[tuple[Any, Any, str]]:
    ct = b64encode(CT)
    return [
        (AdvertiseKeys, [_adv().to_dict()], "AdvertiseKeys must be a JSON object"),
        (AdvertiseKeys, _d(_adv(), bogus=1, zz=2), "AdvertiseKeys: unknown fields ['bogus', 'zz']"),
        (
            AdvertiseKeys,
            _d(_adv(), type="share_keys"),
            "AdvertiseKeys: type must be 'advertise_keys', got 'share_keys'",
        ),
        (
            AdvertiseKeys,
            {k: v for k, v in _adv().to_dict().items() if k != "sender"},
            "AdvertiseKeys: missing field 'sender'",
        ),
        (AdvertiseKeys, _d(_adv(), c_pk="AAAA"), "c_pk must be 32 bytes, got 3"),
        (AdvertiseKeys, _d(_adv(), c_pk="!!!!"), "c_pk is not valid base64"),
        (AdvertiseKeys, _d(_adv(), s_pk=5), "s_pk must be a base64 string, got int"),
        (
            AdvertiseKeys,
            _d(_adv(), s_pk=b64encode(PK)[:8] + "*" + b64encode(PK)[8:]),
            "s_pk is not valid base64",
        ),
        (
            AdvertiseKeys,
            _d(_adv(), signature=b64encode(SIG) + "\n"),
            "signature is not valid base64",
        ),
        (AdvertiseKeys, _d(_adv(), signature="é" * 4), "signature is not valid base64"),
        (ShareKeys, _d(_shk(), ciphertexts=[ct]), "ciphertexts must be an object, got list"),
        (ShareKeys, _d(_shk(), ciphertexts={"03": ct}), "ciphertexts key must be an int, got '03'"),
        (
            ShareKeys,
            _d(_shk(), ciphertexts={"\u00b2": ct}),
            "ciphertexts key must be an int, got '\u00b2'",
        ),
        (
            ShareKeys,
            _d(_shk(), ciphertexts={"\u0663": ct}),
            "ciphertexts key must be an int, got '\u0663'",
        ),
        (ShareKeys, _d(_shk(), ciphertexts={"-3": ct}), "ciphertexts key must be an int, got '-3'"),
        (ShareKeys, _d(_shk(), ciphertexts={"3": "!!"}), "ciphertexts[3] is not valid base64"),
        (
            ShareKeys,
            _d(_shk(), ciphertexts={"3": 3}),
            "ciphertexts[3] must be a base64 string, got int",
        ),
        (UnmaskRequest, _d(_req(), survivors="12"), "survivors must be a sequence of ids, got str"),
        (
            UnmaskRequest,
            _d(_req(), dropped=[2, 1]),
            "dropped must be sorted and unique, got [2, 1]",
        ),
        (
            UnmaskRequest,
            _d(_req(), signatures={"x": b64encode(SIG)}),
            "signatures key must be an int, got 'x'",
        ),
        (
            MaskedInput,
            {"round_id": 1, "sender": 2, "data": None},
            "data must be a base64 string, got NoneType",
        ),
        (
            ConsistencyCheck,
            {"round_id": 1, "sender": 2, "signature": b64encode(SIG[:10])},
            "signature must be 64 bytes, got 10",
        ),
    ]


def test_from_dict_refuses_with_the_field_and_value() -> None:
    for cls, d, message in _from_dict_errors():
        with pytest.raises(MalformedMessageError, match=_exact(message)):
            cls.from_dict(d)


def test_map_keys_accept_canonical_decimals_only() -> None:
    d = _d(_shk(), ciphertexts={"0": b64encode(CT), "10": b64encode(CT)})
    assert ShareKeys.from_dict(d).ciphertexts == {0: CT, 10: CT}
