"""dp.noise samplers against their exact laws (chi-square / KS with fixed keys, so the
tests are stable), their moments, their keys, and tensorflow-privacy's sampler.

Tolerances: with fixed keys each test is deterministic; the thresholds are those of a
test that a correct sampler fails with probability 1e-4 (p-values) or that is 5 or 6
standard errors wide (moments, standard errors from the sample size and the exact
fourth moment). Each test also shows it can fail: the same statistic rejects a slightly
wrong law.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath
import numpy as np
import pytest
from scipy import stats

from dp import noise
from dp.noise import _poisson_log_pmf
from dp.prng import SecureRng

N = 200_000
P_MIN = 1e-4


def rng_for(*labels: str | int) -> SecureRng:
    return SecureRng.for_simulation(2024, "tests/dp/test_noise", *labels)


def chi2_pvalue(samples: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray],
                edges: np.ndarray) -> float:
    """Chi-square goodness of fit of integer samples, bins (-inf, e0], (e0, e1], ...,
    (e_last, inf), expected counts from the exact cdf."""
    edges = np.unique(np.asarray(edges, dtype=np.int64))
    probs = np.diff(np.concatenate(([0.0], cdf(edges), [1.0])))
    observed = np.bincount(np.searchsorted(edges, samples, side="left"),
                           minlength=edges.size + 1)
    expected = probs * samples.size
    assert expected.min() >= 5, "bins too thin for the chi-square approximation"
    stat = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(stat, edges.size))


# ----------------------------------------------------------------- discrete Gaussian


def dgauss_cdf(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    """Exact cdf of N_Z(0, sigma^2): by summation for small sigma; for large sigma the
    lattice sum equals the continuous Gaussian's up to exp(-2 pi^2 sigma^2) (Poisson
    summation), so P(X <= k) = Phi((k + 1/2) / sigma) to double precision."""
    if sigma > 20:
        return lambda k: stats.norm.cdf((k + 0.5) / sigma)
    half = int(math.ceil(40 * sigma)) + 20
    support = np.arange(-half, half + 1)
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2))
    cum = np.cumsum(pmf / pmf.sum())
    return lambda k: cum[np.clip(k + half, 0, 2 * half)]


def dgauss_moments(sigma: float) -> tuple[float, float]:
    """(variance, fourth moment) of N_Z(0, sigma^2)."""
    half = int(math.ceil(40 * sigma)) + 20
    x = np.arange(-half, half + 1, dtype=np.float64)
    p = np.exp(-(x**2) / (2 * sigma**2))
    p /= p.sum()
    return float(np.sum(p * x**2)), float(np.sum(p * x**4))


def bin_edges(mean: float, sd: float, cdf: Callable[[np.ndarray], np.ndarray],
              bins: int = 40) -> np.ndarray:
    """Integer bin edges near the quantiles j/bins of a law of this mean and sd (normal
    approximation), keeping those whose exact cdf is in (1e-3, 1 - 1e-3): no bin is
    thin."""
    edges = np.unique(np.floor(mean + sd * stats.norm.ppf(np.arange(1, bins) / bins)))
    edges = edges.astype(np.int64)
    c = cdf(edges)
    return edges[(c > 1e-3) & (c < 1 - 1e-3)]


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.7, 30.0, 1000.0, 2.0**20])
def test_discrete_gaussian_matches_its_pmf(sigma: float) -> None:
    x = noise.discrete_gaussian(rng_for("dgauss", repr(sigma)), sigma, N)
    assert x.dtype == np.int64 and x.shape == (N,)
    cdf = dgauss_cdf(sigma)
    edges = bin_edges(0.0, sigma, cdf)
    assert chi2_pvalue(x, cdf, edges) > P_MIN
    # the test has power: a law 3% wider (or, at sigma < 1, a quite different one) fails
    wrong = dgauss_cdf(sigma * 1.03 if sigma >= 1 else sigma * 1.3)
    assert chi2_pvalue(x, wrong, edges) < 1e-6
    var, m4 = dgauss_moments(sigma) if sigma < 100 else (sigma**2, 3 * sigma**4)
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    assert abs(x.var() - var) < 6 * math.sqrt((m4 - var**2) / N)


def test_discrete_gaussian_agrees_with_tensorflow_privacy() -> None:
    """Two-sample chi-square against tensorflow-privacy's sampler (integer scale)."""
    import tensorflow as tf
    from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils

    sigma, n = 5, 100_000
    tf.random.set_seed(5)
    theirs = discrete_gaussian_utils.sample_discrete_gaussian(
        tf.constant(sigma, tf.int64), tf.constant([n], tf.int32), tf.int64).numpy()
    ours = noise.discrete_gaussian(rng_for("tf"), sigma, n)
    edges = np.arange(-12, 12)
    table = np.stack([np.bincount(np.searchsorted(edges, s, side="left"),
                                  minlength=edges.size + 1) for s in (ours, theirs)])
    assert stats.chi2_contingency(table)[1] > P_MIN
    shifted = np.stack([table[0], np.bincount(np.searchsorted(edges, theirs + 1),
                                              minlength=edges.size + 1)])
    assert stats.chi2_contingency(shifted)[1] < 1e-6  # the test sees a shift by one


