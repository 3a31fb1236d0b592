"""Empirical privacy auditing: a measured LOWER bound on epsilon, held against the claim.

Every epsilon this project prints is an upper bound from an accountant. An audit runs
the real pipeline on neighbouring inputs, lets an attacker guess which input was used,
and turns the attacker's success into a lower bound on epsilon that holds with a stated
confidence: if the pipeline were (eps, delta)-DP, no attacker could do that well, except
with probability 1 - confidence.

What it proves and what it does not:
- A lower bound ABOVE the claimed epsilon shows (at that confidence) that the claim is
  false: a bug in the noise, the sizing, the clipping, the encoding or the accounting.
  This is what the positive controls in the test suite check: each injected bug must
  be caught.
- A lower bound BELOW the claim proves nothing about the claim being right. It says that
  this attacker, with this many trials, found no violation. A bug that shows only
  against another attacker, another input or more trials stays hidden. The bound can
  never exceed about ln(trials) (Clopper-Pearson cannot certify rates below ~1/trials),
  so claims much larger than that cannot be tested this way at all.

Two audits:

1. One round, many trials (`audit_round`; Jagielski, Ullman, Oprea, NeurIPS 2020; Nasr
   et al., S&P 2021 and USENIX Security 2023). Two neighbouring cohorts of `survivors`
   devices, identical except for one device whose update is a canary of norm C (world
   1) or zero (world 0): the adjacency that the accountant's bound is proven for (the
   device's data zeroed, its noise share kept). Every device runs the real `Encoder`
   (clip, rotate, scale, randomized rounding, its noise share, mod 2^b); the secure sum
   is the EXACT modular sum of the encoded vectors (the pairwise and self masks of the
   real protocol cancel exactly, so the server's aggregate is bit for bit this sum); the
   real `Decoder` decodes it. Dropouts are taken down to the sizing bound: by default
   only `min_contributors` (t) devices survive, the fewest the plan's noise allows.
   The test is the optimal one for this pair: project the decoded sum on the canary's
   direction and compare with a threshold chosen on separate trials. With false
   positive rate alpha and false negative rate beta (Clopper-Pearson upper bounds), any
   (eps, delta)-DP mechanism has alpha + e^eps beta >= 1 - delta and
   beta + e^eps alpha >= 1 - delta, so eps >= max(ln((1-delta-alpha)/beta),
   ln((1-delta-beta)/alpha)).

2. One training run (`one_run_epsilon_lower_bound`, `one_run_audit`, `CanarySet`,
   `pipeline_update_sum`; Steinke, Nasr, Jagielski, "Privacy Auditing with One (1)
   Training Run", NeurIPS 2023, Thm. 5.2). m canary devices, each included independently
   with probability 1/2, each submitting a random-sign vector of norm C; the auditor
   scores each by the inner product of its direction with the sum of the model's
   updates, guesses "in" for the top and "out" for the bottom scores, and the number of
   right guesses gives the bound.

Confidence: every bound here holds with the stated overall confidence (default 95 %):
the two rates of the one-round audit get one-sided intervals at 1 - (1 - c)/2 each
(a union bound), and the one-run audit's choice among several numbers of guesses is
paid for the same way (Bonferroni).

Test support (`_fault_injected`, below the public part): deliberate bugs for the
positive controls. Nothing in the CLI can reach them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from dp.accounting import PrivacyAccountant, _gaussian_epsilon_exact
from dp.config import DPConfig, DPConfigError
from dp.encoding import Decoder, Encoder, EncodingPlan
from dp.mechanisms import get_mechanism
from dp.prng import SecureRng

__all__ = [
    "SECURE_SUM",
    "CanarySet",
    "OneRunAudit",
    "PipelineRun",
    "RoundAudit",
    "audit_round",
    "best_threshold",
    "claimed_epsilon",
    "clopper_pearson_upper",
    "epsilon_from_rates",
    "epsilon_lower_bound",
    "gaussian_epsilon",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "pipeline_update_sum",
]

#: What stands in for secure aggregation in every audit here (said in every output).
SECURE_SUM = "exact modular sum (the real protocol's masks cancel to exactly this sum)"

#: Devices encoded per batch (bounds memory: rows x encoded_dim x 8 bytes).
_ROWS_PER_BATCH = 8192


# --------------------------------------------------------------------- statistics


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (
        0.0 < confidence < 1.0
    ):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    return float(delta)


def _check_count(name: str, value: int, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def clopper_pearson_upper(k: Any, n: int, confidence: float) -> Any:
    """One-sided Clopper-Pearson upper bound on a rate seen as `k` events in `n` trials:
    the p with P[Binomial(n, p) <= k] = 1 - confidence (1 when k = n). Exact, so it
    holds for every n, including the zero-event case where it is
    1 - (1 - confidence)^(1/n). Accepts an array of k."""
    _check_confidence(confidence)
    n = _check_count("n", n, 1)
    karr = np.asarray(k)
    if np.any(karr < 0) or np.any(karr > n):
        raise ValueError(f"event counts must be in [0, {n}], got {k!r}")
    kf = karr.astype(np.float64)
    safe = np.minimum(kf, n - 1)  # beta.ppf needs b > 0; k = n is handled below
    upper = np.where(kf >= n, 1.0, stats.beta.ppf(confidence, safe + 1.0, n - safe))
    return float(upper) if np.ndim(upper) == 0 else upper


def epsilon_from_rates(alpha: Any, beta: Any, delta: float) -> Any:
    """The epsilon that false positive rate `alpha` and false negative rate `beta` force
    on any (eps, delta)-DP mechanism: max(ln((1-delta-alpha)/beta),
    ln((1-delta-beta)/alpha), 0); infinite when a rate is 0 and the other leaves room.
    Accepts arrays."""
    _check_delta(delta)
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.where(1 - delta - a > 0, np.log(np.maximum(1 - delta - a, 1e-300) / b), 0.0)
        two = np.where(1 - delta - b > 0, np.log(np.maximum(1 - delta - b, 1e-300) / a), 0.0)
    out = np.maximum(np.maximum(one, two), 0.0)
    return float(out) if np.ndim(out) == 0 else out


def epsilon_lower_bound(
    false_positives: Any,
    negatives: int,
    false_negatives: Any,
    positives: int,
    delta: float,
    confidence: float = 0.95,
) -> Any:
    """Lower bound on epsilon from a distinguishing test run on fresh trials.

    `false_positives` of `negatives` world-0 trials were called world 1, and
    `false_negatives` of `positives` world-1 trials were called world 0. Both rates get a
    one-sided Clopper-Pearson upper bound at 1 - (1 - confidence)/2, so that both hold
    together with probability >= `confidence`; then `epsilon_from_rates`. The threshold
    must not have been chosen on these same trials. Accepts arrays of counts."""
    conf = _check_confidence(confidence)
    each = 1.0 - (1.0 - conf) / 2.0
    alpha = clopper_pearson_upper(false_positives, negatives, each)
    beta = clopper_pearson_upper(false_negatives, positives, each)
    return epsilon_from_rates(alpha, beta, delta)


def best_threshold(
    scores0: np.ndarray, scores1: np.ndarray, delta: float, confidence: float = 0.95
) -> float:
    """The threshold tau of the test "world 1 iff score > tau" that maximizes
    `epsilon_lower_bound` on these (selection) trials. Run the test with it on separate
    trials: choosing it on the evaluation trials would bias the bound upward."""
    s0 = np.sort(np.asarray(scores0, dtype=np.float64).ravel())
    s1 = np.sort(np.asarray(scores1, dtype=np.float64).ravel())
    if s0.size == 0 or s1.size == 0:
        raise ValueError("both worlds need at least one score")
    if not (np.all(np.isfinite(s0)) and np.all(np.isfinite(s1))):
        raise ValueError("scores must be finite")
    cand = np.unique(np.concatenate((s0, s1)))
    fp = s0.size - np.searchsorted(s0, cand, side="right")
    fn = np.searchsorted(s1, cand, side="right")
    eps = epsilon_lower_bound(fp, s0.size, fn, s1.size, delta, confidence)
    return float(cand[int(np.argmax(eps))])


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon at `delta` of ONE Gaussian mechanism with std / sensitivity =
    `noise_multiplier` (Balle & Wang 2018, dp-accounting's Gaussian privacy loss): what
    the best possible attacker against this much Gaussian noise achieves, the ceiling a
    tight audit approaches."""
    if not noise_multiplier > 0:
        return math.inf
    return _gaussian_epsilon_exact(float(noise_multiplier), float(delta))


