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
    assert charged_cohort(1, 100, 50) == 2  # one device of half the population
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
    assert rnd.expected == set() and rnd.all_in
    with pytest.raises(RuntimeError, match="cannot advance from stage"):
        rnd.advance()
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


# ---------------------------------------------------------------------------------------
# The round log, field by field; restarts; sampling; the paths that stop or abort a round.
# Builders in tests/server/_core_fixtures.py.


def _running_record(core: Any, rnd: Any, n_dev: int) -> dict[str, Any]:
    """What the round log holds for a round that has just started, from the inputs."""
    cfg = core.config
    return {
        "round": rnd.round_id, "status": "running", "sampled": list(rnd.participants),
        "survivors": [], "dropouts": {}, "threshold": rnd.params.threshold,
        "graph": cfg.protocol.graph, "degree": rnd.params.degree, "dim": rnd.plan.encoded_dim,
        "bits": cfg.dp.bits, "accuracy": None, "loss": None,
        "metric": core.models.task.metric_name, "epsilon": 0.0, "epsilon_amplified": 0.0,
        "delta": cfg.dp.delta, "sampling": cfg.server.sampling,
        "epsilon_budget": cfg.server.epsilon_budget,
        "sample_rate": min(1.0, cfg.server.per_round / n_dev),
        "per_round": cfg.server.per_round, "candidates": n_dev,
        "charged_cohort": len(rnd.participants), "charged_population": n_dev,
        "clip": cfg.dp.clip, "clip_rate": None, "model_version": 0,
        "started_at": rnd.started_at, "finished_at": None, "timings": {},
    }


def test_the_round_log_holds_every_field_of_a_round_with_a_dropout(
    tmp_path: Path, models: Any
) -> None:
    """The whole record of a seeded round (fixed 3 of 4, device 2 lost before its masked
    input), built from the inputs and an accountant composed by hand, against what
    release returns and what SQLite holds: while running, and when done."""
    import json
    import random
    import time

    from server.round import Stage
    from tests.server import _core_fixtures as fx

    t_before = time.time()
    core = fx.make_core(tmp_path, models, per_round=3, seed=7)
    rnd = core.begin_round(fx.registered(4))
    assert not isinstance(rnd, str), rnd
    cohort = fx.Draws(7).fixed(range(4), 3)
    assert list(rnd.participants) == cohort
    assert rnd.params.threshold == 2 and rnd.params.graph == "complete"
    # the graph and rotation seeds come from the injected source (a simulation's seeded
    # generator here; os.urandom on a server), 32 bytes each
    seeds = random.Random(7)
    assert rnd.params.graph_seed == seeds.randbytes(32)
    assert rnd.rotation_seed == seeds.randbytes(32)
    running = _running_record(core, rnd, 4)
    assert core.store.rounds() == [running]
    assert t_before <= rnd.started_at <= time.time()
    # the masked-input stage closes without device cohort[1]
    rnd.open(Stage.MASKED_INPUT, set(cohort))
    rnd.received = {cohort[0], cohort[2]}
    assert rnd.close() == [cohort[1]]
    survivors = [cohort[0], cohort[2]]
    rec, decoded = fx.release(core, rnd, survivors, seed=3)
    hand = fx.hand_accountant(core.config, 0.75, 4, [(rnd.plan, 2, 3)])
    rep = hand.report().to_dict()
    expected = dict(running, **rep)
    expected.update({
        "status": "done", "survivors": survivors, "dropouts": {"masked_input": [cohort[1]]},
        "model_version": 1, "secure_sum": "exact", "excluded_senders": 0,
        "wrap": decoded.wrap_report(), "finished_at": rec["finished_at"],
        "timings": rec["timings"],
    })
    for key in ("epsilon", "epsilon_amplified"):
        assert rec[key] == pytest.approx(rep[key], rel=1e-12, abs=1e-12)
        expected[key] = rec[key]
    assert rec == expected
    assert set(rec["timings"]) == {"reconstruct", "decode_update"}
    spent = rec["finished_at"] - rec["started_at"]
    assert all(0.0 <= t <= spent + 1e-3 for t in rec["timings"].values()), rec["timings"]
    assert rnd.started_at <= rec["finished_at"] <= time.time()
    assert core.store.rounds() == [json.loads(json.dumps(rec))]
    assert rnd.stage == Stage.DONE
    assert core.model_bytes == core.weights.astype("<f4").tobytes()
    stored = core.store.latest_model()
    assert stored.version == 1 and stored.round == 0
    np.testing.assert_array_equal(stored.weights, core.weights)