# -------------------------------------------------------------------------- Poisson


@pytest.mark.parametrize(
    "lam",
    # inversion below 10, PTRS from 10; the PTRS log-pmf switches form at 16384
    [0.05, 0.7, 4.0, 9.999, 10.0, 15.0, 120.0, 16383.0, 16384.0, 1e6, 2.0**39],
)
def test_poisson_matches_its_pmf(lam: float) -> None:
    x = noise.poisson(rng_for("poisson", repr(lam)), lam, N)
    assert x.dtype == np.int64 and x.min() >= 0
    cdf = lambda k: stats.poisson.cdf(k, lam)  # noqa: E731
    edges = bin_edges(lam, math.sqrt(lam), cdf)
    assert chi2_pvalue(x, cdf, edges) > P_MIN
    # the test sees the mean moved by 5% of a standard deviation
    wrong = lambda k: stats.poisson.cdf(k, lam + 0.05 * math.sqrt(lam))  # noqa: E731
    assert chi2_pvalue(x, wrong, edges) < 1e-6
    assert abs(x.mean() - lam) < 5 * math.sqrt(lam / N)
    assert abs(x.var() - lam) < 6 * math.sqrt((lam + 2 * lam**2) / N)


@pytest.mark.parametrize("lam", [10.0, 15.0, 1e4, 16383.0, 16384.0, 1e8, 2.0**39, 2.0**52])
def test_poisson_log_pmf_is_exact_where_it_matters(lam: float) -> None:
    """The PTRS acceptance test compares against log P(k): checked to 1e-9 against
    50-digit arithmetic over the whole range PTRS asks about (k from 0 to lam + 40 sd)."""
    sd = math.sqrt(lam)
    k = np.unique(np.concatenate((
        np.arange(0, 12), np.floor(lam + sd * np.linspace(-40, 40, 81)).clip(0))))
    mine = _poisson_log_pmf(k.astype(np.float64), lam, math.log(lam))
    mpmath.mp.dps = 50
    for ki, got in zip(k, mine, strict=True):
        ref = float(int(ki) * mpmath.log(lam) - lam - mpmath.loggamma(int(ki) + 1))
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-9), (lam, ki)


# -------------------------------------------------------------------------- Skellam


