"""Privacy accountant for the distributed mechanisms, composed over rounds.

Mechanisms (one round, unsampled):
- "gaussian": dp-accounting's RdpAccountant or PLDAccountant on `GaussianDpEvent(z_eff)`,
  z_eff from `RoundPrivacy.gaussian_noise_multiplier`.
- "ddgauss": the RDP bound of Kairouz, Liu, Steinke (ICML 2021), proven at every real
  order > 1: the unamplified figure is taken over `FINE_RDP_ORDERS`.
- "skellam": the RDP bound of Agarwal, Kairouz, Liu (NeurIPS 2021), integer orders.
- "none": infinite epsilon.

Two figures, always both, each with the adjacency it holds under (`EpsilonReport`):

- `epsilon`, no amplification, *zero-out* adjacency (`ZERO_OUT`): one device's record
  replaced by zeros, its noise share kept. Valid against a server that knows who was
  sampled and who survived (ours does: it samples and runs the protocol).
- `epsilon_amplified`, amplified by the sampling the server actually does, valid only if
  the adversary does not learn who took part in a round:
  - `sampling="poisson"` (each device joins independently with probability q),
    *add/remove* adjacency (`ADD_REMOVE`): dp-accounting's `PoissonSampledDpEvent` for
    the Gaussian; for the discrete mechanisms the integer-order bound of Zhu & Wang (ICML
    2019, Thm. 5) in the form the DDG/Skellam authors' code uses (`subsampled_rdp`).
    Caveat, stated with the figure: these bounds take the round's noise to be the same
    whether or not the device took part, as the DDG and Skellam papers do; with
    distributed noise an absent device also takes its share away.
  - `sampling="fixed"` (k of N devices without replacement, N public), *replace-one*
    adjacency (`REPLACE_ONE`): dp-accounting's `SampledWithoutReplacementDpEvent(N, k,
    GaussianDpEvent(z_eff / 2))` with `NeighboringRelation.REPLACE_ONE` for the Gaussian;
    for the discrete mechanisms the general upper bound of Wang, Balle, Kasiviswanathan
    (AISTATS 2019, Thm. 9; `wbk_subsampled_rdp`).

  Why 2C under replace-one: both bounds need the base mechanism's RDP between two
  cohorts that differ in ONE member's data (x replaced by x'). Our mechanism sums the
  cohort's records, so the sum moves by r(x) - r(x'), of L2 norm up to 2 Delta2 (L1 up
  to 2 Delta1; the clip bit moves by 2m): the noise multiplier of that comparison is
  z_eff / 2 (`RoundPrivacy.replace_one`). At z = 1, N = 1000, k = 100, T = 100 this gives
  83.9; the 14.05 of `GaussianDpEvent(1)` would be the figure for a sum that moves by C
  only, which a replaced device does not guarantee. (Zero-out at sensitivity C does not
  help here: the proof of Thm. 9 couples cohorts that differ by one *other* device.)

Honest shares only. The plan sizes the noise for, and `EncodingPlan.privacy_event`
charges, the survivors minus the corrupt bound c among them (`corrupt_count`): the
colluders know their own shares, so only n_survivors - c shares protect anyone.

Every round is charged with the noise the honest survivors really added, not the noise
that was planned. `PrivacyAccountant.to_dict/from_dict` store and replay the ledger.
"""

from __future__ import annotations