# --------------------------------------------------------------------- the claim


def claimed_epsilon(plan: EncodingPlan, survivors: int, rounds: int = 1) -> float:
    """What the project's accountant charges for `rounds` rounds of `plan` in which
    `survivors` noise shares were summed (the plan's corrupt bound counted out): the
    unamplified figure, under zero-out adjacency (the device's data zeroed, its noise
    share kept), which is exactly the pair of worlds the audits compare. An audited
    canary always takes part, and the server knows who did, so no amplification."""
    _check_count("rounds", rounds, 1)
    acc = PrivacyAccountant(plan.config, sample_rate=1.0)
    acc.compose(plan.privacy_event(survivors), rounds)
    return float(acc.report().epsilon)


# --------------------------------------------------------------------- pipeline glue


def _make_plan(
    config: DPConfig, dim: int, n_clients: int, min_contributors: int, corrupt: int = 0
) -> EncodingPlan:
    return EncodingPlan.create(config, dim, n_clients, min_contributors, corrupt=corrupt)


def _seed_bytes(seed: int | None, *labels: object) -> bytes:
    """32 bytes for a public value (rotation seed): from `seed` and labels, or the OS."""
    if seed is None:
        return os.urandom(32)
    text = "\x1f".join(["dp.audit", str(seed), *map(str, labels)]).encode()
    return hashlib.sha256(text).digest()


