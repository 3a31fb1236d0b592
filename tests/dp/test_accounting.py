"""Accountant: Gaussian against dp-accounting, the distributed bounds against the papers'
formulas written out again here, calibration, dropouts, amplification."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from dp import (
    FINE_RDP_ORDERS,
    INTEGER_RDP_ORDERS,
    DPConfig,
    DPConfigError,
    EncodingPlan,
    PrivacyAccountant,
    calibrate_noise,
    epsilon_amplified_approx,
    epsilon_for,
    epsilon_report,
    subsampled_rdp,
)
from dp.mechanisms import ddgauss_rdp, skellam_rdp

# --------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize(
    "z,q,T,delta",
    [(1.0, 0.1, 100, 1e-5), (1.0, 0.01, 1000, 1e-5), (0.8, 0.05, 300, 1e-6), (2.5, 1.0, 50, 1e-5)],
)
def test_gaussian_matches_dp_accounting_rdp(z: float, q: float, T: int, delta: float) -> None:
    # Large dim/bits: the rounding inflation of Delta2 is then negligible, but not zero,
    # so compare with the event the plan reports (z_eff), and z_eff with z.
    config = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=40, delta=delta)
    plan = EncodingPlan.create(config, 1000, 100, 100)
    event = plan.privacy_event(100)
    n_pop = round(100 / q)
    acc = PrivacyAccountant(config, q, "rdp", population=n_pop)
    acc.compose(event, T, cohort=100)
    inner = dp_accounting.GaussianDpEvent(event.gaussian_noise_multiplier)
    # amplified: 100 of N without replacement, replace-one (sensitivity 2C: z / 2)
    ref = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    half = dp_accounting.GaussianDpEvent(event.gaussian_noise_multiplier / 2)
    ref.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(n_pop, 100, half), T
    ))
    expected = ref.get_epsilon(delta) if q < 1 else None
    if q < 1:
        assert acc.report().epsilon_amplified == pytest.approx(expected, rel=1e-9)
    # the add/remove approximation is dp-accounting's Poisson-sampled Gaussian
    approx = dp_accounting.rdp.RdpAccountant()
    approx.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, inner) if q < 1 else inner, T
        )
    )
    assert acc.epsilon_amplified_approx() == pytest.approx(approx.get_epsilon(delta), abs=1e-9)
    plain = dp_accounting.rdp.RdpAccountant()
    plain.compose(dp_accounting.SelfComposedDpEvent(inner, T))
    assert acc.report().epsilon == pytest.approx(plain.get_epsilon(delta), rel=1e-9)
    assert event.gaussian_noise_multiplier == pytest.approx(z, rel=1e-3)


def test_gaussian_reference_values() -> None:
    # REFERENCES.md's Poisson values are the add/remove approximation (not a guarantee
    # for distributed noise; see dp.accounting)
    assert epsilon_amplified_approx("gaussian", 1.0, 0.1, 100, 1e-5) == pytest.approx(
        7.899, abs=1e-3)
    assert epsilon_amplified_approx("gaussian", 1.0, 0.01, 1000, 1e-5) == pytest.approx(
        2.101, abs=1e-3)
    pld = epsilon_amplified_approx("gaussian", 1.0, 0.01, 1000, 1e-5, accountant="pld")
    assert pld == pytest.approx(1.83, abs=5e-3)


def test_unamplified_pld_is_the_exact_gaussian() -> None:
    # T Gaussian rounds compose into one Gaussian with z / sqrt(T); compare with
    # dp-accounting's PLD of the composed events at a size where it is fast.
    rep = epsilon_report("gaussian", 2.0, 0.5, 20, 1e-5, accountant="pld", bits=40, dim=1000)
    plan = EncodingPlan.create(
        DPConfig(mechanism="gaussian", noise_multiplier=2.0, bits=40), 1000, 100, 100
    )
    ref = dp_accounting.pld.PLDAccountant()
    ref.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(plan.privacy_event(100).gaussian_noise_multiplier), 20
        )
    )
    assert rep.epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.parametrize("mechanism", ["gaussian", "ddgauss", "skellam"])
def test_calibration_round_trip(mechanism: str) -> None:
    target = 3.0
    z = calibrate_noise(target, 0.02, 200, 1e-5, mechanism=mechanism, bits=20, dim=10_000)
    eps = epsilon_for(mechanism, z, 0.02, 200, 1e-5, bits=20, dim=10_000)
    assert eps <= target
    assert eps == pytest.approx(target, rel=2e-3)
    # a little less noise would miss the target
    assert epsilon_for(mechanism, z * 0.99, 0.02, 200, 1e-5, bits=20, dim=10_000) > target


def test_calibration_unreachable_raises() -> None:
    # 8 bits for 100 clients: rounding noise floors the discrete mechanisms' epsilon.
    with pytest.raises(DPConfigError, match="not reachable"):
        calibrate_noise(1e-3, 1.0, 10, 1e-5, mechanism="ddgauss", bits=8, dim=100_000)


# ----------------------------------------------------- distributed mechanisms, written again


def _ddg_rdp_ref(alpha: float, l2: float, l1: float, s_local: float, n: int, d: int) -> float:
    """Kairouz-Liu-Steinke 2021, Prop. 14, written out again with plain floats."""
    tau = 0.0
    for k in range(1, n):
        tau += math.exp(-2 * math.pi**2 * s_local**2 * k / (k + 1))
    tau *= 10
    sigma = math.sqrt(n) * s_local
    a, b = l2 / sigma, l1 / sigma
    return min(
        alpha / 2 * a * a + tau * d,
        alpha / 2 * (a * a + 2 * b * tau + tau * tau * d),
        alpha / 2 * (a + math.sqrt(d) * tau) ** 2,
    )


def _skellam_rdp_ref(alpha: float, l2: float, l1: float, mu: float) -> float:
    """Agarwal-Kairouz-Liu 2021 bound (REFERENCES.md form), written out again."""
    return alpha * l2 * l2 / (2 * mu) + min(
        ((2 * alpha - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu)
    )


def _subsampled_ref(eps, alpha: int, q: float) -> float:  # type: ignore[no-untyped-def]
    """Zhu & Wang 2019 Thm. 5 form, summed term by term (log-sum-exp by hand)."""
    logs = [
        (alpha - 1) * math.log1p(-q) + math.log(alpha * q - q + 1),
        math.log(math.comb(alpha, 2)) + 2 * math.log(q) + (alpha - 2) * math.log1p(-q) + eps(2),
    ]
    for ell in range(3, alpha + 1):
        logs.append(
            math.log(3)
            + math.log(math.comb(alpha, ell))
            + (alpha - ell) * math.log1p(-q)
            + ell * math.log(q)
            + (ell - 1) * eps(ell)
        )
    m = max(logs)
    val = (m + math.log(sum(math.exp(x - m) for x in logs))) / (alpha - 1)
    return min(val, eps(alpha))


def _wbk_ref(eps, alpha: int, gamma: float) -> float:  # type: ignore[no-untyped-def]
    """Wang-Balle-Kasiviswanathan (AISTATS 2019) Thm. 9 with eps(inf) = inf, the terms
    summed in log space by hand, min'd with eps(alpha)."""
    e2 = eps(2)
    logs = [
        0.0,
        math.log(math.comb(alpha, 2)) + 2 * math.log(gamma)
        + min(math.log(4) + math.log(math.expm1(e2)), e2 + math.log(2)),
    ]
    for j in range(3, alpha + 1):
        logs.append(math.log(2) + math.log(math.comb(alpha, j)) + j * math.log(gamma)
                    + (j - 1) * eps(j))
    m = max(logs)
    val = (m + math.log(sum(math.exp(x - m) for x in logs))) / (alpha - 1)
    return min(val, eps(alpha))


