"""Privacy accountant for the distributed mechanisms, composed over rounds.

- "gaussian": dp-accounting's RdpAccountant or PLDAccountant, one
  `GaussianDpEvent(z_eff)` per round (wrapped in `PoissonSampledDpEvent(q, .)` for the
  amplified figure), z_eff from `RoundPrivacy.gaussian_noise_multiplier`.
- "ddgauss": the RDP bound of Kairouz, Liu, Steinke (ICML 2021) per round.
- "skellam": the RDP bound of Agarwal, Kairouz, Liu (NeurIPS 2021) per round.
  Both amplified by Poisson subsampling with the integer-order bound of Zhu & Wang
  (ICML 2019, Thm. 5) in the form the papers' code uses, composed by adding RDP, and
  converted to (epsilon, delta) with dp-accounting's conversion.
- "none": infinite epsilon.

Two figures, always both:
- `epsilon`: no amplification. Valid against a server that knows who was sampled and
  who survived (ours does: it samples and runs the protocol).
- `epsilon_amplified`: Poisson subsampling at rate q. Valid only if the adversary does
  not learn which devices took part in a round (e.g. the sampling is done by a party it
  cannot observe); it is the figure usually quoted for DP-FedAvg.

Every round is charged with the noise the survivors really added
(`EncodingPlan.privacy_event(n_survivors)`), not the noise that was planned.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from dp.config import INTEGER_RDP_ORDERS, RDP_ORDERS, DPConfig, DPConfigError
from dp.encoding import EncodingPlan, RoundPrivacy
from dp.mechanisms import get_mechanism

__all__ = [
    "PrivacyAccountant",
    "EpsilonReport",
    "subsampled_rdp",
    "epsilon_for",
    "epsilon_report",
    "calibrate_noise",
    "ACCOUNTANTS",
]

ACCOUNTANTS = ("rdp", "pld")


def _check_rate(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise DPConfigError(f"sample rate must be in (0, 1], got {q!r}")
    return float(q)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise DPConfigError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    if not math.isfinite(m):
        return m
    return m + math.log(float(np.sum(np.exp(x - m))))


def subsampled_rdp(
    rdp_at: np.ndarray, q: float, orders: tuple[int, ...] | None = None
) -> np.ndarray:
    """Poisson-subsampled RDP at integer orders, given `rdp_at[i]` = eps(i + 2) of the
    unsampled mechanism at the orders 2..A (Zhu & Wang, ICML 2019, Thm. 5, in the
    DDG/Skellam authors' form):

    eps_q(a) = 1/(a-1) log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
               + 3 sum_{l=3}^{a} C(a,l) (1-q)^(a-l) q^l e^((l-1) eps(l))],

    then min(eps_q(a), eps(a)). Returns the values at `orders` (default 2..A).
    """
    eps = np.asarray(rdp_at, dtype=np.float64)
    top = eps.shape[0] + 1
    alphas = tuple(range(2, top + 1)) if orders is None else orders
    if any(a < 2 or a > top for a in alphas):
        raise ValueError(f"orders must be integers in [2, {top}], got {alphas!r}")
    if q >= 1.0:
        return eps[np.array(alphas) - 2].copy()
    # log l! for l = 0..top
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, top + 1)))))
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


@dataclass(frozen=True)
class EpsilonReport:
    """(epsilon, delta) after `rounds` rounds, with and without amplification.

    `epsilon`: no sampling amplification; valid even when the server knows who took
    part. `epsilon_amplified`: Poisson subsampling at `sample_rate`; valid only if the
    adversary does not learn who took part.
    """

    epsilon: float
    epsilon_amplified: float
    delta: float
    rounds: int
    mechanism: str = ""
    accountant: str = "rdp"
    sample_rate: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("epsilon", "epsilon_amplified"):
            if not math.isfinite(d[key]):
                d[key] = None  # JSON has no infinity; None means "no guarantee"
        return d


class PrivacyAccountant:
    """Composes `RoundPrivacy` events over rounds for one `DPConfig`.

    Incremental: each `compose` adds the round to running dp-accounting accountants
    (gaussian) or running RDP vectors (ddgauss, skellam), so a report costs one
    conversion whatever the number of rounds. `would_exceed` works on a copy.
    """

    def __init__(self, config: DPConfig, sample_rate: float, accountant: str = "rdp") -> None:
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
        self._rounds = 0
        self._infinite = False
        self._gaussian = mech.gaussian_events
        # Unamplified Gaussian rounds compose exactly into one Gaussian with
        # z^-2 = sum of the rounds' z^-2 (kept as that sum: PLD of 1000 composed wide
        # Gaussians would take half a minute); amplified rounds go to dp-accounting.
        self._inv_z2 = 0.0
        self._acc_amp = self._new_dp_accountant() if self._gaussian else None
        self._rdp = np.zeros(len(INTEGER_RDP_ORDERS))
        self._rdp_amp = np.zeros(len(INTEGER_RDP_ORDERS))
        self._cache: EpsilonReport | None = None

    @property
    def rounds(self) -> int:
        return self._rounds

    def compose(self, event: RoundPrivacy, count: int = 1) -> None:
        """Charge `count` rounds that each guaranteed `event`."""
        self._check_event(event)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        self._add(event, count)
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

    def _new_dp_accountant(self) -> dp_accounting.PrivacyAccountant:
        if self.accountant == "rdp":
            return dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
        return dp_accounting.pld.PLDAccountant()

    def _check_event(self, event: RoundPrivacy) -> None:
        if not isinstance(event, RoundPrivacy):
            raise TypeError(f"event must be a RoundPrivacy, got {type(event).__name__}")
        if event.mechanism != self.config.mechanism:
            raise ValueError(
                f"event of mechanism {event.mechanism!r} given to an accountant for "
                f"{self.config.mechanism!r}"
            )

    def _add(self, event: RoundPrivacy, count: int) -> None:
        self._rounds += count
        q = self.sample_rate
        if self.config.mechanism == "none":
            self._infinite = True
        elif self._gaussian:
            z = event.gaussian_noise_multiplier
            if z <= 0:
                self._infinite = True
                return
            self._inv_z2 += count / z**2
            ev: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
            if q < 1:
                ev = dp_accounting.PoissonSampledDpEvent(q, ev)
            if self._acc_amp is not None:
                self._acc_amp.compose(dp_accounting.SelfComposedDpEvent(ev, count))
        else:
            per_round = event.rdp(np.arange(2, INTEGER_RDP_ORDERS[-1] + 1))
            self._rdp += count * per_round[np.array(INTEGER_RDP_ORDERS) - 2]
            self._rdp_amp += count * subsampled_rdp(per_round, q, INTEGER_RDP_ORDERS)

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
            eps_amp = float(self._acc_amp.get_epsilon(delta)) if self._acc_amp else math.inf
        else:
            eps = _rdp_to_epsilon(self._rdp, delta)
            eps_amp = _rdp_to_epsilon(self._rdp_amp, delta)
        return EpsilonReport(
            epsilon=eps,
            epsilon_amplified=eps_amp,
            delta=delta,
            rounds=self._rounds,
            mechanism=self.config.mechanism,
            accountant=self.accountant,
            sample_rate=self.sample_rate,
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


def _rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    if not np.all(np.isfinite(rdp)):
        finite = np.isfinite(rdp)
        if not finite.any():
            return math.inf
        orders = [o for o, f in zip(INTEGER_RDP_ORDERS, finite, strict=True) if f]
        return float(compute_epsilon(orders, rdp[finite].tolist(), delta)[0])
    return float(compute_epsilon(list(INTEGER_RDP_ORDERS), rdp.tolist(), delta)[0])


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
    adaptive_clip: bool = False,
    clipped_count_stddev: float | None = None,
) -> EpsilonReport:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DPConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    _check_rate(sample_rate)
    _check_delta(delta)
    config = DPConfig(
        mechanism=mechanism, clip=clip, noise_multiplier=noise_multiplier, bits=bits,
        delta=delta, adaptive_clip=adaptive_clip, clipped_count_stddev=clipped_count_stddev,
    )
    t = clients_per_round if min_contributors is None else min_contributors
    plan = EncodingPlan.create(config, dim, clients_per_round, t)
    acc = PrivacyAccountant(config, sample_rate, accountant)
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
) -> float:
    """Epsilon after `rounds` rounds in which `min_contributors` (default: all
    `clients_per_round`) noise shares survived, with the plan `EncodingPlan.create`
    makes for these parameters. `amplified=True` (default) returns the Poisson-sampled
    figure (valid only if the adversary does not learn who took part; it is the figure
    dp-accounting reports for DP-SGD/DP-FedAvg), `amplified=False` the figure valid
    against a server that knows. `bits`, `dim`, `clip` matter for ddgauss/skellam (and
    for the rounding-inflated sensitivity of gaussian). `adaptive_clip` charges the
    noised clipped count too (Andrew et al. 2021)."""
    rep = _report_for(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant,
        clients_per_round, bits, dim, clip, min_contributors, adaptive_clip,
        clipped_count_stddev,
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
) -> EpsilonReport:
    """Both figures of `epsilon_for` at once."""
    return _report_for(
        mechanism, noise_multiplier, sample_rate, rounds, delta, accountant,
        clients_per_round, bits, dim, clip, min_contributors, adaptive_clip,
        clipped_count_stddev,
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
) -> float:
    """Smallest noise multiplier z (summed std z * C, the same meaning for every
    mechanism) with `epsilon_for(...) <= target_epsilon`, by bisection on the
    accountant. Raises DPConfigError when no z reaches the target (the discrete
    mechanisms' epsilon has a floor set by the rounding at a given bit width)."""
    if not (isinstance(target_epsilon, (int, float)) and target_epsilon > 0):
        raise DPConfigError(f"target epsilon must be > 0, got {target_epsilon!r}")
    if mechanism == "none":
        raise DPConfigError("mechanism 'none' adds no noise: nothing to calibrate")

    def eps(z: float) -> float:
        return epsilon_for(
            mechanism, z, sample_rate, rounds, delta, accountant=accountant,
            clients_per_round=clients_per_round, bits=bits, dim=dim, clip=clip,
            min_contributors=min_contributors, amplified=amplified,
            adaptive_clip=adaptive_clip, clipped_count_stddev=clipped_count_stddev,
        )

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
