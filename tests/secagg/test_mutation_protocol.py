"""Checks of the protocol's state machines and in-process runner that mutation testing
(issue 16) showed missing: who may send what at each stage (expected senders, the
survivors-only ConsistencyCheck and Unmasking, the dropouts recorded per stage), a
secret with too few surviving holders aborting before any share is revealed, the abort
messages that name the secret, a rebuilt value outside 32 bytes, the termination of the
wrong-share passes, and run_round's figures under an injected clock (every timing,
upload size and per-client second pinned for a round with a dropout at every stage).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import secagg.aggregator as aggregator_mod
import secagg.runner as runner_mod
from secagg import (
    AbortError,
    AggregatorProtocol,
    ClientProtocol,
    ConsistencyCheck,
    DuplicateMessageError,
    MalformedMessageError,
    MaskedInput,
    NotParticipantError,
    RoundMismatchError,
    RoundParams,
    Stage,
    UnmaskRequest,
    UnmaskShares,
    run_round,
)
from secagg.client import consistency_message
from secagg.crypto import ed25519_sign
from secagg.shamir import PRIME, encode_share
from tests.matching import exact

from ._helpers import MECHANICS, det_random, make_params, make_round


def _sum_of(inputs: dict[int, np.ndarray], ids: tuple[int, ...] | list[int], bits: int):
    total = sum(inputs[c].astype(object) for c in ids) % (1 << bits)
    return np.asarray(total).astype(np.uint64)


# ---------------------------------------------------------------- who may send what


def test_active_round_expected_senders_and_who_may_sign_and_unmask() -> None:
    """Active mode, 7 clients, t = 4: 6 drops at AdvertiseKeys, 5 at MaskedInput, 4 at
    the ConsistencyCheck. At every stage expected_senders lists exactly the ids whose
    message is still missing; only survivors may sign, only signers may unmask (a
    survivor that did not sign, or a dropped client, is refused), and the dropouts
    are recorded at the stage where they happened."""
    r = make_round(7, dim=6, bits=16, threshold=4, active=True)
    agg, rid, signing = r.agg, r.params.round_id, r.msgs["signing"]
    assert (agg.dropped, agg.unmask_dropped, agg.excluded_senders) == ((), (), ())
    assert agg.unmask_request is None
    assert agg.expected_senders() == set(range(7))
    adv = {c: r.clients[c].advertise_keys() for c in range(6)}
    for c in range(6):
        agg.add_advertise(adv[c])
        assert agg.expected_senders() == set(range(c + 1, 7))
    keys = agg.close_advertise()
    assert agg.expected_senders() == set(range(6))
    share = {c: r.clients[c].share_keys(keys[c]) for c in range(6)}
    for c in range(6):
        agg.add_share_keys(share[c])
    with pytest.raises(DuplicateMessageError, match=r"^client 2 already shared keys$"):
        agg.add_share_keys(share[2])
    assert agg.expected_senders() == set()
    cts = agg.close_share_keys()
    assert agg.expected_senders() == set(range(6))
    masked = {c: r.clients[c].masked_input(cts[c], r.inputs[c]) for c in range(5)}
    for c in range(5):
        agg.add_masked_input(masked[c])
    with pytest.raises(DuplicateMessageError, match=r"^client 2 already sent its masked input$"):
        agg.add_masked_input(masked[2])
    assert agg.expected_senders() == {5}
    req = agg.close_masked_input()
    assert (req.survivors, req.dropped) == ((0, 1, 2, 3, 4), (5,))
    assert agg.expected_senders() == {0, 1, 2, 3, 4}
    # client 5 sent no masked input: its (validly signed) check is refused
    sig5 = ed25519_sign(signing[5], consistency_message(rid, 5, req.survivors))
    with pytest.raises(NotParticipantError, match="client 5 is no longer part"):
        agg.add_consistency(ConsistencyCheck(rid, 5, sig5))
    checks = {c: r.clients[c].consistency_check(req) for c in range(4)}
    for c in range(4):
        agg.add_consistency(checks[c])
    with pytest.raises(DuplicateMessageError, match=r"^client 2 already signed$"):
        agg.add_consistency(checks[2])
    assert agg.expected_senders() == {4}
    req = agg.close_consistency()
    assert sorted(req.signatures) == [0, 1, 2, 3]
    assert agg.expected_senders() == {0, 1, 2, 3}
    out = {c: r.clients[c].unmask(req) for c in range(4)}
    # 4 survived but did not sign, 5 dropped: neither may send shares (well-formed ones)
    for outsider in (4, 5):
        nbrs = set(r.params.neighbours(outsider))
        want_b = (nbrs | {outsider}) & set(req.survivors)
        want_sk = nbrs - set(req.survivors)
        forged = UnmaskShares(
            rid,
            outsider,
            {c: encode_share(1) for c in sorted(want_b)},
            {c: encode_share(1) for c in sorted(want_sk)},
        )
        with pytest.raises(NotParticipantError, match=f"client {outsider} is no longer part"):
            agg.add_unmask(forged)
    agg.add_unmask(out[0])
    assert agg.expected_senders() == {1, 2, 3}
    with pytest.raises(DuplicateMessageError, match=r"^client 0 already sent its shares$"):
        agg.add_unmask(out[0])
    wrong = dataclasses.replace(out[2], self_mask_shares={})
    with pytest.raises(MalformedMessageError, match=r"^shares of 2 do not match its neighbours$"):
        agg.add_unmask(wrong)
    for c in (1, 2, 3):
        agg.add_unmask(out[c])
    assert agg.expected_senders() == set()
    total = agg.finish()
    assert agg.expected_senders() == set()
    assert np.array_equal(total, _sum_of(r.inputs, req.survivors, 16))
    assert agg.dropouts_by_stage() == {
        "advertise_keys": [6],
        "share_keys": [],
        "masked_input": [5],
        "consistency_check": [4],
        "unmask": [],
    }


def test_passive_unmask_refuses_a_dropped_client() -> None:
    """Passive mode: a client that shared keys but sent no masked input may not send
    unmask shares, even well-formed ones; the survivors' shares still give the sum."""
    r = make_round(5, dim=6, bits=16, threshold=3)
    r.advertise()
    r.share()
    r.masked([0, 1, 2, 3])
    r.add_masked()
    req = r.agg.close_masked_input()
    assert r.agg.expected_senders() == {0, 1, 2, 3}
    forged = UnmaskShares(r.params.round_id, 4, {c: encode_share(1) for c in range(4)}, {})
    with pytest.raises(NotParticipantError, match="client 4 is no longer part"):
        r.agg.add_unmask(forged)
    r.agg.add_unmask(r.clients[3].unmask(req))
    assert r.agg.expected_senders() == {0, 1, 2}
    for c in (0, 1, 2):
        r.agg.add_unmask(r.clients[c].unmask(req))
    assert np.array_equal(r.agg.finish(), _sum_of(r.inputs, (0, 1, 2, 3), 16))