def _public_rng(seed: int | None, *labels: int) -> np.random.Generator:
    """The auditor's own choices (canary directions, which canaries are in). They are
    the attacker's data, not secret noise, so numpy is fine; with `seed` None they come
    from OS entropy."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(np.random.SeedSequence([seed, *labels]))


class _DeviceRandomness:
    """The secret randomness of the simulated devices (their rounding and noise).

    One `dp.prng.SecureRng` per batch of devices: the rows of one `encode_batch` call
    draw from it in turn, so their draws are independent (the keystream moves on) and
    the audit pays for one key set-up per batch, not per device. With a seed it is
    `SecureRng.for_simulation(seed, "dp.audit", *labels, batch)` (reproducible, not
    secret: fine for an audit, where the attacker is the auditor's own test); without
    one, `SecureRng.from_os()`.
    """

    def __init__(self, seed: int | None, *labels: int) -> None:
        self._seed, self._labels, self._batch = seed, labels, 0

    def next_batch(self) -> SecureRng:
        self._batch += 1
        if self._seed is None:
            return SecureRng.from_os()
        return SecureRng.for_simulation(self._seed, "dp.audit", *self._labels, self._batch)


def _encode_rows(encoder: Encoder, updates: np.ndarray, rng: SecureRng) -> np.ndarray:
    """(m, dim) updates, one device each -> (m, encoded_dim) uint64, through the real
    encoder's `encode_batch`, every row drawing from `rng` in turn."""
    encoded, _ = encoder.encode_batch(updates, [rng] * updates.shape[0])
    return np.asarray(encoded, dtype=np.uint64)


def _modular_sums(encoded: np.ndarray, groups: int, plan: EncodingPlan) -> np.ndarray:
    """Exact sum mod 2^b of each group of consecutive rows. uint64 addition wraps mod
    2^64, a multiple of 2^b, so reducing at the end is exact for any b <= 62."""
    per = encoded.shape[0] // groups
    total = encoded.reshape(groups, per, encoded.shape[1]).sum(axis=1, dtype=np.uint64)
    return total % np.uint64(plan.modulus)


# --------------------------------------------------------------------- one round


@dataclass(frozen=True)
class RoundAudit:
    """Result of `audit_round`: the measured lower bound against the claim.

    `epsilon_claim` is the accountant's one-round epsilon for `survivors` shares;
    `epsilon_gaussian` the exact epsilon of a Gaussian mechanism with the noise that was
    really added (summed std over the canary's norm after clipping,
    `effective_noise_multiplier`): the most any attacker on this noise could show.
    `fault` names an injected bug (positive controls only; None for a real audit).
    """

    mechanism: str
    bits: int
    noise_multiplier: float
    clip: float
    canary_norm: float
    dim: int
    n_clients: int
    min_contributors: int
    survivors: int
    corrupt: int
    trials: int
    threshold_trials: int
    threshold: float
    false_positives: int
    false_negatives: int
    fpr_upper: float
    fnr_upper: float
    epsilon_lower: float
    epsilon_claim: float
    epsilon_gaussian: float
    effective_noise_multiplier: float
    delta: float
    confidence: float
    secure_sum: str = SECURE_SUM
    fault: str | None = None

    @property
    def ratio_to_gaussian(self) -> float:
        """Lower bound / exact Gaussian epsilon at the same noise (how tight the audit is)."""
        return _ratio(self.epsilon_lower, self.epsilon_gaussian)

    @property
    def ratio_to_claim(self) -> float:
        """Lower bound / claimed epsilon (> 1: the claim is violated)."""
        return _ratio(self.epsilon_lower, self.epsilon_claim)

    @property
    def violation(self) -> bool:
        """True when the measured lower bound exceeds the claim."""
        return self.epsilon_lower > self.epsilon_claim

    @property
    def ceiling(self) -> float:
        """The largest bound these trials could give (no error at all): about
        ln(trials / 3.7) at 95 %. Claims above it cannot be refuted by this audit."""
        return float(epsilon_lower_bound(0, self.trials, 0, self.trials, self.delta,
                                         self.confidence))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ratio_to_gaussian=self.ratio_to_gaussian, ratio_to_claim=self.ratio_to_claim,
                 violation=self.violation, ceiling=self.ceiling)
        return d