def _epsilon_ref(rdp_by_order: dict[float, float], delta: float) -> float:
    """RDP -> (eps, delta): Canonne-Kamath-Steinke / Asoodeh et al. conversion,
    eps = rdp + log1p(-1/a) - log(delta a) / (a - 1), minimised over the orders
    (dp-accounting skips orders <= 1.01, where the formula is unstable)."""
    return max(
        0.0,
        min(
            r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
            for a, r in rdp_by_order.items()
            if a > 1.01
        ),
    )


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
@pytest.mark.parametrize(
    "z,q,T,bits", [(1.0, 0.1, 100, 16), (0.7, 0.05, 50, 12), (2.0, 1.0, 5, 18)]
)
def test_distributed_epsilon_matches_formulas_written_again(
    mechanism: str, z: float, q: float, T: int, bits: int
) -> None:
    n, d_in, delta = 50, 5000, 1e-5
    config = DPConfig(mechanism=mechanism, noise_multiplier=z, bits=bits, delta=delta)
    plan = EncodingPlan.create(config, d_in, n, n)
    ev = plan.privacy_event(n)
    d = plan.padded_dim
    assert d == 8192
    # Delta2 / Delta1 from the rounding bound, written again
    c = config.clip / plan.gamma
    beta = config.beta
    l2 = min(
        c + math.sqrt(d),
        math.sqrt(c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)),
    )
    l1 = l2 * min(math.sqrt(d), l2)
    assert ev.l2_sensitivity == pytest.approx(l2, rel=1e-12)
    assert ev.l1_sensitivity == pytest.approx(l1, rel=1e-12)

    if mechanism == "ddgauss":

        def eps1(a: float) -> float:
            return _ddg_rdp_ref(a, l2, l1, plan.local_stddev, n, d)

        def eps_replace(a: float) -> float:  # replace-one: both sensitivities doubled
            return _ddg_rdp_ref(a, 2 * l2, 2 * l1, plan.local_stddev, n, d)

        # Kairouz-Liu-Steinke's bound holds at every real order: the fine grid.
        plain_orders: list[float] = [a for a in FINE_RDP_ORDERS if a <= 256]
    else:

        def eps1(a: float) -> float:
            return _skellam_rdp_ref(a, l2, l1, n * plan.local_stddev**2)

        def eps_replace(a: float) -> float:
            return _skellam_rdp_ref(a, 2 * l2, 2 * l1, n * plan.local_stddev**2)

        # Agarwal-Kairouz-Liu's is stated for integer orders only.
        plain_orders = [a for a in INTEGER_RDP_ORDERS if a <= 256]

    orders = [a for a in INTEGER_RDP_ORDERS if a <= 256]
    plain = {a: T * eps1(a) for a in plain_orders}
    # q = 1 samples nothing: the amplified figure is the unamplified one. Otherwise the
    # cohort of n is n of N = n / q without replacement (WBK at replace-one) ...
    amp = {a: T * _wbk_ref(eps_replace, a, q) for a in orders} if q < 1 else plain
    # ... and the add/remove approximation is Zhu-Wang's Poisson bound at zero-out.
    approx = {a: T * _subsampled_ref(eps1, a, q) for a in orders} if q < 1 else plain
    acc = PrivacyAccountant(config, q, population=round(n / q))
    acc.compose(ev, T, cohort=n)
    rep = acc.report()
    assert rep.epsilon == pytest.approx(_epsilon_ref(plain, delta), rel=1e-6)
    assert rep.epsilon_amplified == pytest.approx(_epsilon_ref(amp, delta), rel=1e-6)
    assert acc.epsilon_amplified_approx() == pytest.approx(_epsilon_ref(approx, delta),
                                                           rel=1e-6)


