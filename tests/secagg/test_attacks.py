"""Attacks from the security review (issue 11), written as an adversary would run them.

Each test drives the real sans-I/O objects. The server is the attacker: it relays
messages as it likes, keeps every message it receives and may read the state of the
clients it corrupted. The tests pass when the attack is refused (or fails).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import (
    AbortError,
    AggregatorProtocol,
    ClientPolicy,
    ClientProtocol,
    PolicyError,
    ProtocolError,
    RoundParams,
    UnmaskRequest,
    unpack,
)
from secagg.client import consistency_message, pair_label, pair_seed, self_label
from secagg.crypto import Keystream, ed25519_public_bytes, ed25519_sign, x25519_agree
from secagg.params import split_view_floor
from secagg.shamir import ShamirError, reconstruct_bytes

from ._helpers import det_random, make_round


class AttackFailed(Exception):
    """The attacker could not collect what it needs."""


def _identities(ids: Iterable[int]) -> tuple[dict[int, Ed25519PrivateKey], dict[int, bytes]]:
    signing = {c: Ed25519PrivateKey.generate() for c in ids}
    return signing, {c: ed25519_public_bytes(k) for c, k in signing.items()}


def _inputs(params: RoundParams) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        c: rng.integers(0, params.modulus, params.dim, dtype=np.uint64) for c in params.participants
    }


def split_view_attack(
    params: RoundParams,
    clients: dict[int, ClientProtocol],
    signing: dict[int, Ed25519PrivateKey],
    inputs: dict[int, np.ndarray],
    target: int,
    corrupt: Iterable[int] = (),
) -> np.ndarray:
    """The split-view attack on the ConsistencyCheck; returns the target's input.

    Every client sends its masked input. The server shows the survivor set S (target
    included) to one group of the target's neighbours and S minus the target (target
    "dropped") to the others. Each group sees valid signatures on its own set: honest
    clients sign the one set they are shown, the corrupt ones sign both. The first group
    reveals shares of the target's b_u, the second shares of its s^SK; corrupt neighbours
    hand over both. With t of each the server strips both masks of y_target.
    """
    corrupt = set(corrupt)
    rid, t = params.round_id, params.threshold
    agg = AggregatorProtocol(params)  # an honest relay for the first stages
    adverts = {c: cl.advertise_keys() for c, cl in clients.items()}
    for m in adverts.values():
        agg.add_advertise(m)
    keys = agg.close_advertise()
    for c in keys:
        agg.add_share_keys(clients[c].share_keys(keys[c]))
    cts = agg.close_share_keys()
    masked = {c: clients[c].masked_input(cts[c], inputs[c]) for c in cts}
    y_target = masked[target].data  # the server keeps it instead of only summing it

    honest_nbrs = [v for v in params.neighbours(target) if v not in corrupt]
    others = [
        v for v in params.participants if v != target and v not in corrupt and v not in honest_nbrs
    ]
    # the split that needs the fewest honest neighbours on the b_u side: the target's
    # own share and the corrupt neighbours' shares count there already
    n_corrupt_nbrs = len(corrupt & params.neighbour_set(target))
    need_a = max(0, t - 1 - n_corrupt_nbrs)
    group_a = [target, *honest_nbrs[:need_a], *others[: len(others) // 2]]
    group_b = [*honest_nbrs[need_a:], *others[len(others) // 2 :]]

    everyone = tuple(params.participants)
    view_a = UnmaskRequest(rid, everyone, (), None)
    view_b = UnmaskRequest(rid, tuple(c for c in everyone if c != target), (target,), None)

    def signatures(view: UnmaskRequest, group: list[int]) -> dict[int, bytes]:
        sigs = {}
        for c in group:
            try:
                sigs[c] = clients[c].consistency_check(view).signature
            except ProtocolError:
                continue
        for c in corrupt:
            if c in view.survivors:
                sigs[c] = ed25519_sign(signing[c], consistency_message(rid, c, view.survivors))
        return dict(sorted(sigs.items()))

    signed_a = dataclasses.replace(view_a, signatures=signatures(view_a, group_a))
    signed_b = dataclasses.replace(view_b, signatures=signatures(view_b, group_b))

    def collect(group: list[int], view: UnmaskRequest, kind: str) -> dict[int, bytes]:
        got = {}
        for c in group:
            try:
                shares = getattr(clients[c].unmask(view), kind)
            except ProtocolError:  # an honest client refusing
                continue
            if target in shares:
                got[c + 1] = shares[target]
        return got

    b_shares = collect(group_a, signed_a, "self_mask_shares")
    sk_shares = collect(group_b, signed_b, "secret_key_shares")
    for c in corrupt & params.neighbour_set(target):
        b_shares[c + 1] = clients[c]._held_b[target]
        sk_shares[c + 1] = clients[c]._held_sk[target]
    if len(b_shares) < t or len(sk_shares) < t:
        raise AttackFailed(f"{len(b_shares)} shares of b_u, {len(sk_shares)} of s_sk, t = {t}")
    try:
        b_u = reconstruct_bytes(b_shares, t)
        s_sk = reconstruct_bytes(sk_shares, t)
    except ShamirError as err:
        raise AttackFailed(str(err)) from err
    dtype = params.word_dtype
    y = unpack(y_target, params.bits, params.dim, dtype)
    ks = Keystream(params.dim, dtype)
    y -= ks.fill(b_u, self_label(rid, target))
    for v in params.neighbours(target):
        seed = pair_seed(x25519_agree(s_sk, adverts[v].s_pk), rid, target, v)
        mask = ks.fill(seed, pair_label(rid, target, v))
        if target < v:
            y -= mask
        else:
            y += mask
    return (y & dtype(params.modulus - 1)).astype(np.uint64)


def _active_round(params: RoundParams, signing: dict[int, Ed25519PrivateKey], **kw: object):
    return {
        c: ClientProtocol(
            params, c, signing_key=signing[c], random_bytes=det_random(b"a%d" % c), **kw
        )  # type: ignore[arg-type]
        for c in params.participants
    }


# ---------------------------------------------------------------- finding 1: Harary


def test_split_view_attack_on_harary_defaults_fails() -> None:
    """n = 20 on defaults (10 % dropout, 10 % corrupt): before the fix (k, t) = (6, 3)
    and the attack recovered the target's input exactly with every device honest."""
    signing, identity = _identities(range(20))
    params = RoundParams.create(
        3,
        range(20),
        16,
        16,
        graph="harary",
        active=True,
        identity_keys=identity,
        random_bytes=det_random(b"g"),
    )
    assert params.graph == "harary"
    inputs = _inputs(params)
    clients = _active_round(params, signing)
    with pytest.raises(AttackFailed):
        split_view_attack(params, clients, signing, inputs, target=0)