def _ratio(num: float, den: float) -> float:
    if den == 0 or math.isinf(den):
        return 0.0 if num < math.inf else math.nan
    return num / den


def audit_round(
    config: DPConfig,
    *,
    dim: int = 64,
    n_clients: int = 10,
    min_contributors: int = 5,
    survivors: int | None = None,
    corrupt: int = 0,
    trials: int = 20_000,
    threshold_trials: int | None = None,
    canary_norm: float | None = None,
    confidence: float = 0.95,
    seed: int | None = None,
) -> RoundAudit:
    """Audit one round of the real pipeline (see the module docstring).

    `n_clients` devices are planned, `min_contributors` (t) is the sizing bound,
    `survivors` (default t) devices reach the sum, one of them the canary device. The
    other survivors' updates are zero in both worlds. `corrupt` (c) of those others
    collude with the attacker, who knows their noise shares and subtracts them from the
    sum: the same as leaving them out of it, which is what the audit does (the plan
    sizes the shares for t - c honest ones, and the claim charges s - c). `trials`
    evaluation trials per world, plus `threshold_trials` (default `trials`) per world to
    choose the threshold.
    `canary_norm` defaults to the clip C; a larger canary checks that clipping holds.
    `seed` makes the run reproducible (None: OS entropy).

    Cost: 2 (trials + threshold_trials) x survivors device encodings of `dim` entries;
    small `dim` (64..1024) is enough, since the test uses one direction.
    """
    if not isinstance(config, DPConfig):
        raise TypeError(f"config must be a DPConfig, got {type(config).__name__}")
    if config.adaptive_clip:
        raise DPConfigError("audit_round audits the update; use a config without adaptive_clip")
    trials = _check_count("trials", trials, 1)
    threshold_trials = _check_count(
        "threshold_trials", trials if threshold_trials is None else threshold_trials, 1
    )
    s = min_contributors if survivors is None else survivors
    _check_count("survivors", s, 1)
    if not min_contributors <= s <= n_clients:
        raise DPConfigError(
            f"survivors must be in [min_contributors={min_contributors}, "
            f"n_clients={n_clients}], got {s!r}"
        )
    corrupt = _check_count("corrupt", corrupt, 0)
    if corrupt > s - 1:
        raise DPConfigError(f"corrupt must be <= survivors - 1 = {s - 1}, got {corrupt}")
    honest = s - corrupt
    norm = config.clip if canary_norm is None else float(canary_norm)
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"canary_norm must be > 0, got {canary_norm!r}")
    _check_confidence(confidence)

    plan = _make_plan(config, dim, n_clients, min_contributors, corrupt)
    claim = claimed_epsilon(plan, s)
    fault = _FAULT.get()
    used = _FAULTS[fault](plan) if fault is not None else plan

    rotation_seed = _seed_bytes(seed, "rotation")
    encoder, decoder = Encoder(used, rotation_seed), Decoder(used, rotation_seed)
    direction = _public_rng(seed, 1).normal(size=dim)
    direction /= np.linalg.norm(direction)
    canary = norm * direction

    def scores(count: int, world: int, block: int) -> np.ndarray:
        rand = _DeviceRandomness(seed, block, world)
        out = np.empty(count)
        per_batch = max(1, _ROWS_PER_BATCH // honest)
        for start in range(0, count, per_batch):
            c = min(per_batch, count - start)
            updates = np.zeros((c * honest, dim))
            if world:
                updates[::honest] = canary  # device 0 of every trial is the canary device
            sums = _modular_sums(_encode_rows(encoder, updates, rand.next_batch()), c, used)
            for j in range(c):
                out[start + j] = float(decoder.decode(sums[j], s).total @ direction)
        return out

    tau = best_threshold(scores(threshold_trials, 0, 0), scores(threshold_trials, 1, 0),
                         config.delta, confidence)
    eval0, eval1 = scores(trials, 0, 1), scores(trials, 1, 1)
    fp = int(np.count_nonzero(eval0 > tau))
    fn = int(np.count_nonzero(eval1 <= tau))
    each = 1.0 - (1.0 - confidence) / 2.0

    mech = get_mechanism(config.mechanism)
    noise_std = math.sqrt(mech.noise_variance(used.local_stddev, honest)) * used.gamma
    sensitivity = min(norm, used.config.clip)
    z_eff = noise_std / sensitivity
    return RoundAudit(
        mechanism=config.mechanism,
        bits=config.bits,
        noise_multiplier=config.noise_multiplier,
        clip=config.clip,
        canary_norm=norm,
        dim=dim,
        n_clients=n_clients,
        min_contributors=min_contributors,
        survivors=s,
        corrupt=corrupt,
        trials=trials,
        threshold_trials=threshold_trials,
        threshold=tau,
        false_positives=fp,
        false_negatives=fn,
        fpr_upper=clopper_pearson_upper(fp, trials, each),
        fnr_upper=clopper_pearson_upper(fn, trials, each),
        epsilon_lower=epsilon_lower_bound(fp, trials, fn, trials, config.delta, confidence),
        epsilon_claim=claim,
        epsilon_gaussian=gaussian_epsilon(z_eff, config.delta),
        effective_noise_multiplier=z_eff,
        delta=config.delta,
        confidence=confidence,
        fault=fault,
    )


# --------------------------------------------------------------------- one run


def _one_run_f(r: int, vs: np.ndarray, m: int, q: float, delta: float) -> np.ndarray:
    """Steinke, Nasr, Jagielski (NeurIPS 2023), Thm. 5.2, at each v' in `vs`:
    f(v') = P[W~ >= v'] + 2 m delta max_{i=1..v'} P[v'-i <= W~ <= v'-1] / i,
    W~ ~ Binomial(r, q), q = e^eps / (1 + e^eps). Binomial terms are scipy's exact
    (regularized incomplete beta) values, not a normal approximation."""
    vs = np.asarray(vs, dtype=np.int64)
    tail = stats.binom.sf(vs - 1, r, q)  # P[W~ >= v']
    if delta == 0 or vs.size == 0:
        return np.minimum(tail, 1.0)
    top = int(vs.max())
    # cum[j] = P[W~ <= j - 1]; the window of length i ending at v'-1 is cum[v'] - cum[v'-i]
    cum = np.concatenate(([0.0], np.cumsum(stats.binom.pmf(np.arange(top), r, q))))
    i = np.arange(1, top + 1)
    term = np.zeros(vs.size)
    for row, vp in enumerate(vs):
        if vp > 0:
            term[row] = float(np.max((cum[vp] - cum[vp - i[:vp]]) / i[:vp]))
    return np.minimum(tail + 2.0 * m * delta * term, 1.0)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of "v or more of r guesses right" about m canaries (each included with
    probability 1/2) under the hypothesis that the run is (epsilon, delta)-DP: by Steinke,
    Nasr, Jagielski (NeurIPS 2023, Thm. 5.2), P[W >= v'] <= f(v') for every v' (see
    `_one_run_f`), and P[W >= v] <= P[W >= v'] for v' <= v, so the p-value is
    min_{v' <= v} f(v'). That makes it non-increasing in v, which the test needs to be
    valid (the paper's own code uses f(v) alone)."""
    m = _check_count("m", m, 1)
    r = _check_count("r", r, 0)
    v = _check_count("v", v, 0)
    if not v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if isinstance(epsilon, bool) or not (isinstance(epsilon, (int, float)) and epsilon >= 0):
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    delta = _check_delta(delta)
    if r == 0 or v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    at_v = float(_one_run_f(r, np.array([v]), m, q, delta)[0])
    # only v' whose tail term alone is below f(v) can lower the minimum
    earlier = np.arange(v)
    earlier = earlier[stats.binom.sf(earlier - 1, r, q) < at_v]
    if earlier.size == 0:
        return at_v
    return min(at_v, float(np.min(_one_run_f(r, earlier, m, q, delta))))


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, confidence: float = 0.95
) -> float:
    """Largest epsilon rejected at `confidence` by `one_run_p_value` (0 if none): with
    probability >= `confidence`, the run is not (eps, delta)-DP for any eps below it.

    Every eps' >= the true epsilon is also a valid hypothesis and min over eps' >= eps of
    the p-value is a valid, monotone p-value, so the supremum of rejected epsilons is
    itself a valid bound. Found by a scan of [0, eps_max] (above eps_max even the binomial
    tail alone exceeds 1 - confidence) and bisection next to the last rejected point;
    the returned value is one whose p-value was checked to be below 1 - confidence."""
    level = 1.0 - _check_confidence(confidence)
    if one_run_p_value(m, r, v, 0.0, delta) >= level:
        return 0.0

    def tail(eps: float) -> float:
        return float(stats.binom.sf(v - 1, r, 1.0 / (1.0 + math.exp(-eps))))

    hi = 1.0
    while tail(hi) < level and hi < 700:
        hi *= 2.0
    lo_t, hi_t = 0.0, hi
    for _ in range(60):  # eps_max: the tail term alone reaches the level
        mid = 0.5 * (lo_t + hi_t)
        lo_t, hi_t = (mid, hi_t) if tail(mid) < level else (lo_t, mid)
    grid = np.linspace(0.0, hi_t, 51)
    rejected = [float(e) for e in grid if one_run_p_value(m, r, v, float(e), delta) < level]
    best = max(rejected)
    step = float(grid[1] - grid[0])
    lo, up = best, min(best + step, hi_t)
    for _ in range(40):
        mid = 0.5 * (lo + up)
        if one_run_p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            up = mid
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """Result of `one_run_audit`: `guesses` (r) of `canaries` (m) guessed, `correct` (v)
    right, with the number of guesses chosen among `guess_grid` (paid for by
    Bonferroni); `epsilon_lower` holds with `confidence` overall."""

    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower: float
    delta: float
    confidence: float
    guess_grid: tuple[int, ...]
    epsilon_claim: float | None = None

    @property
    def violation(self) -> bool:
        return self.epsilon_claim is not None and self.epsilon_lower > self.epsilon_claim

    @property
    def ceiling(self) -> float:
        """The largest bound this many canaries could give (every guess right)."""
        each = 1.0 - (1.0 - self.confidence) / len(self.guess_grid)
        return max(one_run_epsilon_lower_bound(self.canaries, r, r, self.delta, each)
                   for r in self.guess_grid)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["guess_grid"] = list(self.guess_grid)
        d["violation"] = self.violation
        d["ceiling"] = self.ceiling
        return d


def default_guess_grid(m: int) -> tuple[int, ...]:
    """Numbers of guesses tried by `one_run_audit`: even values from 10 up to m."""
    grid = {g for g in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if g <= m}
    grid.add(m - m % 2)
    return tuple(sorted(g for g in grid if g >= 2))


def one_run_audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    guess_grid: Sequence[int] | None = None,
    epsilon_claim: float | None = None,
) -> OneRunAudit:
    """Steinke et al.'s guessing game on per-canary `scores` (higher = more likely in):
    for each r in `guess_grid`, guess "in" for the r/2 top-scored canaries and "out" for
    the r/2 bottom-scored, count the right guesses v, and bound epsilon at confidence
    1 - (1 - confidence) / len(grid); report the best r. `included` is the truth."""
    sc = np.asarray(scores, dtype=np.float64).ravel()
    inc = np.asarray(included, dtype=bool).ravel()
    if sc.shape != inc.shape or sc.size < 2:
        raise ValueError(f"scores {sc.shape} and included {inc.shape} must match, m >= 2")
    if not np.all(np.isfinite(sc)):
        raise ValueError("scores must be finite")
    m = sc.size
    grid = tuple(default_guess_grid(m) if guess_grid is None else guess_grid)
    if not grid or any(isinstance(g, bool) or g < 2 or g > m or g % 2 for g in grid):
        raise ValueError(f"guess_grid must hold even numbers in [2, {m}], got {grid!r}")
    conf = _check_confidence(confidence)
    each = 1.0 - (1.0 - conf) / len(grid)
    order = np.argsort(sc, kind="stable")
    best = (0.0, grid[0], 0)
    for r in grid:
        half = r // 2
        v = int(np.count_nonzero(inc[order[m - half:]]) + np.count_nonzero(~inc[order[:half]]))
        eps = one_run_epsilon_lower_bound(m, r, v, delta, each)
        if eps > best[0] or (eps == best[0] and r == grid[0]):
            best = (eps, r, v)
    return OneRunAudit(
        canaries=m, included=int(inc.sum()), guesses=best[1], correct=best[2],
        epsilon_lower=best[0], delta=float(delta), confidence=conf, guess_grid=grid,
        epsilon_claim=epsilon_claim,
    )


