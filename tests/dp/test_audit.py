"""dp.audit: the statistics against hand values and exact coverage, the honest pipeline
below its claim, and every positive control (an injected bug) caught."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dp import DPConfig
from dp.audit import (
    _FAULT,
    CanarySet,
    _fault_injected,
    audit_round,
    best_threshold,
    claimed_epsilon,
    clopper_pearson_upper,
    epsilon_from_rates,
    epsilon_lower_bound,
    gaussian_epsilon,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    pipeline_update_sum,
)
from dp.encoding import EncodingPlan

# --------------------------------------------------------------------- statistics


def test_clopper_pearson_zero_events_closed_form() -> None:
    for n in (1, 10, 300, 20_000):
        assert clopper_pearson_upper(0, n, 0.975) == pytest.approx(1 - 0.025 ** (1 / n),
                                                                  rel=1e-9)
    assert clopper_pearson_upper(7, 7, 0.95) == 1.0


@pytest.mark.parametrize(("k", "n"), [(1, 10), (13, 400), (250, 1000)])
def test_clopper_pearson_upper_is_the_exact_binomial_quantile(k: int, n: int) -> None:
    p = clopper_pearson_upper(k, n, 0.95)
    assert stats.binom.cdf(k, n, p) == pytest.approx(0.05, rel=1e-6)
    assert p > k / n


def test_clopper_pearson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="event counts"):
        clopper_pearson_upper(11, 10, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson_upper(1, 10, 1.0)


def test_epsilon_from_rates_hand_values() -> None:
    assert epsilon_from_rates(0.01, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    assert epsilon_from_rates(0.5, 0.01, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    d = 1e-3
    assert epsilon_from_rates(0.02, 0.3, d) == pytest.approx(math.log((1 - d - 0.3) / 0.02))
    assert epsilon_from_rates(0.5, 0.5, 0.0) == 0.0  # a coin flip proves nothing
    assert epsilon_from_rates(0.0, 0.5, 0.0) == math.inf


def test_lower_bound_covers_randomized_response() -> None:
    """Randomized response at eps = 2 has FPR = FNR = 1/(1+e^2) exactly; point estimates
    would exceed 2 about half the time. The Clopper-Pearson bound may exceed it in at
    most 5 % of experiments, and it must still have power (median well above 1)."""
    rng = np.random.default_rng(5)
    eps, n, reps = 2.0, 2000, 2000
    rate = 1.0 / (1.0 + math.exp(eps))
    fp = rng.binomial(n, rate, size=reps)
    fn = rng.binomial(n, rate, size=reps)
    bounds = epsilon_lower_bound(fp, n, fn, n, 0.0, 0.95)
    assert np.mean(bounds > eps) <= 0.05
    assert np.median(bounds) > 1.6
    point = epsilon_from_rates(fp / n, fn / n, 0.0)
    assert np.mean(point > eps) > 0.3  # what the confidence interval is for


def test_best_threshold_separates() -> None:
    rng = np.random.default_rng(0)
    s0 = rng.uniform(0.0, 0.3, size=200)
    s1 = rng.uniform(1.0, 1.3, size=200)
    tau = best_threshold(s0, s1, 1e-5)
    assert s0.max() <= tau < s1.min()


def test_gaussian_epsilon_solves_the_exact_tradeoff() -> None:
    for z, delta in ((1.0, 1e-5), (2.0, 1e-5), (0.5, 1e-6)):
        eps = gaussian_epsilon(z, delta)
        # Balle & Wang (2018): delta(eps) = Phi(-eps z + 1/(2z)) - e^eps Phi(-eps z - 1/(2z))
        got = stats.norm.cdf(-eps * z + 1 / (2 * z)) - math.exp(eps) * stats.norm.cdf(
            -eps * z - 1 / (2 * z))
        assert got == pytest.approx(delta, rel=1e-6)
    assert gaussian_epsilon(1.0, 1e-5) == pytest.approx(4.38, abs=0.01)


# --------------------------------------------------------------------- one-run bound


def test_one_run_all_right_without_delta_is_closed_form() -> None:
    """delta = 0, r = v: P[Bin(r, q) >= r] = q^r = 0.05 gives eps = ln(q / (1 - q))."""
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        assert one_run_epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(
            math.log(q / (1 - q)), rel=1e-6)


def test_one_run_p_value_delta_term_by_hand() -> None:
    """m = r = v = 2: f(2) = q^2 + 2 m delta max(P[W=1], P[W in {0,1}] / 2), and
    f(1) = 1 - (1-q)^2 + 2 m delta P[W=0]; the p-value is the smaller."""
    eps, delta, m = 1.0, 0.01, 2
    q = math.exp(eps) / (1 + math.exp(eps))
    p0, p1 = (1 - q) ** 2, 2 * q * (1 - q)
    f2 = q**2 + 2 * m * delta * max(p1, (p0 + p1) / 2)
    f1 = 1 - p0 + 2 * m * delta * p0
    assert one_run_p_value(m, 2, 2, eps, delta) == pytest.approx(min(f1, f2, 1.0), rel=1e-12)


def _paper_formula(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Thm. 5.2 at v alone, written out term by term."""
    q = 1 / (1 + math.exp(-eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    tail = sum(pmf[v:])
    windows = [sum(pmf[v - i:v]) / i for i in range(1, v + 1)]
    return min(1.0, tail + 2 * m * delta * max(windows))


@pytest.mark.parametrize("args", [(1000, 100, 90, 1.0, 1e-5), (100, 50, 45, 2.0, 1e-3),
                                  (10, 10, 9, 1.0, 0.01), (1000, 200, 150, 0.3, 1e-5)])
def test_one_run_p_value_matches_the_theorem(args: tuple) -> None:
    m, r, v, eps, delta = args
    ours = one_run_p_value(m, r, v, eps, delta)
    ref = _paper_formula(m, r, v, eps, delta)
    assert ours <= ref * (1 + 1e-9)
    assert ours == pytest.approx(ref, rel=1e-9)  # in these cases the minimum is at v


@pytest.mark.parametrize(("eps", "delta"), [(0.5, 0.0), (1.0, 1e-3), (2.0, 1e-4)])
def test_one_run_bound_exact_coverage(eps: float, delta: float) -> None:
    """For an exactly eps-DP guesser (each guess right w.p. e^eps/(1+e^eps)), the exact
    probability over v that the bound exceeds eps is at most 5 %."""
    m = r = 60
    q = math.exp(eps) / (1 + math.exp(eps))
    v_lo = int(r * q) - 1  # below the mean the bound cannot exceed eps
    over = [v for v in range(v_lo, r + 1)
            if one_run_epsilon_lower_bound(m, r, v, delta) > eps]
    assert over, "the bound never exceeds eps even for v = r: no power"
    assert float(sum(stats.binom.pmf(v, r, q) for v in over)) <= 0.05


def test_one_run_delta_only_lowers_the_bound() -> None:
    for v in (80, 90, 100):
        assert one_run_epsilon_lower_bound(1000, 100, v, 1e-4) <= one_run_epsilon_lower_bound(
            1000, 100, v, 0.0)


def test_one_run_audit_counts_guesses() -> None:
    rng = np.random.default_rng(3)
    included = rng.permutation(np.arange(200) < 100)
    perfect = one_run_audit(included + 0.01 * rng.random(200), included, 0.0,
                            guess_grid=[200])
    assert (perfect.guesses, perfect.correct) == (200, 200)
    q = 0.05 ** (1 / 200)
    assert perfect.epsilon_lower == pytest.approx(math.log(q / (1 - q)), rel=1e-6)
    wrong = one_run_audit(-included.astype(float), included, 0.0, guess_grid=[200])
    assert wrong.correct == 0 and wrong.epsilon_lower == 0.0
    with pytest.raises(ValueError, match="guess_grid"):
        one_run_audit(rng.random(200), included, 0.0, guess_grid=[3])


# --------------------------------------------------------------------- the pipeline

# z = 2 claims eps ~ 2.17 (delta 1e-5), well inside what 400 trials per world can certify
# (~4.7). 200 devices are planned, noise is sized for t = 2, and 2 survive (so sizing by
# n instead of t shrinks the noise 10x).
TRIALS = 400
PIPE = {"dim": 64, "n_clients": 200, "min_contributors": 2, "trials": TRIALS}


def cfg(mechanism: str = "ddgauss", z: float = 2.0) -> DPConfig:
    return DPConfig(mechanism=mechanism, bits=16, noise_multiplier=z)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam", "gaussian"])
def test_honest_pipeline_stays_below_its_claim(mechanism: str) -> None:
    res = audit_round(cfg(mechanism), seed=11, **PIPE)
    assert res.fault is None
    assert 1.9 < res.epsilon_claim < 2.4
    assert res.epsilon_lower < res.epsilon_claim
    assert not res.violation
    assert res.effective_noise_multiplier == pytest.approx(2.0, rel=0.02)
    assert "exact modular sum" in res.secure_sum


def test_honest_clipping_holds_against_a_large_canary() -> None:
    res = audit_round(cfg(), seed=12, canary_norm=10.0, **PIPE)
    assert res.epsilon_lower < res.epsilon_claim


def test_audit_has_power_without_noise() -> None:
    """Mechanism none claims no privacy; the audit then reaches its ceiling."""
    res = audit_round(DPConfig(mechanism="none", bits=16, noise_multiplier=0.0), seed=13,
                      **PIPE)
    assert res.epsilon_claim == math.inf
    assert res.false_positives == 0 and res.false_negatives == 0
    assert res.epsilon_lower > 4.0


@pytest.mark.parametrize(
    ("fault", "extra"),
    [("noise_down_10x", {}), ("sized_by_n", {}), ("no_clipping", {"canary_norm": 10.0})],
)
def test_positive_control_is_caught(fault: str, extra: dict) -> None:
    with _fault_injected(fault):
        res = audit_round(cfg(), seed=14, **PIPE, **extra)
    assert res.fault == fault
    honest_plan = EncodingPlan.create(cfg(), 64, 200, 2)
    assert res.epsilon_claim == pytest.approx(claimed_epsilon(honest_plan, 2))
    assert res.violation, (fault, res.epsilon_lower, res.epsilon_claim)
    assert _FAULT.get() is None


def test_colluders_shares_are_subtracted_and_not_counted() -> None:
    """99 of 100 survivors collude: the attacker removes their shares. The honest plan
    sized the one honest share for the whole target, and the audit stays below the
    claim; sizing the shares for all t (counting the colluders' noise) is caught."""
    kw = {"dim": 64, "n_clients": 200, "min_contributors": 100, "corrupt": 99,
          "trials": TRIALS, "seed": 31}
    honest = audit_round(cfg(), **kw)
    assert honest.corrupt == 99 and not honest.violation
    assert honest.effective_noise_multiplier == pytest.approx(2.0, rel=0.02)
    with _fault_injected("colluders_counted"):
        bad = audit_round(cfg(), **kw)
    assert bad.epsilon_claim == pytest.approx(honest.epsilon_claim)
    assert bad.violation, (bad.epsilon_lower, bad.epsilon_claim)


def test_fault_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault"), _fault_injected("typo"):
        pass


def test_audit_round_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="trials"):
        audit_round(cfg(), trials=0)
    with pytest.raises(ValueError, match="survivors"):
        audit_round(cfg(), n_clients=20, min_contributors=10, survivors=5)
    with pytest.raises(TypeError, match="DPConfig"):
        audit_round({"mechanism": "ddgauss"})  # type: ignore[arg-type]


# --------------------------------------------------------------------- one run, pipeline


def _one_run(seed: int) -> tuple[float, float]:
    """100 canaries and 4 other devices in every round (noise sized for all 104), 2
    rounds; z = 5 claims eps ~ 1.16, below the ~2.4 that 100 canaries can certify."""
    rng = np.random.default_rng(seed)
    canaries = CanarySet.draw(100, 4096, 1.0, rng)
    run = pipeline_update_sum(canaries, cfg(z=5.0), rounds=2, background=4, seed=seed)
    audit = one_run_audit(canaries.scores(run.update_sum), canaries.included, 1e-5,
                          epsilon_claim=run.epsilon_claim)
    return audit.epsilon_lower, run.epsilon_claim


def test_one_run_on_the_pipeline_honest_and_control() -> None:
    lower, claim = _one_run(21)
    assert 0.9 < claim < 1.3
    assert lower < claim
    with _fault_injected("noise_down_10x"):
        lower_bad, claim_bad = _one_run(21)
    assert claim_bad == pytest.approx(claim)
    assert lower_bad > claim_bad


def test_canary_set_shapes() -> None:
    c = CanarySet.draw(10, 16, 2.0, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(c.directions, axis=1), 1.0)
    assert c.updates().shape == (int(c.included.sum()), 16)
    assert np.allclose(np.linalg.norm(c.updates(), axis=1), 2.0)
    with pytest.raises(ValueError, match="entries"):
        c.scores(np.zeros(5))
