"""End-to-end protocol properties: exact sums under dropouts, masks cancel, the
aggregator keeps no per-client vector, honest clients never reveal both shares, every
rejection leaves state unchanged, active mode signatures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import (
    AbortError,
    AggregatorProtocol,
    ClientProtocol,
    DuplicateMessageError,
    MalformedMessageError,
    MaskedInput,
    NotParticipantError,
    ProtocolError,
    RefusedError,
    RoundMismatchError,
    RoundParams,
    SignatureError,
    Stage,
    StageError,
    UnmaskRequest,
    pack,
    run_round,
    unpack,
)

from ._helpers import MECHANICS, det_random, fingerprint, make_params, make_round, walk

STAGES = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
]


def _expected(inputs: dict[int, np.ndarray], ids: tuple[int, ...], bits: int) -> np.ndarray:
    total = np.zeros(len(next(iter(inputs.values()))), dtype=object)
    for c in ids:
        total = total + inputs[c].astype(object)
    return (total % (1 << bits)).astype(np.uint64)


def _inputs(params: RoundParams, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        c: rng.integers(0, params.modulus, params.dim, dtype=np.uint64) for c in params.participants
    }


# ---------------------------------------------------------------- correctness


@pytest.mark.parametrize("bits", [8, 16, 20, 32, 33, 48, 62])
@pytest.mark.parametrize("graph", ["complete", "harary"])
def test_masks_cancel_without_dropouts(bits: int, graph: str) -> None:
    params, _ = make_params(
        8, dim=50, bits=bits, graph=graph, degree=4 if graph == "harary" else None, threshold=3
    )
    inputs = _inputs(params, bits)
    res = run_round(params, inputs)
    assert res.sum.dtype == np.uint64
    assert np.array_equal(res.sum, _expected(inputs, params.participants, bits))
    assert res.survivors == params.participants and res.dropped == ()


def test_masked_inputs_look_random_and_pairwise_masks_cancel() -> None:
    r = make_round(4, dim=64, bits=32)
    zeros = {c: np.zeros(64, dtype=np.uint64) for c in r.params.participants}
    r.inputs = zeros
    r.advertise()
    r.share()
    r.masked()
    ys = {c: unpack(m.data, 32, 64) for c, m in r.msgs["masked"].items()}
    assert all(np.count_nonzero(y) > 50 for y in ys.values())  # x = 0 yet y is masked
    # y_u - PRG(b_u) summed over all u is 0: pairwise masks cancel exactly
    from secagg.client import self_label
    from secagg.crypto import prg_words

    total = np.zeros(64, dtype=np.uint64)
    agg = r.agg
    r.add_masked()
    req = agg.close_masked_input()
    shares = {c: r.clients[c].unmask(req) for c in r.params.participants}
    from secagg.shamir import reconstruct_bytes

    for u in r.params.participants:
        b_u = reconstruct_bytes(
            {v + 1: shares[v].self_mask_shares[u] for v in shares}, r.params.threshold
        )
        total += ys[u] - prg_words(b_u, self_label(r.params.round_id, u), 64, 32)
    assert not np.any(total % np.uint64(1 << 32))


def test_pairwise_sign_convention() -> None:
    """y_u carries +PRG(s_uv) for u < v and -PRG(s_uv) for u > v."""
    r = make_round(2, dim=16, bits=32, threshold=2)
    r.inputs = {c: np.zeros(16, dtype=np.uint64) for c in (0, 1)}
    r.advertise()
    r.share()
    r.masked()
    from secagg.client import pair_label, pair_seed, self_label
    from secagg.crypto import prg_words, x25519_agree
    from secagg.shamir import reconstruct_bytes

    r.add_masked()
    req = r.agg.close_masked_input()
    sh = {c: r.clients[c].unmask(req) for c in (0, 1)}
    s_sk0 = r.clients[0]._s_sk
    s_pk1 = r.msgs["adv"][1].s_pk
    s01 = pair_seed(x25519_agree(s_sk0, s_pk1), r.params.round_id, 0, 1)
    pair = prg_words(s01, pair_label(r.params.round_id, 0, 1), 16, 32)
    for u, sign in ((0, 1), (1, -1)):
        b_u = reconstruct_bytes({v + 1: sh[v].self_mask_shares[u] for v in sh}, 2)
        y = unpack(r.msgs["masked"][u].data, 32, 16).astype(object)
        rest = (y - prg_words(b_u, self_label(r.params.round_id, u), 16, 32).astype(object)) % (
            1 << 32
        )
        assert rest.tolist() == ((sign * pair.astype(object)) % (1 << 32)).tolist()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 10),
    bits=st.integers(8, 62),
    graph=st.sampled_from(["complete", "harary"]),
    data=st.data(),
)
def test_random_dropouts_give_exact_sum_or_clean_abort(
    n: int, bits: int, graph: str, data: st.DataObject
) -> None:
    degree = None
    if graph == "harary":
        degree = data.draw(st.sampled_from([k for k in range(2, n, 2)]))
        threshold = data.draw(st.integers(2, degree + 1))
    else:
        threshold = data.draw(st.integers(2, n))
    params, _ = make_params(n, dim=11, bits=bits, graph=graph, degree=degree, threshold=threshold)
    schedule = data.draw(
        st.dictionaries(st.sampled_from(params.participants), st.sampled_from(STAGES), max_size=n)
    )
    inputs = _inputs(params, n * 100 + bits)
    full = sum(1 for c in params.participants if c not in schedule)
    try:
        res = run_round(
            params, inputs, schedule, random_bytes=det_random(bytes([n, bits])), policy=MECHANICS
        )
    except AbortError:
        if graph == "complete":
            assert full < threshold  # complete graph: t fully alive clients always finish
        return
    for c, st_ in schedule.items():
        assert (c in res.survivors) == (st_.order > Stage.MASKED_INPUT.order)
    assert len(res.survivors) >= threshold
    assert np.array_equal(res.sum, _expected(inputs, res.survivors, bits))


def test_survivor_vanishing_before_unmask_still_counts() -> None:
    params, _ = make_params(6, dim=20, threshold=3)
    inputs = _inputs(params)
    res = run_round(params, inputs, {0: Stage.UNMASK, 1: Stage.MASKED_INPUT, 2: Stage.SHARE_KEYS})
    assert res.survivors == (0, 3, 4, 5) and res.dropped == (1, 2)
    assert np.array_equal(res.sum, _expected(inputs, res.survivors, 20))
    assert res.dropouts_by_stage["masked_input"] == [1]
    assert res.dropouts_by_stage["unmask"] == [0]


def test_too_few_survivors_abort_and_reveal_nothing() -> None:
    params, _ = make_params(5, dim=20, threshold=4)
    with pytest.raises(AbortError):
        run_round(params, _inputs(params), {0: Stage.MASKED_INPUT, 1: Stage.MASKED_INPUT})
    r = make_round(5, threshold=4)
    r.advertise()
    r.share()
    r.masked([0, 1, 2])
    r.add_masked()
    with pytest.raises(AbortError):
        r.agg.close_masked_input()
    assert r.agg.stage == Stage.ABORTED
    assert not any(isinstance(v, np.ndarray) for v in walk(r.agg))
    with pytest.raises(ProtocolError):
        r.agg.finish()


def test_abort_when_too_few_shares_arrive_in_unmask() -> None:
    r = make_round(5, threshold=4)
    r.to_unmask()
    req = r.msgs["request"]
    for c in (0, 1, 2):
        r.agg.add_unmask(r.clients[c].unmask(req))
    with pytest.raises(AbortError):
        r.agg.finish()
    assert r.agg.stage == Stage.ABORTED


def test_run_round_records_costs() -> None:
    params, _ = make_params(5, dim=1000, bits=20, threshold=3)
    res = run_round(params, _inputs(params), {4: Stage.UNMASK})
    for c in params.participants:
        assert res.upload_bytes[c] > 250 * 4  # at least keys + the packed 2500-byte input
        assert res.upload_bytes[c] >= 2500
        assert res.client_seconds[c] > 0
    for key in ("server", "client_mean", "server_unmask", "total", "server_cpu", "client_cpu_mean"):
        assert res.timings[key] >= 0
    assert res.upload_bytes[4] < res.upload_bytes[0]  # 4 sent no unmask shares


# ---------------------------------------------------------------- server holds only sums


def test_aggregator_keeps_no_per_client_vector() -> None:
    r = make_round(5, dim=257, bits=24, threshold=3)
    r.advertise()
    r.share()
    r.masked()
    datas = [m.data for m in r.msgs["masked"].values()]
    vectors = [unpack(d, 24, 257) for d in datas]
    r.add_masked()
    arrays = [v for v in walk(r.agg) if isinstance(v, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].shape == (257,) and arrays[0] is r.agg._sum
    blobs = [v for v in walk(r.agg) if isinstance(v, (bytes, bytearray))]
    for d in datas:
        assert not any(d in b or d[:32] in b for b in blobs)
    for vec in vectors:
        assert not np.array_equal(arrays[0].astype(np.uint64) & np.uint64((1 << 24) - 1), vec)
    assert not any(isinstance(v, MaskedInput) for v in walk(r.agg))
    req = r.agg.close_masked_input()
    for c in r.params.participants:
        r.agg.add_unmask(r.clients[c].unmask(req))
    total = r.agg.finish()
    assert np.array_equal(total, _expected(r.inputs, r.params.participants, 24))


# ---------------------------------------------------------------- never both shares


def test_client_refuses_both_shares_in_one_request() -> None:
    r = make_round(5, threshold=3)
    r.to_unmask()
    c = r.clients[0]
    bad = UnmaskRequest(r.params.round_id, (0, 1, 2, 3), (3, 4), None)
    before = fingerprint(c)
    with pytest.raises(RefusedError):
        c.unmask(bad)
    assert fingerprint(c) == before


def test_client_refuses_both_shares_across_requests() -> None:
    r = make_round(5, threshold=3)
    r.advertise()
    r.share()
    r.masked()
    c = r.clients[0]
    first = UnmaskRequest(r.params.round_id, (0, 1, 2, 3, 4), (), None)
    out = c.unmask(first)
    assert 4 in out.self_mask_shares
    second = UnmaskRequest(r.params.round_id, (0, 1, 2, 3), (4,), None)
    with pytest.raises(RefusedError, match="both"):
        c.unmask(second)
    again = c.unmask(first)  # a retransmitted identical request is fine
    assert again == out


def test_client_refuses_contradicting_requests() -> None:
    r = make_round(5, threshold=3)
    r.to_unmask()
    c = r.clients[0]
    rid = r.params.round_id
    cases = [
        UnmaskRequest(rid, (1, 2, 3, 4), (0,), None),  # itself dropped though it sent y_0
        UnmaskRequest(rid, (0, 1), (2, 3, 4), None),  # fewer than t survivors
        UnmaskRequest(rid, (0, 1, 2), (3,), None),  # neighbour 4 unaccounted for
    ]
    for req in cases:
        with pytest.raises(RefusedError):
            c.unmask(req)
    with pytest.raises(RoundMismatchError):
        c.unmask(UnmaskRequest(rid + 1, (0, 1, 2, 3, 4), (), None))
    with pytest.raises(NotParticipantError):
        c.unmask(UnmaskRequest(rid, (0, 1, 2, 3, 4, 99), (), None))
    assert c.stage == Stage.UNMASK


# ---------------------------------------------------------------- rejections, state unchanged


def _rejects(agg: AggregatorProtocol, call, msg, exc: type[Exception]) -> None:
    before = fingerprint(agg)
    with pytest.raises(exc):
        call(msg)
    assert fingerprint(agg) == before


def test_aggregator_rejections_leave_state_unchanged() -> None:
    r = make_round(5, dim=40, threshold=3, ids=(0, 1, 2, 3, 4))
    agg = r.agg
    advs = {c: cl.advertise_keys() for c, cl in r.clients.items()}
    agg.add_advertise(advs[0])
    _rejects(agg, agg.add_advertise, advs[0], DuplicateMessageError)
    _rejects(agg, agg.add_advertise, dataclasses.replace(advs[1], round_id=8), RoundMismatchError)
    _rejects(agg, agg.add_advertise, dataclasses.replace(advs[1], sender=9), NotParticipantError)
    _rejects(
        agg,
        agg.add_advertise,
        dataclasses.replace(advs[1], s_pk=advs[1].c_pk),
        MalformedMessageError,
    )
    _rejects(agg, agg.add_advertise, "not a message", MalformedMessageError)
    for c in (1, 2, 3, 4):
        agg.add_advertise(advs[c])
    keys = agg.close_advertise()
    _rejects(agg, agg.add_advertise, dataclasses.replace(advs[0]), StageError)
    shares = {c: r.clients[c].share_keys(keys[c]) for c in keys}
    agg.add_share_keys(shares[0])
    _rejects(agg, agg.add_share_keys, shares[0], DuplicateMessageError)
    bad_ct = dict(shares[1].ciphertexts)
    bad_ct.pop(2)
    _rejects(
        agg,
        agg.add_share_keys,
        dataclasses.replace(shares[1], ciphertexts=bad_ct),
        MalformedMessageError,
    )
    _rejects(
        agg, agg.add_share_keys, dataclasses.replace(shares[1], round_id=6), RoundMismatchError
    )
    for c in (1, 2, 3):
        agg.add_share_keys(shares[c])  # 4 never shares keys: dropped at ShareKeys
    cts = agg.close_share_keys()
    assert 4 not in cts and all(4 not in v for v in cts.values())
    masked = {c: r.clients[c].masked_input(cts[c], r.inputs[c]) for c in cts}
    agg.add_masked_input(masked[0])
    _rejects(agg, agg.add_masked_input, masked[0], DuplicateMessageError)
    _rejects(
        agg,
        agg.add_masked_input,
        dataclasses.replace(masked[1], data=masked[1].data[:-1]),
        MalformedMessageError,
    )
    _rejects(
        agg,
        agg.add_masked_input,
        dataclasses.replace(masked[1], data=masked[1].data + b"\0"),
        MalformedMessageError,
    )
    _rejects(
        agg,
        agg.add_masked_input,
        MaskedInput(r.params.round_id, 4, masked[1].data),
        NotParticipantError,
    )
    _rejects(
        agg, agg.add_masked_input, dataclasses.replace(masked[1], round_id=0), RoundMismatchError
    )
    _rejects(
        agg,
        agg.add_masked_input,
        MaskedInput(r.params.round_id, 17, masked[1].data),
        NotParticipantError,
    )
    _rejects(agg, agg.add_share_keys, shares[0], StageError)
    _rejects(agg, agg.add_unmask, object(), MalformedMessageError)
    assert agg.expected_senders() == {1, 2, 3}
    agg.add_masked_input(masked[1])
    agg.add_masked_input(masked[2])  # 3 drops before its masked input
    req = agg.close_masked_input()
    assert req.survivors == (0, 1, 2) and req.dropped == (3,)
    assert agg.dropped == (3, 4) and agg.unmask_dropped == (3,)
    out = {c: r.clients[c].unmask(req) for c in (0, 1, 2)}
    agg.add_unmask(out[0])
    _rejects(agg, agg.add_unmask, out[0], DuplicateMessageError)
    _rejects(agg, agg.add_masked_input, masked[3], StageError)
    short = dataclasses.replace(out[1], self_mask_shares={})
    _rejects(agg, agg.add_unmask, short, MalformedMessageError)
    _rejects(agg, agg.add_unmask, dataclasses.replace(out[1], round_id=1), RoundMismatchError)
    agg.add_unmask(out[1])
    agg.add_unmask(out[2])
    assert np.array_equal(agg.finish(), _expected(r.inputs, (0, 1, 2), 20))
    assert agg.stage == Stage.DONE


def test_client_rejections_leave_state_unchanged() -> None:
    r = make_round(6, dim=10, graph="harary", degree=2, threshold=2)
    with pytest.raises(StageError):
        r.clients[0].masked_input({}, r.inputs[0])
    r.advertise()
    c0 = r.clients[0]
    keys0 = r.msgs["keys"][0]
    non_nb = next(c for c in r.params.participants if c != 0 and c not in r.params.neighbours(0))
    before = fingerprint(c0)
    with pytest.raises(NotParticipantError):
        c0.share_keys({**keys0, non_nb: r.msgs["adv"][non_nb]})
    nb = r.params.neighbours(0)[0]
    with pytest.raises(RoundMismatchError):
        c0.share_keys({**keys0, nb: dataclasses.replace(keys0[nb], round_id=99)})
    with pytest.raises(MalformedMessageError):
        c0.share_keys({**keys0, nb: dataclasses.replace(keys0[nb], sender=non_nb)})
    assert fingerprint(c0) == before
    r.share()
    cts0 = r.msgs["cts"][0]
    before = fingerprint(c0)
    tampered = dict(cts0)
    ct = bytearray(tampered[nb])
    ct[30] ^= 1
    tampered[nb] = bytes(ct)
    with pytest.raises(SignatureError):
        c0.masked_input(tampered, r.inputs[0])
    for pos in (0, len(cts0[nb]) - 1):  # nonce and tag
        ct = bytearray(cts0[nb])
        ct[pos] ^= 0x80
        with pytest.raises(SignatureError):
            c0.masked_input({**cts0, nb: bytes(ct)}, r.inputs[0])
    swapped = {nb: cts0[nb]}
    other = [v for v in cts0 if v != nb]
    if other:
        swapped[other[0]] = cts0[nb]  # a ciphertext relayed under the wrong sender
        with pytest.raises(SignatureError):
            c0.masked_input(swapped, r.inputs[0])
    with pytest.raises(NotParticipantError):
        c0.masked_input({**cts0, non_nb: cts0[nb]}, r.inputs[0])
    with pytest.raises(ValueError):
        c0.masked_input(cts0, np.full(10, 1 << 20))
    with pytest.raises(ValueError):
        c0.masked_input(cts0, np.zeros(11, dtype=np.int64))
    assert fingerprint(c0) == before
    msg = c0.masked_input(cts0, r.inputs[0])  # the honest retry succeeds
    assert len(msg.data) == (10 * 20 + 7) // 8
    with pytest.raises(StageError):
        c0.masked_input(cts0, r.inputs[0])
    with pytest.raises(StageError):
        c0.advertise_keys()


def test_client_aborts_with_too_few_neighbours() -> None:
    r = make_round(4, threshold=4)
    r.advertise()
    keys = dict(r.msgs["keys"][0])
    keys.pop(1)
    with pytest.raises(AbortError):
        r.clients[0].share_keys(keys)
    assert r.clients[0].stage == Stage.ABORTED


def test_share_nonces_bind_round_and_direction() -> None:
    from secagg.client import share_nonce

    nonces = {share_nonce(1, 2, 3), share_nonce(1, 3, 2), share_nonce(2, 2, 3)}
    assert len(nonces) == 3 and all(len(n) == 12 for n in nonces)


def test_ciphertext_from_another_round_is_rejected() -> None:
    """Round id is bound into the share keys and associated data."""
    a = make_round(3, threshold=2, round_id=1)
    b = make_round(3, threshold=2, round_id=2)
    for r in (a, b):
        r.advertise()
        r.share()
    with pytest.raises(ProtocolError):
        a.clients[0].masked_input(b.msgs["cts"][0], a.inputs[0])


# ---------------------------------------------------------------- active mode


def test_active_mode_round_with_dropouts() -> None:
    params, signing = make_params(7, dim=30, threshold=4, active=True)
    inputs = _inputs(params)
    res = run_round(
        params,
        inputs,
        {1: Stage.CONSISTENCY_CHECK, 2: Stage.UNMASK, 3: Stage.MASKED_INPUT},
        signing_keys=signing,
    )
    assert res.survivors == (0, 1, 2, 4, 5, 6)
    assert np.array_equal(res.sum, _expected(inputs, res.survivors, 20))


def test_active_mode_rejects_bad_signatures() -> None:
    r = make_round(5, threshold=3, active=True)
    agg = r.agg
    advs = {c: cl.advertise_keys() for c, cl in r.clients.items()}
    sig = advs[1].signature
    assert sig is not None
    forged = dataclasses.replace(advs[1], signature=bytes([sig[0] ^ 1]) + sig[1:])
    _rejects(agg, agg.add_advertise, forged, SignatureError)
    _rejects(agg, agg.add_advertise, dataclasses.replace(advs[1], signature=None), SignatureError)
    _rejects(
        agg,
        agg.add_advertise,
        dataclasses.replace(advs[1], signature=advs[2].signature),
        SignatureError,
    )
    for m in advs.values():
        agg.add_advertise(m)
    keys = agg.close_advertise()
    with pytest.raises(SignatureError):
        r.clients[0].share_keys({**keys[0], 1: forged})
    shares = {c: r.clients[c].share_keys(keys[c]) for c in keys}
    for m in shares.values():
        agg.add_share_keys(m)
    cts = agg.close_share_keys()
    for c in cts:
        agg.add_masked_input(r.clients[c].masked_input(cts[c], r.inputs[c]))
    req = agg.close_masked_input()
    assert agg.stage == Stage.CONSISTENCY_CHECK and req.signatures is None
    with pytest.raises(StageError):
        r.clients[0].unmask(req)  # must sign first
    checks = {c: r.clients[c].consistency_check(req) for c in req.survivors}
    bad = dataclasses.replace(checks[0], signature=checks[1].signature)
    _rejects(agg, agg.add_consistency, bad, SignatureError)
    for m in checks.values():
        agg.add_consistency(m)
    signed = agg.close_consistency()
    assert signed.signatures is not None and len(signed.signatures) == 5
    c0 = r.clients[0]
    tampered = dict(signed.signatures)
    tampered[2] = tampered[3]
    with pytest.raises(SignatureError):
        c0.unmask(dataclasses.replace(signed, signatures=tampered))
    with pytest.raises(RefusedError):
        c0.unmask(
            dataclasses.replace(
                signed, signatures={k: v for k, v in list(signed.signatures.items())[:2]}
            )
        )
    with pytest.raises(RefusedError):
        c0.unmask(UnmaskRequest(signed.round_id, (0, 1, 2, 3), (4,), signed.signatures))
    for c in signed.survivors:
        agg.add_unmask(r.clients[c].unmask(signed))
    assert np.array_equal(agg.finish(), _expected(r.inputs, signed.survivors, 20))


def test_active_mode_needs_matching_signing_key() -> None:
    params, signing = make_params(3, active=True)
    assert signing is not None
    with pytest.raises(ValueError):
        ClientProtocol(params, 0)
    with pytest.raises(ValueError):
        ClientProtocol(params, 0, signing_key=signing[1])
    with pytest.raises(ValueError):
        run_round(params, _inputs(params))


def test_pack_of_masked_vector_matches_wire_size() -> None:
    params, _ = make_params(3, dim=1001, bits=13, threshold=2)
    res = run_round(params, _inputs(params))
    assert len(pack(res.sum, 13)) == (1001 * 13 + 7) // 8


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 7), data=st.data())
def test_active_mode_random_dropouts(n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(n // 2 + 1, n))  # 2t > n: no split view
    params, signing = make_params(n, dim=9, bits=16, threshold=threshold, active=True)
    schedule = data.draw(
        st.dictionaries(st.sampled_from(params.participants), st.sampled_from(STAGES), max_size=n)
    )
    inputs = _inputs(params, n)
    try:
        res = run_round(params, inputs, schedule, signing_keys=signing, policy=MECHANICS)
    except AbortError:
        # complete graph: t clients that send every message always finish the round
        assert sum(1 for c in params.participants if c not in schedule) < threshold
        return
    assert np.array_equal(res.sum, _expected(inputs, res.survivors, 16))


def test_close_out_of_order_is_rejected_without_change() -> None:
    r = make_round(4, threshold=2)
    agg = r.agg
    for call in (agg.close_share_keys, agg.close_masked_input, agg.close_consistency, agg.finish):
        before = fingerprint(agg)
        with pytest.raises(StageError):
            call()
        assert fingerprint(agg) == before
    r.to_unmask()
    for c in r.params.participants:
        agg.add_unmask(r.clients[c].unmask(r.msgs["request"]))
    first = agg.finish()
    assert np.array_equal(agg.finish(), first)  # idempotent once done
    with pytest.raises(StageError):
        agg.add_unmask(r.clients[0].unmask(r.msgs["request"]))


# ---------------------------------------------------------------- minimum survivors


def test_min_survivors_defaults_to_threshold_and_round_trips() -> None:
    params, _ = make_params(6, dim=8, threshold=3)
    assert params.min_survivors == 3
    raised = dataclasses.replace(params, min_survivors=5)
    back = RoundParams.from_dict(raised.to_dict())
    assert back.min_survivors == 5 and back == raised
    legacy = {k: v for k, v in raised.to_dict().items() if k != "min_survivors"}
    assert RoundParams.from_dict(legacy).min_survivors == 3
    for bad in (2, 7, -1):  # below t, above n, negative
        with pytest.raises(ValueError, match="min_survivors"):
            dataclasses.replace(params, min_survivors=bad)


def test_create_turns_the_fraction_into_a_count_of_at_least_t() -> None:
    params = RoundParams.create(0, range(20), 8, 16, graph="harary", min_survivors=0.8)
    assert params.min_survivors == 16 and params.threshold <= 16
    assert RoundParams.create(0, range(20), 8, 16, graph="harary").min_survivors == \
        RoundParams.create(0, range(20), 8, 16, graph="harary").threshold
    with pytest.raises(ValueError, match="min_survivors"):
        RoundParams.create(0, range(20), 8, 16, min_survivors=1.5)


def test_round_below_min_survivors_aborts_above_it_is_exact() -> None:
    params, _ = make_params(6, dim=20, threshold=3)
    params = dataclasses.replace(params, min_survivors=5)
    inputs = _inputs(params)
    res = run_round(params, inputs, {1: Stage.MASKED_INPUT})
    assert res.survivors == (0, 2, 3, 4, 5)
    assert np.array_equal(res.sum, _expected(inputs, res.survivors, 20))
    with pytest.raises(AbortError, match="needs 5"):
        run_round(params, inputs, {1: Stage.MASKED_INPUT, 2: Stage.MASKED_INPUT})


def test_client_refuses_to_unmask_fewer_than_min_survivors() -> None:
    """A server that drops inputs to shrink the noise below what the shares were sized
    for is refused by the honest clients, even above the threshold t."""
    r = make_round(6, threshold=3)
    r.params = dataclasses.replace(r.params, min_survivors=5)
    for c in r.params.participants:
        r.clients[c] = ClientProtocol(r.params, c, random_bytes=det_random(b"m%d" % c))
    r.agg = AggregatorProtocol(r.params)
    r.advertise()
    r.share()
    r.masked()
    c = r.clients[0]
    before = fingerprint(c)
    with pytest.raises(RefusedError, match="needs 5"):
        c.unmask(UnmaskRequest(r.params.round_id, (0, 2, 3, 4), (), None))
    assert fingerprint(c) == before
    assert c.unmask(UnmaskRequest(r.params.round_id, (0, 1, 2, 3, 4, 5), (), None))