def test_a_poisson_draw_below_two_devices_is_logged_aborted_and_not_charged(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Poisson at q = 2/8 draws one device twice (seed 19): each round is logged as
    aborted, nothing is charged, and the second abort in a row stops training."""
    import logging
    import time

    from tests.server import _core_fixtures as fx

    draws = fx.Draws(19)
    cohorts = [draws.poisson(range(8), 0.25) for _ in range(2)]
    assert cohorts == [[7], [4]]
    core = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=19,
                        max_consecutive_aborts=2)
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="server.round"):
        assert core.begin_round(fx.registered(8)) == ""
    assert core.consecutive_aborts == 1 and core.last_round_id == 0
    assert core.stop_reason() is None
    [rec] = core.store.rounds()
    empty = fx.hand_accountant(core.config, 0.25, 8, []).report().to_dict()
    assert empty["epsilon"] == 0.0
    assert rec == dict({
        "round": 0, "status": "aborted", "sampled": [7], "survivors": [],
        "abort_reason": "cohort of 1 too small for a secure round",
        "started_at": rec["started_at"], "finished_at": rec["started_at"],
        "sample_rate": 0.25, "sampling": "poisson", "model_version": 0,
    }, **empty)
    assert t0 <= rec["started_at"] <= time.time()
    assert not core.store.is_charged(0) and core.store.privacy_ledger() == []
    [line] = [r for r in caplog.records if "aborted" in r.getMessage()]
    assert line.args == (0, "cohort of 1 too small for a secure round")
    assert "no privacy charged" in line.getMessage()
    # the second one reaches max_consecutive_aborts: begin_round says why it stops
    assert core.begin_round(fx.registered(8)) == "2 rounds in a row aborted"
    assert core.stop_reason() == "2 rounds in a row aborted"
    assert [r["round"] for r in core.store.rounds()] == [0, 1]
    assert core.consecutive_aborts == 2 and core.last_round_id == 1
    assert core.epsilon_report()["epsilon"] == 0.0 and core.model_version == 0


def _failing_plan(core: Any) -> None:
    def plan(round_id: int, sampled: Any, registered: Any) -> Any:
        raise ValueError(f"no safe parameters for n={len(sampled)}")

    core.plan = plan


def test_a_cohort_that_cannot_be_planned(tmp_path: Path, models: Any) -> None:
    """Poisson drew fewer than per_round and no safe parameters exist: an aborted round
    that says why (not charged), and training goes on. Poisson at per_round, or a fixed
    cohort, that cannot be planned stops training with the planner's reason."""
    from tests.server import _core_fixtures as fx

    draws = fx.Draws(0)
    assert [draws.poisson(range(4), 0.75) for _ in range(2)] == [[2, 3], [0, 1, 3]]
    core = fx.make_core(tmp_path, models, sampling="poisson", per_round=3, seed=0)
    _failing_plan(core)
    assert core.begin_round(fx.registered(4)) == ""
    [rec] = core.store.rounds()
    assert rec["sampled"] == [2, 3] and rec["status"] == "aborted" and rec["round"] == 0
    assert rec["abort_reason"] == (
        "cohort of 2 too small for a secure round (no safe parameters for n=2)")
    assert core.stop_reason() is None and core.consecutive_aborts == 1
    # 3 drawn = per_round: the configuration cannot run at all
    reason = core.begin_round(fx.registered(4))
    assert reason == "cannot plan round 1 with 3 devices: no safe parameters for n=3"
    assert core.stop_reason() == reason and len(core.store.rounds()) == 1
    (tmp_path / "fixed").mkdir()
    fixed = fx.make_core(tmp_path / "fixed", models, per_round=2, seed=0)
    _failing_plan(fixed)
    reason = fixed.begin_round(fx.registered(4))
    assert reason == "cannot plan round 0 with 2 devices: no safe parameters for n=2"
    assert fixed.store.rounds() == [] and fixed.stop_reason() == reason


def test_a_cohort_of_two_runs(tmp_path: Path, models: Any) -> None:
    """Two devices is the smallest secure cohort: it is planned, not aborted."""
    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, per_round=2, seed=1)
    rnd = core.begin_round(fx.registered(4))
    assert not isinstance(rnd, str), rnd
    assert list(rnd.participants) == fx.Draws(1).fixed(range(4), 2)
    assert core.consecutive_aborts == 0


def test_the_cohort_sampler(tmp_path: Path) -> None:
    """Argument checks with the bad value in the message; the cohorts a seeded source
    draws (the definitions in _core_fixtures.Draws); the OS CSPRNG by default."""
    import random

    from server.round import CohortSampler
    from tests.server import _core_fixtures as fx

    with pytest.raises(ValueError, match=r"sampling must be 'poisson' or 'fixed', got 'uniform'"):
        CohortSampler("uniform", 2)
    for bad in (0, -1, True, 2.0, "2"):
        with pytest.raises(ValueError, match=rf"per_round must be an integer >= 1, got {bad!r}"):
            CohortSampler("fixed", bad)  # type: ignore[arg-type]
    assert CohortSampler("poisson", 1).per_round == 1
    assert isinstance(CohortSampler("fixed", 2).source, random.SystemRandom)
    assert CohortSampler("poisson", 3).rate(12) == 0.25
    assert CohortSampler("poisson", 3).rate(2) == 1.0
    ids = list(range(10))
    fixed = CohortSampler("fixed", 4, random.Random(5))
    assert fixed.kind == "fixed"
    draws = fx.Draws(5)
    for _ in range(3):
        assert fixed.sample(ids[::-1], 10) == draws.fixed(ids, 4)
    assert CohortSampler("fixed", 20, random.Random(5)).sample(ids, 10) == ids
    poisson = CohortSampler("poisson", 3, random.Random(6))
    assert poisson.kind == "poisson"
    draws = fx.Draws(6)
    got = [poisson.sample(ids[::-1], 12) for _ in range(4)]
    assert got == [draws.poisson(ids, 0.25) for _ in range(4)]
    assert len({tuple(g) for g in got}) > 1
    # q = 1: everyone, whatever the uniforms (a uniform is < 1, never = 1)
    class Ones:
        def random(self) -> float:
            return 1.0 - 2**-53

        def sample(self, population: Any, k: int) -> list[int]:  # pragma: no cover
            raise AssertionError("fixed sampling not used")

    assert CohortSampler("poisson", 5, Ones()).sample(ids[:4], 4) == ids[:4]
    # a uniform exactly at q does not join (P(u < q) = q)
    class Quarter(Ones):
        def random(self) -> float:
            return 0.25

    assert CohortSampler("poisson", 1, Quarter()).sample(ids[:4], 4) == []


