"""Noise mechanisms: a device's local noise share and the per-round RDP it buys.

Each mechanism is one small class behind `NoiseMechanism`, registered in
`MECHANISM_REGISTRY` (one place): adding a mechanism touches nothing else (a plug-in
registers with `register_mechanism`, a `secagg_dp.mechanisms` entry point, or is named as
`package.module:Class` wherever a mechanism name is accepted). A mechanism says

- `local_scale(target)`: the local noise parameter it will really use for a requested
  local standard deviation (integer units);
- `add_noise(record, scale, l2_bound, l1_bound, rng)`: add one device's share to the
  rounded integer record (np.int64), drawn by `dp.noise` from `rng`, a `dp.prng.SecureRng`
  (AES-256-CTR keyed from the OS CSPRNG on a real device: whoever can predict the
  generator can subtract the noise; numpy generators are refused with a TypeError);
- `rdp(orders, ...)`: the Renyi DP of ONE round, unsampled, for the sum of `n_shares`
  shares (the survivors), given the L2/L1 sensitivities in integer units.

The sampling rule "sum of any t shares carries the target noise" lives in
`EncodingPlan`; the survivors' count is passed to `rdp` by the accountant.

Adjacency. `rdp` bounds the divergence between two integer records whose difference has
L2 norm <= `l2_sens` and L1 norm <= `l1_sens`, with the SAME `n_shares` noise shares in
both. The plan's Delta2/Delta1 bound one device's rounded record, so at those values the
bound holds for *zero-out* adjacency: one device's record (its rounded update, and its clip
bit with adaptive clipping) replaced by zeros, its noise share kept. It is not add/remove:
a device that is absent also takes its noise share away, which changes the noise variance
and is not covered. Replace-one (a device's data replaced by another's) doubles both
sensitivities (`RoundPrivacy.replace_one`). `dp.accounting` states, per printed figure,
which adjacency it holds under.

No TensorFlow here: the samplers are `dp.noise`'s (vectorized numpy, exact up to float64
arithmetic, tested against the exact pmfs).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dp import noise
from dp.prng import SecureRng, require_secure_rng

if TYPE_CHECKING:
    from secagg.plugins import PluginResolver

__all__ = [
    "NoiseMechanism",
    "DiscreteGaussian",
    "Skellam",
    "RoundedGaussian",
    "NoNoise",
    "MECHANISM_REGISTRY",
    "get_mechanism",
    "register_mechanism",
    "ddgauss_tau",
    "ddgauss_rdp",
    "skellam_rdp",
    "gaussian_rdp",
]

def ddgauss_tau(local_scale: float, n_shares: int) -> float:
    """tau of Kairouz, Liu, Steinke (ICML 2021, Thm. 11 / Prop. 14):
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma_local^2 k / (k+1)), sigma_local being the
    scale of each discrete Gaussian share in integer units."""
    if n_shares <= 1:
        return 0.0
    k = np.arange(1, n_shares, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * local_scale**2 * k / (k + 1.0))))


def ddgauss_rdp(
    orders: Sequence[float],
    l2_sens: float,
    l1_sens: float,
    local_scale: float,
    n_shares: int,
    dim: int,
) -> np.ndarray:
    """RDP of the sum of `n_shares` discrete Gaussians N_Z(0, local_scale^2) added to an
    integer vector of L2 sensitivity `l2_sens` and L1 sensitivity `l1_sens` in Z^dim
    (Kairouz, Liu, Steinke, ICML 2021, Prop. 14 / Eq. 17), with sigma^2 = n * scale^2,
    a = Delta2 / sigma, b = Delta1 / sigma:
    eps(alpha) = min(alpha/2 a^2 + tau d, alpha/2 (a^2 + 2 b tau + tau^2 d),
    alpha/2 (a + sqrt(d) tau)^2).
    Stated for every real order alpha >= 1 (concentrated-DP form), so the unamplified
    figure may use fractional orders (`fractional_orders`)."""
    alpha = np.asarray(orders, dtype=np.float64)
    if local_scale <= 0 or n_shares < 1:
        return np.full_like(alpha, np.inf)
    sigma = math.sqrt(n_shares) * local_scale
    tau = ddgauss_tau(local_scale, n_shares)
    a = l2_sens / sigma
    b = l1_sens / sigma
    e1 = alpha / 2.0 * a**2 + tau * dim
    e2 = alpha / 2.0 * (a**2 + 2.0 * b * tau + tau**2 * dim)
    e3 = alpha / 2.0 * (a + math.sqrt(dim) * tau) ** 2
    return np.minimum(np.minimum(e1, e2), e3)


def skellam_rdp(
    orders: Sequence[float], l2_sens: float, l1_sens: float, variance: float
) -> np.ndarray:
    """RDP of the Skellam mechanism with summed variance mu (Agarwal, Kairouz, Liu,
    NeurIPS 2021, Thm. 3.5 in the form of REFERENCES.md):
    eps(alpha) = alpha Delta2^2 / (2 mu) + min(((2 alpha - 1) Delta2^2 + 6 Delta1) / (4 mu^2),
    3 Delta1 / (2 mu))."""
    alpha = np.asarray(orders, dtype=np.float64)
    mu = float(variance)
    if mu <= 0:
        return np.full_like(alpha, np.inf)
    main = alpha * l2_sens**2 / (2.0 * mu)
    extra = np.minimum(
        ((2.0 * alpha - 1.0) * l2_sens**2 + 6.0 * l1_sens) / (4.0 * mu**2),
        3.0 * l1_sens / (2.0 * mu),
    )
    return main + extra


def gaussian_rdp(orders: Sequence[float], noise_multiplier: float) -> np.ndarray:
    """RDP of the Gaussian mechanism, alpha / (2 z^2) (Mironov 2017)."""
    alpha = np.asarray(orders, dtype=np.float64)
    if noise_multiplier <= 0:
        return np.full_like(alpha, np.inf)
    return alpha / (2.0 * noise_multiplier**2)


class NoiseMechanism(ABC):
    """One noise mechanism: its local share and its per-round accounting."""

    name: str = ""
    #: False when `rdp` is a close approximation rather than a proven bound; every place
    #: that prints an epsilon for such a mechanism says so (see `accounting_note`).
    proven: bool = True
    #: True when the accountant composes dp-accounting Gaussian events (RDP and PLD).
    gaussian_events: bool = False
    #: True when `rdp` is proven at every real order > 1 (then the unamplified figure is
    #: taken over `dp.config.FINE_RDP_ORDERS`); False: integer orders only.
    fractional_orders: bool = True
    #: Smallest non-zero local scale (integer units) for which `rdp` is valid.
    min_local_scale: float = 0.0
    #: Largest local scale a plan uses. Plans with more bits than that needs use a
    #: coarser gamma instead (rounding, variance 1/4 against 2^40, stays negligible).
    #: Set for tensorflow-privacy's old samplers (int64 overflow, Poisson drift at scale
    #: 2^26); `dp.noise` is tested at 2^20 (discrete Gaussian) and lam = 2^39 (Poisson)
    #: and accepts lam up to 2^52, i.e. scale 2^26.5.
    max_local_scale: float = float(2**20)

    def local_scale(self, target_local_stddev: float) -> float:
        """The local noise parameter actually used for a requested local std."""
        return float(target_local_stddev)

    @abstractmethod
    def add_noise(
        self,
        record: np.ndarray,
        scale: float,
        l2_bound: float,
        l1_bound: float,
        rng: SecureRng,
    ) -> np.ndarray:
        """Return record (int64) + one local noise share (int64), drawn from `rng` only.

        `l2_bound` / `l1_bound` are the record's norm bounds in integer units (what the
        share is calibrated against); the built-in samplers do not need them."""

    @abstractmethod
    def rdp(
        self,
        orders: Sequence[float],
        l2_sens: float,
        l1_sens: float,
        local_scale: float,
        n_shares: int,
        dim: int,
    ) -> np.ndarray:
        """Unsampled RDP of one round for the sum of `n_shares` shares."""

    def noise_variance(self, local_scale: float, n_shares: int) -> float:
        """Variance (integer units, per coordinate) of the sum of `n_shares` shares."""
        return n_shares * local_scale**2


def _as_record(record: np.ndarray, rng: SecureRng, where: str) -> np.ndarray:
    require_secure_rng(rng, where)
    return np.asarray(record, dtype=np.int64)


class DiscreteGaussian(NoiseMechanism):
    """Distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021).

    Each device adds N_Z(0, s^2) with an integer scale s (tensorflow-privacy's sampler
    takes integer scales only, and DistributedDiscreteGaussianSumQuery rounds the scale
    up: we round up in the plan, so the accounted scale is the scale used). The sum of
    n shares is not a discrete Gaussian; the accounting bound pays for that with tau.
    """

    name = "ddgauss"

    def local_scale(self, target_local_stddev: float) -> float:
        if target_local_stddev <= 0:
            return 0.0
        return float(max(1, math.ceil(target_local_stddev - 1e-9)))

    def add_noise(
        self,
        record: np.ndarray,
        scale: float,
        l2_bound: float,
        l1_bound: float,
        rng: SecureRng,
    ) -> np.ndarray:
        record = _as_record(record, rng, "DiscreteGaussian.add_noise")
        share = noise.discrete_gaussian(rng, float(scale), record.size)
        return record + share.reshape(record.shape)

    def rdp(
        self,
        orders: Sequence[float],
        l2_sens: float,
        l1_sens: float,
        local_scale: float,
        n_shares: int,
        dim: int,
    ) -> np.ndarray:
        return ddgauss_rdp(orders, l2_sens, l1_sens, local_scale, n_shares, dim)


class Skellam(NoiseMechanism):
    """Distributed Skellam (Agarwal, Kairouz, Liu, NeurIPS 2021).

    Each device adds Poisson(s^2/2) - Poisson(s^2/2) (variance s^2); the sum of n shares
    is again Skellam with variance n s^2, which is what makes it exact for any survivor
    count. The draw is `dp.noise.skellam` (two exact Poisson vectors) from `rng`
    (tensorflow-privacy's query seeded its Poisson pair from `tf.timestamp()`, which is
    predictable and shared by devices encoding in the same microsecond).
    """

    name = "skellam"
    # Agarwal, Kairouz, Liu (2021), Thm. 3.5, is stated for integer orders alpha > 1.
    fractional_orders = False

    def add_noise(
        self,
        record: np.ndarray,
        scale: float,
        l2_bound: float,
        l1_bound: float,
        rng: SecureRng,
    ) -> np.ndarray:
        record = _as_record(record, rng, "Skellam.add_noise")
        share = noise.skellam(rng, float(scale) ** 2, record.size)
        return record + share.reshape(record.shape)

    def rdp(
        self,
        orders: Sequence[float],
        l2_sens: float,
        l1_sens: float,
        local_scale: float,
        n_shares: int,
        dim: int,
    ) -> np.ndarray:
        return skellam_rdp(orders, l2_sens, l1_sens, self.noise_variance(local_scale, n_shares))


class RoundedGaussian(NoiseMechanism):
    """Continuous Gaussian shares rounded to integers: a comparison baseline.

    The device adds N(0, s^2) (`dp.noise.gaussian`, Box-Muller from `rng`) to its
    rounded integer vector and rounds the result to the nearest integer, i.e. it sends
    x + round(g).

    Accounting (`rdp`): the Gaussian mechanism with summed std sqrt(n) s and the
    rounding-inflated L2 sensitivity Delta2 (integer units), i.e. noise multiplier
    sqrt(n) s / Delta2, composed with dp-accounting (RDP or PLD). Why it is right, and
    where it stops being right:
    - The sensitivity is right: Delta2 bounds every rounded vector, and the data enter
      only as integers, so for one share x + round(g) = round(x + g) is a
      post-processing of the continuous Gaussian mechanism.
    - For the *sum* of n shares it is an approximation, not a proof: sum_i round(g_i) is
      not a post-processing of sum_i g_i. It is a lattice distribution with variance
      n (s^2 + 1/12) whose characteristic function differs from the sampled Gaussian's
      by terms of order exp(-2 pi^2 s^2) (Poisson summation; the same kind of term
      as the tau of the discrete Gaussian bound), negligible for s >= 1 and for the
      s ~ 10^3..10^4 of 16..20-bit plans. For s << 1 it is plainly wrong (every share
      rounds to 0: no noise at all), so plans with 0 < s < 1 are refused
      (`min_local_scale`). Use "ddgauss" or "skellam" for a proven distributed
      guarantee; "gaussian" is the baseline the papers compare with.
    """

    name = "gaussian"
    proven = False
    gaussian_events = True
    min_local_scale = 1.0

    def add_noise(
        self,
        record: np.ndarray,
        scale: float,
        l2_bound: float,
        l1_bound: float,
        rng: SecureRng,
    ) -> np.ndarray:
        record = _as_record(record, rng, "RoundedGaussian.add_noise")
        share = np.rint(noise.gaussian(rng, float(scale), record.size)).astype(np.int64)
        return record + share.reshape(record.shape)

    def rdp(
        self,
        orders: Sequence[float],
        l2_sens: float,
        l1_sens: float,
        local_scale: float,
        n_shares: int,
        dim: int,
    ) -> np.ndarray:
        return gaussian_rdp(orders, self.noise_multiplier(l2_sens, local_scale, n_shares))

    def noise_multiplier(self, l2_sens: float, local_scale: float, n_shares: int) -> float:
        """Summed std over sensitivity (both in integer units)."""
        if l2_sens <= 0:
            return math.inf
        return math.sqrt(self.noise_variance(local_scale, n_shares)) / l2_sens


class NoNoise(NoiseMechanism):
    """No noise: secure aggregation only, no DP guarantee (epsilon = infinity)."""

    name = "none"

    def local_scale(self, target_local_stddev: float) -> float:
        return 0.0

    def add_noise(
        self,
        record: np.ndarray,
        scale: float,
        l2_bound: float,
        l1_bound: float,
        rng: SecureRng,
    ) -> np.ndarray:
        return _as_record(record, rng, "NoNoise.add_noise")

    def rdp(
        self,
        orders: Sequence[float],
        l2_sens: float,
        l1_sens: float,
        local_scale: float,
        n_shares: int,
        dim: int,
    ) -> np.ndarray:
        return np.full(len(orders), np.inf)


def _adopt_mechanism(obj: Any, name: str) -> NoiseMechanism:
    if isinstance(obj, type) and issubclass(obj, NoiseMechanism):
        obj = obj()
    if not isinstance(obj, NoiseMechanism):
        raise TypeError(f"needs a NoiseMechanism subclass or instance, got {obj!r}")
    return obj


#: Every mechanism by name: the built-ins, then plug-ins (`secagg.plugins`): installed
#: `secagg_dp.mechanisms` entry points and `package.module:Class` paths, resolved by
#: `get_mechanism` and registered under the name they were resolved by.
class MechanismRegistry(dict[str, NoiseMechanism]):
    """Name -> mechanism. The `dict` operations see what is registered in this process
    and import nothing; `resolve` also loads entry points and import paths (with
    `secagg.plugins.PluginResolver`, imported only when a name is not registered)."""

    _resolver: PluginResolver[NoiseMechanism] | None = None

    def _plugins(self) -> PluginResolver[NoiseMechanism]:
        if self._resolver is None:
            from secagg.plugins import PluginResolver

            self._resolver = PluginResolver(
                "mechanism", "secagg_dp.mechanisms", _adopt_mechanism
            )
        return self._resolver

    def names(self) -> list[str]:
        """Registered names (built-ins first), then installed entry points (not loaded)."""
        return self._plugins().names(self)

    def refresh(self) -> None:
        """Forget the entry points read so far (after installing a package)."""
        self._plugins().refresh()

    def resolve(self, name: object) -> NoiseMechanism:
        """The mechanism called `name`: registered, an entry point or an import path."""
        found = self.get(name) if isinstance(name, str) else None
        return found if found is not None else self._plugins().resolve(self, name)


MECHANISM_REGISTRY = MechanismRegistry()
MECHANISM_REGISTRY.update(
    {m.name: m for m in (DiscreteGaussian(), Skellam(), RoundedGaussian(), NoNoise())}
)


def register_mechanism(
    mechanism: NoiseMechanism | type[NoiseMechanism], *, replace: bool = False
) -> Any:
    """Register a `NoiseMechanism` subclass (instantiated with no arguments) or instance
    under its `name`; returns its argument, so it works as a class decorator. ValueError
    if the name is taken (unless `replace`) or is not an identifier."""
    instance = _adopt_mechanism(mechanism, getattr(mechanism, "name", "?"))
    name = instance.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"mechanism name must be a non-empty identifier, got {name!r}")
    if name in MECHANISM_REGISTRY and not replace:
        raise ValueError(f"mechanism {name!r} is already registered")
    MECHANISM_REGISTRY[name] = instance
    return mechanism


def accounting_note(name: str) -> str | None:
    """A caveat to print next to an epsilon of mechanism `name` (None: a proven bound)."""
    if name == "none" or name not in MECHANISM_REGISTRY or MECHANISM_REGISTRY[name].proven:
        return None
    return (f"{name}: the sum of rounded shares is accounted as a Gaussian, a close "
            "approximation, not a proof; use ddgauss or skellam for a proven bound")


def get_mechanism(name: str) -> NoiseMechanism:
    """The mechanism called `name`: registered, an installed entry point or a
    `package.module:Class` path (`secagg.plugins`); ValueError listing the known ones."""
    return MECHANISM_REGISTRY.resolve(name)