# ---------------------------------------------------------------- finding 2: complete graph


def test_split_view_attack_on_complete_graph_with_corrupt_clients_fails() -> None:
    """Complete graph, active, 30 % corrupt: before the fix t = n/2 + 1 = 6 of 10, and
    3 corrupt clients (signing both views) let the split through."""
    signing, identity = _identities(range(10))
    params = RoundParams.create(
        1,
        range(10),
        8,
        16,
        graph="complete",
        dropout=0.4,
        corrupt=0.3,
        active=True,
        identity_keys=identity,
        random_bytes=det_random(b"c"),
    )
    inputs = _inputs(params)
    clients = _active_round(params, signing)
    with pytest.raises(AttackFailed):
        split_view_attack(params, clients, signing, inputs, target=0, corrupt=(7, 8, 9))


# ---------------------------------------------------------------- finding 4: low-order keys

# X25519 points of small order (RFC 7748 Sec. 6 / Wycheproof): every agreement with them
# gives the all-zero secret.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
]


@pytest.mark.parametrize("which", ["c_pk", "s_pk"])
@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_key_drops_only_its_sender(which: str, point: bytes) -> None:
    """A client advertising a small-order X25519 key is refused at advertise; the round
    finishes without it. Before the fix the key was relayed and every neighbour failed
    in share-keys."""
    r = make_round(6, dim=12, threshold=4)
    advs = {c: cl.advertise_keys() for c, cl in r.clients.items()}
    bad = dataclasses.replace(advs[5], **{which: point})
    with pytest.raises(ProtocolError):
        r.agg.add_advertise(bad)
    for c in range(5):
        r.agg.add_advertise(advs[c])
    keys = r.agg.close_advertise()
    assert 5 not in keys
    for c in keys:
        r.agg.add_share_keys(r.clients[c].share_keys(keys[c]))
    cts = r.agg.close_share_keys()
    for c in cts:
        r.agg.add_masked_input(r.clients[c].masked_input(cts[c], r.inputs[c]))
    req = r.agg.close_masked_input()
    for c in req.survivors:
        r.agg.add_unmask(r.clients[c].unmask(req))
    expected = sum(r.inputs[c].astype(object) for c in range(5)) % r.params.modulus
    assert np.array_equal(r.agg.finish(), expected.astype(np.uint64))


