"""Tests that close the gaps mutation testing found in secagg/ (issue 16).

- Known answers for every derived label, key, nonce and associated data, written out
  from the specification (RFC 5869 HKDF re-implemented here with hmac), each pinning
  the round id and both parties; and the client's actual use of them, checked by
  decrypting its share ciphertexts and unmasking its masked input by hand.
- Shamir: shares of one secret differ under two randomness sources (a fixed-seed
  generator would make them equal), and one share is consistent with every secret
  (t >= 2): perfect hiding, shown by building the randomness that explains it.
- Property tests (hypothesis): packing at the wrap boundaries 2^(b-1) and 2^b - 1, and
  the never-both-shares guard of ``ClientProtocol.unmask`` over any request sequence.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg import ClientProtocol, UnmaskRequest
from secagg.client import (
    advertise_message,
    consistency_message,
    pair_label,
    pair_seed,
    self_label,
    share_ad,
    share_key,
    share_nonce,
)
from secagg.crypto import label, prg_nonce, prg_words, x25519_agree, x25519_public_from_private
from secagg.errors import ProtocolError
from secagg.packing import pack, pack_reduced, packed_size, unpack, word_dtype
from secagg.shamir import PRIME, reconstruct, split, split_bytes
from tests.secagg._helpers import MECHANICS, det_random, make_params, make_round

ROUND, U, V = 7, 3, 5


def be64(*xs: int) -> bytes:
    return b"".join(x.to_bytes(8, "big") for x in xs)


def spec_label(purpose: str, *ints: int) -> bytes:
    """The label of the specification (crypto module docstring), written out by hand."""
    return b"secagg-dp/v1|" + purpose.encode() + b"|" + be64(*ints)


def rfc5869(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of RFC 5869 with an empty salt (HashLen zeros), from hmac alone."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


# ------------------------------------------------------------------ labels: known answers


def test_label_bytes_are_pinned() -> None:
    assert label("p", 7, 1, 2) == bytes.fromhex(
        "7365636167672d64702f76317c707c"  # "secagg-dp/v1|p|"
        "0000000000000007" "0000000000000001" "0000000000000002"
    )
    assert label("self-mask", 2**64 - 1) == b"secagg-dp/v1|self-mask|" + b"\xff" * 8
    assert label("x", 0) != label("x", 0, 0)  # the party count is part of the label


def test_derived_labels_keys_and_ad_known_answers() -> None:
    dh = bytes(range(32))
    assert advertise_message(ROUND, U, b"c" * 32, b"s" * 32) == (
        spec_label("advertise-keys", ROUND, U) + b"c" * 32 + b"s" * 32
    )
    assert consistency_message(ROUND, U, (1, 3, 5)) == (
        spec_label("consistency-check", ROUND, U) + be64(3, 1, 3, 5)
    )
    assert share_key(dh, ROUND, U, V) == rfc5869(
        dh, spec_label("share-encryption-key", ROUND, U, V)
    )
    assert share_nonce(ROUND, U, V) == hashlib.sha256(
        spec_label("share-nonce", ROUND, U, V)
    ).digest()[:12]
    assert share_ad(ROUND, U, V) == spec_label("share-ciphertext", ROUND, U, V)
    seed = rfc5869(dh, spec_label("pairwise-mask-seed", ROUND, U, V))
    assert pair_seed(dh, ROUND, U, V) == seed == pair_seed(dh, ROUND, V, U)
    assert pair_label(ROUND, V, U) == pair_label(ROUND, U, V) == spec_label(
        "pairwise-mask", ROUND, U, V
    )
    assert self_label(ROUND, U) == spec_label("self-mask", ROUND, U)
    # one pinned value end to end (a change of HKDF's salt, length or hash shows here)
    assert share_key(dh, ROUND, U, V).hex()[:16] == rfc5869(
        dh, b"secagg-dp/v1|share-encryption-key|" + be64(7, 3, 5)
    ).hex()[:16]
    assert prg_nonce(b"L") == hashlib.sha256(b"L").digest()[:8] + bytes(8)


# (derivation, binds the receiver, direction matters)
_DERIVATIONS = {
    "key": (lambda r, u, v: share_key(bytes(32), r, u, v), True, True),
    "nonce": (share_nonce, True, True),
    "ad": (share_ad, True, True),
    "seed": (lambda r, u, v: pair_seed(bytes(32), r, u, v), True, False),
    "pair": (pair_label, True, False),
    "consistency": (lambda r, u, v: consistency_message(r, u, (u, v)), True, True),
    "advertise": (lambda r, u, v: advertise_message(r, u, bytes(32), bytes(32)), False, True),
    "self": (lambda r, u, v: self_label(r, u), False, True),
}


@pytest.mark.parametrize("name", list(_DERIVATIONS))
def test_every_derivation_binds_round_and_parties(name: str) -> None:
    derive, two_party, directional = _DERIVATIONS[name]
    base = derive(ROUND, U, V)
    assert derive(ROUND + 1, U, V) != base
    assert derive(ROUND, U + 1, V) != base
    assert (derive(ROUND, U, V + 1) != base) is two_party
    if two_party:
        assert (derive(ROUND, V, U) != base) is directional


def _recorded_secrets(c: int) -> tuple[bytes, bytes, bytes]:
    """c_sk, s_sk and b_u that det_random(b"client%d") hands client c, in draw order."""
    out = []
    for i in range(3):
        out.append(hashlib.sha256(b"client%d" % c + i.to_bytes(8, "little")).digest())
    return out[0], out[1], out[2]


def _aes_ctr_words(seed: bytes, prg_label: bytes, count: int, bits: int) -> np.ndarray:
    nonce = hashlib.sha256(prg_label).digest()[:8] + bytes(8)
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    nbytes = 4 if bits <= 32 else 8
    raw = enc.update(bytes(count * nbytes))
    return np.frombuffer(raw, dtype="<u4" if nbytes == 4 else "<u8").astype(np.uint64)


def test_client_encrypts_shares_under_the_pinned_key_nonce_and_ad() -> None:
    r = make_round(4, dim=10, bits=20, threshold=3, round_id=ROUND)
    r.advertise()
    r.share()
    for u, msg in r.msgs["share"].items():
        c_sk_u = _recorded_secrets(u)[0]
        for v, ct in msg.ciphertexts.items():
            c_pk_v = x25519_public_from_private(_recorded_secrets(v)[0])
            dh = x25519_agree(c_sk_u, c_pk_v)
            key = rfc5869(dh, spec_label("share-encryption-key", ROUND, u, v))
            nonce = hashlib.sha256(spec_label("share-nonce", ROUND, u, v)).digest()[:12]
            assert ct[:12] == nonce
            pt = ChaCha20Poly1305(key).decrypt(
                nonce, ct[12:], spec_label("share-ciphertext", ROUND, u, v)
            )
            assert pt[:16] == struct.pack(">QQ", u, v) and len(pt) == 16 + 2 * 33


def test_client_masks_with_the_pinned_prg_labels() -> None:
    bits, dim = 20, 10
    r = make_round(4, dim=dim, bits=bits, threshold=3, round_id=ROUND)
    r.advertise()
    r.share()
    r.masked()
    mod = 1 << bits
    for u, msg in r.msgs["masked"].items():
        _, s_sk_u, b_u = _recorded_secrets(u)
        expect = r.inputs[u].astype(np.uint64) + _aes_ctr_words(
            b_u, spec_label("self-mask", ROUND, u), dim, bits
        )
        for v in r.params.participants:
            if v == u:
                continue
            dh = x25519_agree(s_sk_u, x25519_public_from_private(_recorded_secrets(v)[1]))
            lo, hi = min(u, v), max(u, v)
            seed = rfc5869(dh, spec_label("pairwise-mask-seed", ROUND, lo, hi))
            mask = _aes_ctr_words(seed, spec_label("pairwise-mask", ROUND, lo, hi), dim, bits)
            expect = expect + mask if u < v else expect + (np.uint64(mod) - mask % mod)
        got = unpack(msg.data, bits, dim)
        np.testing.assert_array_equal(got, expect % np.uint64(mod))


# ------------------------------------------------------------------ Shamir randomness


@pytest.mark.parametrize("t", [2, 3, 5])
def test_shares_of_one_secret_differ_under_two_randomness_sources(t: int) -> None:
    secret = 123456789
    xs = list(range(1, 8))
    a = split([secret], t, xs, det_random(b"a"))[0]
    b = split([secret], t, xs, det_random(b"b"))[0]
    c = split([secret], t, xs, os.urandom)[0]
    d = split([secret], t, xs, os.urandom)[0]
    for j in range(len(xs)):
        assert len({a[j], b[j], c[j], d[j]}) == 4, f"share {j} repeats across sources"
    for shares in (a, b, c, d):
        assert reconstruct(dict(zip(xs[:t], shares[:t], strict=True)), t) == secret


def test_client_shares_use_its_randomness_for_the_coefficients() -> None:
    """Two runs with the same keys and b_u but different coefficient randomness must
    send different share ciphertexts (key and nonce are deterministic, so equal
    ciphertexts would mean equal shares: coefficients not drawn from random_bytes)."""
    params, _ = make_params(4, dim=8, bits=20, threshold=3)

    def source(tag: bytes):
        fixed, other = det_random(b"keys"), det_random(tag)

        def random_bytes(n: int) -> bytes:
            return fixed(n) if n == 32 else other(n)

        return random_bytes

    def ciphertexts(tag: bytes) -> dict[int, bytes]:
        clients = {
            c: ClientProtocol(params, c, random_bytes=source(b"%s%d" % (tag, c)), policy=MECHANICS)
            for c in params.participants
        }
        adv = {c: cl.advertise_keys() for c, cl in clients.items()}
        return dict(clients[0].share_keys({c: m for c, m in adv.items() if c != 0}).ciphertexts)

    first, second = ciphertexts(b"x"), ciphertexts(b"y")
    assert first.keys() == second.keys()
    assert all(first[v] != second[v] for v in first)


@pytest.mark.parametrize("t", [2, 3, 4])
def test_one_share_is_consistent_with_every_secret(t: int) -> None:
    """Perfect hiding: for any observed share y at x and ANY candidate secret s', there is
    randomness under which split gives s' the same share y at x (and as many such
    polynomials for every s'), so one share says nothing about the secret."""
    x, xs = 5, [5, 9, 11, 13]
    rb = det_random(b"observed")
    y = split([42], t, xs, rb)[0][0]
    gen = np.random.default_rng(1)
    for candidate in [0, 1, 42, PRIME - 1, 2**255, *map(int, gen.integers(0, 2**62, 5))]:
        # choose a_2 .. a_{t-1} freely, solve a_1 from y = s' + sum_j a_j x^j
        higher = [int(v) for v in gen.integers(0, 2**62, t - 2)]  # a_{t-1} .. a_2
        rest = sum(a * pow(x, t - 1 - i, PRIME) for i, a in enumerate(higher))
        a1 = (y - candidate - rest) * pow(x, -1, PRIME) % PRIME
        coeffs = [*higher, a1]  # split's order: a_{t-1}, ..., a_1, 40 bytes LE each
        raw = b"".join(c.to_bytes(40, "little") for c in coeffs)
        shares = split([candidate], t, xs, lambda n, raw=raw: raw[:n])[0]
        assert shares[0] == y
        assert reconstruct(dict(zip(xs[:t], shares[:t], strict=True)), t) == candidate