# ---------------------------------------------------------------- too few holders


def _first_short(params: RoundParams, survivors: set[int], others: set[int], t: int):
    """Reference: the first client (by id) among ``others`` whose secret has fewer than
    t holders in ``survivors`` (a survivor holds a share of its own b_u)."""
    for u in sorted(others):
        holders = set(params.neighbours(u)) & survivors
        if u in survivors:
            holders |= {u}
        if len(holders) < t:
            return ("b_u" if u in survivors else "s_sk"), u, len(holders)
    return None


@pytest.mark.parametrize(
    ("drop", "kind"), [((4, 5, 6), "b_u"), ((0, 4, 5), "s_sk")], ids=["survivor", "dropped"]
)
def test_secret_with_too_few_surviving_holders_aborts_before_unmasking(
    drop: tuple[int, ...], kind: str
) -> None:
    """Harary H(8, 4), t = 3. Enough inputs arrive (5 >= t), but client 0's secret (its
    b_u when it survives, its s^SK when it dropped) has only 2 holders among the
    survivors: the round must abort when masked inputs close, before any client is asked
    for a share, and say which secret of which client fell short."""
    r = make_round(8, dim=6, bits=16, graph="harary", degree=4, threshold=3)
    assert r.params.neighbours(0) == (4, 5, 6, 7)  # fixed by graph_seed and round id
    r.advertise()
    r.share()
    survivors = [c for c in range(8) if c not in drop]
    r.masked(survivors)
    r.add_masked()
    expected = _first_short(r.params, set(survivors), set(range(8)), 3)
    assert expected == (kind, 0, 2)
    with pytest.raises(AbortError) as err:
        r.agg.close_masked_input()
    assert str(err.value) == (
        f"round 7 aborted: {kind} of client 0 has 2 surviving holders, threshold 3"
    )
    assert r.agg.stage == Stage.ABORTED and r.agg.unmask_request is None


