"""Noise mechanisms: a device's local noise share and the per-round RDP it buys.

Each mechanism is one small class behind `NoiseMechanism`, registered in
`MECHANISM_REGISTRY` (one place): adding a mechanism touches nothing else. A mechanism says

- `local_scale(target)`: the local noise parameter it will really use for a requested
  local standard deviation (integer units);
- `add_noise(record, scale, l2_bound, l1_bound, rng)`: add one device's share to the
  rounded integer record (np.int64), drawing with tensorflow-privacy's samplers, seeded
  from `rng` (which the device must seed from OS entropy: whoever can predict the seed
  can subtract the noise);
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

TensorFlow is imported lazily, so that accounting and the CLI stay fast.
"""

from __future__ import annotations

import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "NoiseMechanism",
    "DiscreteGaussian",
    "Skellam",
    "RoundedGaussian",
    "NoNoise",
    "MECHANISM_REGISTRY",
    "get_mechanism",
    "ddgauss_tau",
    "ddgauss_rdp",
    "skellam_rdp",
    "gaussian_rdp",
]

_INT32_LIMIT = 2**31 - 1
_TF_SEED_LOCK = threading.Lock()


def _seed_from(rng: np.random.Generator) -> int:
    """A 63-bit TF seed from the device's generator (itself seeded from the OS CSPRNG)."""
    return int(rng.integers(0, 2**63 - 1))


@contextmanager
def _seeded_tf(rng: np.random.Generator) -> Iterator[None]:
    """Run TF's stateful samplers (eagerly) under a global seed drawn from `rng`.

    tensorflow-privacy's samplers draw with stateful ops (`tf.random.uniform`,
    `tf.random.normal`) whose stream follows the process-global TF seed. Keras code may
    set that seed from a public value (model init, shuffling), which would make the
    noise predictable; so each share is drawn right after setting the global seed from
    `rng`, under a lock (the seed is process-global), and the samplers run eagerly (see
    `DiscreteGaussian.add_noise`: a traced `tf.function` would keep the seeds of its first
    trace, so two devices would add *identical* noise). Nothing else process-wide is
    switched: other threads' `tf.function`s keep running as graphs.
    """
    import tensorflow as tf

    with _TF_SEED_LOCK:
        tf.random.set_seed(_seed_from(rng))
        yield


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
    alpha/2 (a + sqrt(d) tau)^2)."""
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
    #: Largest local scale the samplers handle accurately: tensorflow-privacy's discrete
    #: Gaussian squares (|x| - scale) in int64 (overflow beyond ~3e9 / 40), and
    #: TF's Poisson sampler drifts for lambda = scale^2 / 2 beyond ~1e13 (measured:
    #: std 1.20x at scale 2^26). Plans with more bits than that needs use a coarser
    #: gamma instead (rounding, variance 1/4 against 2^40, stays negligible).
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
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Return record (int64) + one local noise share (int64)."""

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


def _fits_int32(record: np.ndarray, scale: float) -> bool:
    peak = float(np.max(np.abs(record))) if record.size else 0.0
    return peak + 40.0 * scale + 1.0 < _INT32_LIMIT


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
        rng: np.random.Generator,
    ) -> np.ndarray:
        import tensorflow as tf
        from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils
        from tensorflow_privacy.privacy.dp_query.distributed_discrete_gaussian_query import (
            DistributedDiscreteGaussianSumQuery,
        )

        iscale = int(scale)
        if _fits_int32(record, scale):
            # The query's own checks (int32 record, L2 bound with headroom for float32
            # norm rounding), without its noise: that is drawn below, seeded.
            bound = float(l2_bound) * (1.0 + 1e-5) + 1.0
            query = DistributedDiscreteGaussianSumQuery(l2_norm_bound=bound, local_stddev=0)
            params = query.derive_sample_params(query.initial_global_state())
            query.preprocess_record(params, tf.constant(record.astype(np.int32)))
        # tensorflow-privacy's sampler body, run eagerly (its `tf.function` wrapper would
        # freeze the random ops' seeds at the first trace).
        sampler = discrete_gaussian_utils._sample_discrete_gaussian_helper.python_function
        with _seeded_tf(rng):
            noise = sampler(
                tf.constant(iscale, tf.int64), tf.constant(record.shape, tf.int32), tf.int64
            )
        return record + noise.numpy().astype(np.int64)

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


