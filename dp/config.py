"""Configuration of the distributed-DP encoder and accountant (one frozen record).

`DPConfig` is the single source of the DP parameters of a run: the CLI, the server,
the devices and the benchmarks all build one and share it through `to_dict/from_dict`.
`bits` is THE modulus exponent b of the round: the encoder wraps into Z_{2^b} and the
secure sum adds modulo the same 2^b.

`RDP_ORDERS` is the one place where the Renyi orders used by every accountant in this
package are listed (dp-accounting's defaults, so the Gaussian figures equal its own);
`FINE_RDP_ORDERS` adds a fine geometric grid of fractional orders for the bounds that hold
at every real order > 1 (used for the unamplified figures where the bound allows it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

from dp.mechanisms import MECHANISM_REGISTRY

__all__ = [
    "DPConfig",
    "DPConfigError",
    "MECHANISMS",
    "ROTATIONS",
    "RDP_ORDERS",
    "INTEGER_RDP_ORDERS",
    "FINE_RDP_ORDERS",
    "SAMPLINGS",
]

#: The built-in mechanisms; `DPConfig.mechanism` also takes any plug-in of
#: `MECHANISM_REGISTRY` (an installed entry point or a `package.module:Class` path).
MECHANISMS = tuple(MECHANISM_REGISTRY)
ROTATIONS = ("hadamard", "dft")

#: Renyi orders for every RDP computation in `dp` (dp-accounting's default list).
RDP_ORDERS: tuple[float, ...] = tuple(float(a) for a in DEFAULT_RDP_ORDERS)
#: The integer orders >= 2 among them: the Poisson-subsampled bound used for the
#: discrete mechanisms (Zhu & Wang 2019, Thm. 5) holds for integer orders only.
INTEGER_RDP_ORDERS: tuple[int, ...] = tuple(
    int(a) for a in RDP_ORDERS if a >= 2 and float(a).is_integer()
)
#: RDP_ORDERS plus alpha - 1 on a geometric grid from 1e-3 to 1e3 (40 points a decade):
#: for the bounds proven at every real order > 1 (Gaussian, distributed discrete
#: Gaussian). Large epsilons are reached at orders close to 1, which integer orders miss.
FINE_RDP_ORDERS: tuple[float, ...] = tuple(
    sorted({float(a) for a in RDP_ORDERS} | {1.0 + 10.0 ** (i / 40.0) for i in range(-120, 121)})
)
#: How the server samples a round's cohort (see `dp.accounting`): "poisson" (each device
#: independently with probability q) or "fixed" (k of the N devices without replacement).
SAMPLINGS = ("poisson", "fixed")


class DPConfigError(ValueError):
    """A DP parameter is out of range or the parameters cannot work together."""


def _check_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DPConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise DPConfigError(f"{name} must be finite, got {value!r}")
    return value


def _check_positive(name: str, value: float) -> float:
    value = _check_finite(name, value)
    if value <= 0:
        raise DPConfigError(f"{name} must be > 0, got {value!r}")
    return value


@dataclass(frozen=True)
class DPConfig:
    """Parameters of client-level distributed DP for one training run.

    - `mechanism`: "ddgauss" (distributed discrete Gaussian, Kairouz, Liu, Steinke,
      ICML 2021), "skellam" (Agarwal, Kairouz, Liu, NeurIPS 2021), "gaussian"
      (continuous Gaussian shares rounded to integers; a comparison baseline) or
      "none" (no noise: no DP guarantee, epsilon is infinite), or a plug-in
      (`dp.mechanisms.MECHANISM_REGISTRY`: an entry point name or `package.module:Class`).
    - `clip` C: every device's update is scaled to L2 norm <= C before anything else.
    - `noise_multiplier` z: the standard deviation of the noise in the *sum* of any
      `min_contributors` (secure-aggregation threshold t) devices is z * C in update
      units, per coordinate. z = 0 adds no noise (no DP guarantee: epsilon is
      infinite); it exists for testing the encoding exactly.
    - `bits` b: the modulus 2^b of the encoding and of the secure sum.
    - `beta`: conditional randomized rounding parameter (0 disables it; Kairouz et al.
      use exp(-0.5)).
    - `modclip_prob`: target probability, per coordinate, that the aggregate wraps
      around the modulus (sets the scale gamma).
    - `rotation`: "hadamard" (randomized Walsh-Hadamard, padded to a power of two) or
      "dft" (randomized real DFT, padded to an even length).
    - `delta`: the delta at which epsilon is reported.
    - `adaptive_clip`, `target_quantile`, `clip_lr`, `clipped_count_stddev`: adaptive
      clipping of Andrew et al. (NeurIPS 2021); the std of the noise on the clipped
      count defaults to (expected clients per round) / 20 as in the paper.
    - `eval_buckets`, `eval_noise_ratio`, `eval_max_examples`, `eval_max_loss`: private
      federated evaluation (0 buckets: off). Each device appends to its update a small
      block: a one-hot histogram of its accuracy on its held-out split (`eval_buckets`
      buckets), its accuracy, its example count / `eval_max_examples` and its loss sum /
      (`eval_max_examples` * `eval_max_loss`) (per-example losses clipped at
      `eval_max_loss`, at most `eval_max_examples` examples), each in [0, 1]: an L2 norm
      <= 2. The block gets its own noise, noise multiplier `eval_noise_ratio` * z (the
      std of each decoded count is 2 * ratio * z devices), and its RDP is added to the
      update's (`RoundPrivacy`): one release per round, charged as a whole.
    """

    mechanism: str = "ddgauss"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    bits: int = 20
    beta: float = math.exp(-0.5)
    modclip_prob: float = 1e-4
    rotation: str = "hadamard"
    delta: float = 1e-5
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None
    eval_buckets: int = 0
    eval_noise_ratio: float = 2.0
    eval_max_examples: int = 16
    eval_max_loss: float = 5.0

    def __post_init__(self) -> None:
        try:
            MECHANISM_REGISTRY.resolve(self.mechanism)
        except ValueError as exc:
            raise DPConfigError(f"mechanism: {exc}") from None
        if self.rotation not in ROTATIONS:
            raise DPConfigError(
                f"rotation must be one of {', '.join(ROTATIONS)}, got {self.rotation!r}"
            )
        _check_positive("clip", self.clip)
        z = _check_finite("noise_multiplier", self.noise_multiplier)
        if z < 0:
            raise DPConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise DPConfigError(f"bits must be an integer, got {self.bits!r}")
        if not 8 <= self.bits <= 62:
            raise DPConfigError(f"bits must be in [8, 62], got {self.bits!r}")
        beta = _check_finite("beta", self.beta)
        if not 0 <= beta < 1:
            raise DPConfigError(f"beta must be in [0, 1), got {self.beta!r}")
        p = _check_finite("modclip_prob", self.modclip_prob)
        if not 0 < p < 1:
            raise DPConfigError(f"modclip_prob must be in (0, 1), got {self.modclip_prob!r}")
        delta = _check_finite("delta", self.delta)
        if not 0 < delta < 1:
            raise DPConfigError(f"delta must be in (0, 1), got {self.delta!r}")
        if not isinstance(self.adaptive_clip, bool):
            raise DPConfigError(f"adaptive_clip must be a bool, got {self.adaptive_clip!r}")
        tq = _check_finite("target_quantile", self.target_quantile)
        if not 0 < tq < 1:
            raise DPConfigError(
                f"target_quantile must be in (0, 1), got {self.target_quantile!r}"
            )
        lr = _check_finite("clip_lr", self.clip_lr)
        if lr < 0:
            raise DPConfigError(f"clip_lr must be >= 0, got {self.clip_lr!r}")
        if self.clipped_count_stddev is not None:
            s = _check_finite("clipped_count_stddev", self.clipped_count_stddev)
            if s < 0 or (s == 0 and self.mechanism != "none" and self.adaptive_clip):
                raise DPConfigError(
                    f"clipped_count_stddev must be > 0, got {self.clipped_count_stddev!r}"
                )

        for name in ("eval_buckets", "eval_max_examples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise DPConfigError(f"{name} must be an integer, got {v!r}")
        if self.eval_buckets != 0 and not 2 <= self.eval_buckets <= 100:
            raise DPConfigError(
                f"eval_buckets must be 0 (off) or in [2, 100], got {self.eval_buckets!r}"
            )
        if self.eval_max_examples < 1:
            raise DPConfigError(
                f"eval_max_examples must be >= 1, got {self.eval_max_examples!r}"
            )
        _check_positive("eval_noise_ratio", self.eval_noise_ratio)
        _check_positive("eval_max_loss", self.eval_max_loss)

    @property
    def eval_dim(self) -> int:
        """Slots of the federated-evaluation block (0 when off): the buckets, then the
        accuracy, the example count and the loss sum."""
        return self.eval_buckets + 3 if self.eval_buckets else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DPConfig:
        """Inverse of `to_dict`; unknown keys raise DPConfigError."""
        if not isinstance(d, dict):
            raise DPConfigError(f"DPConfig.from_dict needs a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DPConfigError(f"unknown DPConfig keys: {sorted(unknown)}")
        return cls(**d)