# ---------------------------------------------------------------- findings 4 and 5: bad shares


def _to_unmask(n: int, threshold: int, dropped: tuple[int, ...]):
    r = make_round(n, dim=12, threshold=threshold)
    r.advertise()
    r.share()
    r.masked([c for c in r.params.participants if c not in dropped])
    r.add_masked()
    req = r.agg.close_masked_input()
    shares = {c: r.clients[c].unmask(req) for c in req.survivors}
    return r, req, shares


def _flip(share: bytes) -> bytes:
    """A wrong share: bit 80 flipped. (A change in the low bits only can be harmless: an
    s^SK off by less than 8 clamps to the same X25519 scalar and gives the same masks.)"""
    return share[:10] + bytes([share[10] ^ 1]) + share[11:]


def _expected_sum(r, survivors) -> np.ndarray:
    total = sum(r.inputs[c].astype(object) for c in survivors) % r.params.modulus
    return total.astype(np.uint64)


def test_wrong_secret_key_share_excludes_its_sender_not_the_round() -> None:
    """Before the fix one wrong s^SK share aborted the whole round."""
    r, req, shares = _to_unmask(8, 5, dropped=(7,))
    liar = 2
    msg = shares[liar]
    shares[liar] = dataclasses.replace(msg, secret_key_shares={7: _flip(msg.secret_key_shares[7])})
    for m in shares.values():
        r.agg.add_unmask(m)
    assert np.array_equal(r.agg.finish(), _expected_sum(r, req.survivors))


def test_wrong_self_mask_share_is_detected_and_excluded() -> None:
    """Before the fix a wrong share of b_u went unnoticed and a wrong sum came out."""
    r, req, shares = _to_unmask(8, 5, dropped=())
    liar = 3
    msg = shares[liar]
    forged = dict(msg.self_mask_shares)
    forged[0] = _flip(forged[0])
    shares[liar] = dataclasses.replace(msg, self_mask_shares=forged)
    for m in shares.values():
        r.agg.add_unmask(m)
    assert np.array_equal(r.agg.finish(), _expected_sum(r, req.survivors))


# ---------------------------------------------------------------- finding 3: device policy


def test_device_refuses_threshold_one() -> None:
    """t = 1: every share is the secret itself. Before the fix the device took it."""
    params = RoundParams(
        round_id=1,
        participants=tuple(range(5)),
        dim=4,
        bits=16,
        threshold=1,
        graph="complete",
        degree=None,
        graph_seed=bytes(32),
    )
    with pytest.raises(ProtocolError, match="threshold"):
        ClientProtocol(params, 0)


# ---------------------------------------------------------------- the split-view bound is tight