def test_split_bytes_coefficients_come_from_random_bytes() -> None:
    seen: list[int] = []

    def rb(n: int) -> bytes:
        seen.append(n)
        return os.urandom(n)

    split_bytes([bytes(32), b"\x01" * 32], 3, [1, 2, 3], rb)
    assert seen == [40 * 2 * 2]


# ------------------------------------------------------------------ packing at the wrap


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(8, 62), dim=st.integers(1, 19), data=st.data())
def test_pack_round_trips_at_the_wrap_boundaries(bits: int, dim: int, data) -> None:
    half, top = 1 << (bits - 1), (1 << bits) - 1
    edge = st.sampled_from([0, 1, half - 1, half, half + 1, top - 1, top])
    vals = np.array(data.draw(st.lists(edge, min_size=dim, max_size=dim)), dtype=np.uint64)
    packed = pack(vals, bits)
    assert len(packed) == packed_size(dim, bits) == (dim * bits + 7) // 8
    assert pack_reduced(vals, bits) == packed
    np.testing.assert_array_equal(unpack(packed, bits, dim), vals)
    if bits <= 32:
        np.testing.assert_array_equal(unpack(packed, bits, dim, np.uint32), vals)
    with pytest.raises(ValueError, match="does not fit"):
        pack(np.append(vals, np.uint64(top) + np.uint64(1)), bits)
    with pytest.raises(ValueError, match="negative"):
        pack(np.array([0, -1], dtype=np.int64), bits)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(8, 62), data=st.data())
