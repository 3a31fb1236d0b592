"""The decoder's wrap-around report (issue 12, item 5) and the bias bound of conditional
randomized rounding (item 4).

The sums are built here with the encoder's arithmetic (clip, public rotation, scale,
randomized rounding, a rounded Gaussian share per device, sum mod 2^b) and numpy test
randomness, so that these tests pin the decoder and the bound, not a sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp import Decoder, DPConfig, EncodingPlan, rounding_bias_bound
from dp.encoding import DecodedSum
from dp.rotation import rotate, rotation_signs, unrotate

SEED = b"public rotation seed of round 7.."


def _sum_mod(
    plan: EncodingPlan, updates: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(sum mod 2^b as the secure sum delivers it, the true integer sum)."""
    cfg = plan.config
    signs = rotation_signs(SEED, plan.padded_dim)
    total = np.zeros(plan.padded_dim, dtype=np.int64)
    for u in updates:
        norm = float(np.linalg.norm(u))
        x = u * min(1.0, cfg.clip / norm) if norm > 0 else u
        y = rotate(x, signs, cfg.rotation) / plan.gamma
        low = np.floor(y)
        r = low + (rng.random(y.shape) < y - low)
        share = np.rint(rng.normal(0.0, plan.local_stddev, y.shape))
        total += (r + share).astype(np.int64)
    return np.mod(total, plan.modulus).astype(np.uint64), total


def _aligned_update(plan: EncodingPlan, coordinate: int, scale: float) -> np.ndarray:
    """An update whose whole norm lands in ONE rotated coordinate: built with the public
    rotation, which a device knows before it commits its update when the seed is fixed
    in advance."""
    e = np.zeros(plan.padded_dim)
    e[coordinate] = scale * plan.config.clip
    return unrotate(e, rotation_signs(SEED, plan.padded_dim), plan.config.rotation, plan.dim)


N_DEV = 20
LOW_NOISE = DPConfig(mechanism="ddgauss", noise_multiplier=0.05, bits=16)


def test_aligned_updates_make_the_report_fire() -> None:
    """All devices put their whole norm into rotated coordinate 7: the sum there is
    about n C / gamma, far beyond 2^(b-1), and wraps. The value it wraps to is anywhere
    in the range, so no single statistic sees every case; over ten magnitudes the
    outlier test fires in most, and each wrap costs an error of the size of the sum."""
    plan = EncodingPlan.create(LOW_NOISE, 1024, N_DEV, N_DEV)
    decoder = Decoder(plan, SEED)
    rng = np.random.default_rng(12)
    fired, errors = 0, []
    for scale in np.linspace(0.55, 1.0, 10):
        u = _aligned_update(plan, 7, float(scale))
        sum_mod, true = _sum_mod(plan, [u] * N_DEV, rng)
        assert abs(true[7]) >= plan.modulus // 2  # it did wrap
        out = decoder.decode(sum_mod, N_DEV)
        fired += out.wrap_suspected
        errors.append(float(np.linalg.norm(out.total - N_DEV * u) / np.linalg.norm(N_DEV * u)))
        if out.wrap_suspected:
            assert out.outliers >= 1 or out.near_wrap > 0
    assert fired >= 7
    assert min(errors) > 0.3  # the harm: the decoded sum is far from the real one


def test_an_aligned_sum_that_lands_by_the_edge_counts_as_near_wrap() -> None:
    plan = EncodingPlan.create(LOW_NOISE, 1024, N_DEV, N_DEV)
    half = plan.modulus // 2
    # the scale that puts the aligned coordinate at 0.97 of 2^(b-1), without wrapping
    scale = 0.97 * half * plan.gamma / (N_DEV * plan.config.clip)
    u = _aligned_update(plan, 3, scale)
    out = Decoder(plan, SEED).decode(_sum_mod(plan, [u] * N_DEV, np.random.default_rng(3))[0],
                                     N_DEV)
    assert out.near_wrap == 1 and out.wrap_fraction == 1 / plan.padded_dim
    assert out.wrap_margin == pytest.approx((1 - 1 / plan.k_stddevs) * half)
    assert out.wrap_suspected and out.outliers == 1


@pytest.mark.parametrize("z", [0.05, 1.0])
def test_honest_updates_do_not_fire(z: float) -> None:
    config = DPConfig(mechanism="ddgauss", noise_multiplier=z, bits=16)
    plan = EncodingPlan.create(config, 1024, N_DEV, N_DEV)
    decoder = Decoder(plan, SEED)
    rng = np.random.default_rng(5)
    for _ in range(10):
        updates = [rng.normal(size=1024) for _ in range(N_DEV)]
        out = decoder.decode(_sum_mod(plan, updates, rng)[0], N_DEV)
        assert not out.wrap_suspected and out.outliers == 0
        # at z = 1 the noise fills the planned spread: a near-wrap coordinate now and then
        # (5.6e-4 of them by design), never at low noise
        assert out.near_wrap <= (3 if z >= 1 else 0)
        assert out.expected_wraps < 1e-3
        # the clip and the plan still decode the sum: unchanged behaviour
        ref = np.sum([u * min(1.0, 1.0 / np.linalg.norm(u)) for u in updates], axis=0)
        assert np.linalg.norm(out.total - ref) < 3 * z * math.sqrt(1024) + 0.5


