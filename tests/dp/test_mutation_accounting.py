"""The accountant's printed figures, budget decisions and storage, pinned against
independent references (issue 16: mutants of dp.accounting that every older test let
through).

- The PLD accountant's unamplified epsilon is the root of the Gaussian's exact
  delta(epsilon) (Balle & Wang 2018), written out again here with scipy and found by
  brentq, to 3e-12 relative, at figures below 0.01, below 1, above 1, and 0.
- `calibrate_noise` returns the smallest z (to `rel_tol`) that meets the target for the
  accountant the run charges with, for targets reached below z = 1 (the shrinking branch),
  far above it (z near 2^15), with every run parameter set away from its default, and
  with the defaults of `epsilon_for`.
- The Poisson (Zhu-Wang) subsampled RDP against its formula written out again.
- `would_exceed` at the budget's edges; `to_dict`/`from_dict` of a PLD accountant.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import ndtr

from dp import (
    DPConfig,
    DPConfigError,
    EncodingPlan,
    PrivacyAccountant,
    calibrate_noise,
    corrupt_count,
    epsilon_amplified_approx,
    epsilon_for,
    epsilon_report,
    subsampled_rdp,
    wbk_subsampled_rdp,
)
from tests.dp.test_sampling import _wbk_ref
from tests.matching import exact

# ------------------------------------------------------------ exact Gaussian (PLD)


def _gaussian_delta(eps: float, z: float) -> float:
    """delta(eps) of the Gaussian mechanism with noise multiplier z (sensitivity 1):
    Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z) (Balle & Wang 2018, Thm. 8)."""
    return float(ndtr(1 / (2 * z) - eps * z) - math.exp(eps) * ndtr(-1 / (2 * z) - eps * z))


def _gaussian_epsilon_ref(z: float, delta: float) -> float:
    if _gaussian_delta(0.0, z) <= delta:
        return 0.0
    return brentq(lambda e: _gaussian_delta(e, z) - delta, 0.0, 200.0,
                  xtol=1e-300, rtol=1e-15, maxiter=1000)


def _gaussian_event(z: float, delta: float):
    config = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=40, delta=delta)
    return config, EncodingPlan.create(config, 1000, 100, 100).privacy_event(100)


#: A hang guard, far above these tests' run time (well under a second): a bisection that
#: never ends fails here instead of running into mutmut's CPU limit.
HANG = pytest.mark.timeout(30)


@HANG
@pytest.mark.parametrize(
    "z,rounds,delta",
    [(300.0, 1, 1e-5),   # epsilon ~ 0.008: the bisection's tolerance is relative
     (3.0, 1, 1e-5),     # epsilon ~ 1.27
     (1.4, 2, 1e-6),     # epsilon ~ 7.4: the bracket is doubled three times
     (2000.0, 1, 1e-3)],  # delta(0) <= delta: epsilon 0
)
def test_pld_unamplified_epsilon_is_the_exact_gaussian_root(
    z: float, rounds: int, delta: float
) -> None:
    config, event = _gaussian_event(z, delta)
    acc = PrivacyAccountant(config, 1.0, "pld")
    acc.compose(event, rounds)
    z_total = 1.0 / math.sqrt(rounds / event.gaussian_noise_multiplier**2)
    expected = _gaussian_epsilon_ref(z_total, delta)
    got = acc.report().epsilon
    if expected == 0.0:
        assert got == 0.0
    else:
        # the bisection returns the upper end, within 1e-12 relative of the root
        assert got == pytest.approx(expected, rel=3e-12)
        assert got >= expected * (1 - 1e-13)


# ------------------------------------------------------------------- calibration


def _assert_smallest(eps, z: float, target: float, rel_tol: float) -> None:
    """z meets the target, and z shrunk by twice the tolerance does not."""
    assert isinstance(z, float)
    assert eps(z) <= target
    assert eps(z * (1 - 2 * rel_tol)) > target


@HANG
@pytest.mark.parametrize("target", [200.0, 30.0, 3.0])
def test_calibration_below_one_is_the_smallest_z(target: float) -> None:
    # unamplified Gaussian, one round: z* ~ 0.07, 0.2 and 1.5 (the first two are found by
    # shrinking the bracket below z = 1, the last by doubling it)
    run = dict(bits=40, dim=1000, clients_per_round=10)
    z = calibrate_noise(target, 1.0, 1, 1e-5, mechanism="gaussian", **run)
    _assert_smallest(lambda x: epsilon_for("gaussian", x, 1.0, 1, 1e-5, **run), z, target,
                     1e-4)


@HANG
def test_calibration_of_the_unamplified_figure_under_sampling() -> None:
    # q < 1: the unamplified (zero-out) figure is calibrated, not the amplified one
    run = dict(bits=40, dim=1000, clients_per_round=10, amplified=False)
    z = calibrate_noise(20.0, 0.1, 5, 1e-5, mechanism="gaussian", **run)
    _assert_smallest(lambda x: epsilon_for("gaussian", x, 0.1, 5, 1e-5, **run), z, 20.0, 1e-4)
    assert epsilon_for("gaussian", z, 0.1, 5, 1e-5, **{**run, "amplified": True}) > 20.0


@HANG
def test_calibration_far_above_one() -> None:
    # a target reached at z ~ 4e4 (between 2^15 and 2^16), exact Gaussian (PLD)
    run = dict(bits=20, dim=1000, clients_per_round=10, accountant="pld", amplified=False)
    target = epsilon_for("gaussian", 40_000.0, 1.0, 1, 1e-6, **run)
    z = calibrate_noise(target, 1.0, 1, 1e-6, mechanism="gaussian", **run)
    assert 2.0**15 < z <= 2.0**16
    _assert_smallest(lambda x: epsilon_for("gaussian", x, 1.0, 1, 1e-6, **run), z, target,
                     1e-4)


@HANG
def test_calibration_charges_every_run_parameter() -> None:
    # every parameter away from its default, and each of them moves epsilon by far more
    # than the tolerance (bits=10: the rounding counts; adaptive clipping with its own
    # stddev, the evaluation block with its own ratio, colluders and survivors)
    run = dict(clients_per_round=10, bits=10, dim=1000, clip=0.5, min_contributors=8,
               adaptive_clip=True, clipped_count_stddev=2.0, sampling="fixed",
               population=100, corrupt=0.1, eval_buckets=4, eval_noise_ratio=3.0,
               survivors=9)
    z = calibrate_noise(5.0, 0.1, 5, 1e-5, mechanism="ddgauss", **run)
    _assert_smallest(lambda x: epsilon_for("ddgauss", x, 0.1, 5, 1e-5, **run), z, 5.0, 1e-4)


def test_fixed_sampling_needs_the_population() -> None:
    # Poisson sampling infers N = k / q; fixed-size sampling must be told N
    with pytest.raises(DPConfigError, match="fixed-size sampling needs the population N"):
        calibrate_noise(5.0, 0.1, 5, 1e-5, mechanism="gaussian", clients_per_round=10,
                        sampling="fixed")
    with pytest.raises(DPConfigError, match="fixed-size sampling needs the population N"):
        epsilon_for("gaussian", 1.0, 0.1, 5, 1e-5, clients_per_round=10, sampling="fixed")


@HANG
def test_calibration_defaults_are_epsilon_fors() -> None:
    # With the defaults (bits 20, dim 1e5, 100 clients, evaluation ratio 2) the
    # calibrated z is the smallest for epsilon_for's defaults, to a tight tolerance
    # (at 20 bits the rounding moves epsilon by ~1e-5 of itself).
    tol = 1e-7
    z = calibrate_noise(1.2, 1.0, 1, 1e-5, mechanism="ddgauss", eval_buckets=4, rel_tol=tol)
    _assert_smallest(lambda x: epsilon_for("ddgauss", x, 1.0, 1, 1e-5, eval_buckets=4), z,
                     1.2, tol)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, "3"])
def test_calibration_refuses_a_target_that_is_not_positive(bad: object) -> None:
    with pytest.raises(DPConfigError, match=f"target epsilon must be > 0, got {bad!r}"):
        calibrate_noise(bad, 1.0, 1, 1e-5)  # type: ignore[arg-type]


def test_calibration_refuses_mechanism_none() -> None:
    with pytest.raises(DPConfigError, match="'none' adds no noise"):
        calibrate_noise(1.0, 1.0, 1, 1e-5, mechanism="none")


# ------------------------------------------------------- Poisson subsampling (Zhu-Wang)


def _zhu_wang_ref(eps: list[float], q: float, a: int) -> float:
    """REFERENCES.md's Poisson-subsampled bound at integer order a, eps[i] = eps(i + 2)."""
    s = (1 - q) ** (a - 1) * (a * q - q + 1)
    s += math.comb(a, 2) * q**2 * (1 - q) ** (a - 2) * math.exp(eps[0])
    s += 3 * sum(math.comb(a, j) * (1 - q) ** (a - j) * q**j * math.exp((j - 1) * eps[j - 2])
                 for j in range(3, a + 1))
    return min(math.log(s) / (a - 1), eps[a - 2])


