"""The Gaussian's bound under sampling without replacement (Wang, Balle, Kasiviswanathan,
arXiv 1808.00087, Thm. 27 with Cor. 10 between integer orders), checked against a reference
written out again here: the forward differences of exp((m - 1) eps(m)) in 80-digit decimal
arithmetic, the sum over terms as a log-sum-exp of Python floats with `math.comb`. Also:
where float rounding dominates the differences (large sigma, high orders), the bound is
still dp-accounting 0.4.3's figure; its arguments are refused naming the bad value; it
warns nothing; the accountant's amplified Gaussian at the whole population is the
unsampled replace-one figure; the accountant's caches stay bounded and change no figure.
"""

from __future__ import annotations

import functools
import math
import warnings
from decimal import Decimal, localcontext

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_sample_wor_gaussian

import dp.accounting
from dp import RDP_ORDERS, DPConfig, EncodingPlan, PrivacyAccountant
from dp.accounting import _wor_gaussian_rdp

# dp-accounting 0.4.3 uses the forward differences up to this order, the plain term above
_EXACT_MAX_ORDER = 256
_DIGITS = 80


@functools.cache
def _log_forward_diffs_exact(sigma: float, top: int) -> tuple[float, ...]:
    """log Delta^k h(0) for k = 0..top, h(m) = exp((m - 1) eps(m)) = exp(m (m - 1) /
    (2 sigma^2)), by repeated differencing with `_DIGITS` significant digits: enough for
    the cases below (600 digits give the same floats), not for sigma = 30 at order 256,
    whose differences cancel over ~200 digits. h(m) = E[W^m] for a lognormal W with
    E[W] = 1, so Delta^k h(0) = E[(W - 1)^k]: Delta h(0) = 0 exactly, and every difference
    here is >= 0 (checked: a negative one, or too few digits, fails the assert)."""
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        ctx.Emax = 10**9
        two_s2 = 2 * Decimal(sigma) ** 2
        row = [(Decimal(m * (m - 1)) / two_s2).exp() for m in range(top + 1)]
        out = [row[0]]
        for _ in range(top):
            row = [b - a for a, b in zip(row, row[1:], strict=False)]
            out.append(row[0])
        assert all(d >= 0 for d in out)
        return tuple(float(d.ln()) if d > 0 else -math.inf for d in out)