import copy
import math
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
    "clip bit) replaced by zeros, its noise share kept; holds even if the adversary knows "
    "who took part"
)
#: Adjacency of the Poisson-amplified figure.
ADD_REMOVE = (
    "add/remove: one device's record present or absent, every device sampled "
    "independently with probability q (Poisson); holds only if the adversary does not "
    "learn who took part, and takes the round's noise to be the same whether or not the "
    "device took part (with distributed noise an absent device also takes its share away)"
)
#: Adjacency of the fixed-size-amplified figure.
REPLACE_ONE = (
    "replace-one: one device's data replaced by another's in a public population of N, "
    "k of N sampled without replacement (the sum moves by up to 2C); holds only if the "
    "adversary does not learn who took part"
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


def _check_population(population: int | None, *, required: bool) -> int | None:
    if population is None:
        if required:
            raise DPConfigError(
                "fixed-size sampling needs the population N (the number of devices the "
                "k per round are drawn from)"
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


@dataclass(frozen=True)
class EpsilonReport:
    """(epsilon, delta) after `rounds` rounds, with and without amplification, and the
    adjacency each figure holds under.

    - `epsilon`: no sampling amplification, `adjacency` (zero-out); valid even when the
      server knows who took part.
    - `epsilon_amplified`: amplified by `sampling` at `sample_rate` (of `population` for
      fixed-size sampling), `adjacency_amplified`; valid only if the adversary does not
      learn who took part. Infinite, with `amplified_refused` saying why, when no proven
      bound exists for this combination.
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
    adjacency_amplified: str = ADD_REMOVE
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


class PrivacyAccountant:
    """Composes `RoundPrivacy` events over rounds for one `DPConfig`.

    - `sample_rate` q: Poisson probability, or k / N for fixed-size sampling.
    - `sampling`: "poisson" (default) or "fixed" (k = q N of N without replacement;
      `population` N required, and q N must be an integer).
    - `corrupt_fraction`: recorded in the report; the events themselves carry the number
      of colluders whose shares they leave out (`RoundPrivacy.corrupt`).

    Incremental: each `compose` adds the round to running dp-accounting accountants
    (gaussian) or running RDP vectors (ddgauss, skellam), so a report costs one
    conversion whatever the number of rounds. `would_exceed` works on a copy. The ledger
    of composed events is kept (`to_dict`) so that it can be stored and replayed.
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
        self.population = _check_population(population, required=sampling == "fixed")
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
        if sampling == "fixed" and accountant == "pld" and self.sample_rate < 1:
            self._refused = (
                "dp-accounting's PLD accountant has no event for sampling without "
                "replacement; use accountant 'rdp' for the fixed-size amplified figure"
            )
        self._rounds = 0
        self._infinite = False
        self._gaussian = mech.gaussian_events
        self._orders_plain: tuple[float, ...] = (
            FINE_RDP_ORDERS if mech.fractional_orders else tuple(map(float, INTEGER_RDP_ORDERS))
        )
        # Unamplified Gaussian rounds compose exactly into one Gaussian with
        # z^-2 = sum of the rounds' z^-2 (kept as that sum: PLD of 1000 composed wide
        # Gaussians would take half a minute); amplified rounds go to dp-accounting.
        self._inv_z2 = 0.0
        self._acc_amp = (
            self._new_dp_accountant(amplified=True)
            if self._gaussian and self._refused is None
            else None
        )
        self._rdp = np.zeros(len(self._orders_plain))
        self._rdp_amp = np.zeros(len(INTEGER_RDP_ORDERS))
        self._ledger: list[tuple[RoundPrivacy, int]] = []
        self._per_round: dict[RoundPrivacy, tuple[np.ndarray, np.ndarray]] = {}
        self._cache: EpsilonReport | None = None

    @property
    def rounds(self) -> int:
        return self._rounds

    @property
    def ledger(self) -> tuple[tuple[RoundPrivacy, int], ...]:
        """The composed events, in order, each with its count."""
        return tuple(self._ledger)

    def compose(self, event: RoundPrivacy, count: int = 1) -> None:
        """Charge `count` rounds that each guaranteed `event`."""
        self._check_event(event)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        self._add(event, count)
        if self._ledger and self._ledger[-1][0] == event:
            self._ledger[-1] = (event, self._ledger[-1][1] + count)
        else:
            self._ledger.append((event, count))
        self._cache = None

    def report(self) -> EpsilonReport:
        if self._cache is None:
            self._cache = self._report()
        return self._cache

    def would_exceed(self, event: RoundPrivacy, budget: float, *, amplified: bool = False) -> bool:
        """True if composing `event` once more would take epsilon above `budget`.
        By default the unamplified epsilon (valid against a server that knows who was
        sampled) is compared."""
        self._check_event(event)
        if not budget >= 0:
            raise ValueError(f"budget must be >= 0, got {budget!r}")
        trial = copy.deepcopy(self)
        trial.compose(event)
        rep = trial.report()
        return (rep.epsilon_amplified if amplified else rep.epsilon) > budget

    # ------------------------------------------------------------- storage / replay
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the accountant and its ledger: store it (or each
        event, `RoundPrivacy.to_dict`) before the sum is decoded, replay with
        `from_dict` after a restart."""
        return {
            "config": self.config.to_dict(),
            "sample_rate": self.sample_rate,
            "accountant": self.accountant,
            "sampling": self.sampling,
            "population": self.population,
            "corrupt_fraction": self.corrupt_fraction,
            "events": [[ev.to_dict(), n] for ev, n in self._ledger],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from `to_dict` and re-compose its ledger in order."""
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
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise DPConfigError(f"ledger entry must be [event, count], got {item!r}")
            acc.compose(RoundPrivacy.from_dict(item[0]), item[1])
        return acc

    # ------------------------------------------------------------------ internals
    def _new_dp_accountant(self, *, amplified: bool = False) -> dp_accounting.PrivacyAccountant:
        if self.accountant == "rdp":
            relation = (
                dp_accounting.NeighboringRelation.REPLACE_ONE
                if amplified and self.sampling == "fixed" and self.sample_rate < 1
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            )
            return dp_accounting.rdp.RdpAccountant(
                orders=list(RDP_ORDERS), neighboring_relation=relation
            )
        return dp_accounting.pld.PLDAccountant()

    def _check_event(self, event: RoundPrivacy) -> None:
        if not isinstance(event, RoundPrivacy):
            raise TypeError(f"event must be a RoundPrivacy, got {type(event).__name__}")
        if event.mechanism != self.config.mechanism:
            raise ValueError(
                f"event of mechanism {event.mechanism!r} given to an accountant for "
                f"{self.config.mechanism!r}"
            )

    def _amplified_event(self, z: float) -> dp_accounting.DpEvent:
        """One round of the Gaussian with summed std / Delta2 = z, as sampled."""
        q = self.sample_rate
        if q >= 1:
            return dp_accounting.GaussianDpEvent(z)
        if self.population is None or self.sample_size is None:  # Poisson
            return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        # Replace-one moves the sum by up to 2 Delta2: noise multiplier z / 2.
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.sample_size, dp_accounting.GaussianDpEvent(z / 2.0)
        )

    def _discrete_rdp(self, event: RoundPrivacy) -> tuple[np.ndarray, np.ndarray]:
        """(unamplified RDP at the plain orders, amplified RDP at INTEGER_RDP_ORDERS)."""
        hit = self._per_round.get(event)
        if hit is not None:
            return hit
        q = self.sample_rate
        plain = event.rdp(np.asarray(self._orders_plain))
        all_int = np.arange(2, INTEGER_RDP_ORDERS[-1] + 1)
        if q >= 1:
            amp = event.rdp(np.asarray(INTEGER_RDP_ORDERS, dtype=np.float64))
        elif self.sampling == "poisson":
            amp = subsampled_rdp(event.rdp(all_int), q, INTEGER_RDP_ORDERS)
        elif self._refused is None:
            amp = wbk_subsampled_rdp(event.replace_one().rdp(all_int), q, INTEGER_RDP_ORDERS)
        else:  # pragma: no cover - the refusal is for the PLD accountant (Gaussian only)
            amp = np.full(len(INTEGER_RDP_ORDERS), np.inf)
        self._per_round[event] = (plain, amp)
        return plain, amp

    def _add(self, event: RoundPrivacy, count: int) -> None:
        self._rounds += count
        if self.config.mechanism == "none":
            self._infinite = True
        elif self._gaussian:
            z = event.gaussian_noise_multiplier
            if z <= 0:
                self._infinite = True
                return
            self._inv_z2 += count / z**2
            if self._acc_amp is not None:
                self._acc_amp.compose(
                    dp_accounting.SelfComposedDpEvent(self._amplified_event(z), count)
                )
        else:
            plain, amp = self._discrete_rdp(event)
            self._rdp += count * plain
            self._rdp_amp += count * amp

    def _report(self) -> EpsilonReport:
        delta = self.config.delta
        if self._rounds == 0:
            eps, eps_amp = 0.0, 0.0
        elif self._infinite:
            eps, eps_amp = math.inf, math.inf
        elif self._gaussian:
            z_total = 1.0 / math.sqrt(self._inv_z2)
            if self.accountant == "rdp":
                plain = self._new_dp_accountant()
                plain.compose(dp_accounting.GaussianDpEvent(z_total))
                eps = float(plain.get_epsilon(delta))
            else:
                eps = _gaussian_epsilon_exact(z_total, delta)
            if self.sample_rate >= 1:
                eps_amp = eps
            elif self._acc_amp is not None:
                eps_amp = float(self._acc_amp.get_epsilon(delta))
            else:
                eps_amp = math.inf
        else:
            eps = _rdp_to_epsilon(self._orders_plain, self._rdp, delta)
            if self.sample_rate >= 1:
                eps_amp = eps
            else:
                eps_amp = _rdp_to_epsilon(INTEGER_RDP_ORDERS, self._rdp_amp, delta)
        if self.sample_rate >= 1:
            adjacency_amp = ZERO_OUT  # nothing sampled: the unamplified figure
        else:
            adjacency_amp = ADD_REMOVE if self.sampling == "poisson" else REPLACE_ONE
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
            adjacency_amplified=adjacency_amp,
            amplified_refused=self._refused,
        )


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


