"""Vectorized noise samplers fed only by `dp.prng.SecureRng` (AES-256-CTR keystream).

Each sampler is exact up to float64 arithmetic ("exact as floats"): it is an exact
algorithm whose only departures from the target law come from rounding of float64
operations (log, exp, and the 2^-53 granularity of the uniforms), i.e. relative errors
of order 1e-16 in probabilities. tensorflow-privacy's samplers make the same relaxation
(see its `discrete_gaussian_utils`); what changes here is the source of the bits (a
256-bit-keyed CSPRNG instead of a TF/numpy seed) and the speed (whole arrays at once,
rejection loops over the still-pending entries only).

- `discrete_gaussian(rng, sigma, n)`: N_Z(0, sigma^2), P(x) ∝ exp(-x^2 / (2 sigma^2)),
  by Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020, Alg. 3: candidates from the discrete Laplace with scale
  t = floor(sigma) + 1, each accepted with probability
  exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)).
- `poisson(rng, lam, n)`: inversion of a precomputed cdf for lam < 10; for lam >= 10
  Hörmann's PTRS transformed rejection ("The transformed rejection method for generating
  Poisson random variables", Insurance: Math. & Econ. 12, 1993), with the log-pmf
  evaluated in a cancellation-free form so it stays exact for lam up to 2^52.
- `skellam(rng, mu, n)`: Poisson(mu/2) - Poisson(mu/2), variance mu (Agarwal, Kairouz,
  Liu, NeurIPS 2021).
- `gaussian(rng, sigma, n)`: continuous N(0, sigma^2) by the Box-Muller transform.

Tails: the uniforms are never below 2^-53, so the discrete Laplace candidates are
capped at 36.7 t and Box-Muller at 8.57 sigma (probability mass beyond: below 1e-16 per
draw); everything else follows the target law.

The order in which each sampler consumes the keystream is fixed (a function of the
parameters and of the values drawn), so the same key gives the same noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from dp.prng import SecureRng, require_secure_rng

__all__ = ["discrete_gaussian", "poisson", "skellam", "gaussian", "MAX_POISSON_LAMBDA"]

_TWO_M53 = 2.0**-53
_TWO_53 = 2.0**53
_LOG_2_53 = 53.0 * math.log(2.0)
_FLOAT_SIGN = np.uint64(1 << 63)
#: Below this many pending slots, one oversampled pass finishes a rejection sampler.
_SMALL_PASS = 2048
#: Above this, float64 cannot represent every integer near lam (2^53) with room to spare.
MAX_POISSON_LAMBDA = float(2**52)
#: PTRS for lam >= this, table inversion below (Hörmann's and numpy's threshold).
_PTRS_MIN_LAMBDA = 10.0
#: Stirling's series for log(k!) is used from this k on (error below 1e-12 there).
_STIRLING_MIN = 10
#: Size of the log(k!) table (covers lam + 100 sqrt(lam) for every lam below
#: _DIRECT_LOG_PMF_MAX).
_LOG_FACT_TABLE = 1 << 15
#: Below this lam, log P(k) = k log(lam) - lam - log(k!) loses at most lam * 1e-16.
_DIRECT_LOG_PMF_MAX = 16384.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check(rng: object, param: float, name: str, n: int, where: str) -> tuple[SecureRng, int]:
    require_secure_rng(rng, where)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{where}: size must be an integer >= 0, got {n!r}")
    if not (isinstance(param, (int, float, np.integer, np.floating)) and math.isfinite(param)
            and param >= 0):
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {param!r}")
    return rng, int(n)  # type: ignore[return-value]


def _top53_consuming(words: np.ndarray) -> np.ndarray:
    """The top 53 bits of each word as float64 integers in [0, 2^53) (exact). The words
    array (which the caller owns) is shifted in place: one allocation."""
    words >>= np.uint64(11)
    return words.view(np.int64).astype(np.float64)


def _fill_by_rejection(
    rng: SecureRng, n: int, candidates: Callable[[SecureRng, int], tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """n accepted values of a rejection sampler, as float64 integers.

    `candidates(rng, m)` draws m i.i.d. candidates and their accept flags. Which value
    lands in which slot never depends on the values, so the slots are i.i.d. draws of
    the target: the first pass gives every slot one candidate, later passes redraw only
    the slots still pending; once few remain, one oversampled pass fills them in order
    (this saves the long tail of tiny passes)."""
    out, keep = candidates(rng, n)
    pending = np.flatnonzero(~keep)
    while pending.size:
        m = pending.size
        if m >= _SMALL_PASS:
            vals, keep = candidates(rng, m)
            out[pending[keep]] = vals[keep]
            pending = pending[~keep]
        else:
            vals, keep = candidates(rng, 2 * m + 64)
            vals = vals[keep]
            take = min(m, vals.shape[0])
            out[pending[:take]] = vals[:take]
            pending = pending[take:]
    return out


def discrete_gaussian(rng: SecureRng, sigma: float, n: int) -> np.ndarray:
    """`n` i.i.d. draws of the discrete Gaussian N_Z(0, sigma^2) (np.int64).

    Canonne-Kamath-Steinke rejection sampling from the discrete Laplace with scale
    t = floor(sigma) + 1. A discrete Laplace candidate is a sign bit and a geometric
    magnitude floor(-t log U), U uniform on (0, 1] (so P(X >= k) = exp(-k/t) exactly),
    with (negative, 0) rejected so that 0 is not counted twice; it is then kept with
    probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)) (acceptance 0.43 at sigma = 1,
    0.76 for sigma >= 30). Each candidate costs two 64-bit words: the first gives U (top
    53 bits) and the sign (bit 0), the second the acceptance uniform (top 53 bits).
    """
    rng, n = _check(rng, sigma, "sigma", n, "discrete_gaussian")
    if sigma == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    sigma = float(sigma)
    t = math.floor(sigma) + 1.0
    shift = sigma * sigma / t
    inv_two_var = 1.0 / (2.0 * sigma * sigma)

    def candidates(rng: SecureRng, m: int) -> tuple[np.ndarray, np.ndarray]:
        w = rng.words(2 * m)
        sign = w[:m] << np.uint64(63)  # bit 0 of the first word, moved to a float's sign
        top = _top53_consuming(w)
        mag, second = top[:m], top[m:]
        # -t log U with U = (k + 1) 2^-53: -t (log(k + 1) - 53 log 2)
        mag += 1.0
        np.log(mag, out=mag)
        mag -= _LOG_2_53
        mag *= -t
        np.floor(mag, out=mag)
        # accept iff V < exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)), V = k' 2^-53
        p = mag - shift
        p *= p
        p *= -inv_two_var
        np.exp(p, out=p)
        p *= _TWO_53
        keep = second < p
        bits = mag.view(np.uint64)
        bits |= sign
        keep &= bits != _FLOAT_SIGN  # -0.0: (negative, 0) is rejected
        return mag, keep

    return _fill_by_rejection(rng, n, candidates).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _poisson_cdf(lam: float) -> np.ndarray:
    """cdf[k] = P(X <= k) for X ~ Poisson(lam), lam < 10, up to a tail below 1e-30."""
    kmax = int(lam + 20.0 * math.sqrt(lam) + 60.0)
    k = np.arange(kmax + 1, dtype=np.float64)
    logp = k * math.log(lam) - lam - np.array([math.lgamma(x + 1.0) for x in k])
    cdf = np.cumsum(np.exp(logp))
    cdf.flags.writeable = False
    return cdf


def _one_plus_x_log1p_minus_x(x: np.ndarray) -> np.ndarray:
    """h(x) = (1 + x) log1p(x) - x to full relative precision: the direct formula loses
    digits to cancellation for small |x| (h(x) ~ x^2/2), so there the series
    h(x) = sum_{n>=2} (-1)^n x^n / (n (n-1)) is used (|x| < 0.01: 9 terms reach 1e-18)."""

    def series(xs: np.ndarray) -> np.ndarray:
        acc = np.zeros_like(xs)
        for n in range(10, 1, -1):  # Horner in x, from the highest term
            acc *= -xs
            acc += 1.0 / (n * (n - 1))
        acc *= xs * xs
        return acc

    small = np.abs(x) < 0.01
    if small.all():  # the usual case for large lam
        return series(x)
    out = (1.0 + x) * np.log1p(x) - x
    if small.any():
        out[small] = series(x[small])
    return out


@functools.cache
def _log_factorials() -> np.ndarray:
    """log(k!) for k < _LOG_FACT_TABLE (float64, from math.lgamma)."""
    table = np.array([math.lgamma(k + 1.0) for k in range(_LOG_FACT_TABLE)])
    table.flags.writeable = False
    return table


def _poisson_log_pmf(k: np.ndarray, lam: float, log_lam: float) -> np.ndarray:
    """log P(X = k) for X ~ Poisson(lam), lam >= 10, k >= 0 (float64 integers).

    For lam < _DIRECT_LOG_PMF_MAX: k log(lam) - lam - log(k!) with log(k!) from a table
    (k beyond the table has probability below 1e-300 there; it gets -inf). Above, that
    sum cancels catastrophically (terms near 1e12 for a result near 1), so with
    log(k!) = k log k - k + log(2 pi k)/2 + s(k) (Stirling's series s, k >= 10):
    log P = -lam h((k - lam)/lam) - log(2 pi k)/2 - s(k), h(x) = (1+x) log1p(x) - x,
    with h evaluated without cancellation (`_one_plus_x_log1p_minus_x`)."""
    if lam < _DIRECT_LOG_PMF_MAX:
        table = _log_factorials()
        idx = np.minimum(k, _LOG_FACT_TABLE - 1).astype(np.intp)
        out = k * log_lam
        out -= lam
        out -= table[idx]
        out[k >= _LOG_FACT_TABLE] = -np.inf
        return out
    kb = np.maximum(k, float(_STIRLING_MIN))
    inv = 1.0 / kb
    inv2 = inv * inv
    series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))
    # -k log1p(x) + (k - lam) = -lam h(x), x = (k - lam) / lam, h(x) = (1+x) log1p(x) - x
    x = (kb - lam) / lam
    out = -lam * _one_plus_x_log1p_minus_x(x)
    out -= 0.5 * np.log(kb)
    out -= series
    out -= _HALF_LOG_2PI
    small = k < _STIRLING_MIN  # P(X < 10) < 1e-300 for such lam: never accepted anyway
    if np.any(small):
        ks = k[small]
        out[small] = ks * log_lam - lam - _log_factorials()[ks.astype(np.intp)]
    return out


def _poisson_ptrs(rng: SecureRng, lam: float, n: int) -> np.ndarray:
    """Hörmann's PTRS (as in numpy's `random_poisson_ptrs`), vectorized: each candidate
    uses two words (U - 1/2 and V); about 90% of candidates are accepted at lam >= 10,
    most of them by the quick test that needs no log-pmf."""
    slam = math.sqrt(lam)
    log_lam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)

    def candidates(rng: SecureRng, m: int) -> tuple[np.ndarray, np.ndarray]:
        uv = _top53_consuming(rng.words(2 * m))
        uv *= _TWO_M53
        u, v = uv[:m], uv[m:]
        u -= 0.5
        us = np.abs(u)
        np.subtract(0.5, us, out=us)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            k = np.divide(2.0 * a, us)
            k += b
            k *= u
            k += lam + 0.43
            np.floor(k, out=k)
            keep = us >= 0.07
            keep &= v <= vr
            # the rest (10-65% of candidates, fewer as lam grows) takes the full test
            idx = np.flatnonzero(~keep)
            km, um, vm = k[idx], us[idx], v[idx]
            ok = (km >= 0) & np.isfinite(km) & ~((um < 0.013) & (vm > um))
            idx, km, um, vm = idx[ok], km[ok], um[ok], vm[ok]
            if idx.size:
                lhs = np.log(vm) + log_inv_alpha - np.log(a / (um * um) + b)
                keep[idx] = lhs <= _poisson_log_pmf(km, lam, log_lam)
        return k, keep

    return _fill_by_rejection(rng, n, candidates).astype(np.int64)


def poisson(rng: SecureRng, lam: float, n: int) -> np.ndarray:
    """`n` i.i.d. Poisson(lam) draws (np.int64); lam in [0, 2^52]."""
    rng, n = _check(rng, lam, "lam", n, "poisson")
    if lam > MAX_POISSON_LAMBDA:
        raise ValueError(f"poisson: lam must be <= 2^52, got {lam!r}")
    lam = float(lam)
    if lam == 0.0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    if lam >= _PTRS_MIN_LAMBDA:
        return _poisson_ptrs(rng, lam, n)
    cdf = _poisson_cdf(lam)
    k = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(k, cdf.shape[0] - 1).astype(np.int64)


def skellam(rng: SecureRng, mu: float, n: int) -> np.ndarray:
    """`n` i.i.d. Skellam draws Poisson(mu/2) - Poisson(mu/2) (np.int64): mean 0,
    variance mu. The first Poisson vector is drawn in full before the second."""
    rng, n = _check(rng, mu, "mu", n, "skellam")
    half = float(mu) / 2.0
    return poisson(rng, half, n) - poisson(rng, half, n)


def gaussian(rng: SecureRng, sigma: float, n: int) -> np.ndarray:
    """`n` i.i.d. N(0, sigma^2) draws (float64) by Box-Muller: for U1 on (0, 1] and U2 on
    [0, 1), sqrt(-2 ln U1) (cos 2 pi U2, sin 2 pi U2) are two independent N(0, 1)."""
    rng, n = _check(rng, sigma, "sigma", n, "gaussian")
    if sigma == 0 or n == 0:
        return np.zeros(n, dtype=np.float64)
    half = (n + 1) // 2
    top = _top53_consuming(rng.words(2 * half))
    r, theta = top[:half], top[half:]
    r += 1.0
    r *= _TWO_M53  # U1 on (0, 1]
    np.log(r, out=r)
    r *= -2.0
    np.sqrt(r, out=r)
    r *= float(sigma)
    theta *= 2.0 * math.pi * _TWO_M53  # 2 pi U2, U2 on [0, 1)
    out = np.empty(2 * half, dtype=np.float64)
    np.multiply(r, np.cos(theta), out=out[:half])
    np.multiply(r, np.sin(theta), out=out[half:])
    return out[:n]