def _wbk27_log_moment(sigma: float, gamma: float, a: int) -> float:
    """log A_a, WBK Thm. 27 for the Gaussian (eps(j) = j / (2 sigma^2)):
    A_a = 1 + gamma^2 C(a,2) min(4 (e^eps(2) - 1), 2 e^eps(2))
          + sum_{j=3}^{a} gamma^j C(a,j) min(4 sqrt(D(2 floor(j/2)) D(2 ceil(j/2))),
                                              2 e^((j-1) eps(j))),
    D(k) = Delta^k h(0); above order 256 only the second member of the min (as
    dp-accounting does)."""
    if a == 1:
        return 0.0
    lg = math.log(gamma)
    eps2 = 1.0 / sigma**2
    second = min(math.log(4 * math.expm1(eps2)), math.log(2) + eps2)
    terms = [0.0, 2 * lg + math.log(math.comb(a, 2)) + second]
    diffs = _log_forward_diffs_exact(sigma, 2 * ((a + 1) // 2)) if a <= _EXACT_MAX_ORDER else None
    for j in range(3, a + 1):
        bound = math.log(2) + (j - 1) * j / (2 * sigma**2)
        if diffs is not None:
            lo, hi = diffs[2 * (j // 2)], diffs[2 * ((j + 1) // 2)]
            bound = min(bound, math.log(4) + 0.5 * (lo + hi))
        terms.append(j * lg + math.log(math.comb(a, j)) + bound)
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _wbk27_rdp(sigma: float, gamma: float, orders: tuple[float, ...]) -> np.ndarray:
    """eps(a) = log A_a / (a - 1), log A interpolated linearly between the integer orders
    around a fractional a (WBK Cor. 10)."""
    out = []
    for a in orders:
        lo, hi = math.floor(a), math.ceil(a)
        t = a - lo
        log_a = (1 - t) * _wbk27_log_moment(sigma, gamma, lo) + t * _wbk27_log_moment(
            sigma, gamma, hi
        )
        out.append(log_a / (a - 1))
    return np.array(out)


@pytest.mark.parametrize(
    "sigma,gamma,orders",
    [
        # small sigma: the top terms dominate, the plain term binds at high j
        (0.3, 0.1, (1.5, 2.0, 3.0, 4.5, 20.0, 63.0, 256.0)),
        (1.0, 0.01, (2.0, 2.5, 3.0, 7.3, 20.0, 128.0)),
        # 256: the largest order with forward differences; 512: the plain terms only
        (2.0, 0.3, (2.0, 3.0, 4.0, 10.5, 63.0, 256.0, 512.0)),
        (5.0, 0.9, (2.0, 3.0, 5.0, 20.0, 63.0, 256.0)),
        # the fewest differences: orders up to 3 (Delta^4), and orders up to 2 (none)
        (1.0, 0.5, (3.0,)),
        (1.0, 0.5, (2.5,)),
        (1.0, 0.5, (1.5, 2.0)),
        # large sigma: orders low enough for float differences to stay exact
        (30.0, 0.5, (2.0, 3.0, 4.0, 6.5, 8.0, 12.0)),
        (100.0, 0.99, (2.0, 3.0, 4.0, 5.0, 6.0)),
    ],
)
def test_wor_bound_is_wbk_theorem_27_in_high_precision(
    sigma: float, gamma: float, orders: tuple[float, ...]
) -> None:
    np.testing.assert_allclose(
        _wor_gaussian_rdp(sigma, gamma, orders), _wbk27_rdp(sigma, gamma, orders), rtol=1e-9
    )


@pytest.mark.parametrize(
    "sigma,gamma,orders",
    [
        (8.0, 0.99, (63.0,)),
        (10.0, 0.99, (20.0, 63.0)),
        (30.0, 0.5, (20.0, 63.0, 128.0)),
        (30.0, 0.99, (20.0, 63.0)),
        (100.0, 0.99, (8.0, 20.0)),
        (1000.0, 0.5, (4.0, 8.0, 20.0)),
    ],
)
def test_wor_bound_is_dp_accountings_where_rounding_dominates(
    sigma: float, gamma: float, orders: tuple[float, ...]
) -> None:
    """Above sigma ~ 8 the high forward differences cancel far below float precision:
    dp-accounting's log-space differencing (and ours, the same operations) then returns
    rounding noise with mixed signs, and its figure there is looser than Thm. 27
    computed exactly (at sigma = 30, gamma = 0.5, order 63: 0.095 against 0.027). The
    accountant's promise is dp-accounting's figure for the event, so it must be
    reproduced in this regime too, rounding included."""
    mine = _wor_gaussian_rdp(sigma, gamma, orders)
    ref = np.asarray(_compute_rdp_sample_wor_gaussian(gamma, sigma, list(orders)))
    np.testing.assert_allclose(mine, ref, rtol=1e-9)


@pytest.mark.parametrize(
    "sigma,gamma,orders,match",
    [
        (0.0, 0.5, (2.0,), r"sigma must be finite and > 0, got 0\.0"),
        (-1.0, 0.5, (2.0,), r"sigma must be finite and > 0, got -1\.0"),
        (math.inf, 0.5, (2.0,), r"sigma must be finite and > 0, got inf"),
        (math.nan, 0.5, (2.0,), r"sigma must be finite and > 0, got nan"),
        (1.0, 0.0, (2.0,), r"gamma must be in \(0, 1\], got 0\.0"),
        (1.0, 1.5, (2.0,), r"gamma must be in \(0, 1\], got 1\.5"),
        (1.0, 2.0, (2.0,), r"gamma must be in \(0, 1\], got 2\.0"),
        (1.0, 0.5, (2.0, math.inf), r"orders must be finite and > 1, got \(2\.0, inf\)"),
        (1.0, 0.5, (math.nan,), r"orders must be finite and > 1, got \(nan,\)"),
        (1.0, 0.5, (1.0, 3.0), r"orders must be finite and > 1, got \(1\.0, 3\.0\)"),
    ],
)
def test_wor_bound_refuses_bad_arguments_naming_them(
    sigma: float, gamma: float, orders: tuple[float, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _wor_gaussian_rdp(sigma, gamma, orders)


def test_amplified_gaussian_rounds_warn_nothing() -> None:
    """Delta h(0) = h(1) - h(0) = 0 exactly (log 0 in the differencing): the accountant's
    amplified Gaussian figure is still computed without a numpy RuntimeWarning."""
    config = DPConfig(mechanism="gaussian", noise_multiplier=1.0, bits=40)
    event = EncodingPlan.create(config, 1000, 100, 100).privacy_event(100)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.compose(event, 10, cohort=117)
        bound = _wor_gaussian_rdp(3.0, 0.1, RDP_ORDERS)
    assert math.isfinite(acc.report().epsilon_amplified)
    assert np.all(np.isfinite(bound))


def test_whole_population_cohort_is_the_unsampled_replace_one_gaussian() -> None:
    """A cohort of all N devices amplifies nothing: the amplified figure is dp-accounting's
    unsampled Gaussian at the replace-one noise multiplier z_eff / 2 (here about 4, where
    the bound is min'd with alpha / (2 sigma^2) and nothing else)."""
    config = DPConfig(mechanism="gaussian", noise_multiplier=8.0, bits=40)
    event = EncodingPlan.create(config, 1000, 100, 100).privacy_event(100)
    sigma = event.replace_one().gaussian_noise_multiplier
    assert sigma > 3
    acc = PrivacyAccountant(config, 0.1, population=1000)
    acc.compose(event, 50, cohort=1000)
    ref = dp_accounting.rdp.RdpAccountant(
        orders=list(RDP_ORDERS),
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
    )
    ref.compose(dp_accounting.GaussianDpEvent(sigma), 50)
    assert acc.report().epsilon_amplified == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)


@pytest.mark.parametrize("mechanism", ["gaussian", "skellam"])
def test_caches_stay_bounded_and_change_no_figure(
    mechanism: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Poisson round has its own cohort, so the per-(event, cohort) cache would grow
    with the run: it is cleared at `_CACHE_LIMIT` entries (here 2) and never holds more,
    and figures read from it, or recomputed after it was cleared, are the ones an
    accountant with no reuse at all computes."""
    config = DPConfig(mechanism=mechanism, noise_multiplier=1.0, bits=20)
    event = EncodingPlan.create(config, 1000, 80, 80).privacy_event(80)
    cohorts = (90, 100, 110, 120, 100, 90, 130)
    fresh = []
    for s in cohorts:
        one = PrivacyAccountant(config, 0.1, population=1000)
        one.compose(event, cohort=s)
        fresh.append(one)
    monkeypatch.setattr(dp.accounting, "_CACHE_LIMIT", 2)
    acc = PrivacyAccountant(config, 0.1, population=1000)
    for s in cohorts:
        acc.compose(event, cohort=s)
        assert len(acc._amp_cache) <= 2
    again = PrivacyAccountant(config, 0.1, population=1000)
    for s in cohorts:
        again.compose(event, cohort=s)
    assert acc.report() == again.report()
    # the composed amplified RDP is the sum of the rounds' own, computed without the cache
    total = np.zeros_like(acc._rdp_amp)
    for one in fresh:
        total = total + one._rdp_amp
    assert np.array_equal(acc._rdp_amp, total)