@pytest.mark.parametrize("z,q", [(1.0, 0.01), (0.8, 0.2), (1.0, 0.6), (2.0, 0.95)])
def test_poisson_subsampled_rdp_is_the_formula(z: float, q: float) -> None:
    orders = tuple(range(2, 31))
    eps = [a / (2 * z * z) for a in orders]
    got = subsampled_rdp(np.asarray(eps), q)
    want = [_zhu_wang_ref(eps, q, a) for a in orders]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a subset of orders gives the same values at those orders
    np.testing.assert_allclose(subsampled_rdp(np.asarray(eps), q, (2, 7, 30)),
                               [want[0], want[5], want[28]], rtol=1e-12)


@pytest.mark.parametrize("bad", [(2.5,), (2, 3.5), (True,), (1,), (31,)])
def test_subsampled_bounds_refuse_orders_that_are_not_integers_in_range(bad: tuple) -> None:
    eps = np.arange(2, 31) / 2.0
    for bound in (subsampled_rdp, wbk_subsampled_rdp):
        with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
            bound(eps, 0.1, bad)


def test_wbk_keeps_no_loss_at_zero_and_refuses_gamma_above_one() -> None:
    # a mechanism that leaks nothing still leaks nothing when sampled
    assert np.array_equal(wbk_subsampled_rdp(np.zeros(9), 0.3), np.zeros(9))
    with pytest.raises(ValueError, match="gamma must be in \\(0, 1\\], got 1.5"):
        wbk_subsampled_rdp(np.arange(2, 11) / 2.0, 1.5)