def test_subsampled_bound_is_above_the_exact_gaussian_and_close() -> None:
    # The generic Zhu-Wang bound applied to the Gaussian RDP must upper-bound the exact
    # Poisson-subsampled Gaussian RDP dp-accounting computes, and not be far above it.
    z, q = 1.0, 0.01
    alphas = np.arange(2, 65)
    generic = subsampled_rdp(alphas / (2 * z * z), q)
    from dp_accounting.rdp.rdp_privacy_accountant import (
        _compute_rdp_poisson_subsampled_gaussian,
    )

    exact = _compute_rdp_poisson_subsampled_gaussian(q, z, alphas)
    assert np.all(generic >= exact * (1 - 1e-9))
    assert np.all(generic[:20] <= 3.5 * exact[:20])
    assert np.array_equal(subsampled_rdp(alphas / 2.0, 1.0), alphas / 2.0)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_distributed_tends_to_gaussian_as_noise_grows(mechanism: str) -> None:
    # Same ratio Delta2 / sigma (Gaussian RDP alpha/2), growing noise in integer units:
    # the discrete bounds' excess over the Gaussian's must shrink to nothing.
    n, d = 10, 1000
    alphas = np.arange(2, 65)
    gaussian = alphas / 2.0
    gaps = []
    for scale in (0.25, 0.5, 1.0, 4.0, 64.0):
        sigma = math.sqrt(n) * scale
        l2 = sigma
        l1 = l2 * min(math.sqrt(d), l2)
        if mechanism == "ddgauss":
            rdp = ddgauss_rdp(alphas, l2, l1, scale, n, d)
        else:
            rdp = skellam_rdp(alphas, l2, l1, sigma**2)
        assert np.all(rdp >= gaussian * (1 - 1e-12))
        gaps.append(float(np.max(rdp / gaussian - 1)))
    assert all(a >= b for a, b in zip(gaps[:-1], gaps[1:], strict=True))
    assert gaps[0] > 0.01
    assert gaps[-1] < 1e-3


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam", "gaussian"])
def test_figures_near_the_gaussian_at_16_and_20_bits(mechanism: str) -> None:
    g = epsilon_for("gaussian", 1.0, 0.01, 1000, 1e-5, bits=20, dim=100_000)
    for bits in (16, 20):
        e = epsilon_for(mechanism, 1.0, 0.01, 1000, 1e-5, bits=bits, dim=100_000)
        assert g * 0.999 <= e <= g * 1.25


