"""What a device and the server accept from a peer, and the values they keep (issue 16:
mutation testing found that no test relayed a share plaintext of the right length for
another pair, keys relayed under a foreign sender, ShareKeys from a client that never
advertised, a frozen round whose identity keys a caller could still change, a share
written as PRIME (a non-canonical 0) or a bit unpacking that relies on a NumPy
conversion NumPy 2 refuses)."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from secagg import (
    AdvertiseKeys,
    ClientProtocol,
    MalformedMessageError,
    NotParticipantError,
    RoundParams,
    ShareKeys,
    UnmaskRequest,
)
from secagg.client import share_ad, share_key, share_nonce
from secagg.crypto import aead_encrypt, x25519_agree, x25519_keypair
from secagg.messages import SHARE_CIPHERTEXT_BYTES, SHARE_PLAINTEXT_BYTES
from secagg.packing import MAX_BITS, MIN_BITS, pack, packed_size, unpack
from secagg.shamir import PRIME, SHARE_BYTES, ShamirError, ShareChecker

from ._helpers import MECHANICS, det_random, make_params, make_round

DIM, BITS = 5, 12


class _Peer:
    """A peer played by the test: its own X25519 keys, so that it can encrypt any share
    plaintext to the device under test exactly as an honest client would."""

    def __init__(self, params: RoundParams, cid: int) -> None:
        self.params, self.cid = params, cid
        rand = det_random(b"peer%d" % cid)
        self.c_sk, self.c_pk = x25519_keypair(rand)
        self.s_sk, self.s_pk = x25519_keypair(rand)

    def advertise(self, sender: int | None = None) -> AdvertiseKeys:
        sender = self.cid if sender is None else sender
        return AdvertiseKeys(self.params.round_id, sender, self.c_pk, self.s_pk)

    def encrypt(self, to: int, to_c_pk: bytes, plaintext: bytes) -> bytes:
        p, u = self.params, self.cid
        key = share_key(x25519_agree(self.c_sk, to_c_pk), p.round_id, u, to)
        return aead_encrypt(
            key, share_nonce(p.round_id, u, to), plaintext, share_ad(p.round_id, u, to)
        )


def _device_with_peers() -> tuple[ClientProtocol, AdvertiseKeys, dict[int, _Peer]]:
    params, _ = make_params(n=3, dim=DIM, bits=BITS, threshold=2)
    device = ClientProtocol(params, 0, random_bytes=det_random(b"device"), policy=MECHANICS)
    own = device.advertise_keys()
    peers = {c: _Peer(params, c) for c in (1, 2)}
    return device, own, peers


def test_relayed_keys_under_a_foreign_sender_are_refused_naming_both_and_can_be_resent() -> None:
    device, own, peers = _device_with_peers()
    keys = {0: own, 1: peers[1].advertise(), 2: peers[1].advertise(sender=1)}
    with pytest.raises(MalformedMessageError, match=r"^keys\[2\] carries sender 1$"):
        device.share_keys(keys)
    keys[2] = peers[2].advertise()
    assert sorted(device.share_keys(keys).ciphertexts) == [1, 2]


def test_a_share_plaintext_for_another_pair_or_of_another_length_is_refused() -> None:
    """The plaintext must be exactly (sender, receiver) || b-share || s^SK-share: one
    authenticated under the right key but naming another receiver (a share relayed from
    elsewhere), or one byte short, is refused naming the sender and changes nothing;
    the good ones are then held and revealed byte for byte."""
    device, own, peers = _device_with_peers()
    device.share_keys({0: own, **{c: p.advertise() for c, p in peers.items()}})
    shares = {c: (bytes([c]) * SHARE_BYTES, bytes([16 + c]) * SHARE_BYTES) for c in peers}

    def ct(u: int, header: tuple[int, int], cut: int = 0) -> bytes:
        pt = struct.pack(">QQ", *header) + shares[u][0] + shares[u][1]
        assert len(pt) == SHARE_PLAINTEXT_BYTES
        return peers[u].encrypt(0, own.c_pk, pt[: len(pt) - cut])

    x = np.arange(DIM, dtype=np.int64)
    good = {u: ct(u, (u, 0)) for u in peers}
    for bad in (ct(1, (1, 2)), ct(1, (2, 0)), ct(1, (1, 0), cut=1)):
        with pytest.raises(MalformedMessageError, match="^share plaintext from 1 is malformed$"):
            device.masked_input({**good, 1: bad}, x)
        assert device.stage.value == "masked_input"
    assert device.masked_input(good, x).sender == 0
    out = device.unmask(UnmaskRequest(device.params.round_id, (0, 1), (2,)))
    assert out.self_mask_shares[1] == shares[1][0]
    assert out.secret_key_shares == {2: shares[2][1]}


def test_shares_from_a_client_that_never_advertised_are_refused() -> None:
    """A participant missing from U1 (its keys never arrived) sends ShareKeys with one
    ciphertext per neighbour in U1: it is no longer part of the round, and the relayed
    ciphertexts name only U1."""
    r = make_round(n=4, dim=DIM, bits=BITS)
    agg = r.agg
    adv = {c: r.clients[c].advertise_keys() for c in (0, 1, 2)}
    for m in adv.values():
        agg.add_advertise(m)
    keys = agg.close_advertise()
    assert sorted(keys) == [0, 1, 2]
    late = ShareKeys(r.params.round_id, 3, {c: bytes(SHARE_CIPHERTEXT_BYTES) for c in (0, 1, 2)})
    with pytest.raises(NotParticipantError, match="^client 3 is no longer part of round 7$"):
        agg.add_share_keys(late)
    for c in (0, 1, 2):
        agg.add_share_keys(r.clients[c].share_keys(keys[c]))
    relayed = agg.close_share_keys()
    assert {r: sorted(cts) for r, cts in relayed.items()} == {0: [1, 2], 1: [0, 2], 2: [0, 1]}


def test_a_round_keeps_its_own_copy_of_the_identity_keys() -> None:
    """RoundParams is frozen: changing or emptying the caller's dict afterwards changes
    neither the round's keys nor its hash (in active mode that would undo the check that
    every participant has one)."""
    keys = {c: bytes([c + 1]) * 32 for c in range(3)}
    params = RoundParams(
        round_id=1,
        participants=(0, 1, 2),
        dim=2,
        bits=16,
        threshold=2,
        graph="complete",
        degree=None,
        graph_seed=bytes(32),
        active=True,
        identity_keys=keys,
    )
    want, h = dict(keys), hash(params)
    keys[0] = b"\xff" * 32
    del keys[1]
    assert dict(params.identity_keys or {}) == want
    assert hash(params) == h
    assert RoundParams.from_dict(params.to_dict()) == params


def test_a_share_written_as_prime_is_refused_even_when_it_is_zero_mod_p() -> None:
    """Shares are field elements in [0, PRIME): PRIME itself is the non-canonical form of
    a share worth 0 and is refused, with more than t shares as with exactly t."""
    secret, t = 123456789, 2
    slope = -secret % PRIME  # f(x) = secret + slope * x has f(1) = 0
    shares = {x: (secret + slope * x) % PRIME for x in (1, 2, 3, 4)}
    assert shares[1] == 0
    checker = ShareChecker(t, rho=987654321)
    assert checker.reconstruct(shares) == (secret, frozenset())
    for subset in ((1, 2, 3, 4), (1, 2)):
        bad = {x: shares[x] for x in subset} | {1: PRIME}
        with pytest.raises(ShamirError, match="^share out of field range$"):
            checker.reconstruct(bad)


def test_every_width_round_trips_against_the_bit_string_without_deprecated_numpy() -> None:
    """pack/unpack against the definition (entry i at bits [i*b, (i+1)*b) of a
    little-endian bit string), for every width, with warnings as errors: a negative
    Python shift count converted to uint64 is deprecated in NumPy 1.26 and raises in
    NumPy 2."""
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bits in range(MIN_BITS, MAX_BITS + 1):
            for dim in (1, 11, 16):
                v = [int(a) for a in rng.integers(0, 1 << bits, dim, dtype=np.uint64)]
                ref = sum(a << (i * bits) for i, a in enumerate(v))
                data = ref.to_bytes(packed_size(dim, bits), "little")
                assert pack(np.array(v, dtype=np.uint64), bits) == data, (bits, dim)
                assert unpack(data, bits, dim).tolist() == v, (bits, dim)