@pytest.mark.parametrize("gamma", [0.01, 0.2])
def test_wbk_second_term_when_eps2_is_large(gamma: float) -> None:
    # eps(2) = 60 > 50: log(e^eps(2) - 1) is taken without expm1 (it would still fit, but
    # the branch is where overflow is avoided at eps(2) > 709)
    eps = np.array([30.0 * a for a in range(2, 6)])
    got = wbk_subsampled_rdp(eps, gamma)
    want = [_wbk_ref(lambda x: 30.0 * x, a, gamma) for a in range(2, 6)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] < eps[0]  # the sampled bound, not the unsampled one, is what counts


# ------------------------------------------------------------ epsilon_for by hand

BY_HAND = [
    # every parameter away from its default; fixed-size sampling of 10 of 100
    dict(mechanism="ddgauss", z=1.3, q=0.1, rounds=4, delta=1e-6,
         run=dict(clients_per_round=10, bits=12, dim=1000, clip=0.5, min_contributors=8,
                  adaptive_clip=True, clipped_count_stddev=2.0, sampling="fixed",
                  population=100, corrupt=0.1, eval_buckets=4, eval_noise_ratio=3.0,
                  survivors=9)),
    # Poisson sampling: N = k / q inferred; skellam; the clipped count at its default std
    dict(mechanism="skellam", z=0.9, q=0.05, rounds=3, delta=1e-5,
         run=dict(clients_per_round=20, bits=14, dim=300, adaptive_clip=True,
                  eval_buckets=3)),
    # gaussian with the defaults of epsilon_for (bits 20, d = 1e5, 100 clients, C = 1)
    dict(mechanism="gaussian", z=1.1, q=1.0, rounds=5, delta=1e-5,
         run=dict(eval_buckets=2)),
    # the exact Gaussian (PLD accountant)
    dict(mechanism="gaussian", z=1.1, q=1.0, rounds=5, delta=1e-5,
         run=dict(accountant="pld", bits=16, dim=2000, clients_per_round=20)),
]