def test_round_params_refuse_the_parameters_the_attack_used() -> None:
    """The regression of finding 1: active (k, t) = (6, 3) at n = 20 is refused outright."""
    _, identity = _identities(range(20))
    with pytest.raises(ValueError, match="split"):
        RoundParams(round_id=3, participants=tuple(range(20)), dim=4, bits=16, threshold=3,
                    graph="harary", degree=6, graph_seed=bytes(32), active=True,
                    identity_keys=identity)  # fmt: skip


@pytest.mark.parametrize(
    ("graph", "n", "degree", "n_corrupt"),
    [("harary", 20, 6, 1), ("harary", 20, 6, 2), ("harary", 24, 10, 3), ("complete", 8, None, 2)],
)
def test_split_view_bound_is_tight(graph: str, n: int, degree: int | None, n_corrupt: int) -> None:
    """With c corrupt neighbours the attack works at 2t = holders + c and fails one above
    (the derivation in secagg.params), so the bound the devices enforce is the right one."""
    signing, identity = _identities(range(n))
    holders = n if graph == "complete" else int(degree or 0) + 1
    floor_t = split_view_floor(holders, n_corrupt)
    # a device that assumes no corrupt client accepts both thresholds
    trusting = ClientPolicy(corrupt=0.0, min_threshold_fraction=0.0, min_cohort=2)
    for t, works in ((floor_t - 1, True), (floor_t, False)):
        params = RoundParams(round_id=5, participants=tuple(range(n)), dim=8, bits=16,
                             threshold=t, graph=graph, degree=degree, graph_seed=bytes(32),
                             active=True, identity_keys=identity)  # fmt: skip
        corrupt = params.neighbours(0)[-n_corrupt:]
        clients = _active_round(params, signing, policy=trusting)
        inputs = _inputs(params)
        if works:
            got = split_view_attack(params, clients, signing, inputs, 0, corrupt)
            assert np.array_equal(got, inputs[0])
        else:
            with pytest.raises(AttackFailed):
                split_view_attack(params, clients, signing, inputs, 0, corrupt)


def test_devices_refuse_a_threshold_that_colluding_neighbours_could_split() -> None:
    """(k, t) = (6, 4) passes RoundParams (2t > k + 1) but one corrupt neighbour breaks
    it (previous test); a device assuming 10 % corrupt clients computes its own bound
    (2 of 20) and refuses the round."""
    signing, identity = _identities(range(20))
    params = RoundParams(round_id=5, participants=tuple(range(20)), dim=8, bits=16,
                         threshold=4, graph="harary", degree=6, graph_seed=bytes(32),
                         active=True, identity_keys=identity)  # fmt: skip
    with pytest.raises(PolicyError, match="split"):
        ClientProtocol(params, 0, signing_key=signing[0])


@pytest.mark.parametrize("n", [20, 50, 100, 1000])
def test_created_active_rounds_are_accepted_by_default_devices(n: int) -> None:
    """The server's finder and the devices' check agree at the default 10 % / 10 %."""
    signing, identity = _identities(range(n)) if n <= 100 else ({}, None)
    for graph in ("harary", "complete"):
        if identity is None:
            identity = {c: bytes(32) for c in range(n)}
        params = RoundParams.create(0, range(n), 4, 16, graph=graph, active=True,
                                    identity_keys=identity)  # fmt: skip
        holders = params.share_holders
        c = params.corrupt_holder_bound(0.1)
        assert 2 * params.threshold > holders + c
        assert params.threat_model_violation(0.1) is None
        ClientPolicy().check(params)


# ---------------------------------------------------------------- finding 3: pinned keys