@dataclass(frozen=True)
class CanarySet:
    """m canary updates for the one-run audit: `directions` (m, dim) are random-sign
    unit vectors (entries +-1/sqrt(dim)); canary i submits `norm` * directions[i] in
    every round if `included[i]` (each drawn independently with probability 1/2)."""

    directions: np.ndarray
    included: np.ndarray
    norm: float

    @classmethod
    def draw(cls, m: int, dim: int, norm: float, rng: np.random.Generator) -> CanarySet:
        _check_count("m", m, 2)
        _check_count("dim", dim, 1)
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"norm must be > 0, got {norm!r}")
        signs = rng.integers(0, 2, size=(m, dim), dtype=np.int8) * 2 - 1
        return cls(directions=signs / math.sqrt(dim), included=rng.random(m) < 0.5,
                   norm=float(norm))

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    def updates(self) -> np.ndarray:
        """The included canaries' updates, (number included, dim)."""
        return self.norm * self.directions[self.included]

    def scores(self, update_sum: np.ndarray) -> np.ndarray:
        """Inner product of each canary's direction with the sum of the model updates."""
        total = np.asarray(update_sum, dtype=np.float64).ravel()
        if total.shape[0] != self.dim:
            raise ValueError(f"update sum has {total.shape[0]} entries, canaries {self.dim}")
        return self.directions @ total