@pytest.mark.parametrize("mu", [0.5, 8.0, 30.0, 2000.0, 2.0**40])
def test_skellam_matches_its_pmf(mu: float) -> None:
    x = noise.skellam(rng_for("skellam", repr(mu)), mu, N)
    assert x.dtype == np.int64
    if mu < 1e6:  # scipy's skellam cdf; the Poisson test above covers lam = 2^39
        cdf = lambda k: stats.skellam.cdf(k, mu / 2, mu / 2)  # noqa: E731
        edges = bin_edges(0.0, math.sqrt(mu), cdf)
        assert chi2_pvalue(x, cdf, edges) > P_MIN
        wrong = lambda k: stats.skellam.cdf(k, mu * 0.53, mu * 0.53)  # noqa: E731
        assert chi2_pvalue(x, wrong, edges) < 1e-6
    # mean 0, variance mu, fourth moment mu + 3 mu^2 (cumulants k2 = k4 = mu)
    assert abs(x.mean()) < 5 * math.sqrt(mu / N)
    assert abs(x.var() - mu) < 6 * math.sqrt((mu + 2 * mu**2) / N)


# ------------------------------------------------------------------------- Gaussian


@pytest.mark.parametrize("sigma", [1e-3, 1.0, 5000.0])
def test_gaussian_matches_its_cdf(sigma: float) -> None:
    x = noise.gaussian(rng_for("gauss", repr(sigma)), sigma, N + 1)  # odd: one unpaired
    assert x.dtype == np.float64 and x.shape == (N + 1,)
    assert stats.kstest(x / sigma, "norm").pvalue > P_MIN
    assert stats.kstest(x / (sigma * 1.03), "norm").pvalue < 1e-6
    assert abs(x.mean()) < 5 * sigma / math.sqrt(N)
    assert abs(x.var() / sigma**2 - 1) < 6 * math.sqrt(2 / N)


# ------------------------------------------------------------------ keys and inputs

SAMPLERS = {
    "discrete_gaussian": lambda r, n: noise.discrete_gaussian(r, 40.0, n),
    "poisson_small": lambda r, n: noise.poisson(r, 3.0, n),
    "poisson": lambda r, n: noise.poisson(r, 3e4, n),
    "skellam": lambda r, n: noise.skellam(r, 1e3, n),
    "gaussian": lambda r, n: noise.gaussian(r, 40.0, n),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_key_same_noise_other_key_other_noise(name: str) -> None:
    draw = SAMPLERS[name]
    key = bytes(range(32))
    a = draw(SecureRng(key), 5000)
    assert np.array_equal(a, draw(SecureRng(key), 5000))
    b = draw(SecureRng(bytes(reversed(range(32)))), 5000)
    assert not np.array_equal(a, b)
    # independent of each other: correlation within 5 standard errors of 0
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(5000)
    # one generator keeps going: a second draw is new noise
    rng = SecureRng(key)
    draw(rng, 5000)
    assert not np.array_equal(a, draw(rng, 5000))


def test_zero_scale_and_empty_draws() -> None:
    rng = SecureRng.for_simulation(0)
    for sampler in (noise.discrete_gaussian, noise.poisson, noise.skellam, noise.gaussian):
        assert not sampler(rng, 0.0, 7).any()
        assert sampler(rng, 1.0, 0).shape == (0,)


@pytest.mark.parametrize("sampler", [noise.discrete_gaussian, noise.poisson, noise.skellam,
                                     noise.gaussian])
def test_bad_inputs_are_refused(sampler: Callable[..., np.ndarray]) -> None:
    rng = SecureRng.for_simulation(0)
    for bad in (-1.0, math.nan, math.inf, "3"):
        with pytest.raises(ValueError, match=repr(bad)[:3]):
            sampler(rng, bad, 3)
    for size in (-1, 2.0, True):
        with pytest.raises(ValueError, match="size"):
            sampler(rng, 1.0, size)
    with pytest.raises(TypeError, match="numpy"):
        sampler(np.random.default_rng(0), 1.0, 3)
    with pytest.raises(ValueError, match="2\\^52"):
        noise.poisson(rng, 2.0**53, 3)