@pytest.mark.parametrize(
    ("drop", "silent", "kind"),
    [((), (4, 5, 6), "b_u"), ((0,), (4, 5), "s_sk")],
    ids=["self-mask", "secret-key"],
)
def test_too_few_shares_in_unmasking_abort_naming_the_secret(
    drop: tuple[int, ...], silent: tuple[int, ...], kind: str
) -> None:
    """Harary H(8, 4), t = 3: at least t clients send unmask shares, but the ones that
    stay silent leave client 0's b_u (it survived) or s^SK (it dropped) with 2 shares:
    the round aborts and the message names the secret, its client and the count."""
    r = make_round(8, dim=6, bits=16, graph="harary", degree=4, threshold=3)
    r.advertise()
    r.share()
    r.masked([c for c in range(8) if c not in drop])
    r.add_masked()
    req = r.agg.close_masked_input()
    senders = [c for c in req.survivors if c not in silent]
    for c in senders:
        r.agg.add_unmask(r.clients[c].unmask(req))
    with pytest.raises(AbortError) as err:
        r.agg.finish()
    assert str(err.value) == (
        f"round 7 aborted in unmasking: {kind} of client 0 has 2 shares from trusted "
        "holders, threshold 3"
    )


def _poly_shares(coeffs: tuple[int, ...], holders: list[int]) -> dict[int, bytes]:
    """Shares f(v + 1) of the polynomial with these coefficients (constant first)."""
    out = {}
    for v in holders:
        x = v + 1
        out[v] = encode_share(sum(a * x**i for i, a in enumerate(coeffs)) % PRIME)
    return out


@pytest.mark.parametrize("secret", [1 << 256, PRIME - 1])
def test_rebuilt_value_outside_32_bytes_aborts_cleanly(secret: int) -> None:
    """Consistent shares of a field element >= 2^256 (a client that dealt them, or
    holders that agreed on them) abort the round with a message; nothing crashes."""
    r = make_round(5, dim=6, bits=16, threshold=3)
    r.to_unmask()
    req = r.msgs["request"]
    forged = _poly_shares((secret, 12345), list(range(5)))
    for c in range(5):
        msg = r.clients[c].unmask(req)
        msg = dataclasses.replace(msg, self_mask_shares={**msg.self_mask_shares, 0: forged[c]})
        r.agg.add_unmask(msg)
    with pytest.raises(AbortError) as err:
        r.agg.finish()
    assert str(err.value) == (
        "round 7 aborted in unmasking: rebuilt b_u of client 0 is not a 32-byte secret"
    )


def test_colluding_majority_of_wrong_shares_is_reported_as_beyond_location() -> None:
    """Complete graph, 7 clients, t = 2, client 6 dropped: its s^SK has 6 shares. Four
    holders agree on another line (a + b x): the decoder, finding the honest two the odd
    ones out, rebuilds a; the s^PK check catches it and the abort says that more shares
    were wrong than could be located (not that only t arrived)."""
    r = make_round(7, dim=6, bits=16, threshold=2)
    req = r.to_unmask(list(range(6)))
    forged = _poly_shares((987654321, 55), [2, 3, 4, 5])
    for c in range(6):
        msg = r.clients[c].unmask(req)
        if c in forged:
            msg = dataclasses.replace(msg, secret_key_shares={6: forged[c]})
        r.agg.add_unmask(msg)
    with pytest.raises(AbortError) as err:
        r.agg.finish()
    assert str(err.value) == (
        "round 7 aborted in unmasking: rebuilt s_sk of 6 does not match its s_pk "
        "(more wrong shares than can be located)"
    )


def test_exactly_t_wrong_secret_key_share_hint() -> None:
    """With exactly t shares of s^SK, one wrong share is detected by the s^PK check and
    the message says it cannot be located."""
    r = make_round(6, dim=6, bits=16, threshold=5)
    req = r.to_unmask(list(range(5)))
    for c in range(5):
        msg = r.clients[c].unmask(req)
        if c == 0:
            bad = bytearray(msg.secret_key_shares[5])
            bad[10] ^= 1
            msg = dataclasses.replace(msg, secret_key_shares={5: bytes(bad)})
        r.agg.add_unmask(msg)
    with pytest.raises(AbortError) as err:
        r.agg.finish()
    assert str(err.value).endswith(
        "rebuilt s_sk of 5 does not match its s_pk (exactly t shares: a wrong one cannot be "
        "located)"
    )


class _PassLimit(Exception):
    """finish() rebuilt the secrets more often than the senders it could exclude."""