def _same_privacy(a: Any, b: Any) -> None:
    """Two ServerCores report the same ε (to 1e-12), sampling and ledger."""
    ra, rb = a.epsilon_report(), b.epsilon_report()
    for key in ("epsilon", "epsilon_amplified"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-12, abs=1e-12), key
    assert {k: v for k, v in ra.items() if not k.startswith("epsilon")} == {
        k: v for k, v in rb.items() if not k.startswith("epsilon")}
    assert a.accountant.ledger == b.accountant.ledger
    assert (a.sample_rate, a.population) == (b.sample_rate, b.population)


def test_a_restart_rebuilds_model_optimizer_and_accountant(
    tmp_path: Path, models: Any
) -> None:
    """fedadam with non-default hyper-parameters: the optimizer is the configured one,
    the step is the optimizer's step on the decoded mean, and a ServerCore restarted on
    the same SQLite file has the same model, optimizer state, version, ε and ledger."""
    from server.optimizers import ServerOptimizer
    from tests.server import _core_fixtures as fx

    opts = {"server_opt": "fedadam", "server_lr": 0.05, "server_beta1": 0.8,
            "server_beta2": 0.95, "server_eps": 0.01}
    core = fx.make_core(tmp_path, models, per_round=3, seed=2, **opts)
    opt = ServerOptimizer("fedadam", lr=0.05, beta1=0.8, beta2=0.95, eps=0.01)
    assert core.optimizer == opt
    dim = models.weights0.size
    # a fresh state: one dim-sized buffer per moment (what a stored state must unpack to)
    assert [b.shape for b in core.opt_state] == [(dim,), (dim,)]
    rnd = core.begin_round(fx.registered(4))
    _, decoded = fx.release(core, rnd, list(rnd.participants), seed=4)
    w1, s1 = opt.step(models.weights0, decoded.total / 3, opt.initial_state(dim))
    np.testing.assert_array_equal(core.weights, w1)
    assert len(core.opt_state) == 2
    for got, want in zip(core.opt_state, s1, strict=True):
        np.testing.assert_array_equal(got, want)
    again = fx.make_core(tmp_path, models, per_round=3, seed=2, **opts)
    np.testing.assert_array_equal(again.weights, w1)
    assert again.weights.dtype == np.float32
    for got, want in zip(again.opt_state, s1, strict=True):
        np.testing.assert_array_equal(got, want)
    assert again.model_version == 1 and again.rounds_done == 1 and again.last_round_id == 0
    assert again.model_bytes == w1.astype("<f4").tobytes() == core.model_bytes
    assert again.finished_reason is None and again.stop_reason() is None
    _same_privacy(core, again)
    assert again.store.get_meta("legacy_population") == 4
    # fedavgm keeps its momentum
    (tmp_path / "m").mkdir()
    m = fx.make_core(tmp_path / "m", models, server_opt="fedavgm", momentum=0.5, server_lr=0.5)
    assert m.optimizer == ServerOptimizer("fedavgm", lr=0.5, momentum=0.5)


def test_a_fresh_store_and_the_checks_of_an_existing_one(tmp_path: Path, models: Any) -> None:
    """restore() on an empty store saves version 0 (float32, a copy of the caller's
    weights) and records the task; a store of another task or model size is refused with
    both in the message."""
    from server.round import ServerCore
    from server.store import Store
    from tests.server import _core_fixtures as fx

    cfg = fx.config()
    core = ServerCore(cfg, Store(tmp_path / "server.sqlite3"), models)
    assert core.epsilon_report() == {"epsilon": 0.0, "epsilon_amplified": 0.0, "delta": 1e-5,
                                     "sampling": "fixed", "corrupt_fraction": 0.1}
    assert core.clip == 1.0 and core.rounds_done == 0 and core.consecutive_aborts == 0
    # before restore() there is no model, no accountant and no round
    assert core.weights.size == 0 and core.weights.dtype == np.float32
    assert core.opt_state == [] and core.model_version == 0 and core.model_bytes == b""
    assert core.accountant is None and core.sample_rate is None and core.population is None
    assert core.last_round_id is None and core.finished_reason is None
    w64 = np.asarray(models.weights0, dtype=np.float64) + 0.1
    core.restore(w64)
    expect = w64.astype(np.float32)
    w64 += 1.0  # the caller's array is not the model
    assert core.weights.dtype == np.float32
    np.testing.assert_array_equal(core.weights, expect)
    assert core.model_bytes == expect.astype("<f4").tobytes()
    assert core.model_version == 0 and core.last_round_id is None and core.rounds_done == 0
    assert core.opt_state == [] and core.accountant is None
    assert core.epsilon_report()["epsilon"] == 0.0
    assert core.store.get_meta("task") == "digits"
    assert core.store.get_meta("dim") == expect.size
    assert core.store.get_meta("legacy_population") is None
    stored = core.store.latest_model()
    assert stored.version == 0
    np.testing.assert_array_equal(stored.weights, expect)
    path = str(core.store.path)
    bigger = np.zeros(expect.size + 1, dtype=np.float32)
    with pytest.raises(ValueError, match=(
            rf"database {path!r} holds a model of {expect.size} weights; task 'digits' has "
            rf"{expect.size + 1}")):
        ServerCore(cfg, Store(tmp_path / "server.sqlite3"), models).restore(bigger)
    (tmp_path / "other").mkdir()
    other = Store(tmp_path / "other" / "server.sqlite3")
    other.set_meta("task", "cifar10")
    with pytest.raises(ValueError, match=(
            rf"database {str(other.path)!r} belongs to task 'cifar10', not 'digits'")):
        ServerCore(cfg, other, models).restore(models.weights0)