@dataclass(frozen=True)
class PipelineRun:
    """What `pipeline_update_sum` (or a training engine) hands the one-run audit: the
    sum of the model updates over the run and the accountant's epsilon for it."""

    update_sum: np.ndarray
    epsilon_claim: float
    rounds: int
    survivors: int
    secure_sum: str = SECURE_SUM


def pipeline_update_sum(
    canaries: CanarySet,
    config: DPConfig,
    *,
    rounds: int,
    background: int,
    seed: int | None = None,
) -> PipelineRun:
    """The one-run audit's "training" on the aggregation pipeline alone: `rounds`
    rounds of a cohort of `background` devices with zero update and the m canary
    devices, included canaries sending their vector and the others zero (their data
    zeroed, their noise share kept: the zero-out adjacency of the claim). Every device is
    encoded by the real `Encoder` (a fresh public rotation each round), the encodings are
    summed exactly mod 2^b and decoded by the real `Decoder`, and the decoded sums are
    added up. Every device survives every round, the noise is sized for all n of them,
    and the claim is the accountant's epsilon for n shares over `rounds` unsampled
    rounds. A training engine replaces this by the sum of its model updates (see
    `benchmarks.audit`)."""
    _check_count("rounds", rounds, 1)
    _check_count("background", background, 0)
    m, dim = canaries.directions.shape
    updates = np.zeros((background + m, dim))
    updates[background:] = canaries.norm * canaries.directions * canaries.included[:, None]
    n = updates.shape[0]
    plan = _make_plan(config, dim, n, n)
    fault = _FAULT.get()
    used = _FAULTS[fault](plan) if fault is not None else plan
    total = np.zeros(dim)
    for rnd in range(rounds):
        rotation_seed = _seed_bytes(seed, "one-run rotation", rnd)
        encoder, decoder = Encoder(used, rotation_seed), Decoder(used, rotation_seed)
        rand = _DeviceRandomness(seed, 2, rnd)
        summed = np.zeros(used.encoded_dim, dtype=np.uint64)
        for start in range(0, n, _ROWS_PER_BATCH):
            part = updates[start:start + _ROWS_PER_BATCH]
            enc = _encode_rows(encoder, part, rand.next_batch())
            summed = summed + _modular_sums(enc, 1, used)[0]
        total += decoder.decode(summed % np.uint64(used.modulus), n).total
    return PipelineRun(update_sum=total, epsilon_claim=claimed_epsilon(plan, n, rounds),
                       rounds=rounds, survivors=n)