@pytest.mark.parametrize("liars", [(), (3,)])
def test_finish_rebuilds_once_plus_once_per_exclusion(
    monkeypatch: pytest.MonkeyPatch, liars: tuple[int, ...]
) -> None:
    """Each reconstruction pass either finishes or excludes at least one more sender, so
    finish() terminates: one pass without wrong shares, two with one located liar (its
    shares excluded on the second pass, the sum exact)."""
    passes: list[int] = []
    real = aggregator_mod.ShareChecker

    def counting(t: int, rho: int) -> Any:
        passes.append(t)
        if len(passes) > 4:
            raise _PassLimit(f"{len(passes)} reconstruction passes")
        return real(t, rho)

    monkeypatch.setattr(aggregator_mod, "ShareChecker", counting)
    r = make_round(8, dim=6, bits=16, threshold=5)
    req = r.to_unmask(list(range(7)))
    for c in range(7):
        msg = r.clients[c].unmask(req)
        if c in liars:
            bad = bytearray(msg.self_mask_shares[0])
            bad[10] ^= 1
            msg = dataclasses.replace(msg, self_mask_shares={**msg.self_mask_shares, 0: bytes(bad)})
        r.agg.add_unmask(msg)
    total = r.agg.finish()
    assert np.array_equal(total, _sum_of(r.inputs, list(range(7)), 16))
    assert r.agg.excluded_senders == liars
    assert len(passes) == 1 + len(liars)


def test_finish_refuses_short_randomness() -> None:
    """The consistency check's point comes from random_bytes(40); a source that returns
    fewer bytes is refused, not silently used."""
    r = make_round(5, dim=6, bits=16, threshold=3)
    r.agg = AggregatorProtocol(r.params, random_bytes=lambda n: bytes(n - 1))
    r.to_unmask()
    for c in range(5):
        r.agg.add_unmask(r.clients[c].unmask(r.msgs["request"]))
    with pytest.raises(ValueError, match=r"random_bytes\(40\) must return 40 bytes"):
        r.agg.finish()


def test_abort_wipes_the_running_sum() -> None:
    """An abort zeroes the running sum in place before dropping it (nothing of the
    survivors' masked inputs lingers in memory that the aggregator owned)."""
    r = make_round(5, dim=6, bits=16, threshold=4)
    r.advertise()
    r.share()
    r.masked([0, 1, 2])
    r.add_masked()
    running = r.agg._sum
    assert running is not None and running.any()
    with pytest.raises(AbortError):
        r.agg.close_masked_input()
    assert not running.any()