def test_a_round_in_flight_at_a_restart_is_aborted_uncharged(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, rounds=1)
    rnd = core.begin_round(fx.registered(4))
    assert core.store.rounds()[0]["status"] == "running"
    with caplog.at_level(logging.WARNING, logger="server.round"):
        again = fx.make_core(tmp_path, models, rounds=1)
    [rec] = again.store.rounds()
    assert rec["status"] == "aborted"
    assert rec["abort_reason"] == "server restarted while the round was in flight"
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert line.args == (0,) and "in flight" in line.getMessage()
    assert again.last_round_id == 0 and again.rounds_done == 0 and again.stop_reason() is None
    assert again.epsilon_report()["epsilon"] == 0.0 and not again.store.is_charged(0)
    nxt = again.begin_round(fx.registered(4))
    assert nxt.round_id == 1
    fx.release(again, nxt, list(nxt.participants))
    assert rnd.round_id == 0
    done = fx.make_core(tmp_path, models, rounds=1)
    assert done.stop_reason() == "all planned rounds are done" == done.finished_reason
    assert done.begin_round(fx.registered(4)) == "all planned rounds are done"
    assert done.last_round_id == 1 and done.rounds_done == 1
    more = fx.make_core(tmp_path, models, rounds=2)
    assert more.stop_reason() is None