def _report_for(
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
) -> EpsilonReport:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DPConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    _check_rate(sample_rate)
    _check_delta(delta)
    _check_sampling(sampling)
    _check_population(population, required=sampling == "fixed")
    if (
        isinstance(clients_per_round, bool)
        or not isinstance(clients_per_round, int)
        or clients_per_round < 1
    ):
        raise DPConfigError(
            f"clients per round must be an integer >= 1, got {clients_per_round!r}"
        )
    if sampling == "fixed" and abs(sample_rate * population - clients_per_round) > 1e-6:  # type: ignore[operator]
        raise DPConfigError(
            f"fixed-size sampling of {clients_per_round} of {population} devices needs "
            f"sample rate {clients_per_round / population:g}, got {sample_rate!r}"  # type: ignore[operator]
        )
    config = DPConfig(
        mechanism=mechanism, clip=clip, noise_multiplier=noise_multiplier, bits=bits,
        delta=delta, adaptive_clip=adaptive_clip, clipped_count_stddev=clipped_count_stddev,
    )
    t = clients_per_round if min_contributors is None else min_contributors
    c = corrupt_count(corrupt, clients_per_round)
    plan = EncodingPlan.create(config, dim, clients_per_round, t, corrupt=c)
    acc = PrivacyAccountant(
        config, sample_rate, accountant, sampling=sampling, population=population,
        corrupt_fraction=corrupt,
    )
    acc.compose(plan.privacy_event(t), rounds)
    return acc.report()


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
) -> float:
    """Epsilon after `rounds` rounds in which `min_contributors` (default: all
    `clients_per_round`) noise shares survived, with the plan `EncodingPlan.create`
    makes for these parameters.

    - `amplified=True` (default) returns the figure amplified by `sampling` ("poisson" at
      rate `sample_rate`, or "fixed": `clients_per_round` of `population` without
      replacement, sample_rate = clients_per_round / population); valid only if the
      adversary does not learn who took part. `amplified=False`: the zero-out figure,
      valid against a server that knows.
    - `corrupt`: the fraction of each cohort that may collude with the server; the plan
      sizes the noise for, and the round is charged with, the t - floor(corrupt K)
      honest shares. 0 (default) reproduces the figures from before collusion was counted.
    - `bits`, `dim`, `clip` matter for ddgauss/skellam (and for the rounding-inflated
      sensitivity of gaussian). `adaptive_clip` charges the noised clipped count too
      (Andrew et al. 2021)."""
    rep = epsilon_report(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant=accountant,
        clients_per_round=clients_per_round, bits=bits, dim=dim, clip=clip,
        min_contributors=min_contributors, adaptive_clip=adaptive_clip,
        clipped_count_stddev=clipped_count_stddev, sampling=sampling,
        population=population, corrupt=corrupt,
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
) -> EpsilonReport:
    """Both figures of `epsilon_for` at once, with their adjacencies."""
    return _report_for(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant,
        clients_per_round, bits, dim, clip, min_contributors, adaptive_clip,
        clipped_count_stddev, sampling, population, corrupt,
    )


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
) -> float:
    """Smallest noise multiplier z (summed std z * C over the honest shares, the same
    meaning for every mechanism) with `epsilon_for(...) <= target_epsilon`, by bisection
    on the same accountant the run charges (same sampling, population and corrupt
    fraction). Raises DPConfigError when no z reaches the target (the discrete
    mechanisms' epsilon has a floor set by the rounding at a given bit width; an
    amplified figure may be refused)."""
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
            population=population, corrupt=corrupt,
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