def _by_hand(mechanism: str, z: float, q: float, rounds: int, delta: float,
             run: dict) -> PrivacyAccountant:
    """The accountant of that run written out: DPConfig with the run's fields (its own
    defaults otherwise), the plan for k devices and t shares, the event of the survivors,
    every round charged at the expected cohort k."""
    k = run.get("clients_per_round", 100)
    config = DPConfig(
        mechanism=mechanism, noise_multiplier=z, delta=delta,
        **{f: run[f] for f in ("bits", "clip", "adaptive_clip", "clipped_count_stddev",
                               "eval_buckets", "eval_noise_ratio") if f in run})
    t = run.get("min_contributors", k)
    c = corrupt_count(run.get("corrupt", 0.0), k)
    plan = EncodingPlan.create(config, run.get("dim", 100_000), k, t, corrupt=c)
    acc = PrivacyAccountant(config, q, run.get("accountant", "rdp"),
                            sampling=run.get("sampling", "poisson"),
                            population=run.get("population", round(k / q) if q < 1 else None),
                            corrupt_fraction=run.get("corrupt", 0.0))
    acc.compose(plan.privacy_event(run.get("survivors", t)), rounds,
                cohort=k if q < 1 else None)
    return acc


@pytest.mark.parametrize(
    "case", BY_HAND, ids=["ddgauss-fixed", "skellam-poisson", "gaussian", "gaussian-pld"])
def test_epsilon_for_is_the_accountant_composed_by_hand(case: dict) -> None:
    m, z, q, rounds, delta, run = (case[k] for k in ("mechanism", "z", "q", "rounds", "delta",
                                                     "run"))
    ref = _by_hand(m, z, q, rounds, delta, run).report()
    rep = epsilon_report(m, z, q, rounds, delta, **run)
    assert (rep.epsilon, rep.epsilon_amplified) == pytest.approx(
        (ref.epsilon, ref.epsilon_amplified), rel=1e-12)
    assert rep == ref  # and every other field of the report
    assert epsilon_for(m, z, q, rounds, delta, **run) == pytest.approx(
        ref.epsilon_amplified, rel=1e-12)
    assert epsilon_for(m, z, q, rounds, delta, amplified=False, **run) == pytest.approx(
        ref.epsilon, rel=1e-12)


APPROX = [
    dict(mechanism="skellam", z=1.1, q=0.1, rounds=3, delta=1e-6,
         run=dict(clients_per_round=10, bits=12, dim=500, clip=0.5, min_contributors=8,
                  adaptive_clip=True, clipped_count_stddev=2.0, population=100,
                  corrupt=0.1, eval_buckets=4, eval_noise_ratio=3.0, survivors=9)),
    # the defaults (100 clients a round, bits 20, d = 1e5, evaluation ratio 2)
    dict(mechanism="gaussian", z=0.9, q=0.5, rounds=4, delta=1e-5, run=dict(eval_buckets=2)),
]


@pytest.mark.parametrize("case", APPROX, ids=["skellam", "gaussian-defaults"])
def test_add_remove_approximation_is_the_accountants_composed_by_hand(case: dict) -> None:
    m, z, q, rounds, delta, run = (case[k] for k in ("mechanism", "z", "q", "rounds", "delta",
                                                     "run"))
    ref = _by_hand(m, z, q, rounds, delta, run).epsilon_amplified_approx()
    assert epsilon_amplified_approx(m, z, q, rounds, delta, **run) == pytest.approx(
        ref, rel=1e-12)


def test_add_remove_approximation_checks_the_population() -> None:
    with pytest.raises(DPConfigError, match="expects 15 devices per round"):
        epsilon_amplified_approx("skellam", 1.0, 0.1, 2, 1e-5, clients_per_round=10,
                                 population=150)


