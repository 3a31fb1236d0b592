"""dp.noise samplers against scalar reference implementations of their published
algorithms, fed the same keystream (issue 16).

The module promises that each sampler consumes the keystream in a fixed order (a function
of the parameters and of the values drawn), so a reference written from the papers and
from that documented order must give the same draws, value for value:
- discrete Gaussian: Canonne, Kamath, Steinke (NeurIPS 2020, Alg. 3), discrete Laplace
  candidates with scale t = floor(sigma) + 1, kept with prob.
  exp(-(|y| - sigma^2/t)^2 / (2 sigma^2));
- Poisson: inversion of the cdf for lam < 10, Hormann's PTRS (1993) for lam >= 10, with
  the log-pmf from math.lgamma;
- Skellam: the difference of two Poisson(mu/2) vectors, the first drawn in full first;
- Gaussian: Box-Muller on (0, 1] x [0, 1).
Rejection samplers fill their slots in a value-independent order: first one candidate per
slot, then, for the pending slots, passes of their number (>= 2048 pending) or one
oversampled pass of 2m + 64 candidates filling them in order. These known answers are
exact up to float64 rounding of log/exp, which moves a decision with probability ~1e-16
per candidate. Distribution tests with tolerances live in test_noise.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import mpmath
import numpy as np
import pytest

from dp import noise
from dp.noise import _poisson_log_pmf
from dp.prng import SecureRng
from tests.dp.test_mutation_encoding import _in_time

TWO_M53 = 2.0**-53


def _rng(*labels: object) -> SecureRng:
    return SecureRng.for_simulation(16, "tests/dp/test_mutation_noise", *map(str, labels))


def ref_fill(rng: SecureRng, n: int,
             cand: Callable[[SecureRng, int], list[tuple[float, bool]]]) -> list[float]:
    first = cand(rng, n)
    out = [v for v, _ in first]
    pending = [i for i, (_, ok) in enumerate(first) if not ok]
    while pending:
        m = len(pending)
        if m >= 2048:
            batch = cand(rng, m)
            still = []
            for slot, (v, ok) in zip(pending, batch, strict=True):
                if ok:
                    out[slot] = v
                else:
                    still.append(slot)
            pending = still
        else:
            accepted = [v for v, ok in cand(rng, 2 * m + 64) if ok]
            take = min(m, len(accepted))
            for j in range(take):
                out[pending[j]] = accepted[j]
            pending = pending[take:]
    return out


def ref_discrete_gaussian(rng: SecureRng, sigma: float, n: int) -> np.ndarray:
    t = math.floor(sigma) + 1

    def cand(rng: SecureRng, m: int) -> list[tuple[float, bool]]:
        w = [int(x) for x in rng.words(2 * m)]
        res = []
        for i in range(m):
            negative = w[i] & 1
            u = ((w[i] >> 11) + 1) * TWO_M53  # U on (0, 1]
            mag = math.floor(-t * math.log(u))  # P(mag >= k) = exp(-k / t)
            v = (w[m + i] >> 11) * TWO_M53
            ok = v < math.exp(-((mag - sigma**2 / t) ** 2) / (2 * sigma**2))
            ok = ok and not (negative and mag == 0)
            res.append((-mag if negative else mag, ok))
        return res

    return np.array(ref_fill(rng, n, cand), dtype=np.int64)


def ref_ptrs(rng: SecureRng, lam: float, n: int) -> np.ndarray:
    """Hormann (1993), PTRS, as in numpy's random_poisson_ptrs."""
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)

    def cand(rng: SecureRng, m: int) -> list[tuple[float, bool]]:
        w = [int(x) for x in rng.words(2 * m)]
        res = []
        for i in range(m):
            u = (w[i] >> 11) * TWO_M53 - 0.5
            v = (w[m + i] >> 11) * TWO_M53
            us = 0.5 - abs(u)
            if us == 0:
                res.append((0.0, False))
                continue
            k = math.floor((2 * a / us + b) * u + lam + 0.43)
            if us >= 0.07 and v <= vr:
                res.append((k, True))
            elif k < 0 or (us < 0.013 and v > us):
                res.append((k, False))
            else:
                lhs = math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)
                res.append((k, lhs <= -lam + k * loglam - math.lgamma(k + 1)))
        return res

    return np.array(ref_fill(rng, n, cand), dtype=np.int64)


def ref_poisson(rng: SecureRng, lam: float, n: int) -> np.ndarray:
    if lam == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if lam >= 10:
        return ref_ptrs(rng, lam, n)
    cdf, k, total = [], 0, 0.0
    while total < 1.0 and k < 200:
        total += math.exp(k * math.log(lam) - lam - math.lgamma(k + 1))
        cdf.append(total)
        k += 1
    out = []
    for w in rng.words(n):
        u = (int(w) >> 11) * TWO_M53
        out.append(next((j for j, c in enumerate(cdf) if u < c), len(cdf) - 1))
    return np.array(out, dtype=np.int64)


def ref_gaussian(rng: SecureRng, sigma: float, n: int) -> np.ndarray:
    half = (n + 1) // 2
    w = rng.words(2 * half) >> np.uint64(11)
    u1 = (w[:half].astype(np.float64) + 1.0) * TWO_M53  # (0, 1]
    u2 = w[half:].astype(np.float64) * TWO_M53  # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1)) * sigma
    theta = 2.0 * math.pi * u2
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]


# ------------------------------------------------------------------------ known answers


