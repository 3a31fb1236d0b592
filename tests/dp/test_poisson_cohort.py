"""Poisson sampling accounted conditionally on each round's public cohort size (issue 12,
item 1): a cohort of s of the N devices is charged as s of N sampled without replacement
under replace-one adjacency (dp.accounting's module docstring has the argument). Checks:
the vectorized Gaussian bound against dp-accounting's own function, equality with the
fixed-size figure when every cohort is k, monotonicity in the cohort, per-round
composition, replay from `to_dict`, the required arguments, calibration at the expected
cohort, and the bound against the Renyi divergence of the real mechanism computed by
numerical integration."""

from __future__ import annotations

import functools
import json
import math
import random

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_sample_wor_gaussian

from dp import (
    RDP_ORDERS,
    REPLACE_ONE,
    ZERO_OUT,
    DPConfig,
    DPConfigError,
    EncodingPlan,
    PrivacyAccountant,
    calibrate_noise,
    epsilon_amplified_approx,
    epsilon_for,
    epsilon_report,
)
from dp.accounting import _wor_gaussian_rdp

REPLACE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _wor_reference(z: float, n: int, cohorts: tuple[int, ...], delta: float) -> float:
    """dp-accounting: one SampledWithoutReplacementDpEvent(N, s_r, GaussianDpEvent(z)) per
    round under REPLACE_ONE."""
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=REPLACE)
    for s in cohorts:
        acc.compose(
            dp_accounting.SampledWithoutReplacementDpEvent(n, s, dp_accounting.GaussianDpEvent(z))
        )
    return float(acc.get_epsilon(delta))


@functools.cache
def _reference_self_composed(z: float, n: int, k: int, rounds: int) -> float:
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=REPLACE)
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(n, k, dp_accounting.GaussianDpEvent(z)),
        rounds))
    return float(acc.get_epsilon(1e-5))


@functools.cache
def _gaussian_event(z: float, k: int = 100):  # type: ignore[no-untyped-def]
    config = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=40)
    return config, EncodingPlan.create(config, 1000, k, k).privacy_event(k)


# ------------------------------------------------------------ the Gaussian's bound


@pytest.mark.parametrize(
    "sigma,gamma", [(0.3, 0.1), (0.5, 0.01), (1.0, 0.1), (4.0, 0.3), (30.0, 0.001), (2.0, 0.95)]
)
def test_vectorized_bound_is_dp_accountings_function(sigma: float, gamma: float) -> None:
    """`_wor_gaussian_rdp` is dp-accounting 0.4.3's `_compute_rdp_sample_wor_gaussian`
    (WBK Thm. 27, Cor. 10 between integer orders, the plain term above order 256)."""
    mine = _wor_gaussian_rdp(sigma, gamma, RDP_ORDERS)
    ref = np.asarray(_compute_rdp_sample_wor_gaussian(gamma, sigma, RDP_ORDERS))
    np.testing.assert_allclose(mine, ref, rtol=1e-9)
    np.testing.assert_allclose(_wor_gaussian_rdp(sigma, 1.0, (2.0, 7.5)),
                               np.array([2.0, 7.5]) / (2 * sigma**2), rtol=1e-15)
    with pytest.raises(ValueError, match="gamma"):
        _wor_gaussian_rdp(sigma, 0.0, (2.0,))
    with pytest.raises(ValueError, match="orders"):
        _wor_gaussian_rdp(sigma, gamma, (1.0,))


def _renyi_numeric(log_p: np.ndarray, log_p2: np.ndarray, dx: float, alpha: float) -> float:
    """D_alpha(P || P2) from log densities on a grid (log-sum-exp of the integrand)."""
    log_f = alpha * log_p + (1 - alpha) * log_p2
    m = float(np.max(log_f))
    return (m + math.log(float(np.sum(np.exp(log_f - m))) * dx)) / (alpha - 1)