@pytest.mark.parametrize("bad,match", [
    (dict(rounds=0), "rounds must be an integer >= 1, got 0"),
    (dict(rounds=True), "rounds must be an integer >= 1, got True"),
    (dict(rounds=2.0), "rounds must be an integer >= 1, got 2.0"),
    (dict(clients_per_round=0), "clients per round must be an integer >= 1, got 0"),
    (dict(clients_per_round=True), "clients per round must be an integer >= 1, got True"),
    (dict(clients_per_round=1.5), "clients per round must be an integer >= 1, got 1.5"),
    (dict(delta=0.0), r"delta must be in \(0, 1\), got 0.0"),
    (dict(delta=1.0), r"delta must be in \(0, 1\), got 1.0"),
    (dict(delta=True), r"delta must be in \(0, 1\), got True"),
    (dict(delta="1e-5"), r"delta must be in \(0, 1\), got '1e-5'"),
    (dict(q=0.3), "N = 33.3333, not an integer"),
    (dict(sampling="fixed", population=100, q=0.2), "needs sample rate 0.1, got 0.2"),
    (dict(population=150), "expects 15 devices per round"),
])
def test_run_parameters_are_refused_naming_the_value(bad: dict, match: str) -> None:
    args = dict(rounds=2, delta=1e-5, q=0.1, clients_per_round=10)
    args.update(bad)
    rounds, delta, q = args.pop("rounds"), args.pop("delta"), args.pop("q")
    with pytest.raises(DPConfigError, match=match):
        epsilon_for("gaussian", 1.0, q, rounds, delta, **args)


def test_one_client_a_round_and_corrupt_count_checks() -> None:
    assert math.isfinite(epsilon_for("gaussian", 1.0, 1.0, 1, 1e-5, clients_per_round=1,
                                     dim=100))
    assert corrupt_count(0.29, 100) == 29 and corrupt_count(0.5, 0) == 0
    for bad in (-1, True, 2.0):
        with pytest.raises(DPConfigError, match=f"n_sampled must be an integer >= 0, got {bad!r}"):
            corrupt_count(0.1, bad)  # type: ignore[arg-type]


def test_add_remove_approximation_of_no_round_is_zero() -> None:
    config, event = _gaussian_event(1.0, 1e-5)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    assert acc.epsilon_amplified_approx() == 0.0
    acc.compose(event, cohort=100)
    assert acc.epsilon_amplified_approx() > 0.0


# ------------------------------------------------------------------ budget decisions


def _accountant(sample_rate: float = 1.0, population: int | None = None):
    config, event = _gaussian_event(1.0, 1e-5)
    return PrivacyAccountant(config, sample_rate, population=population), event


def test_would_exceed_at_the_edges_of_the_budget() -> None:
    acc, event = _accountant()
    acc.compose(event)
    two = _accountant()[0]
    two.compose(event, 2)
    after = two.report().epsilon
    assert acc.would_exceed(event, 0.0)  # any round costs something; 0 is a valid budget
    assert acc.would_exceed(event, 0.5)
    assert not acc.would_exceed(event, after)  # reaching the budget exactly is allowed
    assert acc.would_exceed(event, math.nextafter(after, 0.0))
    assert acc.report().epsilon < after and acc.rounds == 1  # the check charged nothing
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match=f"budget must be >= 0, got {bad!r}"):
            acc.would_exceed(event, bad)


def test_would_exceed_unamplified_ignores_the_amplified_figure() -> None:
    acc, event = _accountant(0.01, population=10_000)
    acc.compose(event, 3, cohort=100)
    trial = _accountant(0.01, population=10_000)[0]
    trial.compose(event, 4, cohort=100)
    rep = trial.report()
    assert rep.epsilon_amplified < rep.epsilon
    budget = 0.5 * (rep.epsilon_amplified + rep.epsilon)
    assert acc.would_exceed(event, budget)  # default: the unamplified figure
    assert not acc.would_exceed(event, budget, cohort=100, amplified=True)
    with pytest.raises(DPConfigError, match="cohort"):
        acc.would_exceed(event, budget, amplified=True)


