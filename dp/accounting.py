"""Privacy accountant for the distributed mechanisms, composed over rounds.

Mechanisms (one round, unsampled):
- "gaussian": the Gaussian mechanism with z_eff from `RoundPrivacy.gaussian_noise_multiplier`
  (dp-accounting's RDP, or the exact Gaussian for the PLD accountant).
- "ddgauss": the RDP bound of Kairouz, Liu, Steinke (ICML 2021), proven at every real
  order > 1: the unamplified figure is taken over `FINE_RDP_ORDERS`.
- "skellam": the RDP bound of Agarwal, Kairouz, Liu (NeurIPS 2021), integer orders.
- "none": infinite epsilon.

Two figures, always both, each with the adjacency it holds under (`EpsilonReport`):

- `epsilon`, no amplification, *zero-out* adjacency (`ZERO_OUT`): one device's record
  replaced by zeros, its noise share kept. Valid against a server that knows who was
  sampled and who survived (ours does: it samples and runs the protocol).
- `epsilon_amplified`, amplified by the sampling the server actually does, *replace-one*
  adjacency (`REPLACE_ONE`: N devices, public; one device's data replaced by another's),
  valid only if the adversary does not learn who took part. Every round r is charged as
  s_r of N devices sampled without replacement, gamma_r = s_r / N:
  - `sampling="fixed"`: s_r = k every round.
  - `sampling="poisson"`: s_r = the round's actual cohort size, `compose(..., cohort=s_r)`
    (the figure is conditioned on the public cohort sizes; the argument is below).
  The round's bound: for the Gaussian, Wang-Balle-Kasiviswanathan's Theorem 27 (arXiv
  1808.00087) for the subsampled Gaussian as dp-accounting 0.4.3 computes it for
  `SampledWithoutReplacementDpEvent(N, s, GaussianDpEvent(z_eff / 2))` under
  `NeighboringRelation.REPLACE_ONE` (`_wor_gaussian_rdp`: the same algorithm vectorized;
  the tests hold it to dp-accounting's own function within 1e-9, and dp-accounting's
  scalar loop costs about 0.5 s per (z, s) pair, which Poisson rounds rarely repeat); for
  the discrete mechanisms, the general upper bound of WBK (AISTATS 2019, Thm. 9;
  `wbk_subsampled_rdp`) on the mechanism's RDP at the replace-one sensitivities.

Why 2C under replace-one: the bounds need the base mechanism's RDP between two cohorts
that differ in ONE member's data (x replaced by x'). Our mechanism sums the cohort's
records, so the sum moves by r(x) - r(x'), of L2 norm up to 2 Delta2 (L1 up to 2 Delta1;
the clip bit moves by 2m): the noise multiplier of that comparison is z_eff / 2
(`RoundPrivacy.replace_one`). At z = 1, N = 1000, k = 100, T = 100 this gives 83.9; the
14.05 of `GaussianDpEvent(1)` would be the figure for a sum that moves by C only, which a
replaced device does not guarantee. (Zero-out at sensitivity C does not help: the proof of
Thm. 9 couples cohorts that differ by one *other* device.)

Why Poisson sampling is charged as "s_r of N without replacement" (conditioned on the
cohort size), and not with the Poisson add/remove bounds:

1. Add/remove does not hold for distributed noise. A device that is absent also takes
   its noise share away: the two worlds sum s and s + 1 shares, Gaussians of different
   variances, whose Renyi divergence is infinite above a finite order (for the Gaussian,
   at orders alpha >= s + 1 when the variance ratio is (s + 1) / s). So the add/remove
   figure of `PoissonSampledDpEvent` / Zhu-Wang is not proven here; it stays reachable
   only as `PrivacyAccountant.epsilon_amplified_approx` (`epsilon_amplified_approx`), an
   explicitly named approximation, never reported as a guarantee.
2. Replace-one keeps the device (and its share) in both worlds; N is public. Poisson
   sampling draws the cohort S independently of the data. Conditioned on |S| = s, S is
   a uniform s-subset of the N devices (every s-subset has probability q^s (1-q)^(N-s),
   the same for each). So, given s, the round IS the sampled-without-replacement
   mechanism at gamma = s / N, and WBK's bound applies to the base mechanism "sum the
   cohort's records plus the honest survivors' noise" at the replace-one sensitivities,
   with the noise of the honest survivors actually summed (`RoundPrivacy.n_shares`, the
   survivors minus the corrupt bound; their number is taken to be data-independent, as
   everywhere in this package).
3. The cohort sizes are public (the round log publishes counts) and independent of the
   data, of each other and of every output. Condition on the whole sequence s_1..s_T:
   the rounds remain an adaptive composition (a round's plan, threshold and survivors may
   depend on earlier outputs and sizes), so the RDP of the transcript, conditioned on the
   sizes, is at most the sum of the per-round bounds at gamma_r = s_r / N; it converts
   to (epsilon, delta) as usual. Stopping on a budget (`would_exceed`) depends only on
   public sizes, not on the data.
4. So the amplified Poisson figure is a guarantee *conditioned on the public cohort
   sizes*, not a number fixed before the run: a round with a larger cohort costs more.
   `calibrate_noise` and `epsilon_for`/`epsilon_report` charge every round at the
   expected cohort k = q N (the run's actual figure is usually slightly above it, since
   the cost grows a little faster than linearly in s). N must be the number of devices
   each round is sampled from.

With fixed-size sampling the same bound needs no conditioning: the size is k by design.

Honest shares only. The plan sizes the noise for, and `EncodingPlan.privacy_event`
charges, the survivors minus the corrupt bound c among them (`corrupt_count`): the
colluders know their own shares, so only n_survivors - c shares protect anyone.

Every round is charged with the noise the honest survivors really added, not the noise
that was planned. `PrivacyAccountant.to_dict/from_dict` store and replay the ledger,
each entry with its cohort size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from dp.config import (
    FINE_RDP_ORDERS,
    INTEGER_RDP_ORDERS,
    RDP_ORDERS,
    SAMPLINGS,
    DPConfig,
    DPConfigError,
)
from dp.encoding import EncodingPlan, RoundPrivacy
from dp.mechanisms import get_mechanism

__all__ = [
    "PrivacyAccountant",
    "EpsilonReport",
    "subsampled_rdp",
    "wbk_subsampled_rdp",
    "corrupt_count",
    "epsilon_for",
    "epsilon_report",
    "epsilon_amplified_approx",
    "calibrate_noise",
    "ACCOUNTANTS",
    "ZERO_OUT",
    "ADD_REMOVE",
    "REPLACE_ONE",
]

ACCOUNTANTS = ("rdp", "pld")

#: Adjacency of the unamplified figure (and of any figure at sample rate 1).
ZERO_OUT = (
    "zero-out: one device's record (its rounded update and, with adaptive clipping, its "
    "clip bit, with federated evaluation its evaluation block) replaced by zeros, its noise "
    "share kept; holds even if the adversary knows "
    "who took part"
)
#: Adjacency of the amplified figure, for both samplings.
REPLACE_ONE = (
    "replace-one: one device's data replaced by another's in a public population of N "
    "devices (the sum moves by up to 2C); each round charged as its cohort of s of the N "
    "sampled without replacement: s = k for fixed-size sampling; for Poisson sampling, "
    "conditioned on each round's public cohort size s (given s, the cohort is a uniform "
    "s-subset); holds only if the adversary does not learn who took part"
)
#: Adjacency of `epsilon_amplified_approx`, the Poisson add/remove approximation. NOT a
#: guarantee for distributed noise: never report it as one.
ADD_REMOVE = (
    "add/remove (approximation, not a guarantee): one device's record present or absent, "
    "every device sampled independently with probability q (Poisson), the round's noise "
    "taken to be the same whether or not the device took part; with distributed noise an "
    "absent device also takes its share away, which this figure does not cover"
)

#: Tolerance of the floor in `corrupt_count` (as in secagg.graph): 0.29 * 100 is 29.
_FLOOR_EPS = 1e-9


def _check_rate(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise DPConfigError(f"sample rate must be in (0, 1], got {q!r}")
    return float(q)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise DPConfigError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_fraction(corrupt: float) -> float:
    if (
        isinstance(corrupt, bool)
        or not isinstance(corrupt, (int, float))
        or not 0 <= corrupt < 1
    ):
        raise DPConfigError(f"corrupt fraction must be in [0, 1), got {corrupt!r}")
    return float(corrupt)


def _check_sampling(sampling: str) -> str:
    if sampling not in SAMPLINGS:
        raise DPConfigError(
            f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}"
        )
    return sampling


def _check_population(
    population: int | None, *, sampling: str, required: bool
) -> int | None:
    if population is None:
        if required and sampling == "fixed":
            raise DPConfigError(
                "fixed-size sampling needs the population N (the number of devices the "
                "k per round are drawn from)"
            )
        if required:
            raise DPConfigError(
                "Poisson sampling at q < 1 needs the population N: the amplified figure "
                "charges a round's cohort of s devices as s of N sampled without "
                "replacement (conditioned on the public cohort size)"
            )
        return None
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise DPConfigError(f"population must be an integer >= 1, got {population!r}")
    return population


def corrupt_count(corrupt: float, n_sampled: int) -> int:
    """c = floor(corrupt * n_sampled): how many of a round's `n_sampled` devices the threat
    model lets collude with the server (the same rounding as `secagg.graph`). Their noise
    shares are known to the adversary, so the plan sizes the noise for, and the
    accountant charges, only the others (`EncodingPlan.create(..., corrupt=c)`)."""
    _check_fraction(corrupt)
    if isinstance(n_sampled, bool) or not isinstance(n_sampled, int) or n_sampled < 0:
        raise DPConfigError(f"n_sampled must be an integer >= 0, got {n_sampled!r}")
    return math.floor(corrupt * n_sampled + _FLOOR_EPS)


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    if not math.isfinite(m):
        return m
    return m + math.log(float(np.sum(np.exp(x - m))))


def _log_factorials(top: int) -> np.ndarray:
    """log l! for l = 0..top."""
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, top + 1)))))


def _log_expm1(x: float) -> float:
    """log(e^x - 1) for x >= 0, without overflow (-inf at 0)."""
    if x <= 0:
        return -math.inf
    if not math.isfinite(x):
        return x
    if x > 50:
        return x + math.log1p(-math.exp(-x))
    return math.log(math.expm1(x))


def _integer_orders(
    rdp_at: np.ndarray, orders: tuple[int, ...] | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    eps = np.asarray(rdp_at, dtype=np.float64)
    top = eps.shape[0] + 1
    alphas = tuple(range(2, top + 1)) if orders is None else tuple(orders)
    if any(
        isinstance(a, bool) or int(a) != a or a < 2 or a > top for a in alphas
    ):
        raise ValueError(f"orders must be integers in [2, {top}], got {alphas!r}")
    return eps, tuple(int(a) for a in alphas)


def subsampled_rdp(
    rdp_at: np.ndarray, q: float, orders: tuple[int, ...] | None = None
) -> np.ndarray:
    """Poisson-subsampled RDP at integer orders, given `rdp_at[i]` = eps(i + 2) of the
    unsampled mechanism at the orders 2..A (Zhu & Wang, ICML 2019, Thm. 5, in the
    DDG/Skellam authors' form; add/remove adjacency):

    eps_q(a) = 1/(a-1) log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
               + 3 sum_{l=3}^{a} C(a,l) (1-q)^(a-l) q^l e^((l-1) eps(l))],

    then min(eps_q(a), eps(a)). Returns the values at `orders` (default 2..A).
    """
    eps, alphas = _integer_orders(rdp_at, orders)
    if q >= 1.0:
        return eps[np.array(alphas) - 2].copy()
    log_fact = _log_factorials(eps.shape[0] + 1)
    lq, l1q = math.log(q), math.log1p(-q)
    out = np.empty(len(alphas))
    for i, a in enumerate(alphas):
        ls = np.arange(3, a + 1)
        log_comb = log_fact[a] - log_fact[ls] - log_fact[a - ls]
        terms = np.concatenate((
            [(a - 1) * l1q + math.log(a * q - q + 1),
             log_fact[a] - log_fact[2] - log_fact[a - 2] + 2 * lq + (a - 2) * l1q + eps[0]],
            math.log(3.0) + log_comb + (a - ls) * l1q + ls * lq + (ls - 1) * eps[ls - 2],
        ))
        out[i] = min(_logsumexp(terms) / (a - 1), eps[a - 2])
    return out


def wbk_subsampled_rdp(
    rdp_at: np.ndarray, gamma: float, orders: tuple[int, ...] | None = None
) -> np.ndarray:
    """RDP at integer orders of a mechanism run on k of N records sampled without
    replacement (gamma = k / N), given `rdp_at[i]` = eps(i + 2) of the mechanism under
    REPLACE-ONE adjacency at the orders 2..A.

    Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant", AISTATS 2019, Theorem 9 (general upper bound), for integer
    a >= 2:

        eps'(a) <= 1/(a-1) log( 1 + gamma^2 C(a,2) min{4 (e^eps(2) - 1),
                                                    e^eps(2) min{2, (e^eps(inf) - 1)^2}}
                               + sum_{j=3}^{a} gamma^j C(a,j) e^((j-1) eps(j))
                                                    min{2, (e^eps(inf) - 1)^j} ),

    with eps(inf) = inf for every mechanism here (Gaussian-type tails), so both inner
    minima are 2. Each term is kept as a logarithm (log C(a,j) from log-factorials), so
    nothing overflows at a = 1024. Also min'd with eps(a) itself: a cohort that differs
    in one member is one replace-one step of the base mechanism, whatever the sampling.
    """
    eps, alphas = _integer_orders(rdp_at, orders)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if gamma >= 1.0:
        return eps[np.array(alphas) - 2].copy()
    log_fact = _log_factorials(eps.shape[0] + 1)
    lg = math.log(gamma)
    e2 = float(eps[0])
    second = min(math.log(4.0) + _log_expm1(e2), e2 + math.log(2.0))
    out = np.empty(len(alphas))
    for i, a in enumerate(alphas):
        js = np.arange(3, a + 1)
        log_comb = log_fact[a] - log_fact[js] - log_fact[a - js]
        with np.errstate(invalid="ignore"):  # (j - 1) * inf stays inf
            higher = math.log(2.0) + log_comb + js * lg + (js - 1) * eps[js - 2]
        terms = np.concatenate((
            [0.0, log_fact[a] - log_fact[2] - log_fact[a - 2] + 2 * lg + second],
            higher,
        ))
        out[i] = min(_logsumexp(terms) / (a - 1), eps[a - 2])
    return out


#: dp-accounting 0.4.3's `max_alpha` in `_compute_rdp_sample_wor_gaussian_int`: up to this
#: order the Gaussian's Theorem 27 terms use forward differences; above, the plain WBK term.
_WOR_EXACT_MAX_ORDER = 256


def _log_forward_diffs(sigma: float, n: int) -> np.ndarray:
    """log |Delta^(i+1) h(0)| for i = 0..n+1, h(j) = exp(cgf(j - 1)), cgf(x) = x (x + 1) /
    (2 sigma^2): dp-accounting 0.4.3's `_get_forward_diffs` (repeated differencing in log
    space with signs, the same operations) with each pass vectorized."""
    vec = np.zeros(n + 3)
    j = np.arange(0, n + 2, dtype=np.float64)
    vec[1:] = j * (j + 1.0) / (2.0 * sigma**2)
    signs = np.ones(n + 3, dtype=bool)
    deltas = np.empty(n + 2)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for i in range(n + 2):
            m = n + 2 - i
            y, x = vec[:m], vec[1 : m + 1]
            sy, sx = signs[:m], signs[1 : m + 1]
            hi, lo = np.maximum(x, y), np.minimum(x, y)
            # same signs: log |e^x - e^y|, sign of (x - y) (ties: +), flipped if both < 0
            sub = np.where(x == y, -np.inf, hi + np.log(1 - np.exp(lo - hi)))
            sub_sign = x >= y
            sub_sign = np.where(sx, sub_sign, ~sub_sign)
            # different signs: log(e^x + e^y), the sign of x
            add = np.where(lo == -np.inf, hi, np.log1p(np.exp(lo - hi)) + hi)
            same = sy == sx
            new = np.where(same, sub, add)
            new_sign = np.where(same, sub_sign, sx)
            vec[:m] = new
            signs[:m] = new_sign
            deltas[i] = vec[0]
    return deltas


def _wor_gaussian_rdp(
    sigma: float, gamma: float, orders: Sequence[float] | np.ndarray
) -> np.ndarray:
    """RDP at `orders` of the Gaussian mechanism (noise std / replace-one sensitivity =
    `sigma`) run on s of N records sampled without replacement, gamma = s / N, under
    replace-one adjacency: Wang, Balle, Kasiviswanathan (arXiv 1808.00087, Thm. 27, the
    Gaussian-specific strengthening of AISTATS 2019 Thm. 9), with fractional orders from
    the integer ones by their Corollary 10 (log-moment interpolation).

    This is dp-accounting 0.4.3's `_compute_rdp_sample_wor_gaussian`, the function its
    `RdpAccountant(neighboring_relation=REPLACE_ONE)` applies to
    `SampledWithoutReplacementDpEvent(N, s, GaussianDpEvent(sigma))`, with the forward
    differences and the sums over terms vectorized (about 7 ms instead of 0.5 s per
    (sigma, gamma) pair; every Poisson round has its own). `tests/dp/test_poisson_cohort.py`
    holds it to dp-accounting's function within 1e-9 relative.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    alphas = np.asarray(orders, dtype=np.float64)
    if np.any(~np.isfinite(alphas)) or np.any(alphas <= 1):
        raise ValueError(f"orders must be finite and > 1, got {orders!r}")
    if gamma >= 1.0:
        return alphas / (2.0 * sigma**2)
    needed: set[int] = set()
    for a in alphas:
        needed.update({math.floor(a), math.ceil(a)})
    exact_top = min(max(needed), _WOR_EXACT_MAX_ORDER)
    deltas = _log_forward_diffs(sigma, exact_top) if exact_top >= 3 else np.zeros(0)
    lg = math.log(gamma)
    f2 = 1.0 / sigma**2  # eps(2) of the Gaussian
    second = min(math.log(4.0) + f2 + math.log(1 - math.exp(-f2)), f2 + math.log(2.0))
    log_fact = _log_factorials(max(needed))
    log_a: dict[int, float] = {}
    for a in sorted(needed):
        if a <= 1:
            log_a[a] = 0.0
            continue
        ints = np.arange(2, a + 1)
        i = ints.astype(np.float64)
        log_comb = log_fact[a] - log_fact[ints] - log_fact[a - ints]
        cgf = (i[1:] - 1.0) * i[1:] / (2.0 * sigma**2)  # (i - 1) eps(i), i >= 3
        if a <= _WOR_EXACT_MAX_ORDER:
            ii = np.arange(3, a + 1)
            lo = deltas[2 * (ii // 2) - 1]
            hi = deltas[2 * ((ii + 1) // 2) - 1]
            higher = np.minimum(math.log(4.0) + 0.5 * (lo + hi), math.log(2.0) + cgf)
        else:
            higher = math.log(2.0) + cgf
        terms = np.concatenate((
            [0.0, 2 * lg + log_comb[0] + second],
            higher + i[1:] * lg + log_comb[1:],
        ))
        top = int(np.argmax(terms))
        rest = np.delete(terms, top)
        log_a[a] = float(terms[top] + math.log1p(float(np.sum(np.exp(rest - terms[top])))))
    out = np.empty(len(alphas))
    for k, a in enumerate(alphas):
        lo_a, hi_a = math.floor(a), math.ceil(a)
        t = a - lo_a
        out[k] = ((1 - t) * log_a[lo_a] + t * log_a[hi_a]) / (a - 1)
    return out


@dataclass(frozen=True)
class EpsilonReport:
    """(epsilon, delta) after `rounds` rounds, with and without amplification, and the
    adjacency each figure holds under.

    - `epsilon`: no sampling amplification, `adjacency` (zero-out); valid even when the
      server knows who took part.
    - `epsilon_amplified`: amplified by `sampling` (`adjacency_amplified`: replace-one in a
      public population of `population` devices; for Poisson sampling conditioned on
      each round's public cohort size); valid only if the adversary does not learn who
      took part. Infinite, with `amplified_refused` saying why, when no proven bound
      exists for this combination. At `sample_rate` 1 nothing is sampled: the
      unamplified figure, zero-out.
    - `corrupt_fraction`: the colluding fraction of each cohort whose noise shares were
      NOT counted.
    """

    epsilon: float
    epsilon_amplified: float
    delta: float
    rounds: int
    mechanism: str = ""
    accountant: str = "rdp"
    sample_rate: float = 1.0
    sampling: str = "poisson"
    population: int | None = None
    corrupt_fraction: float = 0.0
    adjacency: str = ZERO_OUT
    adjacency_amplified: str = REPLACE_ONE
    amplified_refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: infinite epsilons become None ("no guarantee"); the adjacencies are
        one mapping {"epsilon": ..., "epsilon_amplified": ...}."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("epsilon", "epsilon_amplified"):
            if not math.isfinite(d[key]):
                d[key] = None
        d["adjacency"] = {
            "epsilon": d.pop("adjacency"),
            "epsilon_amplified": d.pop("adjacency_amplified"),
        }
        return d


#: Per-(event, cohort) RDP vectors kept by an accountant (rounds rarely repeat one under
#: Poisson sampling, so the cache is bounded rather than grown with the run).
_CACHE_LIMIT = 256


class PrivacyAccountant:
    """Composes `RoundPrivacy` events over rounds for one `DPConfig`.

    - `sample_rate` q: the Poisson probability, or k / N for fixed-size sampling.
    - `sampling`: "poisson" (default) or "fixed" (k = q N of N without replacement; q N
      must be an integer).
    - `population` N: the public number of devices each round is sampled from; required
      whenever q < 1 (the amplified figure charges a cohort of s as s of N without
      replacement, see the module docstring).
    - `corrupt_fraction`: recorded in the report; the events themselves carry the number
      of colluders whose shares they leave out (`RoundPrivacy.corrupt`).

    `compose(event, count, cohort=s)`: `cohort` is the number of devices sampled in that
    round (before any dropout). Required for Poisson sampling at q < 1 (the amplified
    figure is conditioned on it); for fixed-size sampling it defaults to, and must equal,
    k. The unamplified (zero-out) figure does not depend on it.

    Incremental: each `compose` adds the round to running RDP vectors (and, for the
    Gaussian, to the sum of z^-2 that the exact unamplified figure needs), so a report
    costs one conversion whatever the number of rounds. `would_exceed` works on a fork.
    The ledger of composed events, each with its count and cohort, is kept (`to_dict`) so
    that it can be stored and replayed.
    """

    def __init__(
        self,
        config: DPConfig,
        sample_rate: float,
        accountant: str = "rdp",
        *,
        sampling: str = "poisson",
        population: int | None = None,
        corrupt_fraction: float = 0.0,
    ) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError(f"config must be a DPConfig, got {type(config).__name__}")
        if accountant not in ACCOUNTANTS:
            raise DPConfigError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
            )
        mech = get_mechanism(config.mechanism)
        if accountant == "pld" and not mech.gaussian_events and config.mechanism != "none":
            raise DPConfigError(
                f"the pld accountant supports mechanism 'gaussian' only, got "
                f"{config.mechanism!r} (its bound is an RDP bound: use accountant='rdp')"
            )
        self.config = config
        self.sample_rate = _check_rate(sample_rate)
        self.accountant = accountant
        self.sampling = _check_sampling(sampling)
        self.population = _check_population(
            population, sampling=sampling, required=sampling == "fixed" or self.sample_rate < 1
        )
        self.corrupt_fraction = _check_fraction(corrupt_fraction)
        self.sample_size: int | None = None
        if sampling == "fixed" and self.population is not None:  # population: required
            k = round(self.sample_rate * self.population)
            if k < 1 or abs(self.sample_rate * self.population - k) > 1e-6:
                raise DPConfigError(
                    f"fixed-size sampling: sample rate {sample_rate!r} of population "
                    f"{population} is not k / N for an integer k"
                )
            self.sample_size = k
        self._refused: str | None = None
        if accountant == "pld" and self.sample_rate < 1:
            self._refused = (
                "dp-accounting's PLD accountant has no event for sampling without "
                "replacement, which the amplified figure needs (fixed-size sampling, and "
                "Poisson sampling conditioned on the cohort size); use accountant 'rdp'"
            )
        self._rounds = 0
        self._infinite = False
        self._gaussian = mech.gaussian_events
        self._orders_plain: tuple[float, ...] = (
            FINE_RDP_ORDERS if mech.fractional_orders else tuple(map(float, INTEGER_RDP_ORDERS))
        )
        # dp-accounting's orders for the Gaussian (its subsampled bound interpolates the
        # fractional ones); integer orders for WBK Thm. 9 on the discrete bounds.
        self._orders_amp: tuple[float, ...] = (
            RDP_ORDERS if self._gaussian else tuple(map(float, INTEGER_RDP_ORDERS))
        )
        # Unamplified Gaussian rounds compose exactly into one Gaussian with
        # z^-2 = sum of the rounds' z^-2 (kept as that sum: PLD of 1000 composed wide
        # Gaussians would take half a minute).
        self._inv_z2 = 0.0
        self._rdp = np.zeros(len(self._orders_plain))
        self._rdp_amp = np.zeros(len(self._orders_amp))
        self._ledger: list[tuple[RoundPrivacy, int, int | None]] = []
        self._plain_cache: dict[RoundPrivacy, np.ndarray] = {}
        self._base_cache: dict[RoundPrivacy, np.ndarray] = {}
        self._amp_cache: dict[tuple[RoundPrivacy, int], np.ndarray] = {}
        self._cache: EpsilonReport | None = None

    @property
    def rounds(self) -> int:
        return self._rounds

    @property
    def ledger(self) -> tuple[tuple[RoundPrivacy, int, int | None], ...]:
        """The composed events, in order, each as (event, count, cohort)."""
        return tuple(self._ledger)

    def compose(self, event: RoundPrivacy, count: int = 1, *, cohort: int | None = None) -> None:
        """Charge `count` rounds that each guaranteed `event`, each with `cohort` devices
        sampled (see the class docstring: required for Poisson sampling at q < 1)."""
        self._check_event(event)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        cohort = self._check_cohort(event, cohort, required=True)
        self._add(event, count, cohort)
        if self._ledger and self._ledger[-1][0] == event and self._ledger[-1][2] == cohort:
            self._ledger[-1] = (event, self._ledger[-1][1] + count, cohort)
        else:
            self._ledger.append((event, count, cohort))
        self._cache = None

    def report(self) -> EpsilonReport:
        if self._cache is None:
            self._cache = self._report()
        return self._cache

    def would_exceed(
        self,
        event: RoundPrivacy,
        budget: float,
        *,
        cohort: int | None = None,
        amplified: bool = False,
    ) -> bool:
        """True if composing `event` once more (with `cohort` devices sampled) would take
        epsilon above `budget`. By default the unamplified epsilon (valid against a server
        that knows who was sampled) is compared; it does not need `cohort`. With
        `amplified=True`, `cohort` follows the rule of `compose`."""
        self._check_event(event)
        if not budget >= 0:
            raise ValueError(f"budget must be >= 0, got {budget!r}")
        cohort = self._check_cohort(event, cohort, required=amplified)
        trial = self._fork()
        # the unamplified check needs no cohort: the trial's amplified part is then left out
        trial._add(event, 1, cohort, amplified=amplified)
        rep = trial._report()
        return (rep.epsilon_amplified if amplified else rep.epsilon) > budget

    def epsilon_amplified_approx(self) -> float:
        """The add/remove figure of Poisson sampling at rate q over the ledger (dp-accounting's
        `PoissonSampledDpEvent` for the Gaussian, with this accountant's RDP or PLD; Zhu &
        Wang's bound, `subsampled_rdp`, for the discrete mechanisms). AN APPROXIMATION, NOT
        A GUARANTEE: it takes the round's noise to be the same whether or not the device
        took part, which distributed noise does not satisfy (`ADD_REMOVE`). It is what
        this package printed before the amplified figure was conditioned on the cohort
        size, and what REFERENCES.md's Poisson values (7.899, 2.101, 1.83) are. Never
        report it as a privacy guarantee. Poisson sampling only (DPConfigError otherwise).
        """
        if self.sampling != "poisson":
            raise DPConfigError(
                f"the add/remove approximation is for Poisson sampling, not {self.sampling!r}"
            )
        q, delta = self.sample_rate, self.config.delta
        if self._rounds == 0:
            return 0.0
        if self._infinite:
            return math.inf
        if q >= 1:
            return self.report().epsilon
        if self._gaussian:
            acc: dp_accounting.PrivacyAccountant = (
                dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
                if self.accountant == "rdp"
                else dp_accounting.pld.PLDAccountant()
            )
            for ev, n, _ in self._ledger:
                inner = dp_accounting.GaussianDpEvent(ev.gaussian_noise_multiplier)
                acc.compose(
                    dp_accounting.SelfComposedDpEvent(
                        dp_accounting.PoissonSampledDpEvent(q, inner), n
                    )
                )
            return float(acc.get_epsilon(delta))
        all_int = np.arange(2, INTEGER_RDP_ORDERS[-1] + 1)
        rdp = np.zeros(len(INTEGER_RDP_ORDERS))
        for ev, n, _ in self._ledger:
            rdp += n * subsampled_rdp(ev.rdp(all_int), q, INTEGER_RDP_ORDERS)
        return _rdp_to_epsilon(INTEGER_RDP_ORDERS, rdp, delta)

    # ------------------------------------------------------------- storage / replay
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the accountant and its ledger, each entry
        [event, count, cohort]: store it (or each event with its cohort) before the sum is
        decoded, replay with `from_dict` after a restart."""
        return {
            "config": self.config.to_dict(),
            "sample_rate": self.sample_rate,
            "accountant": self.accountant,
            "sampling": self.sampling,
            "population": self.population,
            "corrupt_fraction": self.corrupt_fraction,
            "events": [[ev.to_dict(), n, c] for ev, n, c in self._ledger],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from `to_dict` and re-compose its ledger in order. An
        entry [event, count] without a cohort (stored before cohorts were) replays only
        where no cohort is needed (fixed-size sampling, or q = 1); under Poisson sampling
        it is refused, since the amplified figure cannot be charged without it."""
        if not isinstance(d, dict):
            raise DPConfigError(f"PrivacyAccountant.from_dict needs a dict, got {type(d).__name__}")
        known = {"config", "sample_rate", "accountant", "sampling", "population",
                 "corrupt_fraction", "events"}
        unknown = set(d) - known
        if unknown:
            raise DPConfigError(f"unknown PrivacyAccountant keys: {sorted(unknown)}")
        try:
            acc = cls(
                DPConfig.from_dict(d["config"]),
                d["sample_rate"],
                d.get("accountant", "rdp"),
                sampling=d.get("sampling", "poisson"),
                population=d.get("population"),
                corrupt_fraction=d.get("corrupt_fraction", 0.0),
            )
            events = d["events"]
        except KeyError as err:
            raise DPConfigError(f"PrivacyAccountant dict lacks {err}") from None
        if not isinstance(events, list):
            raise DPConfigError(f"PrivacyAccountant events must be a list, got {events!r}")
        for item in events:
            if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
                raise DPConfigError(
                    f"ledger entry must be [event, count, cohort], got {item!r}"
                )
            cohort = item[2] if len(item) == 3 else None
            acc.compose(RoundPrivacy.from_dict(item[0]), item[1], cohort=cohort)
        return acc

    # ------------------------------------------------------------------ internals
    def _fork(self) -> PrivacyAccountant:
        """A copy whose running state can be changed without touching this one (the
        caches, pure functions of their keys, are shared)."""
        trial = copy.copy(self)
        trial._rdp = self._rdp.copy()
        trial._rdp_amp = self._rdp_amp.copy()
        trial._ledger = list(self._ledger)
        trial._cache = None
        return trial

    def _check_event(self, event: RoundPrivacy) -> None:
        if not isinstance(event, RoundPrivacy):
            raise TypeError(f"event must be a RoundPrivacy, got {type(event).__name__}")
        if event.mechanism != self.config.mechanism:
            raise ValueError(
                f"event of mechanism {event.mechanism!r} given to an accountant for "
                f"{self.config.mechanism!r}"
            )

    def _check_cohort(
        self, event: RoundPrivacy, cohort: int | None, *, required: bool
    ) -> int | None:
        """The round's cohort size, checked: None where the figure needs none."""
        if cohort is None:
            if self.sample_size is not None:
                return self.sample_size
            if required and self.sample_rate < 1:
                raise DPConfigError(
                    "Poisson sampling: give the round's cohort size (cohort=number of devices "
                    "sampled); the amplified figure is conditioned on it"
                )
            return None
        if isinstance(cohort, bool) or not isinstance(cohort, int) or cohort < 1:
            raise DPConfigError(f"cohort must be an integer >= 1, got {cohort!r}")
        if self.sample_size is not None and cohort != self.sample_size:
            raise DPConfigError(
                f"fixed-size sampling draws k={self.sample_size} devices a round, got "
                f"cohort={cohort}"
            )
        if self.population is not None and cohort > self.population:
            raise DPConfigError(
                f"cohort={cohort} exceeds the population N={self.population}"
            )
        if event.n_shares > 0 and event.n_shares + event.corrupt > cohort:
            raise DPConfigError(
                f"cohort={cohort} is smaller than the event's {event.n_shares + event.corrupt} "
                "survivors"
            )
        return cohort

    def _plain_rdp(self, event: RoundPrivacy) -> np.ndarray:
        hit = self._plain_cache.get(event)
        if hit is None:
            hit = event.rdp(np.asarray(self._orders_plain))
            _remember(self._plain_cache, event, hit)
        return hit

    def _amplified_rdp(self, event: RoundPrivacy, cohort: int) -> np.ndarray:
        """The round's replace-one RDP at `_orders_amp`, as `cohort` of N sampled without
        replacement (gamma = cohort / N)."""
        key = (event, cohort)
        hit = self._amp_cache.get(key)
        if hit is not None:
            return hit
        if self.population is None:  # pragma: no cover - the constructor requires it
            raise DPConfigError("sampling below q = 1 needs the population N")
        gamma = cohort / self.population
        if self._gaussian:
            # Replace-one moves the sum by up to 2 Delta2: noise multiplier z_eff / 2
            # (> 0: _add stops at z_eff <= 0).
            # min'd with the unsampled replace-one RDP, as `wbk_subsampled_rdp` does (a
            # cohort that differs in one member is one replace-one step, whatever the
            # sampling); it binds only at very small sigma.
            sigma = event.replace_one().gaussian_noise_multiplier
            orders = np.asarray(self._orders_amp)
            amp = np.minimum(
                _wor_gaussian_rdp(sigma, gamma, orders), orders / (2.0 * sigma**2)
            )
        else:
            base = self._base_cache.get(event)
            if base is None:
                base = event.replace_one().rdp(np.arange(2, INTEGER_RDP_ORDERS[-1] + 1))
                _remember(self._base_cache, event, base)
            amp = wbk_subsampled_rdp(base, gamma, INTEGER_RDP_ORDERS)
        _remember(self._amp_cache, key, amp)
        return amp

    def _add(
        self, event: RoundPrivacy, count: int, cohort: int | None, *, amplified: bool = True
    ) -> None:
        self._rounds += count
        if self.config.mechanism == "none":
            self._infinite = True
            return
        if self._gaussian:
            z = event.gaussian_noise_multiplier
            if z <= 0:
                self._infinite = True
                return
            self._inv_z2 += count / z**2
        else:
            self._rdp += count * self._plain_rdp(event)
        if amplified and self.sample_rate < 1 and self._refused is None:
            if cohort is None:  # pragma: no cover - _check_cohort requires it
                raise DPConfigError("the amplified figure needs the round's cohort size")
            self._rdp_amp += count * self._amplified_rdp(event, cohort)

    def _report(self) -> EpsilonReport:
        delta = self.config.delta
        if self._rounds == 0:
            eps, eps_amp = 0.0, 0.0
        elif self._infinite:
            eps, eps_amp = math.inf, math.inf
        else:
            if self._gaussian:
                z_total = 1.0 / math.sqrt(self._inv_z2)
                if self.accountant == "rdp":
                    plain = dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
                    plain.compose(dp_accounting.GaussianDpEvent(z_total))
                    eps = float(plain.get_epsilon(delta))
                else:
                    eps = _gaussian_epsilon_exact(z_total, delta)
            else:
                eps = _rdp_to_epsilon(self._orders_plain, self._rdp, delta)
            if self.sample_rate >= 1:
                eps_amp = eps
            elif self._refused is not None:
                eps_amp = math.inf
            else:
                eps_amp = _rdp_to_epsilon(self._orders_amp, self._rdp_amp, delta)
        return EpsilonReport(
            epsilon=eps,
            epsilon_amplified=eps_amp if self._refused is None else math.inf,
            delta=delta,
            rounds=self._rounds,
            mechanism=self.config.mechanism,
            accountant=self.accountant,
            sample_rate=self.sample_rate,
            sampling=self.sampling,
            population=self.population,
            corrupt_fraction=self.corrupt_fraction,
            adjacency=ZERO_OUT,
            # q = 1 samples nothing: the amplified figure is the unamplified one
            adjacency_amplified=ZERO_OUT if self.sample_rate >= 1 else REPLACE_ONE,
            amplified_refused=self._refused,
        )


def _remember(cache: dict[Any, np.ndarray], key: Any, value: np.ndarray) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _gaussian_epsilon_exact(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism at `delta` (the closed form of Balle &
    Wang 2018, from dp-accounting's GaussianPrivacyLoss), by bisection: what the PLD
    accountant would return for this event, without its discretization."""
    loss = GaussianPrivacyLoss(standard_deviation=noise_multiplier, sensitivity=1.0)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while loss.get_delta_for_epsilon(hi) > delta:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if loss.get_delta_for_epsilon(mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def _rdp_to_epsilon(orders: tuple[float, ...], rdp: np.ndarray, delta: float) -> float:
    finite = np.isfinite(rdp)
    if not finite.any():
        return math.inf
    kept = [float(o) for o, f in zip(orders, finite, strict=True) if f]
    return float(compute_epsilon(kept, rdp[finite].tolist(), delta)[0])


def _check_survivors(survivors: int | None, t: int, k: int) -> int:
    """The survivors a planned round is charged for: `survivors`, or t (the fewest an
    unmasked round can have). Fewer than t survivors abort the round, which then reveals
    nothing and is charged nothing, so such a figure would describe no run."""
    if survivors is None:
        return t
    if isinstance(survivors, bool) or not isinstance(survivors, int) or not t <= survivors <= k:
        raise DPConfigError(
            f"survivors must be an integer in [t={t}, K={k}] (a round with fewer than t "
            f"survivors is not unmasked and charges nothing), got {survivors!r}"
        )
    return survivors


def _accountant_for(
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str,
    clients_per_round: int,
    bits: int,
    dim: int,
    clip: float,
    min_contributors: int | None,
    adaptive_clip: bool,
    clipped_count_stddev: float | None,
    sampling: str,
    population: int | None,
    corrupt: float,
    eval_buckets: int = 0,
    eval_noise_ratio: float = 2.0,
    survivors: int | None = None,
) -> PrivacyAccountant:
    """The accountant of a run with these parameters after `rounds` rounds, each with the
    expected cohort k = `clients_per_round` (= q N), noise shares sized for t =
    `min_contributors` (default k) and `survivors` (default t) shares summed.

    This is what a run charges: the server plans each round with shares sized for t
    (`EncodingPlan.create`) and charges `plan.privacy_event(n_survivors)`
    (`server.round.ServerCore.release`), so more survivors than t means more noise and a
    smaller epsilon."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DPConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    _check_rate(sample_rate)
    _check_delta(delta)
    _check_sampling(sampling)
    if (
        isinstance(clients_per_round, bool)
        or not isinstance(clients_per_round, int)
        or clients_per_round < 1
    ):
        raise DPConfigError(
            f"clients per round must be an integer >= 1, got {clients_per_round!r}"
        )
    k = clients_per_round
    if sampling == "poisson" and sample_rate < 1 and population is None:
        # The expected cohort q N is k: N = k / q, which must be a whole population.
        n_float = k / sample_rate
        population = round(n_float)
        if abs(n_float - population) > 1e-6 * max(1.0, n_float):
            raise DPConfigError(
                f"Poisson sampling is accounted per cohort size, as s of N devices: give the "
                f"population N (--clients) (with q = {sample_rate!r}, k = {k} devices a round is "
                f"N = {n_float:g}, not an integer)"
            )
    _check_population(
        population, sampling=sampling, required=sampling == "fixed" or sample_rate < 1
    )
    if sampling == "fixed" and abs(sample_rate * population - k) > 1e-6:  # type: ignore[operator]
        raise DPConfigError(
            f"fixed-size sampling of {k} of {population} devices needs "
            f"sample rate {k / population:g}, got {sample_rate!r}"  # type: ignore[operator]
        )
    if sampling == "poisson" and sample_rate < 1 and abs(sample_rate * population - k) > 1e-6:  # type: ignore[operator]
        raise DPConfigError(
            f"Poisson sampling at q = {sample_rate!r} of N = {population} devices expects "
            f"{sample_rate * population:g} devices per round (q N), not {k}: "  # type: ignore[operator]
            "the figure charges every round at the expected cohort"
        )
    config = DPConfig(
        mechanism=mechanism, clip=clip, noise_multiplier=noise_multiplier, bits=bits,
        delta=delta, adaptive_clip=adaptive_clip, clipped_count_stddev=clipped_count_stddev,
        eval_buckets=eval_buckets, eval_noise_ratio=eval_noise_ratio,
    )
    t = k if min_contributors is None else min_contributors
    c = corrupt_count(corrupt, k)
    plan = EncodingPlan.create(config, dim, k, t, corrupt=c)
    n = _check_survivors(survivors, t, k)
    acc = PrivacyAccountant(
        config, sample_rate, accountant, sampling=sampling, population=population,
        corrupt_fraction=corrupt,
    )
    acc.compose(plan.privacy_event(n), rounds, cohort=k if sample_rate < 1 else None)
    return acc


def epsilon_for(
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    accountant: str = "rdp",
    clients_per_round: int = 100,
    bits: int = 20,
    dim: int = 100_000,
    clip: float = 1.0,
    min_contributors: int | None = None,
    adaptive_clip: bool = False,
    clipped_count_stddev: float | None = None,
    amplified: bool = True,
    sampling: str = "poisson",
    population: int | None = None,
    corrupt: float = 0.0,
    eval_buckets: int = 0,
    eval_noise_ratio: float = 2.0,
    survivors: int | None = None,
) -> float:
    """Epsilon after `rounds` rounds with noise shares sized for `min_contributors`
    (t; default: all `clients_per_round`) of which `survivors` (default t, the worst
    case of an unmasked round) survived, with the plan `EncodingPlan.create` makes for
    these parameters: what a run charges when that many devices survive every round.

    - `amplified=True` (default) returns the amplified figure, replace-one, valid only if
      the adversary does not learn who took part: every round charged as k =
      `clients_per_round` of N = `population` sampled without replacement. For "fixed"
      sampling that is the run's figure; for "poisson" (rate `sample_rate`, k = q N, N
      defaults to k / q) it is the figure of a run whose every cohort has the expected
      size q N (a run charges each round's actual cohort; see the module docstring).
      `amplified=False`: the zero-out figure, valid against a server that knows.
    - `corrupt`: the fraction of each cohort that may collude with the server; the plan
      sizes the noise for, and the round is charged with, the t - floor(corrupt K)
      honest shares. 0 (default) reproduces the figures from before collusion was counted.
    - `bits`, `dim`, `clip` matter for ddgauss/skellam (and for the rounding-inflated
      sensitivity of gaussian). `adaptive_clip` charges the noised clipped count too
      (Andrew et al. 2021), `eval_buckets` > 0 the federated-evaluation block (its noise
      multiplier `eval_noise_ratio` * z; `DPConfig`).
    - `survivors` in [t, `clients_per_round`]: the shares summed each round. The run
      charges the shares that actually survived (minus the colluders), so a plan for a
      run where most devices survive passes the expected count here."""
    rep = epsilon_report(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant=accountant,
        clients_per_round=clients_per_round, bits=bits, dim=dim, clip=clip,
        min_contributors=min_contributors, adaptive_clip=adaptive_clip,
        clipped_count_stddev=clipped_count_stddev, sampling=sampling,
        population=population, corrupt=corrupt, eval_buckets=eval_buckets,
        eval_noise_ratio=eval_noise_ratio, survivors=survivors,
    )
    return rep.epsilon_amplified if amplified else rep.epsilon


def epsilon_report(
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    accountant: str = "rdp",
    clients_per_round: int = 100,
    bits: int = 20,
    dim: int = 100_000,
    clip: float = 1.0,
    min_contributors: int | None = None,
    adaptive_clip: bool = False,
    clipped_count_stddev: float | None = None,
    sampling: str = "poisson",
    population: int | None = None,
    corrupt: float = 0.0,
    eval_buckets: int = 0,
    eval_noise_ratio: float = 2.0,
    survivors: int | None = None,
) -> EpsilonReport:
    """Both figures of `epsilon_for` at once, with their adjacencies."""
    return _accountant_for(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant,
        clients_per_round, bits, dim, clip, min_contributors, adaptive_clip,
        clipped_count_stddev, sampling, population, corrupt, eval_buckets, eval_noise_ratio,
        survivors,
    ).report()


def epsilon_amplified_approx(
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    accountant: str = "rdp",
    clients_per_round: int = 100,
    bits: int = 20,
    dim: int = 100_000,
    clip: float = 1.0,
    min_contributors: int | None = None,
    adaptive_clip: bool = False,
    clipped_count_stddev: float | None = None,
    population: int | None = None,
    corrupt: float = 0.0,
    eval_buckets: int = 0,
    eval_noise_ratio: float = 2.0,
    survivors: int | None = None,
) -> float:
    """`PrivacyAccountant.epsilon_amplified_approx` for the run `epsilon_for` describes
    with Poisson sampling: the add/remove Poisson figure of before, AN APPROXIMATION, NOT
    A GUARANTEE for distributed noise (`ADD_REMOVE`). It reproduces REFERENCES.md's
    Poisson values (z = 1, q = 0.1, T = 100: 7.899; q = 0.01, T = 1000: 2.101 RDP, 1.83
    PLD)."""
    return _accountant_for(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant,
        clients_per_round, bits, dim, clip, min_contributors, adaptive_clip,
        clipped_count_stddev, "poisson", population, corrupt, eval_buckets, eval_noise_ratio,
        survivors,
    ).epsilon_amplified_approx()


def calibrate_noise(
    target_epsilon: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    *,
    mechanism: str = "gaussian",
    accountant: str = "rdp",
    clients_per_round: int = 100,
    bits: int = 20,
    dim: int = 100_000,
    clip: float = 1.0,
    min_contributors: int | None = None,
    adaptive_clip: bool = False,
    clipped_count_stddev: float | None = None,
    amplified: bool = True,
    rel_tol: float = 1e-4,
    sampling: str = "poisson",
    population: int | None = None,
    corrupt: float = 0.0,
    eval_buckets: int = 0,
    eval_noise_ratio: float = 2.0,
    survivors: int | None = None,
) -> float:
    """Smallest noise multiplier z (summed std z * C over t - c honest shares, the same
    meaning for every mechanism) with `epsilon_for(...) <= target_epsilon`, by bisection
    on the same accountant the run charges (same sampling, population and corrupt
    fraction). With Poisson sampling every round is charged at the expected cohort
    k = q N; the run charges each round's actual cohort, so its amplified figure ends
    near the target, usually slightly above it. Raises DPConfigError when no z reaches
    the target (the discrete mechanisms' epsilon has a floor set by the rounding at a
    given bit width; an amplified figure may be refused). `survivors` (default t, the
    worst case) calibrates for rounds in which that many shares survive: a run in
    which fewer survive spends more than the target."""
    if not (isinstance(target_epsilon, (int, float)) and target_epsilon > 0):
        raise DPConfigError(f"target epsilon must be > 0, got {target_epsilon!r}")
    if mechanism == "none":
        raise DPConfigError("mechanism 'none' adds no noise: nothing to calibrate")

    def report(z: float) -> EpsilonReport:
        return epsilon_report(
            mechanism, z, sample_rate, rounds, delta, accountant=accountant,
            clients_per_round=clients_per_round, bits=bits, dim=dim, clip=clip,
            min_contributors=min_contributors, adaptive_clip=adaptive_clip,
            clipped_count_stddev=clipped_count_stddev, sampling=sampling,
            population=population, corrupt=corrupt, eval_buckets=eval_buckets,
            eval_noise_ratio=eval_noise_ratio, survivors=survivors,
        )

    first = report(1.0)
    if amplified and first.amplified_refused is not None:
        raise DPConfigError(f"cannot calibrate the amplified epsilon: {first.amplified_refused}")

    def eps(z: float) -> float:
        rep = first if z == 1.0 else report(z)
        return rep.epsilon_amplified if amplified else rep.epsilon

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > 2.0**16:
            raise DPConfigError(
                f"target epsilon {target_epsilon} not reachable for mechanism {mechanism!r} "
                f"with bits={bits}, dim={dim}, {clients_per_round} clients per round"
            )
    lo = hi / 2.0
    if hi == 1.0:
        lo = 0.0
        while True:  # shrink the lower end until it fails the target
            lo_try = hi / 2.0
            if lo_try < 1e-3 or eps(lo_try) > target_epsilon:
                lo = lo_try
                break
            hi = lo_try
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