@pytest.mark.parametrize("z,n,s", [(1.0, 4, 2), (2.0, 10, 3), (0.7, 6, 5)])
def test_bound_holds_for_the_real_mechanism_given_the_cohort_size(z: float, n: int, s: int) -> None:
    """The mechanism itself, by numerical integration: N devices with scalar records in
    [-C, C], Poisson sampling conditioned on |S| = s (uniform s-subsets), the sum of the
    cohort's records plus honest noise of std z C. Replace device 0's record C by -C (the
    others 0): the output densities are (1 - g) N(0, v) + g N(+-C, v), g = s / N. Their
    Renyi divergence must lie below the bound charged (noise multiplier z / 2 at 2C)."""
    c, sd = 1.0, z
    # P(device 0 in S | |S| = s), computed from the subsets rather than assumed
    in_s = math.comb(n - 1, s - 1) / math.comb(n, s)
    assert in_s == pytest.approx(s / n, rel=1e-12)
    x = np.linspace(-40 * sd - 2, 40 * sd + 2, 400_001)
    dx = float(x[1] - x[0])

    def log_normal(mu: float) -> np.ndarray:
        return -((x - mu) ** 2) / (2 * sd * sd) - math.log(sd * math.sqrt(2 * math.pi))

    log_p = np.logaddexp(math.log1p(-in_s) + log_normal(0.0), math.log(in_s) + log_normal(c))
    log_p2 = np.logaddexp(math.log1p(-in_s) + log_normal(0.0), math.log(in_s) + log_normal(-c))
    orders = (2.0, 3.0, 4.5, 8.0)
    bound = _wor_gaussian_rdp(z / 2, s / n, orders)
    for a, b in zip(orders, bound, strict=True):
        real = _renyi_numeric(log_p, log_p2, dx, a)
        assert 0 < real <= b * (1 + 1e-9), (a, real, b)


# ------------------------------------------------------------ the accountant


def test_every_cohort_at_k_is_the_fixed_size_figure() -> None:
    """z = 2, N = 1000, k = 100, T = 100: Poisson rounds that each sampled 100 devices
    are charged exactly the fixed-size figure, 14.0538 (GaussianDpEvent(z_eff / 2) at
    2C, dp-accounting's 100-of-1000 event), under replace-one."""
    config, event = _gaussian_event(2.0)
    poisson = PrivacyAccountant(config, 0.1, population=1000)
    fixed = PrivacyAccountant(config, 0.1, sampling="fixed", population=1000)
    poisson.compose(event, 100, cohort=100)
    fixed.compose(event, 100)
    p, f = poisson.report(), fixed.report()
    assert p.epsilon_amplified == f.epsilon_amplified
    assert p.epsilon_amplified == pytest.approx(14.0538, abs=1e-4)
    z_half = event.gaussian_noise_multiplier / 2
    assert p.epsilon_amplified == pytest.approx(
        _reference_self_composed(z_half, 1000, 100, 100), rel=1e-9)
    assert (p.adjacency, p.adjacency_amplified) == (ZERO_OUT, REPLACE_ONE)
    assert p.epsilon == f.epsilon  # the unamplified zero-out figure does not change
    # the library functions charge the expected cohort k = qN = 100 (N = k / q)
    assert epsilon_for("gaussian", 2.0, 0.1, 100, 1e-5, bits=40, dim=1000) == (
        epsilon_for("gaussian", 2.0, 0.1, 100, 1e-5, bits=40, dim=1000, sampling="fixed",
                    population=1000)
    )
    # while the old Poisson add/remove figure is reachable only as the named approximation
    assert poisson.epsilon_amplified_approx() < p.epsilon_amplified
    assert epsilon_amplified_approx("gaussian", 1.0, 0.1, 100, 1e-5) == pytest.approx(
        7.899, abs=1e-3)