@pytest.mark.parametrize("sigma,n", [(1.0, 4000), (2.5, 300), (2.5, 1), (37.2, 500), (1e4, 200)])
def test_discrete_gaussian_equals_the_reference(sigma: float, n: int) -> None:
    got = noise.discrete_gaussian(_rng("dg", sigma), sigma, n)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref_discrete_gaussian(_rng("dg", sigma), sigma, n))


@pytest.mark.parametrize("lam,n", [(0.3, 500), (4.0, 500), (4.0, 1), (9.99, 300), (10.0, 3000),
                                   (37.5, 3000), (37.5, 1), (1e5, 1000)])
def test_poisson_equals_the_reference(lam: float, n: int) -> None:
    got, err = _in_time(lambda: noise.poisson(_rng("po", lam), lam, n))
    assert err is None
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref_poisson(_rng("po", lam), lam, n))


def test_poisson_draws_zero_at_lambda_ten() -> None:
    """P(X = 0) = e^-10 = 4.5e-5 at lam = 10 (PTRS): 400,000 draws hold 18 zeros on
    average; a sampler that never returns 0 has none (this key: see the count)."""
    x = noise.poisson(_rng("zeros"), 10.0, 400_000)
    assert 5 <= int(np.count_nonzero(x == 0)) <= 40
    assert x.min() == 0


@pytest.mark.parametrize("mu,n", [(3.0, 400), (50.0, 2000)])
def test_skellam_is_the_difference_of_two_poisson_vectors(mu: float, n: int) -> None:
    rng = _rng("sk", mu)
    first = ref_poisson(rng, mu / 2, n)
    second = ref_poisson(rng, mu / 2, n)
    np.testing.assert_array_equal(noise.skellam(_rng("sk", mu), mu, n), first - second)


@pytest.mark.parametrize("n", [1, 4, 5, 1000])
def test_gaussian_equals_box_muller(n: int) -> None:
    got = noise.gaussian(_rng("g", n), 2.5, n)
    assert got.dtype == np.float64 and got.shape == (n,)
    np.testing.assert_array_equal(got, ref_gaussian(_rng("g", n), 2.5, n))
    assert np.all(got != 0)


@pytest.mark.parametrize(
    "sampler,scale",
    [(noise.discrete_gaussian, 3.0), (noise.poisson, 4.0), (noise.skellam, 4.0),
     (noise.gaussian, 3.0)],
)
def test_zero_scale_or_size_consumes_no_keystream(sampler, scale: float) -> None:
    """An all-zero result draws nothing: the next draws are the stream's first words (the
    encoder's draw order, and so its reproducibility, rests on this)."""
    rng = _rng("zero")
    zero = sampler(rng, 0.0, 5)
    empty = sampler(rng, scale, 0)
    assert zero.shape == (5,) and not zero.any() and empty.shape == (0,)
    want = np.float64 if sampler is noise.gaussian else np.int64
    assert zero.dtype == want and empty.dtype == want
    np.testing.assert_array_equal(rng.words(4), _rng("zero").words(4))


def test_poisson_accepts_the_largest_lambda() -> None:
    lam = noise.MAX_POISSON_LAMBDA
    x = noise.poisson(_rng("max"), lam, 50)
    assert np.all(np.abs(x - lam) < 10 * math.sqrt(lam))
    with pytest.raises(ValueError, match=r"poisson: lam must be <= 2\^52, got 4503599627370497"):
        noise.poisson(_rng("max"), lam + 1, 1)


@pytest.mark.parametrize(
    "sampler,where,name",
    [(noise.discrete_gaussian, "discrete_gaussian", "sigma"), (noise.poisson, "poisson", "lam"),
     (noise.skellam, "skellam", "mu"), (noise.gaussian, "gaussian", "sigma")],
)
def test_bad_parameters_are_named_with_their_value(sampler, where: str, name: str) -> None:
    for bad in (-1.0, math.nan, math.inf, "2"):
        with pytest.raises(ValueError, match=rf"^{where}: {name} must be a finite number >= 0, "
                                             rf"got {re.escape(repr(bad))}$"):
            sampler(_rng("bad"), bad, 3)
    for size in (-1, 2.0, True):
        with pytest.raises(ValueError, match=rf"^{where}: size must be an integer >= 0, "
                                             rf"got {size!r}$"):
            sampler(_rng("bad"), 1.0, size)
    with pytest.raises(TypeError, match=where):
        sampler(np.random.default_rng(0), 1.0, 3)


# ---------------------------------------------------------------- the exact log-pmf


def test_poisson_log_pmf_beyond_its_table_is_minus_infinity() -> None:
    """Below lam = 16384 log(k!) comes from a table of 2^15 entries: the last entry is
    used as is, k beyond it has probability below 1e-300 and gets -inf."""
    lam = 100.0
    k = np.array([32766.0, 32767.0, 32768.0, 40000.0])
    got = _poisson_log_pmf(k, lam, math.log(lam))
    for kk, g in zip(k[:2], got[:2], strict=True):
        want = float(kk * mpmath.log(lam) - lam - mpmath.loggamma(kk + 1))
        assert g == pytest.approx(want, rel=1e-13)
    assert list(got[2:]) == [-math.inf, -math.inf]


def test_poisson_log_pmf_stirling_branch_small_k() -> None:
    """For lam >= 16384, log(k!) by Stirling's series from k = 10 on (error < 1e-12) and
    from the table below: compared with mpmath where the series is least accurate."""
    lam = float(2**20)
    k = np.arange(0.0, 30.0)
    got = _poisson_log_pmf(k, lam, math.log(lam))
    want = [float(kk * mpmath.log(lam) - lam - mpmath.loggamma(kk + 1)) for kk in k]
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-9)
