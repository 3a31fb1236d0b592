"""The device-side encoder and the server-side decoder of distributed DP.

Pipeline (Kairouz, Liu, Steinke, ICML 2021, Alg. 1; Agarwal, Kairouz, Liu, NeurIPS
2021; TensorFlow Federated's DistributedDpSumFactory):

    device: flatten -> clip to L2 norm C -> random rotation (public per-round signs)
            -> scale by 1/gamma -> conditional randomized rounding to Z^d
            -> + this device's noise share -> mod 2^b
    secure aggregation: sum mod 2^b over the survivors
    server: signed representative in [-2^(b-1), 2^(b-1)) -> * gamma -> inverse rotation

DP guarantee: with s >= t (threshold) surviving devices, the server sees the sum of s
rounded vectors (each of L2 norm <= Delta2, L1 norm <= Delta1 in integer units) plus
the sum of s noise shares, each sized so that any t of them already carry the target
noise (std z * C in update units, i.e. z * C / gamma in integer units). The round's
guarantee for s survivors is `EncodingPlan.privacy_event(s)`; `dp.PrivacyAccountant`
composes it. This holds for client-level add/remove adjacency against a server that
sees only the secure sum (the secure-aggregation guarantee) and assumes the devices'
noise generators are unpredictable to it. A device that drops before its masked input
adds no noise; that is why the shares are sized for t and the accountant is told s.

Nothing here leaves the device except the encoded vector: `EncodeReport` (norm, clipped
or not) is for the device's own log. The server learns a clip rate only through the
noised clipped-count slot of adaptive clipping (Andrew et al., NeurIPS 2021).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dp.config import DPConfig, DPConfigError
from dp.mechanisms import get_mechanism
from dp.rotation import padded_dim, rotate, rotation_signs, unrotate

__all__ = [
    "EncodingPlan",
    "Encoder",
    "Decoder",
    "EncodeReport",
    "DecodedSum",
    "RoundPrivacy",
    "update_clip",
    "rounding_l2_bound",
]

#: rho of the gamma heuristic (energy per coordinate after rotation ~ rho C^2 / d).
_RHO = 1.0
#: Minimum local std (integer units) of the clipped-count slot before rounding the
#: discrete scale up; keeps the ceil() inflation of the count noise under 5%.
_COUNT_MIN_LOCAL = 20.0


def rounding_l2_bound(scaled_clip: float, dim: int, beta: float) -> float:
    """Delta2 after randomized rounding of a vector of L2 norm <= c~ in R^d.

    Kairouz, Liu, Steinke (ICML 2021, Thm. 3 / Sec. 4.1): deterministically
    ||round(x)|| <= c~ + sqrt(d); with conditional rounding at beta > 0 (resample until
    the norm is below the bound, which fails with prob. <= beta per try)
    Delta2 = min(c~ + sqrt(d), sqrt(c~^2 + d/4 + sqrt(2 ln(1/beta)) (c~ + sqrt(d)/2))).
    """
    plain = scaled_clip + math.sqrt(dim)
    if beta <= 0:
        return plain
    cond = math.sqrt(
        scaled_clip**2
        + dim / 4.0
        + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + math.sqrt(dim) / 2.0)
    )
    return min(plain, cond)


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round guaranteed, as a frozen record (like dp_accounting's events).

    All noise figures are in integer units (after scaling by 1/gamma). `n_shares` is
    the number of noise shares in the released sum (the survivors). The count slot of
    adaptive clipping is a second, independent release of the same devices in the same
    round; its RDP is added to the update's (`count_*` fields; 0 when off).
    """

    mechanism: str
    n_shares: int
    local_stddev: float
    l2_sensitivity: float
    l1_sensitivity: float
    dim: int
    gamma: float
    clip: float
    count_sensitivity: float = 0.0
    count_local_stddev: float = 0.0

    @property
    def noise_stddev(self) -> float:
        """Std of the summed noise per coordinate, integer units."""
        return math.sqrt(self.n_shares) * self.local_stddev

    @property
    def noise_multiplier(self) -> float:
        """Summed noise std / clip, both in update units (the z that was achieved)."""
        return self.noise_stddev * self.gamma / self.clip

    @property
    def gaussian_noise_multiplier(self) -> float:
        """Effective noise multiplier of the Gaussian accounting: summed std over Delta2
        for the update, combined with the count slot as in Andrew et al. (2021):
        z_eff = (z_update^-2 + z_count^-2)^-1/2 (RDP of the two Gaussians adds up)."""
        if self.noise_stddev <= 0:
            return 0.0
        inv = (self.l2_sensitivity / self.noise_stddev) ** 2
        if self.count_sensitivity > 0:
            count_std = math.sqrt(self.n_shares) * self.count_local_stddev
            if count_std <= 0:
                return 0.0
            inv += (self.count_sensitivity / count_std) ** 2
        return 1.0 / math.sqrt(inv)

    def rdp(self, orders: Any) -> np.ndarray:
        """Unsampled RDP of this round at `orders` (update plus count slot)."""
        mech = get_mechanism(self.mechanism)
        eps = mech.rdp(
            orders,
            self.l2_sensitivity,
            self.l1_sensitivity,
            self.local_stddev,
            self.n_shares,
            self.dim,
        )
        if self.count_sensitivity > 0:
            eps = eps + mech.rdp(
                orders,
                self.count_sensitivity,
                self.count_sensitivity,
                self.count_local_stddev,
                self.n_shares,
                1,
            )
        return np.asarray(eps, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncodingPlan:
    """Everything a device needs to encode and the server to decode one round.

    Built by `EncodingPlan.create` (pure, deterministic), sent to devices as
    `to_dict()`; `from_dict` recomputes the plan from its inputs and refuses a dict
    whose derived values disagree (a device never trusts the server's arithmetic).
    """

    config: DPConfig
    dim: int
    n_clients: int
    min_contributors: int
    padded_dim: int
    encoded_dim: int
    gamma: float
    local_stddev: float
    k_stddevs: float
    l2_sensitivity: float
    l1_sensitivity: float
    count_scale: int
    count_local_stddev: float

    @classmethod
    def create(
        cls, config: DPConfig, dim: int, n_clients: int, min_contributors: int
    ) -> EncodingPlan:
        """Choose gamma and the local noise for `n_clients` devices, any
        `min_contributors` (the secure-aggregation threshold t) of which must carry the
        target noise.

        gamma (Kairouz et al. 2021, Sec. 4.1): k standard deviations of the aggregate
        must fit in [-2^(b-1), 2^(b-1)):
        2^b = 2k sqrt(rho/d (C n)^2 + (gamma^2/4 + sigma_u^2) n) / gamma, with sigma_u the
        local noise std in update units (z C / sqrt(t)), and k = sqrt(2 ln(2/p)) for the
        per-coordinate modular clipping probability p (sub-Gaussian tail).
        """
        for name, v in (("dim", dim), ("n_clients", n_clients)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DPConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if (
            isinstance(min_contributors, bool)
            or not isinstance(min_contributors, int)
            or not 1 <= min_contributors <= n_clients
        ):
            raise DPConfigError(
                f"min_contributors must be an integer in [1, n_clients={n_clients}], "
                f"got {min_contributors!r}"
            )
        mech = get_mechanism(config.mechanism)
        d = padded_dim(dim, config.rotation)
        n, t = n_clients, min_contributors
        clip, z, b = config.clip, config.noise_multiplier, config.bits
        k = math.sqrt(2.0 * math.log(2.0 / config.modclip_prob))
        half = 2.0 ** (b - 1)
        denom = (half / k) ** 2 - n / 4.0
        if denom <= 0:
            raise DPConfigError(
                f"bits={b} too small for {n} clients: need 2^b > 2k sqrt(n/4) with "
                f"k={k:.2f} (modclip_prob={config.modclip_prob})"
            )
        sigma_u = z * clip / math.sqrt(t) if config.mechanism != "none" else 0.0
        data_var = _RHO / d * (clip * n) ** 2
        gamma = math.sqrt((data_var + n * sigma_u**2) / denom)
        if sigma_u > 0 and sigma_u / gamma > mech.max_local_scale:
            gamma = sigma_u / mech.max_local_scale  # more bits than the sampler can use

        def fits(g: float) -> tuple[bool, float]:
            local = mech.local_scale(sigma_u / g) if sigma_u > 0 else 0.0
            spread = k * math.sqrt(data_var / g**2 + n / 4.0 + n * local**2)
            return spread <= half, local

        ok, local = fits(gamma)
        for _ in range(2000):  # the discrete scale is rounded up: grow gamma until it fits
            if ok:
                break
            gamma *= 1.01
            ok, local = fits(gamma)
        if not ok:
            raise DPConfigError(f"bits={b} too small for {n} clients with this noise")
        if 0 < local < mech.min_local_scale:
            raise DPConfigError(
                f"mechanism {config.mechanism!r}: local noise std {local:.3g} integer units "
                f"is below {mech.min_local_scale:g} with bits={b} and {n} clients, where its "
                "accounting is not valid; use more bits, or ddgauss/skellam"
            )
        scaled_clip = clip / gamma
        l2 = rounding_l2_bound(scaled_clip, d, config.beta)
        l1 = l2 * min(math.sqrt(d), l2)

        count_scale, count_local = 0, 0.0
        if config.adaptive_clip:
            count_scale, count_local = _count_slot(config, mech, n, t, k, half)
        return cls(
            config=config,
            dim=dim,
            n_clients=n,
            min_contributors=t,
            padded_dim=d,
            encoded_dim=d + (1 if config.adaptive_clip else 0),
            gamma=gamma,
            local_stddev=float(local),
            k_stddevs=k,
            l2_sensitivity=l2,
            l1_sensitivity=l1,
            count_scale=count_scale,
            count_local_stddev=float(count_local),
        )

    @property
    def modulus(self) -> int:
        return 1 << self.config.bits

    @property
    def clipped_count_stddev(self) -> float:
        """Std of the noise on the decoded clipped count with t survivors (Andrew et al.:
        expected clients / 20 unless configured)."""
        if self.config.clipped_count_stddev is not None:
            return float(self.config.clipped_count_stddev)
        return self.n_clients / 20.0

    def privacy_event(self, n_survivors: int) -> RoundPrivacy:
        """What the round guaranteed when `n_survivors` noise shares were summed.

        With n_survivors >= min_contributors the summed noise is at least the target;
        with fewer (an aborted round reveals nothing, but callers may ask) it is less,
        and the event says so.
        """
        if isinstance(n_survivors, bool) or not isinstance(n_survivors, int) or n_survivors < 1:
            raise DPConfigError(f"n_survivors must be an integer >= 1, got {n_survivors!r}")
        return RoundPrivacy(
            mechanism=self.config.mechanism,
            n_shares=n_survivors,
            local_stddev=self.local_stddev,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
            dim=self.padded_dim,
            gamma=self.gamma,
            clip=self.config.clip,
            count_sensitivity=float(self.count_scale),
            count_local_stddev=self.count_local_stddev,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncodingPlan:
        """Rebuild with `create` from (config, dim, n_clients, min_contributors) and check
        that any derived value present in `d` matches."""
        if not isinstance(d, dict):
            raise DPConfigError(f"EncodingPlan.from_dict needs a dict, got {type(d).__name__}")
        try:
            config = DPConfig.from_dict(d["config"])
            plan = cls.create(config, d["dim"], d["n_clients"], d["min_contributors"])
        except KeyError as err:
            raise DPConfigError(f"EncodingPlan dict lacks {err}") from None
        mine = plan.to_dict()
        for key, value in d.items():
            if key not in mine:
                raise DPConfigError(f"unknown EncodingPlan key {key!r}")
            if key == "config":
                continue
            ref = mine[key]
            same = (
                math.isclose(float(value), float(ref), rel_tol=1e-9, abs_tol=0.0)
                if isinstance(ref, float)
                else value == ref
            )
            if not same:
                raise DPConfigError(f"EncodingPlan {key}={value!r} disagrees with {ref!r}")
        return plan


def _count_slot(
    config: DPConfig, mech: Any, n: int, t: int, k: float, half: float
) -> tuple[int, float]:
    """Scale m and local noise of the clipped-count slot.

    Each device puts m * (+1 if clipped else -1): the centred count of Andrew et al.
    (sensitivity m for add/remove), so the slot sum is m (2 * clipped - s). Noise: the
    sum of any t shares has std 2 m sigma_b (sigma_b = std on the count), i.e. noise
    multiplier 2 sigma_b, the paper's. m > 1 only makes the discrete scale finer.
    """
    sigma_b = (
        float(config.clipped_count_stddev)
        if config.clipped_count_stddev is not None
        else n / 20.0
    )
    if config.mechanism == "none" or sigma_b == 0:
        if n >= half:
            raise DPConfigError(f"bits={config.bits} too small for a count of {n} clients")
        return 1, 0.0
    m = max(1, math.ceil(_COUNT_MIN_LOCAL * math.sqrt(t) / (2.0 * sigma_b)))
    while m >= 1:
        local = mech.local_scale(2.0 * sigma_b * m / math.sqrt(t))
        if n * m + k * math.sqrt(n) * local < half:
            return m, local
        m = m // 2 if m > 1 else 0
    raise DPConfigError(
        f"bits={config.bits} too small for the clipped count of {n} clients "
        f"(count noise std {sigma_b})"
    )


@dataclass(frozen=True)
class EncodeReport:
    """What the encoder did, for the device's own log (never sent: the norm and the
    clipped flag are per-device information outside the DP guarantee)."""

    norm: float
    clipped: bool
    clip: float
    gamma: float
    local_stddev: float
    mechanism: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DecodedSum:
    """Decoded aggregate: `total` = sum of clipped updates + noise (length dim);
    `clipped_count` = noised number of clipped devices (None without adaptive clip)."""

    total: np.ndarray
    clipped_count: float | None


class _Rotation:
    def __init__(self, plan: EncodingPlan, rotation_seed: bytes) -> None:
        if not isinstance(plan, EncodingPlan):
            raise TypeError(f"plan must be an EncodingPlan, got {type(plan).__name__}")
        try:
            self._signs = rotation_signs(rotation_seed, plan.padded_dim)
        except ValueError as err:
            raise DPConfigError(str(err)) from None
        self.plan = plan


class Encoder(_Rotation):
    """Device side: `encode(update, rng)` -> (uint64 vector in [0, 2^b), EncodeReport).

    `rotation_seed` is the round's public seed (see `dp.rotation`); `rng` drives the
    randomized rounding and seeds the noise samplers and must be seeded from OS entropy
    on a real device (e.g. `np.random.default_rng()`), since whoever predicts it can
    remove this device's noise share.
    """

    def encode(
        self, update: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, EncodeReport]:
        plan, cfg = self.plan, self.plan.config
        x = np.asarray(update, dtype=np.float64).ravel()
        if x.shape[0] != plan.dim:
            raise ValueError(f"update has {x.shape[0]} entries, the plan expects {plan.dim}")
        if not np.all(np.isfinite(x)):
            raise ValueError("update contains NaN or infinite values")
        norm = float(np.linalg.norm(x))
        clipped = norm > cfg.clip
        if clipped:
            x = x * (cfg.clip / norm)
        y = rotate(x, self._signs, cfg.rotation) / plan.gamma
        record = self._round(y, rng)
        mech = get_mechanism(cfg.mechanism)
        noised = record
        if plan.local_stddev > 0:
            noised = mech.add_noise(
                record, plan.local_stddev, plan.l2_sensitivity, plan.l1_sensitivity, rng
            )
        if cfg.adaptive_clip:
            bit = np.array([plan.count_scale * (1 if clipped else -1)], dtype=np.int64)
            if plan.count_local_stddev > 0:
                bit = mech.add_noise(
                    bit, plan.count_local_stddev, plan.count_scale, plan.count_scale, rng
                )
            noised = np.concatenate((noised, bit))
        encoded = np.mod(noised, np.int64(plan.modulus)).astype(np.uint64)
        report = EncodeReport(
            norm=norm,
            clipped=bool(clipped),
            clip=cfg.clip,
            gamma=plan.gamma,
            local_stddev=plan.local_stddev,
            mechanism=cfg.mechanism,
        )
        return encoded, report

    def _round(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unbiased randomized rounding, repeated until ||round(y)|| <= Delta2
        (conditional rounding; each try fails with prob. <= beta)."""
        low = np.floor(y)
        frac = y - low
        bound_sq = self.plan.l2_sensitivity**2
        for _ in range(1000):
            r = low + (rng.random(y.shape[0]) < frac)
            if float(np.dot(r, r)) <= bound_sq:
                return r.astype(np.int64)
        raise RuntimeError(
            f"conditional rounding did not meet the norm bound {self.plan.l2_sensitivity} "
            "in 1000 tries"
        )


class Decoder(_Rotation):
    """Server side: `decode(sum_mod, n_survivors)` -> DecodedSum (float64)."""

    def decode(self, sum_mod: np.ndarray, n_survivors: int) -> DecodedSum:
        plan = self.plan
        v = np.asarray(sum_mod)
        if v.ndim != 1 or v.shape[0] != plan.encoded_dim:
            raise ValueError(f"sum has shape {v.shape}, the plan expects ({plan.encoded_dim},)")
        if not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"sum must be integers mod 2^b, got dtype {v.dtype}")
        if isinstance(n_survivors, bool) or not isinstance(n_survivors, int) or n_survivors < 1:
            raise ValueError(f"n_survivors must be an integer >= 1, got {n_survivors!r}")
        u = v.astype(np.uint64)
        if np.any(u >= np.uint64(plan.modulus)):
            raise ValueError(f"sum has entries >= 2^{plan.config.bits}")
        signed = u.astype(np.int64)
        signed = np.where(signed >= plan.modulus // 2, signed - plan.modulus, signed)
        y = signed[: plan.padded_dim].astype(np.float64) * plan.gamma
        total = unrotate(y, self._signs, plan.config.rotation, plan.dim)
        count = None
        if plan.config.adaptive_clip:
            count = (float(signed[-1]) / plan.count_scale + n_survivors) / 2.0
        return DecodedSum(total=total, clipped_count=count)


def update_clip(
    clip: float,
    clipped_count: float,
    n_contributors: int,
    target_quantile: float = 0.5,
    lr: float = 0.2,
) -> float:
    """Geometric clip update of Andrew et al. (NeurIPS 2021, Alg. 1), as in
    tensorflow-privacy's QuantileEstimatorQuery with geometric_update:

        b = clamp(1 - clipped_count / n, 0, 1)   (noised unclipped fraction)
        C_new = C * exp(-lr * (b - target_quantile))

    Too many unclipped -> C shrinks; too many clipped -> C grows. Pure function of the
    noised count (post-processing: costs no privacy beyond the count's own)."""
    if not (clip > 0 and math.isfinite(clip)):
        raise ValueError(f"clip must be > 0, got {clip!r}")
    n = n_contributors
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_contributors must be an integer >= 1, got {n_contributors!r}")
    if not math.isfinite(clipped_count):
        raise ValueError(f"clipped_count must be finite, got {clipped_count!r}")
    unclipped = min(1.0, max(0.0, 1.0 - clipped_count / n_contributors))
    return clip * math.exp(-lr * (unclipped - target_quantile))