@pytest.mark.parametrize("mechanism", ["gaussian", "ddgauss", "skellam"])
def test_a_larger_cohort_costs_more(mechanism: str) -> None:
    config = DPConfig(mechanism=mechanism, noise_multiplier=1.0, bits=20)
    event = EncodingPlan.create(config, 5000, 80, 80).privacy_event(80)
    figures = []
    for s in (80, 100, 120, 1000):
        acc = PrivacyAccountant(config, 0.1, population=1000)
        acc.compose(event, 20, cohort=s)
        figures.append(acc.report())
    amp = [r.epsilon_amplified for r in figures]
    assert amp[0] < amp[1] < amp[2] < amp[3]
    assert len({r.epsilon for r in figures}) == 1  # the zero-out figure ignores the cohort
    # the whole population sampled: no amplification left, replace-one at 2C (the
    # discrete bounds' amplified figure is converted over integer orders only: above it)
    whole = PrivacyAccountant(config, 1.0)
    whole.compose(event.replace_one(), 20)
    if mechanism == "gaussian":
        assert amp[3] == pytest.approx(whole.report().epsilon, rel=1e-9)
    else:
        assert amp[3] >= whole.report().epsilon


def test_rounds_are_charged_at_their_own_cohort() -> None:
    """Three rounds with cohorts 90, 100, 117 compose to dp-accounting's three events."""
    config, event = _gaussian_event(1.5, 80)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    for s in (90, 100, 117):
        acc.compose(event, cohort=s)
    z_half = event.gaussian_noise_multiplier / 2
    assert acc.report().epsilon_amplified == pytest.approx(
        _wor_reference(z_half, 1000, (90, 100, 117), 1e-5), rel=1e-9)
    assert [c for _, _, c in acc.ledger] == [90, 100, 117]