def test_mask_arithmetic_wraps_exactly_at_the_boundaries(bits: int, data) -> None:
    """(x + m) - m mod 2^b in the protocol's word dtype gives x back for x and m at the
    boundaries (the masks' adds and subtracts wrap in the word, reduced once)."""
    half, mod = 1 << (bits - 1), 1 << bits
    edge = st.sampled_from([0, 1, half - 1, half, half + 1, mod - 1])
    x = np.array(data.draw(st.lists(edge, min_size=4, max_size=4)), dtype=np.uint64)
    m = np.array(data.draw(st.lists(edge, min_size=4, max_size=4)), dtype=np.uint64)
    dt = word_dtype(bits)
    assert dt == (np.uint32 if bits <= 32 else np.uint64)
    y = (x.astype(dt) + m.astype(dt)) & dt(mod - 1)
    np.testing.assert_array_equal(y.astype(np.uint64), (x + m) % np.uint64(mod))
    back = (y - m.astype(dt)) & dt(mod - 1)
    np.testing.assert_array_equal(back.astype(np.uint64), x)
    words = prg_words(bytes(32), b"L", 4, bits)
    assert int(words.max()) < mod


# ------------------------------------------------------------------ never both shares

_IDS = (0, 1, 2, 3, 4)


@st.composite
def _requests(draw):
    """A sequence of unmask requests: each peer of {1..4} survivor, dropped or absent
    (client 0, the one asked, always survives)."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        # mostly complete requests (an absent peer is refused outright)
        roles = draw(st.lists(st.sampled_from("sssdda"), min_size=4, max_size=4))
        surv = (0, *(c for c, r in zip(_IDS[1:], roles, strict=True) if r == "s"))
        drop = tuple(c for c, r in zip(_IDS[1:], roles, strict=True) if r == "d")
        out.append((surv, drop))
    return out


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seq=_requests())
def test_never_both_shares_across_any_request_sequence(seq) -> None:
    r = make_round(5, dim=4, bits=16, threshold=3)
    r.advertise()
    r.share()
    r.masked()
    c = r.clients[0]
    revealed_b: set[int] = set()
    revealed_sk: set[int] = set()
    for surv, drop in seq:
        req = UnmaskRequest(r.params.round_id, surv, drop, None)
        try:
            out = c.unmask(req)
        except ProtocolError:
            continue
        assert set(out.self_mask_shares) == set(surv)
        assert set(out.secret_key_shares) == set(drop)
        revealed_b |= set(out.self_mask_shares)
        revealed_sk |= set(out.secret_key_shares)
        assert not revealed_b & revealed_sk, (seq, revealed_b, revealed_sk)
        assert c.unmask(req) == out  # a retransmission is answered the same
    # the first acceptable request is always accepted (the guard refuses only conflicts)
    first = next(((s, d) for s, d in seq if len(s) >= 3 and len(s) + len(d) == 5), None)
    if first is not None:
        fresh = make_round(5, dim=4, bits=16, threshold=3)
        fresh.advertise()
        fresh.share()
        fresh.masked()
        fresh.clients[0].unmask(UnmaskRequest(fresh.params.round_id, *first, None))


def test_signature_and_aead_failures_say_what_failed() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secagg.crypto import aead_decrypt, aead_encrypt, ed25519_public_bytes, ed25519_sign
    from secagg.errors import SignatureError

    key = Ed25519PrivateKey.generate()
    sig = ed25519_sign(key, b"m")
    with pytest.raises(SignatureError, match=r"^invalid Ed25519 signature$"):
        from secagg.crypto import ed25519_verify

        ed25519_verify(ed25519_public_bytes(key), sig, b"other")
    blob = aead_encrypt(bytes(32), bytes(12), b"pt", b"ad")
    with pytest.raises(SignatureError, match=r"^share ciphertext failed authentication$"):
        aead_decrypt(bytes(32), blob, b"other ad")


def test_pack_refusals_name_the_entry() -> None:
    assert unpack(pack(np.array([0, 5], dtype=np.int64), 8), 8, 2).tolist() == [0, 5]
    with pytest.raises(ValueError, match=r"^entry 1 is negative: -3$"):
        pack(np.array([4, -3, 2], dtype=np.int64), 8)
    with pytest.raises(ValueError, match=r"^entry 2 = 256 does not fit in 8 bits$"):
        pack(np.array([4, 3, 256], dtype=np.int64), 8)
    with pytest.raises(ValueError, match=r"^pack needs a 1-D array, got shape \(1, 2\)$"):
        pack(np.zeros((1, 2), dtype=np.uint64), 8)
    with pytest.raises(ValueError, match=r"^pack needs an integer array, got dtype float64$"):
        pack(np.zeros(2), 8)
