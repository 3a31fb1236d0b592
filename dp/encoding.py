"""The device-side encoder and the server-side decoder of distributed DP.

Pipeline (Kairouz, Liu, Steinke, ICML 2021, Alg. 1; Agarwal, Kairouz, Liu, NeurIPS
2021; TensorFlow Federated's DistributedDpSumFactory):

    device: flatten -> clip to L2 norm C -> random rotation (public per-round signs)
            -> scale by 1/gamma -> conditional randomized rounding to Z^d
            -> + this device's noise share -> mod 2^b
    secure aggregation: sum mod 2^b over the survivors
    server: signed representative in [-2^(b-1), 2^(b-1)) -> * gamma -> inverse rotation

DP guarantee: with s >= t (threshold) surviving devices, of which at most c (the corrupt
bound, `EncodingPlan.corrupt`) collude with the server and know their own shares, the
server sees the sum of s rounded vectors (each of L2 norm <= Delta2, L1 norm <= Delta1 in
integer units) plus the sum of s noise shares, each sized so that any t - c of them
already carry the target noise (std z * C in update units, i.e. z * C / gamma in integer
units). The round's guarantee for s survivors is `EncodingPlan.privacy_event(s)`, which
counts s - c honest shares; `dp.PrivacyAccountant` composes it. Adjacency: zero-out (one
device's record replaced by zeros, its noise share kept; see `dp.mechanisms`), against a
server that sees only the secure sum (the secure-aggregation guarantee), assuming the
honest devices' noise generators are unpredictable to it. A device that drops before
its masked input adds no noise; that is why the shares are sized for t - c and the
accountant is told s.

Nothing here leaves the device except the encoded vector: `EncodeReport` (norm, clipped
or not) is for the device's own log. The server learns a clip rate only through the
noised clipped-count slot of adaptive clipping (Andrew et al., NeurIPS 2021).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dp.config import DPConfig, DPConfigError
from dp.mechanisms import get_mechanism
from dp.prng import SecureRng, require_secure_rng
from dp.rotation import padded_dim, rotate, rotation_signs, unrotate

__all__ = [
    "EncodingPlan",
    "Encoder",
    "Decoder",
    "EncodeReport",
    "DecodedSum",
    "RoundPrivacy",
    "update_clip",
    "decode_evaluation",
    "eval_values",
    "rounding_l2_bound",
    "rounding_bias_bound",
]

#: rho of the gamma heuristic (energy per coordinate after rotation ~ rho C^2 / d).
_RHO = 1.0
#: Rows the encoder clips, rotates and rounds together: bounds the temporaries (8 rows of
#: 2^16 float64 = 4 MB each) whatever the batch size; the speed hardly depends on it.
_ROWS_PER_BLOCK = 8
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


def rounding_bias_bound(fail_prob: float) -> float:
    """Bound on ||E[r] - y||_2 (integer units, any dimension) for conditional randomized
    rounding of one vector y: r_i = floor(y_i) + Bernoulli(frac(y_i)) independently,
    redrawn until the norm bound holds, where one draw fails it with probability p =
    `fail_prob`.

    Plain randomized rounding is unbiased; conditioning on the norm bound is not: the
    rejected draws are the long ones, so the accepted r is shrunk towards 0. With A the
    event that a draw is accepted, E[r | A] - y = -E[(r - y) 1_{not A}] / P(A). For a unit
    vector u, Cauchy-Schwarz gives E[<u, r - y> 1_{not A}] <= sqrt(Var <u, r>) sqrt(p),
    and Var <u, r> = sum_i u_i^2 f_i (1 - f_i) <= 1/4 (independent coordinates), so

        ||E[r | A] - y||_2 <= sqrt(p) / (2 (1 - p)).

    p <= beta whenever Delta2 is the conditional bound of `rounding_l2_bound`
    (Kairouz, Liu, Steinke 2021), and p = 0 when Delta2 = c~ + sqrt(d) (no redraw ever):
    `EncodingPlan.rounding_bias_bound` applies this to a plan. The bias of the decoded sum
    of s devices is at most s * gamma times this bound, in update units.
    """
    if isinstance(fail_prob, bool) or not isinstance(fail_prob, (int, float)) or not (
        0 <= fail_prob < 1
    ):
        raise ValueError(f"fail_prob must be in [0, 1), got {fail_prob!r}")
    return math.sqrt(fail_prob) / (2.0 * (1.0 - fail_prob))


@dataclass(frozen=True)
class RoundPrivacy:
    """What one round guaranteed, as a frozen record (like dp_accounting's events).

    All noise figures are in integer units (after scaling by 1/gamma). `n_shares` is
    the number of HONEST noise shares in the released sum: the survivors minus
    `corrupt`, the colluders the threat model allows, whose shares the adversary knows.
    The count slot of adaptive clipping and the federated-evaluation block are further
    releases of the same devices in the same round, each with its own noise; their RDP
    is added to the update's (`count_*`, `eval_*` fields; 0 when off; the eval block's
    L1 sensitivity is twice its L2: one-hot plus three slots in [0, m]). The
    sensitivities are for zero-out adjacency (`replace_one` gives the record for
    replace-one). `to_dict` / `from_dict` store and replay it.
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
    corrupt: int = 0
    eval_sensitivity: float = 0.0
    eval_local_stddev: float = 0.0
    eval_dim: int = 0

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
        if self.eval_sensitivity > 0:
            eval_std = math.sqrt(self.n_shares) * self.eval_local_stddev
            if eval_std <= 0:
                return 0.0
            inv += (self.eval_sensitivity / eval_std) ** 2
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
        if self.eval_sensitivity > 0:
            eps = eps + mech.rdp(
                orders,
                self.eval_sensitivity,
                2.0 * self.eval_sensitivity,
                self.eval_local_stddev,
                self.n_shares,
                self.eval_dim,
            )
        return np.asarray(eps, dtype=np.float64)

    def replace_one(self) -> RoundPrivacy:
        """The same round for replace-one adjacency: two cohorts that differ in one
        member's data x -> x' differ by r(x) - r(x'), an integer vector of L2 norm
        <= 2 Delta2 and L1 norm <= 2 Delta1 (the clip bit by 2m), so every sensitivity
        doubles and the Gaussian noise multiplier halves."""
        return dataclasses.replace(
            self,
            l2_sensitivity=2.0 * self.l2_sensitivity,
            l1_sensitivity=2.0 * self.l1_sensitivity,
            count_sensitivity=2.0 * self.count_sensitivity,
            eval_sensitivity=2.0 * self.eval_sensitivity,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundPrivacy:
        """Inverse of `to_dict`, for a charge stored before decoding and replayed after a
        restart. Refuses unknown or missing keys and out-of-range values."""
        if not isinstance(d, dict):
            raise DPConfigError(f"RoundPrivacy.from_dict needs a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise DPConfigError(f"unknown RoundPrivacy keys: {sorted(unknown)}")
        try:
            get_mechanism(d["mechanism"])
        except KeyError as err:
            raise DPConfigError(f"RoundPrivacy dict lacks {err}") from None
        except ValueError as err:
            raise DPConfigError(str(err)) from None
        for key in ("n_shares", "dim", "corrupt", "eval_dim"):
            v = d.get(key, 0 if key in ("corrupt", "eval_dim") else None)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "dim" else 0):
                raise DPConfigError(f"RoundPrivacy {key} must be a non-negative integer, got {v!r}")
        for key in ("local_stddev", "l2_sensitivity", "l1_sensitivity", "gamma", "clip",
                    "count_sensitivity", "count_local_stddev", "eval_sensitivity",
                    "eval_local_stddev"):
            v = d.get(key, 0.0 if key.startswith(("count_", "eval_")) else None)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v >= 0
            ):
                raise DPConfigError(f"RoundPrivacy {key} must be a finite number >= 0, got {v!r}")
        ints = {"mechanism", "n_shares", "dim", "corrupt", "eval_dim"}
        values: dict[str, Any] = {k: (v if k in ints else float(v)) for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class EncodingPlan:
    """Everything a device needs to encode and the server to decode one round.

    Built by `EncodingPlan.create` (pure, deterministic), sent to devices as
    `to_dict()`; `from_dict` recomputes the plan from its inputs and refuses a dict
    whose derived values disagree (a device never trusts the server's arithmetic).
    `corrupt` is the number c of the `n_clients` devices that may collude with the server
    (0 in dicts from before it existed); a device should also check it against its own
    policy, since a smaller c means smaller shares.
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
    corrupt: int = 0
    eval_scale: int = 0
    eval_local_stddev: float = 0.0

    @classmethod
    def create(
        cls,
        config: DPConfig,
        dim: int,
        n_clients: int,
        min_contributors: int,
        corrupt: int = 0,
    ) -> EncodingPlan:
        """Choose gamma and the local noise for `n_clients` devices, any
        `min_contributors` (the secure-aggregation threshold t) of which survive, of
        which up to `corrupt` (c, e.g. `dp.corrupt_count(fraction, n_clients)`) collude
        with the server and know their own shares: any t - c honest shares must carry the
        target noise, so each share has std z C / sqrt(t - c). c = 0 gives the plans from
        before collusion was counted.

        gamma (Kairouz et al. 2021, Sec. 4.1): k standard deviations of the aggregate
        must fit in [-2^(b-1), 2^(b-1)):
        2^b = 2k sqrt(rho/d (C n)^2 + (gamma^2/4 + sigma_u^2) n) / gamma, with sigma_u the
        local noise std in update units (z C / sqrt(t - c)), and k = sqrt(2 ln(2/p)) for
        the per-coordinate modular clipping probability p (sub-Gaussian tail).
        """
        for name, v in (("dim", dim), ("n_clients", n_clients)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DPConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(corrupt, bool) or not isinstance(corrupt, int) or corrupt < 0:
            raise DPConfigError(f"corrupt must be an integer >= 0, got {corrupt!r}")
        if (
            isinstance(min_contributors, bool)
            or not isinstance(min_contributors, int)
            or not 1 <= min_contributors <= n_clients
        ):
            raise DPConfigError(
                f"min_contributors must be an integer in [1, n_clients={n_clients}], "
                f"got {min_contributors!r}"
            )
        if min_contributors - corrupt < 1:
            raise DPConfigError(
                f"no honest noise share is guaranteed: min_contributors={min_contributors} "
                f"survivors minus corrupt={corrupt} colluders leaves "
                f"{min_contributors - corrupt}; raise the threshold or lower the corrupt bound"
            )
        mech = get_mechanism(config.mechanism)
        d = padded_dim(dim, config.rotation)
        n, t = n_clients, min_contributors
        honest = t - corrupt
        clip, z, b = config.clip, config.noise_multiplier, config.bits
        k = math.sqrt(2.0 * math.log(2.0 / config.modclip_prob))
        half = 2.0 ** (b - 1)
        denom = (half / k) ** 2 - n / 4.0
        if denom <= 0:
            raise DPConfigError(
                f"bits={b} too small for {n} clients: need 2^b > 2k sqrt(n/4) with "
                f"k={k:.2f} (modclip_prob={config.modclip_prob})"
            )
        sigma_u = z * clip / math.sqrt(honest) if config.mechanism != "none" else 0.0
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
            count_scale, count_local = _count_slot(config, mech, n, honest, k, half)
        eval_scale, eval_local = 0, 0.0
        if config.eval_buckets:
            eval_scale, eval_local = _eval_slots(config, mech, n, honest, k, half)
        return cls(
            config=config,
            dim=dim,
            n_clients=n,
            min_contributors=t,
            padded_dim=d,
            encoded_dim=d + (1 if config.adaptive_clip else 0) + config.eval_dim,
            gamma=gamma,
            local_stddev=float(local),
            k_stddevs=k,
            l2_sensitivity=l2,
            l1_sensitivity=l1,
            count_scale=count_scale,
            count_local_stddev=float(count_local),
            corrupt=corrupt,
            eval_scale=eval_scale,
            eval_local_stddev=float(eval_local),
        )

    @property
    def modulus(self) -> int:
        return 1 << self.config.bits

    @property
    def eval_offset(self) -> int:
        """Index of the first federated-evaluation slot in the encoded vector."""
        return self.padded_dim + (1 if self.config.adaptive_clip else 0)

    def eval_stddev(self, n_survivors: int) -> float:
        """Std of the noise on each decoded slot of the evaluation block (devices, or the
        slot's own unit in [0, 1] per device) when ``n_survivors`` shares were summed."""
        if not self.eval_scale:
            return 0.0
        return math.sqrt(n_survivors) * self.eval_local_stddev / self.eval_scale

    @property
    def clipped_count_stddev(self) -> float:
        """Std of the noise on the decoded clipped count with t survivors (Andrew et al.:
        expected clients / 20 unless configured)."""
        if self.config.clipped_count_stddev is not None:
            return float(self.config.clipped_count_stddev)
        return self.n_clients / 20.0

    def privacy_event(self, n_survivors: int) -> RoundPrivacy:
        """What the round guaranteed when `n_survivors` noise shares were summed: only
        the n_survivors - corrupt honest ones count (the colluders' shares are known).

        With n_survivors >= min_contributors the honest noise is at least the target;
        with fewer (an aborted round reveals nothing, but callers may ask) it is less,
        and the event says so (no honest share at all: infinite epsilon).
        """
        if isinstance(n_survivors, bool) or not isinstance(n_survivors, int) or n_survivors < 1:
            raise DPConfigError(f"n_survivors must be an integer >= 1, got {n_survivors!r}")
        if n_survivors > self.n_clients:
            raise DPConfigError(
                f"n_survivors={n_survivors} exceeds the {self.n_clients} devices of the plan"
            )
        return RoundPrivacy(
            mechanism=self.config.mechanism,
            n_shares=max(0, n_survivors - self.corrupt),
            local_stddev=self.local_stddev,
            l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity,
            dim=self.padded_dim,
            gamma=self.gamma,
            clip=self.config.clip,
            count_sensitivity=float(self.count_scale),
            count_local_stddev=self.count_local_stddev,
            corrupt=self.corrupt,
            eval_sensitivity=2.0 * self.eval_scale,
            eval_local_stddev=self.eval_local_stddev,
            eval_dim=self.config.eval_dim,
        )

    def rounding_bias_bound(self, n_survivors: int | None = None) -> float:
        """Bound on the L2 norm of the rounding bias of the decoded sum of `n_survivors`
        (default n_clients) devices, in update units: n gamma `rounding_bias_bound(p)`
        with p = beta when the conditional norm bound is in force and p = 0 when Delta2 is
        the deterministic c~ + sqrt(d) (no draw is ever rejected)."""
        n = self.n_clients if n_survivors is None else n_survivors
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DPConfigError(f"n_survivors must be an integer >= 1, got {n_survivors!r}")
        scaled_clip = self.config.clip / self.gamma
        plain = scaled_clip + math.sqrt(self.padded_dim)
        p = self.config.beta if self.l2_sensitivity < plain else 0.0
        return n * self.gamma * rounding_bias_bound(p)

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
            plan = cls.create(
                config, d["dim"], d["n_clients"], d["min_contributors"], d.get("corrupt", 0)
            )
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


#: Finest scale m of the evaluation block (the rounding of its three slots moves each
#: device's value by < 1/m); a smaller m is used when the bits cannot hold n m.
_EVAL_MAX_SCALE = 1 << 12


def _eval_slots(
    config: DPConfig, mech: Any, n: int, honest: int, k: float, half: float
) -> tuple[int, float]:
    """Scale m and local noise of the federated-evaluation block.

    Each device puts m * (one-hot accuracy bucket, accuracy, examples / N_cap, loss sum /
    (N_cap L_max)), the three values randomly rounded: an integer vector of L2 norm <= 2m
    (L1 <= 4m). The sum of any `honest` shares has std 2 ratio z m per slot (noise
    multiplier ratio * z for the block). m is the largest power of two up to
    `_EVAL_MAX_SCALE` for which n m plus k standard deviations of the noise fits in
    [-2^(b-1), 2^(b-1)) and the local noise is one the mechanism can account for.
    """
    sigma = 2.0 * config.eval_noise_ratio * config.noise_multiplier  # std on a count
    noisy = config.mechanism != "none" and sigma > 0
    m = _EVAL_MAX_SCALE
    while m >= 1:
        local = mech.local_scale(sigma * m / math.sqrt(honest)) if noisy else 0.0
        if n * m + k * math.sqrt(n) * local < half and (
            not noisy or local >= mech.min_local_scale
        ):
            return m, float(local)
        m //= 2
    raise DPConfigError(
        f"bits={config.bits} too small for the federated-evaluation block of {n} clients "
        f"(noise std {sigma:g} per count); use more bits or turn federated evaluation off"
    )


def eval_values(stats: np.ndarray, config: DPConfig) -> np.ndarray:
    """Rows (accuracy, examples, loss sum) -> the block's values in [0, 1]: (bucket,
    accuracy, examples / N_cap, loss sum / (N_cap L_max)); the bucket is an index (-1:
    no example, an all-zero block). Out-of-range inputs are clamped: the norm bound
    holds whatever a device computed."""
    st = np.asarray(stats, dtype=np.float64)
    if st.ndim != 2 or st.shape[1] != 3:
        raise ValueError(f"evaluation stats must have shape (m, 3), got {st.shape}")
    if not np.isfinite(st).all():
        raise ValueError("evaluation stats contain NaN or infinite values")
    cap = float(config.eval_max_examples)
    examples = np.clip(st[:, 1], 0.0, cap)
    has = examples > 0
    acc = np.where(has, np.clip(st[:, 0], 0.0, 1.0), 0.0)
    bucket = np.where(
        has, np.minimum(np.floor(acc * config.eval_buckets), config.eval_buckets - 1), -1
    )
    loss = np.where(has, np.clip(st[:, 2], 0.0, cap * config.eval_max_loss), 0.0)
    return np.stack([bucket, acc, examples / cap, loss / (cap * config.eval_max_loss)], axis=1)


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
    `clipped_count` = noised number of clipped devices (None without adaptive clip);
    and the modular-wrap report of `Decoder.decode` (on the `padded_dim` rotated
    coordinates s_i of the signed sum, integer units; `wrap_report()` as JSON):

    - `near_wrap`: coordinates with |s_i| >= `wrap_margin` = (1 - 1/k) 2^(b-1), k =
      `plan.k_stddevs`. An aggregate with exactly the planned spread (2^(b-1) / k per
      coordinate) puts a fraction 2 Phi(-(k - 1)) there (5.6e-4 at the default k = 4.45);
      a wrapped coordinate, which lands anywhere in the range, at least 1/k of the time.
      `wrap_fraction` = near_wrap / padded_dim.
    - `outliers`: coordinates with |s_i| > `outlier_threshold` = t rms(s), t =
      sqrt(2 ln(2 d / 1e-6)). After a rotation the devices could not predict, every
      coordinate of a fixed vector v is sub-Gaussian with variance proxy ||v||^2 / d
      (randomized Hadamard: Hoeffding), so an honest round has one with probability
      <= 1e-6. A concentrated coordinate is the signature of an update aligned with the
      rotation, which wraps (each wrap adds an error of 2^b gamma).
    - `expected_wraps`: d P(|N(0, rms^2)| >= 2^(b-1)), the coordinates expected to have
      wrapped if the aggregate is Gaussian with its measured spread (the designed rate
      is `modclip_prob` per coordinate).
    - `wrap_suspected`: outliers > 0, or more near-wrap coordinates than a Binomial(d,
      2 Phi(-(k - 1))) gives with probability 1e-6 (the aggregate is wider than planned).

    No statistic of one decoded sum can see every wrap (a wrapped value is a valid
    value); the defence is a rotation seed drawn fresh per round after the devices
    committed their updates. These numbers estimate the risk and flag alignment.
    """

    total: np.ndarray
    clipped_count: float | None
    evaluation: dict[str, Any] | None = None
    near_wrap: int = 0
    wrap_fraction: float = 0.0
    wrap_margin: float = 0.0
    outliers: int = 0
    outlier_threshold: float = 0.0
    expected_wraps: float = 0.0
    wrap_suspected: bool = False

    def wrap_report(self) -> dict[str, Any]:
        """The wrap fields as a JSON-safe dict (for the round log and the dashboard)."""
        return {
            "near_wrap": int(self.near_wrap),
            "wrap_fraction": float(self.wrap_fraction),
            "wrap_margin": float(self.wrap_margin),
            "outliers": int(self.outliers),
            "outlier_threshold": float(self.outlier_threshold),
            "expected_wraps": float(self.expected_wraps),
            "wrap_suspected": bool(self.wrap_suspected),
        }


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
    """Device side: `encode(update, rng)` -> (uint64 vector in [0, 2^b), EncodeReport);
    `encode_batch(updates, rngs)` does m devices at once (simulations, benchmarks).

    `rotation_seed` is the round's public seed (see `dp.rotation`). `rng` is the
    device's `dp.prng.SecureRng` and the only source of the encoder's randomness (the
    randomized rounding and the noise shares). On a real device it must be
    `SecureRng.from_os()` (or keyed with `os.urandom(32)`): whoever can predict it can
    remove this device's noise share. numpy generators are refused with a TypeError.

    Each device's draws come from its own generator in a fixed order: the rounding's
    uniforms (one try after another), then the update's noise share, then the count
    slot's, then the evaluation block's three rounding uniforms and its noise. `encode`
    is `encode_batch` of one row (one implementation), so `encode_batch(U, rngs)[0][i]`
    equals `encode(U[i], r)[0]` bit for bit when `r` has the
    key of `rngs[i]`.
    """

    def encode(
        self, update: np.ndarray, rng: SecureRng, evaluation: Sequence[float] | None = None
    ) -> tuple[np.ndarray, EncodeReport]:
        """Encode one device's update (any shape with `plan.dim` entries), and with
        federated evaluation on, its (accuracy, examples, loss sum) on its held-out split
        (`evaluation`, required then)."""
        require_secure_rng(rng, "Encoder.encode")
        x = np.asarray(update, dtype=np.float64).ravel()
        if x.shape[0] != self.plan.dim:
            raise ValueError(
                f"update has {x.shape[0]} entries, the plan expects {self.plan.dim}"
            )
        ev = None if evaluation is None else np.asarray(evaluation, dtype=np.float64)[None, :]
        encoded, reports = self._encode_rows(x[np.newaxis, :], [rng], ev)
        return encoded[0], reports[0]

    def encode_batch(
        self, updates: np.ndarray, rngs: Sequence[SecureRng],
        evaluations: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[EncodeReport]]:
        """Encode m devices' updates, one per row of `updates` (shape (m, plan.dim)), row
        i with `rngs[i]` (and, with federated evaluation on, row i of `evaluations`,
        shape (m, 3): accuracy, examples, loss sum). Returns the (m, encoded_dim) uint64
        array and m reports.

        Give every device its own generator: rows sharing one generator still get
        independent draws (the stream moves on), but then no row equals its `encode`."""
        plan = self.plan
        u = np.asarray(updates, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] != plan.dim:
            raise ValueError(f"updates must have shape (m, {plan.dim}), got {u.shape}")
        gens = list(rngs)
        if len(gens) != u.shape[0]:
            raise ValueError(f"{u.shape[0]} updates but {len(gens)} generators")
        for i, gen in enumerate(gens):
            require_secure_rng(gen, f"Encoder.encode_batch (rngs[{i}])")
        return self._encode_rows(u, gens, evaluations)

    def _encode_rows(
        self, x: np.ndarray, rngs: list[SecureRng], evaluations: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[EncodeReport]]:
        """The one implementation: all input checks first (no draw is made for a batch
        that is refused), then blocks of `_ROWS_PER_BLOCK` rows (a block's arrays stay in
        cache; every row's arithmetic is the same whatever the block holds)."""
        plan, cfg = self.plan, self.plan.config
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            where = "" if x.shape[0] == 1 else f" (row {bad})"
            raise ValueError(f"update contains NaN or infinite values{where}")
        values = None
        if cfg.eval_buckets:
            if evaluations is None:
                raise ValueError("federated evaluation is on: every device needs its "
                                 "(accuracy, examples, loss sum)")
            values = eval_values(evaluations, cfg)
            if values.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{x.shape[0]} updates but {values.shape[0]} evaluation rows"
                )
        elif evaluations is not None:
            raise ValueError("evaluation stats given, but the plan has no evaluation block")
        mech = get_mechanism(cfg.mechanism)
        # x mod 2^b is x & (2^b - 1) in two's complement (negative x included), and far
        # cheaper than np.mod
        mask = np.int64(plan.modulus - 1)
        out = np.empty((x.shape[0], plan.encoded_dim), dtype=np.uint64)
        reports: list[EncodeReport] = []
        for start in range(0, x.shape[0], _ROWS_PER_BLOCK):
            block = x[start:start + _ROWS_PER_BLOCK]
            norms = np.sqrt(np.add.reduce(block * block, axis=1))
            clipped = norms > cfg.clip
            if clipped.any():
                block = block * np.where(clipped, cfg.clip / np.where(clipped, norms, 1.0),
                                         1.0)[:, np.newaxis]
            y = rotate(block, self._signs, cfg.rotation)
            y /= plan.gamma
            for j in range(block.shape[0]):
                i = start + j
                rng = rngs[i]
                noised = self._round(y[j], rng)
                if plan.local_stddev > 0:
                    noised = mech.add_noise(
                        noised, plan.local_stddev, plan.l2_sensitivity, plan.l1_sensitivity,
                        rng,
                    )
                row = out[i].view(np.int64)
                np.bitwise_and(noised, mask, out=row[: plan.padded_dim])
                if cfg.adaptive_clip:
                    bit = np.array([plan.count_scale * (1 if clipped[j] else -1)],
                                   dtype=np.int64)
                    if plan.count_local_stddev > 0:
                        bit = mech.add_noise(
                            bit, plan.count_local_stddev, plan.count_scale, plan.count_scale,
                            rng,
                        )
                    np.bitwise_and(bit, mask, out=row[plan.padded_dim:plan.padded_dim + 1])
                if values is not None:
                    slots = self._eval_block(values[i], rng)
                    if plan.eval_local_stddev > 0:
                        slots = mech.add_noise(
                            slots, plan.eval_local_stddev, 2.0 * plan.eval_scale,
                            4.0 * plan.eval_scale, rng,
                        )
                    np.bitwise_and(slots, mask, out=row[plan.eval_offset:])
                reports.append(EncodeReport(
                    norm=float(norms[j]),
                    clipped=bool(clipped[j]),
                    clip=cfg.clip,
                    gamma=plan.gamma,
                    local_stddev=plan.local_stddev,
                    mechanism=cfg.mechanism,
                ))
        return out, reports

    def _eval_block(self, values: np.ndarray, rng: SecureRng) -> np.ndarray:
        """m * (one-hot bucket, accuracy, examples, loss), the last three randomly rounded
        (unbiased; each stays in [0, m], so the block's L2 norm is <= 2m)."""
        plan = self.plan
        m, buckets = plan.eval_scale, plan.config.eval_buckets
        out = np.zeros(buckets + 3, dtype=np.int64)
        bucket = int(values[0])
        if bucket >= 0:
            out[bucket] = m
        scaled = values[1:] * m
        low = np.floor(scaled)
        up = rng.random(3) < (scaled - low)
        out[buckets:] = np.minimum(low + up, m).astype(np.int64)
        return out

    def _round(self, y: np.ndarray, rng: SecureRng) -> np.ndarray:
        """Randomized rounding of one row, repeated until ||round(y)|| <= Delta2
        (conditional rounding; each try fails with prob. <= beta). Uniforms from `rng`.
        Each try is unbiased, but keeping only the short ones shrinks the result slightly
        towards 0: ||E[r] - y|| <= `rounding_bias_bound(p)` for a failure rate p."""
        low = np.floor(y)
        frac = y - low
        bound_sq = self.plan.l2_sensitivity**2
        for _ in range(1000):
            r = rng.random(y.shape[0])
            np.less(r, frac, out=r)  # 1.0 where rounding up (probability frac), else 0.0
            r += low
            if float(np.dot(r, r)) <= bound_sq:
                return r.astype(np.int64)
        raise RuntimeError(
            f"conditional rounding did not meet the norm bound {self.plan.l2_sensitivity} "
            "in 1000 tries"
        )


class Decoder(_Rotation):
    """Server side: `decode(sum_mod, n_survivors)` -> DecodedSum (float64), with a report
    of the modular-wrap risk of this sum (see `DecodedSum`)."""

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
        rotated = signed[: plan.padded_dim].astype(np.float64)
        wrap = _wrap_stats(rotated, plan)
        total = unrotate(rotated * plan.gamma, self._signs, plan.config.rotation, plan.dim)
        count = None
        if plan.config.adaptive_clip:
            count = (float(signed[plan.padded_dim]) / plan.count_scale + n_survivors) / 2.0
        evaluation = None
        if plan.config.eval_buckets:
            evaluation = decode_evaluation(signed[plan.eval_offset:], plan, n_survivors)
        return DecodedSum(total=total, clipped_count=count, evaluation=evaluation, **wrap)


def decode_evaluation(slots: np.ndarray, plan: EncodingPlan, n_survivors: int) -> dict[str, Any]:
    """The federated-evaluation block of a decoded sum (signed integers) as the round log
    keeps it: the noised histogram of device accuracy, the device-weighted accuracy (sum
    of accuracies over the survivors), the examples and the example-weighted loss, with
    the std of the noise on each."""
    cfg = plan.config
    v = np.asarray(slots, dtype=np.float64) / plan.eval_scale
    buckets = cfg.eval_buckets
    std = plan.eval_stddev(n_survivors)
    examples = float(v[buckets + 1]) * cfg.eval_max_examples
    loss_sum = float(v[buckets + 2]) * cfg.eval_max_examples * cfg.eval_max_loss
    # the loss is a ratio of two noised sums: given only when the example count stands
    # 3 std clear of 0 (its std is then about loss_stddev)
    loss_ok = examples >= max(1.0, 3.0 * std * cfg.eval_max_examples)
    loss_std = std * cfg.eval_max_examples * cfg.eval_max_loss
    return {
        "buckets": buckets,
        "histogram": [float(h) for h in v[:buckets]],
        "devices": int(n_survivors),
        "accuracy": float(v[buckets]) / n_survivors,
        "examples": examples,
        "loss": loss_sum / examples if loss_ok else None,
        "loss_stddev": loss_std / examples if loss_ok else None,
        "count_stddev": std,
        "accuracy_stddev": std / n_survivors,
        "examples_stddev": std * cfg.eval_max_examples,
    }


#: False-alarm probability per round of `DecodedSum.outliers` and of the near-wrap excess.
_WRAP_FALSE_ALARM = 1e-6


def _binomial_upper(n: int, p: float, alpha: float) -> int:
    """Smallest a with P[Binomial(n, p) >= a] <= alpha by the Chernoff bound
    exp(-n KL(a/n || p))."""
    if p <= 0:
        return 1
    a = max(1, math.ceil(n * p))
    log_alpha = math.log(alpha)
    while a <= n:
        x = a / n
        kl = x * math.log(x / p) + (0.0 if x >= 1 else (1 - x) * math.log((1 - x) / (1 - p)))
        if x > p and -n * kl <= log_alpha:
            return a
        a += 1
    return n + 1


def _wrap_stats(rotated: np.ndarray, plan: EncodingPlan) -> dict[str, Any]:
    """The wrap report of `DecodedSum` for the signed rotated coordinates."""
    d = rotated.shape[0]
    half = float(plan.modulus // 2)
    k = plan.k_stddevs
    margin = (1.0 - 1.0 / k) * half
    mag = np.abs(rotated)
    near = int(np.count_nonzero(mag >= margin))
    rms = float(np.sqrt(np.mean(mag * mag))) if d else 0.0
    t = math.sqrt(2.0 * math.log(2.0 * d / _WRAP_FALSE_ALARM))
    threshold = t * rms
    outliers = int(np.count_nonzero(mag > threshold)) if rms > 0 else 0
    expected = d * math.erfc(half / (rms * math.sqrt(2.0))) if rms > 0 else 0.0
    planned = math.erfc((k - 1.0) / math.sqrt(2.0))
    suspected = outliers > 0 or near >= _binomial_upper(d, planned, _WRAP_FALSE_ALARM)
    return {
        "near_wrap": near,
        "wrap_fraction": near / d if d else 0.0,
        "wrap_margin": margin,
        "outliers": outliers,
        "outlier_threshold": threshold,
        "expected_wraps": expected,
        "wrap_suspected": bool(suspected),
    }


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