@pytest.mark.parametrize("mechanism", ["gaussian", "ddgauss"])
def test_replay_from_to_dict_gives_the_same_epsilon(mechanism: str) -> None:
    """What the server stores per round (plan dict, survivors, cohort) replays to the same
    figures, and so does the accountant's own ledger through JSON."""
    config = DPConfig(mechanism=mechanism, noise_multiplier=1.0, bits=18, adaptive_clip=True)
    rng = random.Random(7)  # cohort sizes and survivors for a test, not for privacy
    acc = PrivacyAccountant(config, 0.05, population=1000, corrupt_fraction=0.1)
    stored = []
    for _ in range(12):
        s = sum(rng.random() < 0.05 for _ in range(1000))
        plan = EncodingPlan.create(config, 2000, s, max(2, s // 2), corrupt=s // 10)
        n = rng.randint(max(2, s // 2), s)
        acc.compose(plan.privacy_event(n), cohort=s)
        stored.append((json.loads(json.dumps(plan.to_dict())), n, s))
    again = PrivacyAccountant.from_dict(json.loads(json.dumps(acc.to_dict())))
    assert again.report() == acc.report()
    assert again.ledger == acc.ledger
    rows = PrivacyAccountant(config, 0.05, population=1000, corrupt_fraction=0.1)
    for plan_dict, n, s in stored:
        rows.compose(EncodingPlan.from_dict(plan_dict).privacy_event(n), cohort=s)
    assert rows.report() == acc.report()
    assert len({s for _, _, s in stored}) > 3  # the cohorts really varied


def test_ledger_without_cohort_replays_only_where_none_is_needed() -> None:
    config, event = _gaussian_event(2.0)
    legacy = {"config": config.to_dict(), "sample_rate": 0.1, "accountant": "rdp",
              "population": 1000, "corrupt_fraction": 0.0, "events": [[event.to_dict(), 3]]}
    with pytest.raises(DPConfigError, match="cohort"):
        PrivacyAccountant.from_dict({**legacy, "sampling": "poisson"})
    fixed = PrivacyAccountant.from_dict({**legacy, "sampling": "fixed"})
    assert fixed.ledger == ((event, 3, 100),)
    whole = PrivacyAccountant.from_dict({**legacy, "sample_rate": 1.0, "sampling": "poisson"})
    assert whole.ledger == ((event, 3, None),)
    with pytest.raises(DPConfigError, match="event, count, cohort"):
        PrivacyAccountant.from_dict({**legacy, "events": [[event.to_dict(), 3, 100, 1]]})


def test_the_cohort_is_required_and_checked() -> None:
    config, event = _gaussian_event(2.0)
    with pytest.raises(DPConfigError, match="population"):
        PrivacyAccountant(config, 0.1)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    with pytest.raises(DPConfigError, match="cohort"):
        acc.compose(event)
    for bad in (0, -3, 2.5, True, "100"):
        with pytest.raises(DPConfigError, match="cohort"):
            acc.compose(event, cohort=bad)  # type: ignore[arg-type]
    with pytest.raises(DPConfigError, match="1001.*1000"):
        acc.compose(event, cohort=1001)
    with pytest.raises(DPConfigError, match="survivors"):
        acc.compose(event, cohort=99)  # the event has 100 survivors
    assert acc.rounds == 0 and acc.ledger == ()
    with pytest.raises(DPConfigError, match="cohort"):
        acc.would_exceed(event, 10.0, amplified=True)
    assert not acc.would_exceed(event, 1e6)  # the zero-out check needs no cohort
    fixed = PrivacyAccountant(config, 0.1, sampling="fixed", population=1000)
    with pytest.raises(DPConfigError, match="k=100"):
        fixed.compose(event, cohort=120)
    fixed.compose(event, cohort=100)
    fixed.compose(event)
    assert fixed.ledger == ((event, 2, 100),)
    with pytest.raises(DPConfigError, match="Poisson"):
        fixed.epsilon_amplified_approx()
    # q = 1 samples nothing: no population, no cohort needed
    PrivacyAccountant(config, 1.0).compose(event)


def test_would_exceed_charges_the_given_cohort() -> None:
    config, event = _gaussian_event(2.0)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    acc.compose(event, 10, cohort=100)
    now = acc.report().epsilon_amplified
    ten_more = PrivacyAccountant(config, 0.1, population=1000)
    ten_more.compose(event, 10, cohort=100)
    ten_more.compose(event, cohort=150)
    budget = ten_more.report().epsilon_amplified - 1e-9
    assert acc.would_exceed(event, budget, cohort=150, amplified=True)
    assert not acc.would_exceed(event, budget, cohort=100, amplified=True)
    assert acc.report().epsilon_amplified == now and acc.rounds == 10


def test_pld_refuses_the_conditional_figure_but_keeps_the_approximation() -> None:
    rep = epsilon_report("gaussian", 1.0, 0.01, 1000, 1e-5, accountant="pld")
    assert math.isinf(rep.epsilon_amplified) and "without replacement" in (
        rep.amplified_refused or "")
    assert math.isfinite(rep.epsilon)
    assert epsilon_amplified_approx("gaussian", 1.0, 0.01, 1000, 1e-5,
                                    accountant="pld") == pytest.approx(1.83, abs=5e-3)


def test_calibration_uses_the_expected_cohort() -> None:
    """`calibrate_noise` for Poisson charges k = qN every round: the z it returns meets
    the target exactly for that accountant; a run whose cohorts vary around k lands near
    the target (here within 3 %), the larger cohorts costing more than the smaller save."""
    kw = dict(bits=20, dim=10_000, population=1000, corrupt=0.1)
    z = calibrate_noise(8.0, 0.1, 50, 1e-5, mechanism="ddgauss", **kw)  # type: ignore[arg-type]
    assert epsilon_for("ddgauss", z, 0.1, 50, 1e-5, **kw) == pytest.approx(  # type: ignore[arg-type]
        8.0, rel=2e-3)
    config = DPConfig(mechanism="ddgauss", noise_multiplier=z, bits=20)
    rng = random.Random(3)
    acc = PrivacyAccountant(config, 0.1, population=1000, corrupt_fraction=0.1)
    for _ in range(50):
        s = sum(rng.random() < 0.1 for _ in range(1000))
        plan = EncodingPlan.create(config, 10_000, s, s, corrupt=s // 10)
        acc.compose(plan.privacy_event(s), cohort=s)
    assert acc.report().epsilon_amplified == pytest.approx(8.0, rel=0.03)
    with pytest.raises(DPConfigError, match="not 120"):
        epsilon_for("ddgauss", 1.0, 0.1, 5, 1e-5, population=1000, clients_per_round=120)
    with pytest.raises(DPConfigError, match="population"):
        epsilon_for("ddgauss", 1.0, 0.03, 5, 1e-5)  # 100 / 0.03 devices is no population