def test_expected_wraps_estimates_the_wraps_that_happened() -> None:
    """A 12-bit plan with a generous modclip_prob wraps a few coordinates a round by
    design; the decoder's estimate from the sum's spread matches the count."""
    config = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=12, modclip_prob=1e-2)
    plan = EncodingPlan.create(config, 4096, 10, 10)
    decoder = Decoder(plan, SEED)
    rng = np.random.default_rng(9)
    half = plan.modulus // 2
    actual, expected = 0, 0.0
    for _ in range(20):
        updates = [rng.normal(size=4096) for _ in range(10)]
        sum_mod, true = _sum_mod(plan, updates, rng)
        actual += int(np.count_nonzero((true >= half) | (true < -half)))
        out = decoder.decode(sum_mod, 10)
        expected += out.expected_wraps
        assert not out.wrap_suspected  # designed wraps are not an alarm
    assert actual > 10
    assert 0.5 * actual <= expected <= 2.0 * actual


def test_wrap_report_is_json_ready_and_defaults_are_quiet() -> None:
    plan = EncodingPlan.create(LOW_NOISE, 64, 4, 4)
    out = Decoder(plan, SEED).decode(np.zeros(plan.encoded_dim, np.uint64), 4)
    rep = out.wrap_report()
    assert rep == {
        "near_wrap": 0, "wrap_fraction": 0.0, "wrap_margin": out.wrap_margin,
        "outliers": 0, "outlier_threshold": 0.0, "expected_wraps": 0.0,
        "wrap_suspected": False,
    }
    assert DecodedSum(np.zeros(3), None).wrap_report()["wrap_suspected"] is False


# ------------------------------------------------------------------ rounding bias


def _conditional_rounding(y: np.ndarray, bound: float, rng: np.random.Generator, m: int):  # type: ignore[no-untyped-def]
    """m independent draws of the encoder's rounding: r = floor(y) + Bernoulli(frac),
    kept when ||r|| <= bound (the accepted draws are what the redraw loop returns)."""
    low = np.floor(y)
    r = low + (rng.random((m, y.shape[0])) < y - low)
    ok = np.einsum("ij,ij->i", r, r) <= bound * bound
    return r[ok], 1.0 - ok.mean()


@pytest.mark.parametrize("n_clients", [1, 10, 100])
def test_rounding_bias_is_towards_zero_and_within_the_bound(n_clients: int) -> None:
    """The issue's setting: 10 bits, d = 64. A vector at the clip norm, rounded many
    times: the mean of the accepted draws is shrunk towards 0, by less than the bound."""
    config = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=10)
    plan = EncodingPlan.create(config, 64, n_clients, n_clients)
    rng = np.random.default_rng(n_clients)
    y = rng.normal(size=64)
    y *= (config.clip / plan.gamma) / np.linalg.norm(y)
    kept, fail = _conditional_rounding(y, plan.l2_sensitivity, rng, 120_000)
    bias = kept.mean(axis=0) - y
    se = math.sqrt(64 * 0.25 / kept.shape[0])  # std error of the bias vector's norm
    assert 0 < fail <= config.beta
    assert float(bias @ y) / float(np.linalg.norm(y)) < -4 * math.sqrt(0.25 / kept.shape[0])
    assert np.linalg.norm(bias) <= rounding_bias_bound(fail) + 4 * se
    assert np.linalg.norm(bias) >= 0.2 * rounding_bias_bound(fail)  # not a vacuous bound
    # the plan's figure uses the worst case p = beta, for all survivors, in update units
    assert plan.rounding_bias_bound() == pytest.approx(
        n_clients * plan.gamma * rounding_bias_bound(config.beta)
    )
    assert rounding_bias_bound(config.beta) >= rounding_bias_bound(fail)


def test_rounding_bias_bound_edges() -> None:
    assert rounding_bias_bound(0.0) == 0.0
    assert rounding_bias_bound(0.25) == pytest.approx(0.5 * 0.5 / 0.75)
    with pytest.raises(ValueError, match="fail_prob"):
        rounding_bias_bound(1.0)
    # no conditioning at all (Delta2 = c~ + sqrt(d), nothing is ever redrawn): no bias
    plan = EncodingPlan.create(DPConfig(beta=0.0), 64, 5, 5)
    assert plan.rounding_bias_bound() == 0.0
