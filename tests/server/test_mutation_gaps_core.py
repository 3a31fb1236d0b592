"""The server's round logic (server/round.py, ServerCore) driven in-process, without HTTP
or threads: what mutation testing can run (issue 16; the HTTP tests hang in mutmut's
forked workers). Every figure is checked against an independent computation: the ε
recorded against an accountant composed by hand with the survivors, the model step
against the decoded mean, the budget check against both candidate values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server._helpers import experiment

N = 4


@pytest.fixture(scope="module")
def models() -> Any:
    from server.model import ModelService

    service = ModelService("digits", 0)
    service.weights0 = service.load()
    return service


def _core(tmp: Path, models: Any, **server: Any) -> Any:
    from server.round import ServerCore
    from server.store import Store

    cfg = experiment(**{"rounds": 3, "clients": N, "per_round": N, "eval_every": 0, **server})
    core = ServerCore(cfg, Store(tmp / "server.sqlite3"), models)
    core.restore(models.weights0)
    return core


def _registered() -> dict[int, bytes]:
    return {i: bytes([i]) * 32 for i in range(N)}


def _release(core: Any, rnd: Any, survivors: list[int], seed: int = 0) -> tuple[dict, Any]:
    """Encode a small update per survivor with the round's plan; release the exact sum."""
    from dp import Decoder, Encoder
    from dp.prng import SecureRng

    plan = rnd.plan
    gen = np.random.default_rng(seed)
    enc = Encoder(plan, rnd.rotation_seed)
    total = np.zeros(plan.encoded_dim, dtype=np.uint64)
    for i in survivors:
        x, _ = enc.encode(gen.normal(0, 0.01, plan.dim), SecureRng.for_simulation(seed, i))
        total = (total + x) % np.uint64(plan.modulus)
    decoded = Decoder(plan, rnd.rotation_seed).decode(total, len(survivors))
    rec = core.release(rnd, lambda: total, secure_sum="exact", survivors=survivors)
    return rec, decoded


def _hand_epsilon(core: Any, plan: Any, survivors: list[int]) -> float:
    from dp import PrivacyAccountant

    cfg = core.config
    acc = PrivacyAccountant(cfg.dp, sample_rate=1.0, accountant="rdp", sampling="fixed",
                            population=N, corrupt_fraction=cfg.protocol.corrupt)
    for n in survivors:
        acc.compose(plan.privacy_event(n), cohort=N)
    return acc.report().epsilon