# --------------------------------------------------------------------- test support
# Deliberate bugs for the positive controls (tests/dp/test_audit.py): each replaces the
# plan the devices encode with (and the server decodes with) by a broken one, while the
# claim stays the honest plan's. No CLI flag or public function reaches them.


def _fault_noise_down_10x(plan: EncodingPlan) -> EncodingPlan:
    mech = get_mechanism(plan.config.mechanism)
    return dataclasses.replace(plan, local_stddev=mech.local_scale(plan.local_stddev / 10.0))


def _fault_sized_by_n(plan: EncodingPlan) -> EncodingPlan:
    return _make_plan(plan.config, plan.dim, plan.n_clients, plan.n_clients, plan.corrupt)


def _fault_colluders_counted(plan: EncodingPlan) -> EncodingPlan:
    """Shares sized for all t survivors, as if the colluders' noise protected anyone."""
    return _make_plan(plan.config, plan.dim, plan.n_clients, plan.min_contributors)


def _fault_no_clipping(plan: EncodingPlan) -> EncodingPlan:
    huge = plan.config.clip * 1e6  # the clip never bites; gamma and the noise stay honest
    loose = plan.l2_sensitivity * 1e6
    return dataclasses.replace(
        plan, config=dataclasses.replace(plan.config, clip=huge), l2_sensitivity=loose,
        l1_sensitivity=loose * min(math.sqrt(plan.padded_dim), loose),
    )


_FAULTS: dict[str, Callable[[EncodingPlan], EncodingPlan]] = {
    "noise_down_10x": _fault_noise_down_10x,
    "sized_by_n": _fault_sized_by_n,
    "no_clipping": _fault_no_clipping,
    "colluders_counted": _fault_colluders_counted,
}
_FAULT: ContextVar[str | None] = ContextVar("dp_audit_fault", default=None)


@contextmanager
def _fault_injected(name: str) -> Iterator[None]:
    """TEST SUPPORT ONLY: audits inside this block run the pipeline with bug `name`
    (one of `_FAULTS`) while claiming the honest epsilon; the result's `fault` says so."""
    if name not in _FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(_FAULTS)}")
    token = _FAULT.set(name)
    try:
        yield
    finally:
        _FAULT.reset(token)