def test_device_refuses_substituted_identity_keys() -> None:
    """In active mode the server hands out the identity keys the consistency signatures
    are checked against; with its own keys it could sign for everyone. The device
    compares them with keys it pinned."""
    signing, identity = _identities(range(6))
    params = RoundParams.create(0, range(6), 4, 16, active=True, identity_keys=identity)
    ClientProtocol(params, 0, signing_key=signing[0], pinned_identity_keys=identity)
    _, forged = _identities(range(6))
    forged[0] = identity[0]  # the server cannot forge the device's own key...
    lying = dataclasses.replace(params, identity_keys=forged)
    with pytest.raises(PolicyError, match=r"participants \[1, 2, 3, 4, 5\] differ"):
        ClientProtocol(lying, 0, signing_key=signing[0], pinned_identity_keys=identity)
    partial = {c: k for c, k in identity.items() if c != 4}
    with pytest.raises(PolicyError, match=r"no pinned identity key for participants \[4\]"):
        ClientProtocol(params, 0, signing_key=signing[0], pinned_identity_keys=partial)
    strict = ClientPolicy(require_pinned_keys=True)
    with pytest.raises(PolicyError, match="no pinned identity keys"):
        ClientProtocol(params, 0, signing_key=signing[0], policy=strict)


def test_several_wrong_shares_are_located_up_to_the_decoding_radius() -> None:
    """10 senders, t = 5: up to floor((10 - 5) / 2) = 2 liars are located (both kinds of
    secret) and excluded; the sum is exact."""
    r, req, shares = _to_unmask(11, 5, dropped=(10,))
    for liar in (1, 6):
        msg = shares[liar]
        shares[liar] = dataclasses.replace(
            msg,
            self_mask_shares={u: _flip(s) for u, s in msg.self_mask_shares.items()},
            secret_key_shares={u: _flip(s) for u, s in msg.secret_key_shares.items()},
        )
    for m in shares.values():
        r.agg.add_unmask(m)
    assert np.array_equal(r.agg.finish(), _expected_sum(r, req.survivors))
    assert r.agg.excluded_senders == (1, 6)


def test_more_wrong_shares_than_can_be_located_abort() -> None:
    r, _, shares = _to_unmask(11, 5, dropped=(10,))
    for liar in (1, 2, 3):
        msg = shares[liar]
        shares[liar] = dataclasses.replace(
            msg, secret_key_shares={u: _flip(s) for u, s in msg.secret_key_shares.items()}
        )
    for m in shares.values():
        r.agg.add_unmask(m)
    with pytest.raises(AbortError, match="cannot be told|cannot be decoded|s_pk"):
        r.agg.finish()


def test_exactly_t_shares_locate_nothing() -> None:
    """The documented limit: with exactly t shares a wrong s^SK share is detected by the
    s^PK check but cannot be located (the round aborts), and a wrong b_u share is not
    detected at all (a wrong sum comes out)."""
    r, _, shares = _to_unmask(6, 5, dropped=(5,))
    msg = shares[0]
    shares[0] = dataclasses.replace(msg, secret_key_shares={5: _flip(msg.secret_key_shares[5])})
    for m in shares.values():
        r.agg.add_unmask(m)
    with pytest.raises(AbortError, match="exactly t shares"):
        r.agg.finish()
    r, req, shares = _to_unmask(5, 5, dropped=())
    msg = shares[0]
    shares[0] = dataclasses.replace(
        msg, self_mask_shares={**msg.self_mask_shares, 3: _flip(msg.self_mask_shares[3])}
    )
    for m in shares.values():
        r.agg.add_unmask(m)
    assert not np.array_equal(r.agg.finish(), _expected_sum(r, req.survivors))


def test_out_of_field_share_is_refused_at_add_unmask() -> None:
    r, _, shares = _to_unmask(6, 4, dropped=())
    msg = shares[2]
    bad = dataclasses.replace(msg, self_mask_shares={**msg.self_mask_shares, 0: b"\xff" * 33})
    with pytest.raises(ProtocolError, match="share of 2 for 0"):
        r.agg.add_unmask(bad)
    for m in shares.values():
        r.agg.add_unmask(m)
    assert r.agg.finish() is not None and r.agg.excluded_senders == ()