# ------------------------------------------------------------------ dropouts, ledger


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam", "gaussian"])
def test_survivors_are_charged(mechanism: str) -> None:
    config = DPConfig(mechanism=mechanism, noise_multiplier=1.0, bits=20)
    plan = EncodingPlan.create(config, 2000, 100, 60)
    eps = []
    for s in (40, 60, 80, 100):
        ev = plan.privacy_event(s)
        assert ev.n_shares == s
        acc = PrivacyAccountant(config, 0.1, population=1000)
        acc.compose(ev, 10, cohort=100)
        eps.append(acc.report().epsilon_amplified)
    assert eps[0] > eps[1] > eps[2] > eps[3]
    # with exactly t survivors the achieved noise multiplier is (at least) the target
    assert plan.privacy_event(60).noise_multiplier >= 1.0 - 1e-12


def test_ledger_composition_order_and_would_exceed() -> None:
    config = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=18)
    plan = EncodingPlan.create(config, 1000, 20, 15)
    a, b = plan.privacy_event(15), plan.privacy_event(20)
    acc1 = PrivacyAccountant(config, 0.2, population=100)
    acc2 = PrivacyAccountant(config, 0.2, population=100)
    for ev in (a, b, a):
        acc1.compose(ev, cohort=20)
    acc2.compose(a, 2, cohort=20)
    acc2.compose(b, cohort=20)
    assert acc1.report().epsilon == pytest.approx(acc2.report().epsilon, rel=1e-12)
    assert acc1.report().epsilon_amplified == pytest.approx(
        acc2.report().epsilon_amplified, rel=1e-12)
    assert acc1.report().rounds == 3
    now = acc1.report().epsilon
    assert acc1.would_exceed(a, now)  # one more round costs something
    assert not acc1.would_exceed(a, now * 10)
    amp = acc1.report().epsilon_amplified
    assert acc1.would_exceed(a, amp, cohort=20, amplified=True)
    assert not acc1.would_exceed(a, amp * 10, cohort=20, amplified=True)
    assert acc1.report().rounds == 3  # would_exceed left the ledger alone
    assert acc1.report().epsilon_amplified == amp
    assert PrivacyAccountant(config, 0.2, population=100).report().epsilon == 0.0