def test_a_round_with_a_dropout_is_charged_for_its_survivors(tmp_path: Path, models: Any) -> None:
    core = _core(tmp_path, models)
    w0 = core.weights.copy()
    rnd = core.begin_round(_registered())
    assert not isinstance(rnd, str), rnd
    assert rnd.participants == (0, 1, 2, 3) and rnd.round_id == 0
    assert rnd.charged_cohort == N and rnd.candidates == N and rnd.sample_rate == 1.0
    assert rnd.plan.dim == w0.size and rnd.params.dim == rnd.plan.encoded_dim
    rec, decoded = _release(core, rnd, [0, 1, 3])
    eps = _hand_epsilon(core, rnd.plan, [3])
    assert eps != pytest.approx(_hand_epsilon(core, rnd.plan, [4]))
    assert rec["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert rec["epsilon_amplified"] == pytest.approx(eps, rel=1e-9)
    assert core.epsilon_report()["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert rec["status"] == "done" and rec["survivors"] == [0, 1, 3]
    assert rec["secure_sum"] == "exact" and rec["model_version"] == 1
    assert rec["sampled"] == [0, 1, 2, 3] and rec["charged_cohort"] == N
    # fedavg at lr 1: the new model is the old one plus the decoded mean
    np.testing.assert_allclose(core.weights, w0 + decoded.total / 3, rtol=1e-5, atol=1e-6)
    assert core.model_version == 1 and core.rounds_done == 1 and core.last_round_id == 0
    assert core.consecutive_aborts == 0
    assert core.store.is_charged(0)
    ledger = core.store.privacy_ledger()
    assert len(ledger) == 1 and ledger[0][1] == 3
    # a restart replays the ledger into the same ε
    again = _core(tmp_path, models)
    assert again.epsilon_report()["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert again.model_version == 1 and again.rounds_done == 1
    np.testing.assert_array_equal(again.weights, core.weights)


def test_two_rounds_compose_and_the_plan_stops_after_the_planned_rounds(
    tmp_path: Path, models: Any
) -> None:
    core = _core(tmp_path, models, rounds=2)
    survivors = ([0, 1, 2, 3], [1, 2, 3])
    plans = []
    for i, alive in enumerate(survivors):
        rnd = core.begin_round(_registered())
        assert not isinstance(rnd, str) and rnd.round_id == i
        plans.append(rnd.plan)
        _release(core, rnd, list(alive), seed=i)
    assert plans[0] == plans[1]
    eps = _hand_epsilon(core, plans[0], [len(a) for a in survivors])
    assert core.epsilon_report()["epsilon"] == pytest.approx(eps, rel=1e-9)
    reason = core.begin_round(_registered())
    assert reason == "all planned rounds are done" or "2 planned rounds" in reason
    assert core.stop_reason() is not None


def test_an_abort_is_not_charged(tmp_path: Path, models: Any) -> None:
    core = _core(tmp_path, models)
    rnd = core.begin_round(_registered())
    rec = core.abort(rnd, "below threshold")
    assert rec["status"] == "aborted" and rec["abort_reason"] == "below threshold"
    assert rec["charged"] is False and rec["epsilon"] == 0.0
    assert core.consecutive_aborts == 1 and core.rounds_done == 0 and core.model_version == 0
    assert core.epsilon_report()["epsilon"] == 0.0
    nxt = core.begin_round(_registered())
    assert not isinstance(nxt, str) and nxt.round_id == 1


def test_budget_between_the_two_candidates_stops_before_the_round(
    tmp_path: Path, models: Any
) -> None:
    (tmp_path / "probe").mkdir()
    probe = _core(tmp_path / "probe", models)
    rnd = probe.begin_round(_registered())
    plan, t_min = rnd.plan, rnd.params.min_survivors
    assert t_min < N
    worst, full = _hand_epsilon(probe, plan, [N, t_min]), _hand_epsilon(probe, plan, [N, N])
    assert full < worst
    core = _core(tmp_path, models, epsilon_budget=(full + worst) / 2)
    first = core.begin_round(_registered())
    assert not isinstance(first, str)
    _release(core, first, list(range(N)))
    reason = core.begin_round(_registered())
    assert isinstance(reason, str) and "budget" in reason, reason
    assert f"worst case {t_min} contributors" in reason
    assert core.stop_reason() == reason and core.rounds_done == 1
    # a budget above the worst case lets the round start
    roomy = _core(tmp_path / "probe", models, epsilon_budget=worst * 1.01)
    assert not isinstance(roomy.begin_round(_registered()), str)


def test_charged_cohort_and_corrupt_bound() -> None:
    from server.round import charged_cohort, corrupt_bound

    assert charged_cohort(10, 100, 100) == 10
    assert charged_cohort(10, 100, 150) == 10  # more candidates than N: sampled
    assert charged_cohort(0, 100, 50) == 0
    assert charged_cohort(10, 100, 50) == 20  # ceil(10 * 100 / 50)
    assert charged_cohort(10, 100, 30) == 34  # ceil(33.3)
    assert charged_cohort(90, 100, 50) == 100  # at most N
    assert corrupt_bound(0.1, 30) == 3 and corrupt_bound(0.1, 29) == 2
    assert corrupt_bound(0.0, 30) == 0 and corrupt_bound(0.1, 10) == 1


def _err(call: Any, status: int, text: str) -> None:
    from server.round import RoundError

    with pytest.raises(RoundError) as info:
        call()
    assert info.value.status == status and text in info.value.detail, info.value.detail


def test_a_round_walks_its_stages_in_process_with_a_dropout(tmp_path: Path, models: Any) -> None:
    """RoundState as the HTTP driver uses it: open, check, accept, advance, with the real
    protocol; device 2 drops before its masked input. The unmasked sum is the exact sum
    of the survivors' encoded vectors (the masks cancel)."""
    from dp import Encoder
    from dp.prng import SecureRng
    from secagg import AdvertiseKeys, ClientProtocol
    from server.round import Stage

    core = _core(tmp_path, models)
    rnd = core.begin_round(_registered())
    assert not rnd.opened and rnd.stage == Stage.ADVERTISE_KEYS
    clients = {c: ClientProtocol(rnd.params, c) for c in rnd.participants}
    stage, expected = rnd.advance()
    assert stage == Stage.ADVERTISE_KEYS and expected == {0, 1, 2, 3} and rnd.opened
    assert not rnd.rotation_seed_public and not rnd.all_in
    _err(lambda: rnd.check(Stage.ADVERTISE_KEYS, 9), 403, "not a participant of round 0")
    _err(lambda: rnd.check(Stage.SHARE_KEYS, 0), 409,
         "round 0 is in stage advertise_keys, not share_keys")
    for c, cl in clients.items():
        msg = rnd.message_for(stage, cl.advertise_keys().to_dict(), c)
        assert isinstance(msg, AdvertiseKeys) and msg.sender == c and msg.round_id == 0
        assert rnd.accept(stage, c, msg) is (c == 3)
    _err(lambda: rnd.check(Stage.ADVERTISE_KEYS, 0), 409,
         "device 0 already sent its advertise_keys message")
    stage, expected = rnd.advance()
    assert stage == Stage.SHARE_KEYS and expected == {0, 1, 2, 3}
    assert rnd.dropouts == {"advertise_keys": []} and rnd.keys_for is not None
    for c, cl in clients.items():
        msg = rnd.message_for(stage, cl.share_keys(rnd.keys_for[c]).to_dict(), c)
        rnd.accept(stage, c, msg)
    stage, expected = rnd.advance()
    assert stage == Stage.MASKED_INPUT and rnd.keys_for is None and rnd.cts_for is not None
    assert rnd.rotation_seed_public
    enc, plan = Encoder(rnd.plan, rnd.rotation_seed), rnd.plan
    gen = np.random.default_rng(5)
    exact = np.zeros(plan.encoded_dim, dtype=np.uint64)
    for c in (0, 1, 3):
        x, _ = enc.encode(gen.normal(0, 0.01, plan.dim), SecureRng.for_simulation(5, c))
        exact = (exact + x) % np.uint64(plan.modulus)
        data = clients[c].masked_input(rnd.cts_for[c], x).data
        other = rnd.masked_message(c, data)
        assert other.sender == c and other.round_id == 0
        _err(lambda o=other: rnd.accept(stage, 2, o), 403,
             f"sender {c} is not the authenticated device 2")
        assert rnd.accept(stage, c, other) is False
    stage, expected = rnd.advance()
    assert stage == Stage.UNMASK and expected == {0, 1, 3} and rnd.cts_for is None
    assert rnd.dropouts["masked_input"] == [2]
    _err(lambda: rnd.check(Stage.UNMASK, 2), 409,
         "device 2 is not expected in stage unmask of round 0")
    req = rnd.unmask_request
    assert req.survivors == (0, 1, 3) and req.dropped == (2,)
    for c in (0, 1, 3):
        assert rnd.accept(stage, c, rnd.message_for(stage, clients[c].unmask(req).to_dict(),
                                                     c)) is (c == 3)
    assert rnd.advance() == (Stage.DONE, set()) and rnd.stage == Stage.DONE
    decoded_by_hand = exact  # what the unmasking must return
    rec = core.release(rnd)
    assert rec["secure_sum"] == "protocol" and rec["survivors"] == [0, 1, 3]
    assert rec["dropouts"]["masked_input"] == [2]
    assert rec["epsilon"] == pytest.approx(_hand_epsilon(core, plan, [3]), rel=1e-9)
    from dp import Decoder

    mean = Decoder(plan, rnd.rotation_seed).decode(decoded_by_hand, 3).total / 3
    np.testing.assert_allclose(core.weights, models.weights0 + mean, rtol=1e-5, atol=1e-6)


def test_a_message_for_another_round_is_refused(tmp_path: Path, models: Any) -> None:
    from secagg import ClientProtocol
    from secagg.messages import AdvertiseKeys
    from server.round import Stage

    core = _core(tmp_path, models)
    rnd = core.begin_round(_registered())
    rnd.advance()
    msg = ClientProtocol(rnd.params, 0).advertise_keys()
    foreign = AdvertiseKeys(5, 0, msg.c_pk, msg.s_pk, None)
    _err(lambda: rnd.accept(Stage.ADVERTISE_KEYS, 0, foreign), 400,
         "round_id 5 does not match round 0")
    assert rnd.received == set()