def test_masked_input_is_wiped_after_it_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unpacked masked input is zeroed once it is in the running sum."""
    seen: list[np.ndarray] = []
    real = aggregator_mod.unpack

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        y = real(*args, **kwargs)
        seen.append(y)
        return y

    monkeypatch.setattr(aggregator_mod, "unpack", spy)
    r = make_round(4, dim=6, bits=16, threshold=3)
    r.advertise()
    r.share()
    r.masked()
    r.add_masked()
    assert len(seen) == 4 and not any(y.any() for y in seen)


# ---------------------------------------------------------------- run_round


class _Clock:
    """A clock that moves only when protocol code runs (wall, thread CPU)."""

    def __init__(self) -> None:
        self.wall = 1000.0  # arbitrary origins: only differences mean anything
        self.cpu = 64.0

    def perf_counter(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu

    def spend(self, seconds: float) -> None:
        self.wall += seconds
        self.cpu += seconds / 4


#: wall seconds per client call (distinct per stage) and per aggregator call
CLIENT_COST = {"advertise_keys": 1.0, "share_keys": 2.0, "masked_input": 4.0, "unmask": 16.0}
SERVER_COST = 0.5


def _json_size(msg: Any) -> int:
    return len(json.dumps(msg.to_dict(), separators=(",", ":")).encode())


def _instrument(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> dict[str, Any]:
    """Protocol classes whose calls cost fixed clock time and record what they sent."""
    log: dict[str, Any] = {"kwargs": [], "sent": []}

    def timed_client(name: str) -> Callable[..., Any]:
        def method(self: ClientProtocol, *args: Any) -> Any:
            clock.spend(CLIENT_COST[name])
            msg = getattr(ClientProtocol, name)(self, *args)
            log["sent"].append((self.client_id, msg))
            return msg

        return method

    def timed_server(name: str) -> Callable[..., Any]:
        def method(self: AggregatorProtocol, *args: Any) -> Any:
            clock.spend(SERVER_COST)
            return getattr(AggregatorProtocol, name)(self, *args)

        return method

    class Client(ClientProtocol):
        def __init__(self, params: RoundParams, cid: int, **kwargs: Any) -> None:
            log["kwargs"].append(kwargs)
            super().__init__(params, cid, **kwargs)

    for name in CLIENT_COST:
        setattr(Client, name, timed_client(name))
    server_methods = ["add_advertise", "close_advertise", "add_share_keys", "close_share_keys",
                      "add_masked_input", "close_masked_input", "add_unmask", "finish"]  # fmt: skip
    Server = type("Server", (AggregatorProtocol,), {m: timed_server(m) for m in server_methods})
    monkeypatch.setattr(runner_mod, "time", clock)
    monkeypatch.setattr(runner_mod, "ClientProtocol", Client)
    monkeypatch.setattr(runner_mod, "AggregatorProtocol", Server)
    return log


def test_run_round_figures_under_an_injected_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """7 clients, t = 3, one dropout at each stage: 6 before AdvertiseKeys, 5 before
    ShareKeys, 4 before its masked input, 3 before Unmasking. With a clock that moves
    a fixed time per protocol call, every figure of the result is exact: per-client
    seconds (0 for a client that never ran), totals, means and maxima over the clients
    that ran, per-stage means over the clients that sent at that stage, the server per
    stage, CPU twins, and the upload bytes (JSON size of each message, raw bytes of the
    masked input). Clients that vanish at or before MaskedInput need no input."""
    clock = _Clock()
    log = _instrument(monkeypatch, clock)
    params, _ = make_params(7, dim=10, bits=12, threshold=3)
    rb = det_random(b"runner")
    rng = np.random.default_rng(3)
    inputs = {c: rng.integers(0, 1 << 12, 10, dtype=np.uint64) for c in range(4)}
    drops = {6: Stage.ADVERTISE_KEYS, 5: Stage.SHARE_KEYS, 4: Stage.MASKED_INPUT,
             3: Stage.CONSISTENCY_CHECK}  # fmt: skip
    res = run_round(params, inputs, drops, random_bytes=rb, policy=MECHANICS)

    assert all(kw == {"signing_key": None, "random_bytes": rb, "policy": MECHANICS}
               for kw in log["kwargs"]) and len(log["kwargs"]) == 7  # fmt: skip
    assert np.array_equal(res.sum, _sum_of(inputs, (0, 1, 2, 3), 12))
    assert (res.survivors, res.dropped) == ((0, 1, 2, 3), (4, 5, 6))
    assert res.dropouts_by_stage == {
        "advertise_keys": [6], "share_keys": [5], "masked_input": [4], "unmask": [3]
    }  # fmt: skip
    full = sum(CLIENT_COST.values())  # 23: advertise, share, masked input, unmask
    seconds = {0: full, 1: full, 2: full, 3: 7.0, 4: 3.0, 5: 1.0, 6: 0.0}
    assert res.client_seconds == seconds
    ran = [s for s in seconds.values() if s > 0]  # 6 clients ran
    server = {"advertise_keys": 7, "share_keys": 6, "masked_input": 5, "unmask": 4}  # calls
    expected = {
        "total": sum(seconds.values()) + SERVER_COST * sum(server.values()),
        "server": SERVER_COST * sum(server.values()),
        "client_total": sum(ran),
        "client_mean": sum(ran) / 6,
        "client_max": full,
        "client_cpu_mean": sum(ran) / 4 / 6,
        "client_cpu_max": full / 4,
        "server_cpu": SERVER_COST * sum(server.values()) / 4,
    }
    for k, calls in server.items():
        expected[f"server_{k}"] = SERVER_COST * calls
        expected[f"server_cpu_{k}"] = SERVER_COST * calls / 4
        expected[f"client_{k}_mean"] = CLIENT_COST[k]  # every sender spent the same
    assert res.timings == pytest.approx(expected, rel=1e-12, abs=0)
    assert set(res.timings) == set(expected)

    upload = dict.fromkeys(range(7), 0)
    for cid, msg in log["sent"]:
        upload[cid] += len(msg.data) if isinstance(msg, MaskedInput) else _json_size(msg)
    assert res.upload_bytes == upload
    assert upload[3] - upload[4] == (10 * 12 + 7) // 8  # the packed masked input, raw
    assert upload[6] == 0


def test_run_round_refusals_name_the_bad_value() -> None:
    params, signing = make_params(12, dim=4, bits=8, threshold=8)
    with pytest.raises(ValueError, match=r"^dropout schedule names non-participant 12$"):
        run_round(params, {}, {12: Stage.UNMASK})
    with pytest.raises(ValueError, match=r"^dropout stage of 3 must be a Stage, got 'unmask'$"):
        run_round(params, {}, {3: "unmask"})  # type: ignore[dict-item]
    inputs = {11: np.zeros(4, dtype=np.uint64)}
    with pytest.raises(
        ValueError,
        match=exact("inputs missing for clients [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"),
    ):
        run_round(params, inputs, {10: Stage.UNMASK})
    active, _ = make_params(5, dim=4, bits=8, threshold=3, active=True)
    zeros = {c: np.zeros(4, dtype=np.uint64) for c in range(5)}
    with pytest.raises(ValueError, match=r"^active mode needs signing_keys$"):
        run_round(active, zeros)


def test_active_run_round_drops_at_the_consistency_check() -> None:
    """Active mode in process, 7 clients, t = 4: a survivor that vanishes before the
    ConsistencyCheck neither signs nor unmasks, and is recorded there; a schedule may
    name DONE for a client that stays to the end."""
    params, signing = make_params(7, dim=6, bits=16, threshold=4, active=True)
    rng = np.random.default_rng(5)
    inputs = {c: rng.integers(0, 1 << 16, 6, dtype=np.uint64) for c in range(5)}
    drops = {6: Stage.ADVERTISE_KEYS, 5: Stage.MASKED_INPUT, 4: Stage.CONSISTENCY_CHECK,
             0: Stage.DONE}  # fmt: skip
    res = run_round(
        params, inputs, drops, random_bytes=det_random(b"act"), signing_keys=signing,
        policy=MECHANICS,
    )  # fmt: skip
    assert np.array_equal(res.sum, _sum_of(inputs, (0, 1, 2, 3, 4), 16))
    assert (res.survivors, res.dropped) == ((0, 1, 2, 3, 4), (5, 6))
    assert res.dropouts_by_stage == {
        "advertise_keys": [6],
        "share_keys": [],
        "masked_input": [5],
        "consistency_check": [4],
        "unmask": [],
    }


def test_unmask_request_refusals_name_the_bad_value() -> None:
    """A client checks the server's request before revealing anything; each refusal
    says what was wrong (at most ten ids listed), and the client stays as it was."""
    r = make_round(5, dim=6, bits=16, threshold=3)
    r.to_unmask()
    c = r.clients[0]
    with pytest.raises(MalformedMessageError, match=r"^expected an UnmaskRequest$"):
        c.unmask("survivors: everyone")  # type: ignore[arg-type]
    with pytest.raises(RoundMismatchError, match=r"^request is for round 8, not 7$"):
        c.unmask(UnmaskRequest(8, (0, 1, 2, 3, 4), (), None))
    outsiders = tuple(range(100, 112))
    with pytest.raises(NotParticipantError) as err:
        c.unmask(UnmaskRequest(7, (0, 1, 2, 3, 4) + outsiders, (), None))
    assert str(err.value) == f"request names non-participants {list(outsiders[:10])}"
    assert c.stage == Stage.UNMASK
    assert sorted(c.unmask(r.msgs["request"]).self_mask_shares) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- the client's checks


def _msg(fn: Callable[[], Any]) -> str:
    with pytest.raises(Exception) as err:
        fn()
    return f"{type(err.value).__name__}: {err.value}"


def test_client_construction_refusals_name_the_bad_value() -> None:
    params, signing = make_params(5, dim=4, bits=16, threshold=3, active=True)
    assert signing is not None
    assert _msg(lambda: ClientProtocol(params, 0, policy="strict")) == (  # type: ignore[arg-type]
        "TypeError: policy must be a ClientPolicy, got str"
    )
    assert _msg(lambda: ClientProtocol(params, 0, signing_key=signing[1], policy=MECHANICS)) == (
        "ValueError: signing_key does not match identity key of client 0"
    )
    assert _msg(lambda: ClientProtocol(params, 0, policy=MECHANICS)) == (
        "ValueError: active mode needs the client's Ed25519 signing_key"
    )
    passive, _ = make_params(5, dim=4, bits=16, threshold=3)
    c = ClientProtocol(passive, 0, signing_key=signing[0], policy=MECHANICS)
    assert c.advertise_keys().signature is None  # passive mode signs nothing


def test_client_stage_and_share_keys_refusals_name_the_bad_value() -> None:
    """Each refusal of share_keys names the peer and what is wrong with its keys; a
    relay that includes the client's own keys unchanged is accepted (whatever its
    position), a changed one is refused."""
    r = make_round(5, dim=4, bits=16, threshold=3)
    c = r.clients[0]
    assert _msg(lambda: c.unmask(None)) == (  # type: ignore[arg-type]
        "StageError: client 0 is at stage advertise_keys, not unmask or done"
    )
    r.advertise()
    keys = dict(r.msgs["keys"][0])
    own = r.msgs["adv"][0]
    adv3 = keys[3]
    cases = {
        "MalformedMessageError: keys[3] is not an AdvertiseKeys message": {**keys, 3: "k"},
        "RoundMismatchError: keys of 3 are for round 8, not 7": {
            **keys, 3: dataclasses.replace(adv3, round_id=8)},
        "MalformedMessageError: relayed keys for this client are not its own": {
            0: dataclasses.replace(own, c_pk=adv3.c_pk), **keys},
        "MalformedMessageError: client 3 advertised equal c_pk and s_pk": {
            **keys, 3: dataclasses.replace(adv3, s_pk=adv3.c_pk)},
        "MalformedMessageError: c_pk of client 3 is a point of small order": {
            **keys, 3: dataclasses.replace(adv3, c_pk=bytes(32))},
        "MalformedMessageError: s_pk of client 3 is a point of small order": {
            **keys, 3: dataclasses.replace(adv3, s_pk=bytes(32))},
    }  # fmt: skip
    for want, relay in cases.items():
        assert _msg(lambda relay=relay: c.share_keys(relay)) == want
    assert c.stage == Stage.SHARE_KEYS
    out = c.share_keys({0: own, **keys})  # its own keys first: skipped, not the end
    assert sorted(out.ciphertexts) == [1, 2, 3, 4]
    h = make_round(8, dim=4, bits=16, graph="harary", degree=4, threshold=3)
    h.advertise()
    assert h.params.neighbours(0) == (4, 5, 6, 7)
    stranger = {**h.msgs["keys"][0], 1: h.msgs["adv"][1]}
    assert _msg(lambda: h.clients[0].share_keys(stranger)) == (
        "NotParticipantError: client 1 is not a neighbour of 0"
    )
    r2 = make_round(5, dim=4, bits=16, threshold=5)
    r2.advertise()
    short = {v: m for v, m in r2.msgs["keys"][1].items() if v in (0, 2)}
    assert _msg(lambda: r2.clients[1].share_keys(short)) == (
        "AbortError: only 3 parties (self included) for threshold 5"
    )


def test_client_refuses_unsigned_keys_and_short_randomness_in_share_keys() -> None:
    r = make_round(5, dim=4, bits=16, threshold=3, active=True)
    r.advertise()
    keys = dict(r.msgs["keys"][0])
    unsigned = {**keys, 2: dataclasses.replace(keys[2], signature=None)}
    assert _msg(lambda: r.clients[0].share_keys(unsigned)) == (
        "SignatureError: keys of 2 are not signed"
    )
    params, _ = make_params(5, dim=4, bits=16, threshold=3)
    calls = {"n": 0}
    good = det_random(b"short")

    def short_after_keys(n: int) -> bytes:  # two key pairs, then a short b_u
        calls["n"] += 1
        return good(n) if calls["n"] <= 2 else bytes(n - 1)

    r = make_round(5, dim=4, bits=16, threshold=3)
    r.clients[0] = ClientProtocol(params, 0, random_bytes=short_after_keys, policy=MECHANICS)
    r.advertise()
    assert _msg(lambda: r.clients[0].share_keys(r.msgs["keys"][0])) == (
        "ValueError: random_bytes(32) must return 32 bytes"
    )


def test_client_request_checks_name_the_bad_value() -> None:
    """Unmasking refusals: a peer in both sets, the client itself not a survivor, fewer
    than t survivors, a neighbour in neither set (ten ids at most), and in active mode
    a signature from a non-survivor, too few signatures, a changed survivor set."""
    r = make_round(14, dim=4, bits=16, threshold=3)
    r.to_unmask()
    c = r.clients[0]
    everyone = tuple(range(14))
    cases = {
        "RefusedError: peers [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] are listed as survivors and "
        "dropped": UnmaskRequest(7, everyone, tuple(range(1, 13)), None),
        "RefusedError: client 0 sent its masked input but is not a survivor":
            UnmaskRequest(7, tuple(range(1, 14)), (0,), None),
        "RefusedError: only 2 survivors for threshold 3": UnmaskRequest(7, (0, 1), (), None),
        "RefusedError: neighbours [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] shared keys but are in "
        "neither set": UnmaskRequest(7, (0, 1, 2), (), None),
    }  # fmt: skip
    for want, req in cases.items():
        assert _msg(lambda req=req: c.unmask(req)) == want
    assert c.stage == Stage.UNMASK

    r = make_round(7, dim=4, bits=16, threshold=4, active=True)
    req = r.to_unmask(list(range(6)))
    for v in range(6):
        r.agg.add_consistency(r.clients[v].consistency_check(req))
    signed = r.agg.close_consistency()
    signing = r.msgs["signing"]
    sig6 = ed25519_sign(signing[6], consistency_message(7, 6, signed.survivors))
    c = r.clients[0]
    three = {v: signed.signatures[v] for v in (0, 1, 2)}
    cases = {
        "RefusedError: consistency signature from non-survivor 6": dataclasses.replace(
            signed, signatures={**signed.signatures, 6: sig6}),
        "RefusedError: only 3 consistency signatures for threshold 4": dataclasses.replace(
            signed, signatures=three),
        "RefusedError: survivor set differs from the one this client signed":
            UnmaskRequest(7, (0, 1, 2, 3, 4), (5, 6), signed.signatures),
    }  # fmt: skip
    for want, bad in cases.items():
        assert _msg(lambda bad=bad: c.unmask(bad)) == want
    assert sorted(c.unmask(signed).self_mask_shares) == [0, 1, 2, 3, 4, 5]


def test_never_both_shares_refusal_lists_at_most_ten_peers() -> None:
    r = make_round(14, dim=4, bits=16, threshold=3)
    r.to_unmask()
    c = r.clients[0]
    c.unmask(UnmaskRequest(7, tuple(range(14)), (), None))
    both = UnmaskRequest(7, (0, 1, 2), tuple(range(3, 14)), None)
    assert _msg(lambda: c.unmask(both)) == (
        "RefusedError: would reveal both shares of peers [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]"
    )


def test_ids_at_the_top_of_the_64_bit_range_give_the_exact_sum() -> None:
    """Ids are unbounded ints >= 0; the share plaintext carries them as unsigned 64-bit
    big-endian, so ids of 2^63 and above still work."""
    ids = (1, 2, 2**63, 2**64 - 1)
    r = make_round(4, dim=4, bits=16, threshold=3, ids=ids)
    r.to_unmask()
    for c in ids:
        r.agg.add_unmask(r.clients[c].unmask(r.msgs["request"]))
    assert np.array_equal(r.agg.finish(), _sum_of(r.inputs, ids, 16))


def test_aggregator_refusals_name_the_bad_value() -> None:
    """Every refusal of the aggregator names the sender and what is wrong (at most ten
    ids per list); an abort names the stage, the count left and the threshold."""
    r = make_round(14, dim=4, bits=16, threshold=3)
    agg = r.agg
    adv = {c: cl.advertise_keys() for c, cl in r.clients.items()}
    a1 = adv[1]
    cases = {
        "MalformedMessageError: expected AdvertiseKeys, got str": "keys",
        "RoundMismatchError: message for round 8, this is round 7": dataclasses.replace(
            a1, round_id=8),
        "NotParticipantError: client 99 is not a participant of round 7": dataclasses.replace(
            a1, sender=99),
        "MalformedMessageError: client 1 advertised equal c_pk and s_pk": dataclasses.replace(
            a1, s_pk=a1.c_pk),
        "MalformedMessageError: c_pk of client 1 is a point of small order":
            dataclasses.replace(a1, c_pk=bytes(32)),
        "MalformedMessageError: s_pk of client 1 is a point of small order":
            dataclasses.replace(a1, s_pk=bytes(32)),
    }  # fmt: skip
    for want, msg in cases.items():
        assert _msg(lambda msg=msg: agg.add_advertise(msg)) == want
    for c in range(14):
        agg.add_advertise(adv[c])
    assert _msg(lambda: agg.add_advertise(adv[0])) == (
        "DuplicateMessageError: client 0 already advertised keys"
    )
    keys = agg.close_advertise()
    assert _msg(lambda: agg.add_advertise(adv[0])) == (
        "StageError: AdvertiseKeys from 0 at stage share_keys"
    )
    assert _msg(agg.close_masked_input) == (
        "StageError: cannot close masked_input at stage share_keys"
    )
    sk0 = r.clients[0].share_keys(keys[0])
    ct = sk0.ciphertexts[1]
    extra = dataclasses.replace(
        sk0, ciphertexts={**sk0.ciphertexts, **{v: ct for v in range(100, 112)}}
    )
    assert _msg(lambda: agg.add_share_keys(extra)) == (
        "MalformedMessageError: ciphertexts of 0: unexpected recipients "
        f"{list(range(100, 110))}, missing []"
    )
    empty = dataclasses.replace(sk0, ciphertexts={})
    assert _msg(lambda: agg.add_share_keys(empty)) == (
        f"MalformedMessageError: ciphertexts of 0: unexpected recipients [], missing "
        f"{list(range(1, 11))}"
    )

    r = make_round(5, dim=4, bits=16, threshold=4)
    for c in range(3):
        r.agg.add_advertise(r.clients[c].advertise_keys())
    assert _msg(r.agg.close_advertise) == (
        "AbortError: round 7 aborted at advertise_keys: 3 clients remain, threshold 4"
    )
    r = make_round(5, dim=4, bits=16, threshold=3, active=True)
    unsigned = dataclasses.replace(r.clients[1].advertise_keys(), signature=None)
    assert _msg(lambda: r.agg.add_advertise(unsigned)) == (
        "SignatureError: keys of 1 are not signed"
    )