def test_report_to_dict_and_infinite_none() -> None:
    config = DPConfig(mechanism="none", noise_multiplier=0.0)
    plan = EncodingPlan.create(config, 100, 10, 10)
    acc = PrivacyAccountant(config, 0.5, population=20)
    acc.compose(plan.privacy_event(10), cohort=10)
    d = acc.report().to_dict()
    assert d["epsilon"] is None and d["epsilon_amplified"] is None
    assert set(d) >= {"epsilon", "epsilon_amplified", "delta", "rounds"}


def test_accountant_rejects_bad_input() -> None:
    config = DPConfig(mechanism="ddgauss")
    with pytest.raises(DPConfigError, match="pld"):
        PrivacyAccountant(config, 0.1, "pld")
    with pytest.raises(DPConfigError, match="1.5"):
        PrivacyAccountant(config, 1.5)
    with pytest.raises(DPConfigError, match="bogus"):
        PrivacyAccountant(config, 0.1, "bogus")
    other = EncodingPlan.create(DPConfig(mechanism="skellam"), 10, 5, 5).privacy_event(5)
    with pytest.raises(ValueError, match="skellam"):
        PrivacyAccountant(config, 0.1, population=1000).compose(other, cohort=5)
    with pytest.raises(DPConfigError, match="rounds"):
        epsilon_for("gaussian", 1.0, 0.1, 0, 1e-5)


def test_adaptive_clipping_is_charged_with_effective_multiplier() -> None:
    z, n = 1.2, 100
    config = DPConfig(mechanism="gaussian", noise_multiplier=z, bits=32, adaptive_clip=True)
    plan = EncodingPlan.create(config, 4096, n, n)
    ev = plan.privacy_event(n)
    sigma_b = n / 20  # Andrew et al.'s default
    z_update = ev.noise_stddev / ev.l2_sensitivity
    expected = (z_update**-2 + (2 * sigma_b) ** -2) ** -0.5
    assert ev.gaussian_noise_multiplier == pytest.approx(expected, rel=1e-3)
    base = EncodingPlan.create(
        DPConfig(mechanism="gaussian", noise_multiplier=z, bits=32), 4096, n, n
    ).privacy_event(n)
    for mech in ("ddgauss", "skellam"):
        cfg = DPConfig(mechanism=mech, noise_multiplier=z, bits=32, adaptive_clip=True)
        p = EncodingPlan.create(cfg, 4096, n, n)
        with_count = p.privacy_event(n).rdp(np.arange(2, 10))
        cfg0 = DPConfig(mechanism=mech, noise_multiplier=z, bits=32)
        without = EncodingPlan.create(cfg0, 4096, n, n).privacy_event(n).rdp(np.arange(2, 10))
        assert np.all(with_count > without)
    assert ev.gaussian_noise_multiplier < base.gaussian_noise_multiplier


def test_epsilon_for_charges_the_clipped_count() -> None:
    n = 100
    plain = epsilon_for("gaussian", 1.0, 0.01, 500, 1e-5, clients_per_round=n)
    with_count = epsilon_for("gaussian", 1.0, 0.01, 500, 1e-5, clients_per_round=n,
                             adaptive_clip=True)
    assert with_count > plain
    plan = EncodingPlan.create(DPConfig(mechanism="gaussian", noise_multiplier=1.0), 100_000,
                               n, n)
    z_update = plan.privacy_event(n).gaussian_noise_multiplier
    z_eff = (z_update**-2 + (2 * n / 20) ** -2) ** -0.5
    ref = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    ref.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            10_000, n, dp_accounting.GaussianDpEvent(z_eff / 2)), 500))
    assert with_count == pytest.approx(ref.get_epsilon(1e-5), rel=1e-4)