@functools.cache
def _seeded_skellam_query_class() -> type:
    """DistributedSkellamSumQuery whose Poisson pair is seeded by the caller (the query
    itself seeds `tf.random.stateless_poisson` from `tf.timestamp()`)."""
    import tensorflow as tf
    from tensorflow_privacy.privacy.dp_query.distributed_skellam_query import (
        DistributedSkellamSumQuery,
    )

    class SeededSkellamSumQuery(DistributedSkellamSumQuery):  # type: ignore[misc]
        def __init__(
            self,
            l1_norm_bound: int,
            l2_norm_bound: float,
            local_stddev: float,
            seed: tuple[int, int],
        ) -> None:
            super().__init__(l1_norm_bound, l2_norm_bound, local_stddev)
            self._seed = seed

        def add_noise_to_sample(self, local_stddev: Any, record: Any) -> Any:
            lam = 0.5 * tf.cast(local_stddev, tf.float64) ** 2

            def add(v: Any) -> Any:
                p = tf.random.stateless_poisson(
                    shape=tf.concat([tf.shape(v), [2]], axis=0),
                    seed=tf.constant(self._seed, tf.int64),
                    lam=[lam, lam],
                    dtype=tf.int64,
                )
                return v + tf.cast(p[..., 0] - p[..., 1], v.dtype)

            return tf.nest.map_structure(add, record)

    return SeededSkellamSumQuery


class Skellam(NoiseMechanism):
    """Distributed Skellam (Agarwal, Kairouz, Liu, NeurIPS 2021).

    Each device adds Poisson(s^2/2) - Poisson(s^2/2) (variance s^2); the sum of n shares
    is again Skellam with variance n s^2, which is what makes it exact for any survivor
    count. The draw is tensorflow-privacy's (DistributedSkellamSumQuery's
    `tf.random.stateless_poisson` pair), but seeded from `rng`: the query itself seeds
    from `tf.timestamp()`, which is predictable and shared by devices encoding in the
    same microsecond.
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
        rng: np.random.Generator,
    ) -> np.ndarray:
        import tensorflow as tf

        query = _seeded_skellam_query_class()(
            l1_norm_bound=int(math.ceil(l1_bound)) + 1,
            l2_norm_bound=float(l2_bound) * (1.0 + 1e-5) + 1.0,
            local_stddev=float(scale),
            seed=(_seed_from(rng), _seed_from(rng)),
        )
        if _fits_int32(record, scale) and l1_bound + 1 < _INT32_LIMIT:
            params = query.derive_sample_params(query.initial_global_state())
            out = query.preprocess_record(params, tf.constant(record.astype(np.int32)))
            return out.numpy().astype(np.int64)
        # Records beyond int32 (very large b): the same sampler on int64; the norm bounds
        # hold by construction of the rounding.
        return query.add_noise_to_sample(float(scale), tf.constant(record, tf.int64)).numpy()

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

    The device adds N(0, s^2) (tensorflow-privacy's GaussianSumQuery noise) to its
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
        rng: np.random.Generator,
    ) -> np.ndarray:
        import tensorflow as tf
        from tensorflow_privacy.privacy.dp_query.gaussian_query import GaussianSumQuery

        query = GaussianSumQuery(l2_norm_clip=float(l2_bound) + 1.0, stddev=float(scale))
        zero = tf.zeros(record.shape, tf.float64)
        with _seeded_tf(rng):
            noise, _, _ = query.get_noised_result(zero, query.initial_global_state())
        return record + np.rint(noise.numpy()).astype(np.int64)

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
        rng: np.random.Generator,
    ) -> np.ndarray:
        return record

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


MECHANISM_REGISTRY: dict[str, NoiseMechanism] = {
    m.name: m for m in (DiscreteGaussian(), Skellam(), RoundedGaussian(), NoNoise())
}


def accounting_note(name: str) -> str | None:
    """A caveat to print next to an epsilon of mechanism `name` (None: a proven bound)."""
    if name == "none" or name not in MECHANISM_REGISTRY or MECHANISM_REGISTRY[name].proven:
        return None
    return (f"{name}: the sum of rounded shares is accounted as a Gaussian, a close "
            "approximation, not a proof; use ddgauss or skellam for a proven bound")


def get_mechanism(name: str) -> NoiseMechanism:
    """The registered mechanism called `name`."""
    try:
        return MECHANISM_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown mechanism {name!r}; known: {', '.join(MECHANISM_REGISTRY)}"
        ) from None