def test_poisson_population_growth_and_disabled_devices_are_charged_as_designed(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Poisson, 2 per round. Round 0 of 4 devices (q = 1/2); 6 register: N grows to 6,
    q = 1/3, the accountant is rebuilt and round 0 replayed as ceil(3 * 6 / 4) = 5 of 6;
    round 1 of 6; two are disabled: round 2 is drawn from 4 at q = 1/2 and charged as
    ceil(3 * 6 / 4) = 5 of N = 6. ε against an accountant composed by hand, and a restart
    replays the same ledger."""
    import logging

    from tests.server import _core_fixtures as fx

    draws = fx.Draws(9)
    cohorts = [draws.poisson(range(4), 0.5), draws.poisson(range(6), 1 / 3),
               draws.poisson(range(4), 0.5)]
    assert cohorts == [[0, 1, 2], [0, 3], [0, 1, 3]]
    core = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=9)
    cfg = core.config
    plans = []
    with caplog.at_level(logging.INFO, logger="server.round"):
        r0 = core.begin_round(fx.registered(4))
        assert list(r0.participants) == cohorts[0] and r0.sample_rate == 0.5
        assert (r0.charged_cohort, r0.charged_population, r0.candidates) == (3, 4, 4)
        assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
        fx.release(core, r0, [0, 2])  # device 1 dropped
        plans.append(r0.plan)
        assert (core.sample_rate, core.population) == (0.5, 4)
        r1 = core.begin_round(fx.registered(6))
    [line] = [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert line.args == (pytest.approx(1 / 3), 6)
    assert (core.sample_rate, core.population) == (pytest.approx(1 / 3), 6)
    assert core.store.get_meta("population") == 6
    assert list(r1.participants) == cohorts[1] and r1.sample_rate == pytest.approx(1 / 3)
    hand = fx.hand_accountant(cfg, 1 / 3, 6, [(plans[0], 2, 5)])
    _same_figures(core, hand)
    fx.release(core, r1, [0, 3], seed=1)
    plans.append(r1.plan)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.round"):
        r2 = core.begin_round(fx.registered(4))
    assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert list(r2.participants) == cohorts[2] and r2.sample_rate == 0.5
    assert (r2.charged_cohort, r2.charged_population, r2.candidates) == (5, 6, 4)
    assert (core.sample_rate, core.population) == (pytest.approx(1 / 3), 6)
    rec, _ = fx.release(core, r2, [0, 1, 3], seed=2)
    assert (rec["charged_cohort"], rec["charged_population"], rec["candidates"]) == (5, 6, 4)
    hand = fx.hand_accountant(cfg, 1 / 3, 6, [(plans[0], 2, 5), (plans[1], 2, 2),
                                              (r2.plan, 3, 5)])
    _same_figures(core, hand)
    assert rec["epsilon_amplified"] == pytest.approx(
        hand.report().epsilon_amplified, rel=1e-12)
    again = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=9)
    _same_privacy(core, again)


def _same_figures(core: Any, hand: Any) -> None:
    got, want = core.epsilon_report(), hand.report().to_dict()
    for key in ("epsilon", "epsilon_amplified"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert core.accountant.ledger == hand.ledger


def test_a_store_from_before_each_round_kept_its_population(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Rounds logged without ``charged_population`` were charged against the store's
    ``legacy_population``: replayed into a grown N at the same fraction (ceil(3 * 6 / 4)
    = 5 of 6). A store older still, with a sample rate and no population, gets the
    accountant rebuilt for this round's candidates when the next round starts."""
    import logging

    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=9)
    r0 = core.begin_round(fx.registered(4))
    assert list(r0.participants) == [0, 1, 2]
    fx.release(core, r0, [0, 2])
    store = core.store
    [rec] = store.rounds()
    del rec["charged_population"]
    store.put_round(rec)
    assert store.privacy_ledger()[0][3:] == (3, None)
    store.set_meta("legacy_population", 4)
    store.set_meta("population", 6)
    store.set_meta("sample_rate", 1 / 3)
    again = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=9)
    assert store.get_meta("legacy_population") == 4
    assert (again.sample_rate, again.population) == (pytest.approx(1 / 3), 6)
    _same_figures(again, fx.hand_accountant(again.config, 1 / 3, 6, [(r0.plan, 2, 5)]))
    # before populations were kept at all (Poisson at q = 1: every device, every round)
    (tmp_path / "old").mkdir()
    first = fx.make_core(tmp_path / "old", models, sampling="poisson", per_round=4, seed=1)
    r0 = first.begin_round(fx.registered(4))
    assert list(r0.participants) == [0, 1, 2, 3] and r0.sample_rate == 1.0
    fx.release(first, r0, [0, 1, 3])
    first.store.set_meta("population", None)
    old = fx.make_core(tmp_path / "old", models, sampling="poisson", per_round=4, seed=1)
    assert old.population is None and old.sample_rate == 1.0
    with caplog.at_level(logging.INFO, logger="server.round"):
        r1 = old.begin_round(fx.registered(4))
    assert not isinstance(r1, str) and r1.round_id == 1
    [line] = [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert line.args == (1.0, 4)
    assert (old.sample_rate, old.population) == (1.0, 4)
    _same_figures(old, fx.hand_accountant(old.config, 1.0, 4, [(r0.plan, 3, 4)]))


def test_fixed_size_sampling_keeps_n_when_devices_register_and_shrinks_it_when_disabled(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """3 of 4 (q = 3/4). A 5th device registers: N stays 4 (k of N charges more than k
    of 5), nothing is rebuilt. Two are disabled: N shrinks to 3 for good (q = 1), the
    accountant is rebuilt and every round charged as 3 of 3."""
    import logging

    from tests.server import _core_fixtures as fx

    draws = fx.Draws(5)
    cohorts = [draws.fixed(range(4), 3), draws.fixed(range(5), 3), draws.fixed(range(3), 3)]
    core = fx.make_core(tmp_path, models, per_round=3, seed=5)
    plans = []
    with caplog.at_level(logging.INFO, logger="server.round"):
        r0 = core.begin_round(fx.registered(4))
        assert list(r0.participants) == cohorts[0]
        fx.release(core, r0, cohorts[0])
        plans.append(r0.plan)
        r1 = core.begin_round(fx.registered(5))
        assert list(r1.participants) == cohorts[1]
        assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
        assert (core.sample_rate, core.population) == (0.75, 4)
        assert (r1.charged_cohort, r1.charged_population, r1.candidates) == (3, 4, 5)
        assert r1.sample_rate == 0.6
        fx.release(core, r1, cohorts[1][:2], seed=1)
        plans.append(r1.plan)
        _same_figures(core, fx.hand_accountant(core.config, 0.75, 4,
                                               [(plans[0], 3, 3), (plans[1], 2, 3)]))
        r2 = core.begin_round(fx.registered(3))
    assert list(r2.participants) == [0, 1, 2]
    [line] = [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert line.args == (1.0, 3)
    assert (core.sample_rate, core.population) == (1.0, 3)
    assert (r2.charged_cohort, r2.charged_population, r2.candidates) == (3, 3, 3)
    _same_figures(core, fx.hand_accountant(core.config, 1.0, 3,
                                           [(plans[0], 3, 3), (plans[1], 2, 3)]))


def test_an_abort_is_logged_with_its_reason_and_a_charged_one_stays_charged(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    from server.round import Stage
    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, per_round=3, seed=3)
    with caplog.at_level(logging.INFO, logger="server.round"):
        rnd = core.begin_round(fx.registered(4))
    [started] = caplog.records
    p = rnd.params
    assert started.args == (0, 3, 4, p.threshold, "complete", rnd.plan.encoded_dim, 20)
    assert started.getMessage().startswith("round 0: sampled 3 of 4 devices")
    running = _running_record(core, rnd, 4)
    rnd.advance()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.round"):
        rec = core.abort(rnd, "below threshold")
    assert rnd.stage == Stage.ABORTED and rnd.expected == set()
    assert rec == dict(running, status="aborted", abort_reason="below threshold",
                       charged=False, finished_at=rec["finished_at"],
                       dropouts={})
    assert rnd.started_at <= rec["finished_at"] <= time.time()
    assert core.store.rounds() == [rec]
    [line] = caplog.records
    assert line.args == (0, "below threshold", False)
    assert "below threshold" in line.getMessage()
    assert rnd.rotation_seed_public is False  # an aborted round never reveals it
    assert core.consecutive_aborts == 1 and core.last_round_id == 0
    # an abort after the write-ahead charge (while unmasking): the charge stays
    r1 = core.begin_round(fx.registered(4))
    core.store.charge_round(1, r1.plan.to_dict(), 3, r1.sample_rate)
    rec = core.abort(r1, "unmasking failed")
    assert rec["charged"] is True and rec["round"] == 1
    assert core.consecutive_aborts == 2 and core.last_round_id == 1
    again = fx.make_core(tmp_path, models, per_round=3, seed=3)
    _same_figures(again, fx.hand_accountant(again.config, 0.75, 4, [(r1.plan, 3, 3)]))


def test_evaluation_follows_eval_every_and_the_last_planned_round(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The model released by round r (version r + 1) is evaluated when r + 1 is a multiple
    of eval_every or the last planned round; the record keeps finite metrics only and
    the time evaluation took; the round's closing log line carries its figures."""
    import logging

    from tests.server import _core_fixtures as fx

    for rounds, every in ((3, 2), (4, 3), (2, 1), (2, 0)):
        d = tmp_path / f"{rounds}-{every}"
        d.mkdir()
        spy = fx.EvalSpy(models, {"accuracy": np.float32(0.75), "loss": float("nan")})
        core = fx.make_core(d, spy, rounds=rounds, eval_every=every, per_round=2, seed=1)
        evaluated = []
        for v in range(1, rounds + 1):
            rnd = core.begin_round(fx.registered(3))
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="server.round"):
                rec, _ = fx.release(core, rnd, list(rnd.participants), seed=v)
            on = every > 0 and (v % every == 0 or v == rounds)
            if on:
                evaluated.append(v)
                weights, version = spy.calls[-1]
                assert version == v
                np.testing.assert_array_equal(weights, core.weights)
            assert (rec["accuracy"], rec["loss"]) == ((0.75, None) if on else (None, None))
            assert ("evaluate" in rec["timings"]) is on
            spent = rec["finished_at"] - rec["started_at"]
            assert 0.0 <= rec["timings"].get("evaluate", 0.0) <= spent + 1e-3
            [line] = [r for r in caplog.records if "done" in r.getMessage()]
            assert line.args == (rnd.round_id, 2, rec["accuracy"], rec["epsilon"],
                                 rec["epsilon_amplified"])
        assert [c[1] for c in spy.calls] == evaluated, (rounds, every)
        assert evaluated == {(3, 2): [2, 3], (4, 3): [3, 4], (2, 1): [1, 2], (2, 0): []}[
            (rounds, every)]


def test_metrics_that_are_not_finite_numbers_and_a_failed_evaluation(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed evaluation is logged with the round and loses no round: the round is
    done, the model released, the metrics empty."""
    import logging

    from tests.server import _core_fixtures as fx

    spy = fx.EvalSpy(models, {"accuracy": "n/a", "loss": 2})
    core = fx.make_core(tmp_path, spy, eval_every=1, per_round=2, seed=1)
    rec, _ = fx.release(core, core.begin_round(fx.registered(3)), [0, 1])
    assert (rec["accuracy"], rec["loss"]) == (None, 2.0)
    spy.metrics = {"accuracy": float("inf"), "loss": None}
    rec, _ = fx.release(core, core.begin_round(fx.registered(3)), [0, 1])
    assert (rec["accuracy"], rec["loss"]) == (None, None)
    spy.error = RuntimeError("no test split")
    rnd = core.begin_round(fx.registered(3))
    with caplog.at_level(logging.INFO, logger="server.round"):
        rec, _ = fx.release(core, rnd, [0, 1])
    assert rec["status"] == "done" and rec["model_version"] == 3 == core.model_version
    assert (rec["accuracy"], rec["loss"]) == (None, None) and "evaluate" in rec["timings"]
    [err] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert err.args == (2,) and "evaluation failed" in err.getMessage()
    assert err.exc_info is not None and err.exc_info[1] is spy.error


def test_adaptive_clipping_updates_the_clip_records_the_rate_and_survives_a_restart(
    tmp_path: Path, models: Any
) -> None:
    """Andrew et al.: the noised clipped count b of n gives clip_rate = clamp(b / n, 0, 1)
    and C' = update_clip(C, b, n, target_quantile, clip_lr); C' is stored, used by the next
    round's plan, and restored after a restart (only when adaptive clipping is on)."""
    from dp import update_clip
    from tests.server import _core_fixtures as fx

    dp = {"adaptive_clip": True, "clip": 0.25, "target_quantile": 0.6, "clip_lr": 0.3}
    core = fx.make_core(tmp_path, models, per_round=3, seed=1, dp=dp)
    clip = 0.25
    for i, scale in enumerate((0.005, 0.05)):
        rnd = core.begin_round(fx.registered(4))
        assert rnd.plan.config.clip == clip
        rec, decoded = fx.release(core, rnd, list(rnd.participants), seed=1 + 7 * i,
                                  scale=scale)
        count = decoded.clipped_count
        assert rec["clip"] == clip
        assert rec["clip_rate"] == min(1.0, max(0.0, count / 3))
        if i == 0:
            assert 0 < count < 3  # an interior rate
        else:
            assert count > 3  # the noise pushed it past n: the rate is 1
        clip = update_clip(clip, count, 3, 0.6, 0.3)
        assert core.clip == clip and core.store.get_meta("clip") == clip
    assert clip != 0.25
    again = fx.make_core(tmp_path, models, per_round=3, seed=1, dp=dp)
    assert again.clip == clip
    assert again.begin_round(fx.registered(4)).plan.config.clip == clip
    fixed = fx.make_core(tmp_path, models, per_round=3, seed=1, dp=dict(dp, adaptive_clip=False))
    assert fixed.clip == 0.25


def test_federated_evaluation_is_recorded_for_the_model_the_devices_were_sent(
    tmp_path: Path, models: Any
) -> None:
    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, per_round=3, seed=1, dp={"eval_buckets": 4},
                        training={"eval_fraction": 0.2})
    evs = {i: (0.25 * (i + 1), 10.0, 3.0 + i) for i in range(4)}
    for version in (0, 1):
        rnd = core.begin_round(fx.registered(4))
        rec, decoded = fx.release(core, rnd, list(rnd.participants), seed=version,
                                  evaluations=evs)
        assert decoded.evaluation
        assert rec["federated_eval"] == dict(decoded.evaluation, model_version=version)


def test_a_sum_that_may_have_wrapped_is_flagged_in_the_record_and_the_log(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from dp import Decoder
    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models)
    rnd = core.begin_round(fx.registered(4))
    half = rnd.plan.modulus // 2
    total = np.full(rnd.plan.encoded_dim, half - 1, dtype=np.uint64)
    total[::2] = half + 1  # every coordinate at the edge of the range
    wrap = Decoder(rnd.plan, rnd.rotation_seed).decode(total, 4).wrap_report()
    assert wrap["wrap_suspected"] and wrap["near_wrap"] > 0
    with caplog.at_level(logging.INFO, logger="server.round"):
        rec = core.release(rnd, lambda: total, secure_sum="exact", survivors=[0, 1, 2, 3])
    assert rec["wrap"] == wrap
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert line.args == (0, 20, wrap["near_wrap"], wrap["outliers"])
    assert "may have wrapped" in line.getMessage()


def test_the_round_parameters_follow_the_protocol_configuration(
    tmp_path: Path, models: Any
) -> None:
    """Harary graph, 30 % dropout, 30 % corrupt, survivors at least 75 % of the cohort:
    what the round's secagg parameters and encoding plan are sized for; active security
    pins the registered identity keys of the cohort."""
    import math

    from secagg import RoundParams
    from server.round import corrupt_bound
    from tests.server import _core_fixtures as fx

    proto = {"graph": "harary", "dropout": 0.3, "corrupt": 0.3, "min_survivors": 0.75}
    core = fx.make_core(tmp_path, models, protocol=proto, clients=9, per_round=8, seed=1)
    reg = fx.registered(9)
    rnd = core.begin_round(reg)
    cohort = fx.Draws(1).fixed(range(9), 8)
    assert list(rnd.participants) == cohort
    p = rnd.params
    ref = RoundParams.create(0, cohort, 10, 20, graph="harary", dropout=0.3, corrupt=0.3,
                             min_survivors=0.75)
    assert (p.graph, p.degree, p.threshold) == ("harary", ref.degree, ref.threshold)
    # (either fraction at its default, 10 %, gives degree 4: 30 % of each is what sizes it)
    assert (p.degree, p.threshold) == (6, 3) and p.active is False and p.identity_keys is None
    assert p.min_survivors == max(ref.threshold, math.ceil(0.75 * 8)) == 6
    assert p.dim == rnd.plan.encoded_dim and p.bits == 20
    plan = rnd.plan
    assert (plan.n_clients, plan.min_contributors) == (8, 6)
    assert plan.corrupt == corrupt_bound(0.3, 8) > 0 and plan.dim == models.weights0.size
    # active security: the cohort's identity keys are in the parameters
    (tmp_path / "active").mkdir()
    active = fx.make_core(tmp_path / "active", models, protocol={"active": True}, per_round=3,
                          seed=2)
    p = active.begin_round(fx.registered(4)).params
    cohort = fx.Draws(2).fixed(range(4), 3)
    assert p.active is True and p.identity_keys == {c: fx.registered(4)[c] for c in cohort}


def test_an_active_round_walks_through_the_consistency_check(
    tmp_path: Path, models: Any
) -> None:
    """Active security: after the masked inputs, the survivors sign the survivor set
    (consistency check) before any unmask share is sent; the unmasked sum is the exact
    sum of the survivors' encoded vectors."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dp import Encoder
    from dp.prng import SecureRng
    from secagg import ClientProtocol
    from secagg.auth import public_key_bytes
    from server.round import Stage
    from tests.server import _core_fixtures as fx

    keys = {c: Ed25519PrivateKey.generate() for c in range(4)}
    reg = {c: public_key_bytes(k) for c, k in keys.items()}
    core = fx.make_core(tmp_path, models, protocol={"active": True}, seed=1)
    rnd = core.begin_round(reg)
    assert rnd.params.active and rnd.params.identity_keys == reg
    clients = {c: ClientProtocol(rnd.params, c, signing_key=keys[c],
                                 pinned_identity_keys=reg) for c in rnd.participants}
    stage, _ = rnd.advance()
    for c, cl in clients.items():
        rnd.accept(stage, c, rnd.message_for(stage, cl.advertise_keys().to_dict(), c))
    stage, _ = rnd.advance()
    for c, cl in clients.items():
        rnd.accept(stage, c, rnd.message_for(stage, cl.share_keys(rnd.keys_for[c]).to_dict(),
                                             c))
    stage, _ = rnd.advance()
    assert stage == Stage.MASKED_INPUT
    total, decoded = fx.encoded_sum(rnd, [0, 1, 2], seed=2)  # the same vectors, summed
    enc_total = np.zeros_like(total)
    gen = np.random.default_rng(2)
    enc = Encoder(rnd.plan, rnd.rotation_seed)
    for c in (0, 1, 2):
        x, _ = enc.encode(gen.normal(0, 0.01, rnd.plan.dim), SecureRng.for_simulation(2, c))
        enc_total = (enc_total + x) % np.uint64(rnd.plan.modulus)
        rnd.accept(stage, c, rnd.masked_message(c, clients[c].masked_input(rnd.cts_for[c],
                                                                          x).data))
    np.testing.assert_array_equal(enc_total, total)
    stage, expected = rnd.advance()
    assert stage == Stage.CONSISTENCY_CHECK and expected == {0, 1, 2}
    req = rnd.consistency_request
    assert req is not None and req.survivors == (0, 1, 2) and rnd.unmask_request is None
    for c in (0, 1, 2):
        msg = rnd.message_for(stage, clients[c].consistency_check(req).to_dict(), c)
        rnd.accept(stage, c, msg)
    stage, expected = rnd.advance()
    assert stage == Stage.UNMASK and expected == {0, 1, 2}
    req = rnd.unmask_request
    assert req is not None and req.survivors == (0, 1, 2)
    for c in (0, 1, 2):
        rnd.accept(stage, c, rnd.message_for(stage, clients[c].unmask(req).to_dict(), c))
    assert rnd.advance() == (Stage.DONE, set())
    rec = core.release(rnd)
    assert rec["survivors"] == [0, 1, 2] and rec["dropouts"]["masked_input"] == [3]
    np.testing.assert_allclose(core.weights, models.weights0 + decoded.total / 3,
                               rtol=1e-5, atol=1e-6)


def test_the_pld_accountant_is_the_one_configured(tmp_path: Path, models: Any) -> None:
    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, per_round=3, seed=1, accountant="pld",
                        dp={"mechanism": "gaussian"})
    rnd = core.begin_round(fx.registered(4))
    rec, _ = fx.release(core, rnd, list(rnd.participants))
    hand = fx.hand_accountant(core.config, 0.75, 4, [(rnd.plan, 3, 3)])
    assert hand.report().accountant == "pld" and rec["accountant"] == "pld"
    _same_figures(core, hand)


def test_a_new_per_round_rebuilds_the_accountant_at_the_new_rate(
    tmp_path: Path, models: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator raises per_round from 2 to 3 of N = 4 (server.control sets
    ``sampler.per_round``): N is unchanged, q goes from 1/2 to 3/4, so the accountant is
    rebuilt at 3/4 and the earlier round replayed into it."""
    import logging

    from tests.server import _core_fixtures as fx

    draws = fx.Draws(0)
    assert [draws.poisson(range(4), 0.5), draws.poisson(range(4), 0.75)] == [
        [2, 3], [0, 1, 3]]
    core = fx.make_core(tmp_path, models, sampling="poisson", per_round=2, seed=0)
    r0 = core.begin_round(fx.registered(4))
    fx.release(core, r0, [2, 3])
    core.sampler.per_round = 3
    with caplog.at_level(logging.INFO, logger="server.round"):
        r1 = core.begin_round(fx.registered(4))
    [line] = [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert line.args == (0.75, 4)
    assert (core.sample_rate, core.population) == (0.75, 4)
    assert core.store.get_meta("sample_rate") == 0.75
    assert list(r1.participants) == [0, 1, 3] and r1.sample_rate == 0.75
    assert r1.per_round == 3
    _same_figures(core, fx.hand_accountant(core.config, 0.75, 4, [(r0.plan, 2, 2)]))


def test_a_crash_while_unmasking_leaves_the_round_charged_with_its_plan(
    tmp_path: Path, models: Any
) -> None:
    """The write-ahead charge stores the round's plan with its survivors before the sum
    is computed: a crash there leaves a ledger entry a restarted server replays into the
    same ε as an accountant composed by hand."""
    import json

    from tests.server import _core_fixtures as fx

    core = fx.make_core(tmp_path, models, per_round=3, seed=3)
    rnd = core.begin_round(fx.registered(4))

    def crash() -> np.ndarray:
        raise RuntimeError("unmasking crashed")

    with pytest.raises(RuntimeError, match="unmasking crashed"):
        core.release(rnd, crash, secure_sum="exact", survivors=list(rnd.participants))
    plan = json.loads(json.dumps(rnd.plan.to_dict()))
    assert core.store.privacy_events() == [(plan, 3, 0.75)]
    again = fx.make_core(tmp_path, models, per_round=3, seed=3)
    _same_figures(again, fx.hand_accountant(again.config, 0.75, 4, [(rnd.plan, 3, 3)]))


def test_only_the_last_planned_round_is_evaluated_when_eval_every_exceeds_the_plan(
    tmp_path: Path, models: Any
) -> None:
    """rounds = 2, eval_every = 5: no multiple of 5 is reached, so the model of the last
    planned round (version 2) is the only one evaluated, not the one before it."""
    from tests.server import _core_fixtures as fx

    spy = fx.EvalSpy(models)
    core = fx.make_core(tmp_path, spy, rounds=2, eval_every=5, per_round=2, seed=1)
    recs = []
    for v in (1, 2):
        rnd = core.begin_round(fx.registered(3))
        rec, _ = fx.release(core, rnd, list(rnd.participants), seed=v)
        recs.append(rec["accuracy"])
    assert [c[1] for c in spy.calls] == [2]
    assert recs == [None, 0.25]