# ------------------------------------------------------------------ storage / replay


def test_pld_accountant_round_trips_through_its_dict() -> None:
    config, event = _gaussian_event(2.0, 1e-5)
    acc = PrivacyAccountant(config, 1.0, "pld")
    acc.compose(event, 3)
    again = PrivacyAccountant.from_dict(acc.to_dict())
    assert again.to_dict() == acc.to_dict()
    assert again.accountant == "pld"
    assert again.report() == acc.report()


def test_from_dict_refuses_bad_records_naming_them() -> None:
    config, event = _gaussian_event(2.0, 1e-5)
    d = PrivacyAccountant(config, 1.0).to_dict()
    with pytest.raises(DPConfigError, match="needs a dict, got list"):
        PrivacyAccountant.from_dict([d])  # type: ignore[arg-type]
    with pytest.raises(DPConfigError, match=r"unknown PrivacyAccountant keys: \['bogus'\]"):
        PrivacyAccountant.from_dict({**d, "bogus": 1})
    with pytest.raises(DPConfigError, match="events must be a list, got 'x'"):
        PrivacyAccountant.from_dict({**d, "events": "x"})


_NEEDS_N_FIXED = (
    "fixed-size sampling needs the population N (the number of devices the k per round are "
    "drawn from)"
)
_NEEDS_N_POISSON = (
    "Poisson sampling at q < 1 needs the population N: the amplified figure charges a "
    "round's cohort of s devices as s of N sampled without replacement (conditioned on the "
    "public cohort size)"
)


def test_a_missing_population_is_refused_with_why_it_is_needed() -> None:
    cfg = DPConfig()
    with pytest.raises(DPConfigError, match=exact(_NEEDS_N_FIXED)):
        PrivacyAccountant(cfg, 0.1, sampling="fixed")
    with pytest.raises(DPConfigError, match=exact(_NEEDS_N_POISSON)):
        PrivacyAccountant(cfg, 0.1)
    assert PrivacyAccountant(cfg, 1.0).population is None  # q = 1: nothing to amplify
    assert PrivacyAccountant(cfg, 1.0, population=1).population == 1


@pytest.mark.parametrize("bad", [True, 1.5, 0, -1, "10"])
def test_a_bad_population_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(DPConfigError,
                       match=exact(f"population must be an integer >= 1, got {bad!r}")):
        PrivacyAccountant(DPConfig(), 0.1, population=bad)  # type: ignore[arg-type]


def test_a_rounds_cohort_is_checked_against_its_survivors() -> None:
    """The amplified figure charges a round as its cohort of s of N: the cohort must be
    given under Poisson sampling, and can never be smaller than the survivors whose shares
    the event counts plus the colluders (else the charge would be for a smaller round)."""
    config, event = _gaussian_event(1.0, 1e-5)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    with pytest.raises(DPConfigError, match=exact(
            "Poisson sampling: give the round's cohort size (cohort=number of devices "
            "sampled); the amplified figure is conditioned on it")):
        acc.compose(event)
    nine = dataclasses.replace(event, n_shares=9, corrupt=1)
    acc.compose(nine, cohort=10)  # exactly the survivors and colluders
    with pytest.raises(DPConfigError,
                       match=r"^cohort=9 is smaller than the event's 10 survivors$"):
        acc.compose(nine, cohort=9)
    acc.compose(dataclasses.replace(event, n_shares=1, corrupt=0), cohort=1)  # one device
    with pytest.raises(DPConfigError,
                       match=r"^cohort=1 is smaller than the event's 2 survivors$"):
        acc.compose(dataclasses.replace(event, n_shares=1, corrupt=1), cohort=1)
    # a round with no honest share is charged (as no guarantee), never refused
    unprotected = dataclasses.replace(event, n_shares=0, corrupt=5)
    acc.compose(unprotected, cohort=1)
    assert acc.ledger[-1] == (unprotected, 1, 1)
    for bad in (0, True, 2.0):
        with pytest.raises(DPConfigError,
                           match=exact(f"cohort must be an integer >= 1, got {bad!r}")):
            acc.compose(event, cohort=bad)  # type: ignore[arg-type]
