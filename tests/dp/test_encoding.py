"""Encoder -> (plain sum mod 2^b, what secure aggregation returns) -> decoder."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import (
    Decoder,
    DPConfig,
    DPConfigError,
    Encoder,
    EncodingPlan,
    update_clip,
)
from dp.prng import SecureRng
from dp.rotation import padded_dim, rotate, rotation_signs, unrotate

SEED = b"public-round-seed-0123456789abcd"
MECHS = ["ddgauss", "skellam", "gaussian", "none"]


def secure_sum(vectors: list[np.ndarray], plan: EncodingPlan) -> np.ndarray:
    """What secure aggregation returns: the plain sum mod 2^b (np.uint64)."""
    total = np.zeros(plan.encoded_dim, dtype=np.uint64)
    m = np.uint64(plan.modulus)
    for v in vectors:
        assert v.dtype == np.uint64 and v.shape == (plan.encoded_dim,)
        assert np.all(v < m)
        total = (total + v) % m
    return total


def noise_rng(seed: int, *labels: int | str) -> SecureRng:
    """A device's encoder randomness in these tests (reproducible: simulation keys)."""
    return SecureRng.for_simulation(seed, "tests/dp", *labels)


def run_round(
    plan: EncodingPlan, updates: list[np.ndarray], seed: int
) -> tuple[np.ndarray, float | None, list]:
    enc = Encoder(plan, SEED)
    encoded, reports = [], []
    for i, u in enumerate(updates):
        e, r = enc.encode(u, noise_rng(seed, i))
        encoded.append(e)
        reports.append(r)
    out = Decoder(plan, SEED).decode(secure_sum(encoded, plan), len(updates))
    return out.total, out.clipped_count, reports


def clipped_sum(updates: list[np.ndarray], clip: float) -> np.ndarray:
    return sum(u * min(1.0, clip / np.linalg.norm(u)) for u in updates)


# ------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("rotation", ["hadamard", "dft"])
def test_rotation_is_orthogonal_and_exactly_inverted(rotation: str) -> None:
    dim = 13
    d = padded_dim(dim, rotation)
    assert d == (16 if rotation == "hadamard" else 14)
    signs = rotation_signs(SEED, d)
    basis = np.eye(d)
    m = np.stack([rotate(basis[i], signs, rotation) for i in range(d)], axis=1)
    np.testing.assert_allclose(m.T @ m, np.eye(d), atol=1e-12)
    x = np.random.default_rng(1).normal(size=dim)
    y = rotate(x, signs, rotation)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(unrotate(y, signs, rotation, dim), x, atol=1e-12)
    # the rotation depends on the public seed (and only on it)
    other = rotation_signs(b"another seed", d)
    assert not np.array_equal(other, signs)
    assert np.array_equal(rotation_signs(SEED, d), signs)


def test_rotation_spreads_a_spike() -> None:
    d = 1024
    x = np.zeros(d)
    x[3] = 1.0
    y = rotate(x, rotation_signs(SEED, d), "hadamard")
    np.testing.assert_allclose(np.abs(y), 1 / math.sqrt(d), rtol=1e-12)


# -------------------------------------------------------------------------- clipping


def test_clipping_scales_large_norms_and_leaves_small_ones() -> None:
    plan = EncodingPlan.create(
        DPConfig(mechanism="none", noise_multiplier=0.0, clip=2.0, bits=40), 100, 3, 3
    )
    rng = np.random.default_rng(0)
    big = rng.normal(size=100)
    big *= 5.0 / np.linalg.norm(big)
    small = rng.normal(size=100)
    small *= 0.5 / np.linalg.norm(small)
    for u, clipped in ((big, True), (small, False)):
        total, _, reports = run_round(plan, [u], 0)
        expected = u * (2.0 / 5.0) if clipped else u
        np.testing.assert_allclose(total, expected, atol=1e-6)
        assert reports[0].clipped is clipped
        assert reports[0].norm == pytest.approx(np.linalg.norm(u))
        assert reports[0].clip == 2.0


# ----------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("mechanism", MECHS)
@pytest.mark.parametrize("rotation", ["hadamard", "dft"])
def test_round_trip_without_noise_within_rounding_bound(mechanism: str, rotation: str) -> None:
    n, dim = 6, 1000
    cfg = DPConfig(mechanism=mechanism, noise_multiplier=0.0, bits=16, rotation=rotation)
    plan = EncodingPlan.create(cfg, dim, n, 4)
    assert plan.local_stddev == 0.0
    rng = np.random.default_rng(7)
    updates = [rng.normal(size=dim) * s for s in (0.01, 0.02, 0.05, 0.1, 0.5, 1.0)]
    total, _, _ = run_round(plan, updates, 7)
    err = total - clipped_sum(updates, cfg.clip)
    # Each device's rounding error is < 1 per coordinate in integer units: the error
    # of the sum is at most gamma * n * sqrt(d) in L2 (Kairouz et al. 2021, Sec. 4).
    assert np.linalg.norm(err) <= plan.gamma * n * math.sqrt(plan.padded_dim)
    # ... and, being a sum of independent unbiased roundings, typically far smaller:
    # per coordinate variance <= n * gamma^2 / 4.
    assert np.sqrt(np.mean(err**2)) <= plan.gamma * math.sqrt(n / 4) * 1.2


@pytest.mark.parametrize(
    "mechanism,bits",
    # 40 bits: beyond int32 records and beyond the samplers' accurate scale (capped)
    [("ddgauss", 24), ("skellam", 24), ("gaussian", 24), ("ddgauss", 40), ("skellam", 40)],
)
def test_noise_variance_matches_target_and_is_unbiased(mechanism: str, bits: int) -> None:
    n, t, dim, z, clip = 8, 5, 4096, 1.5, 1.0
    cfg = DPConfig(mechanism=mechanism, noise_multiplier=z, clip=clip, bits=bits)
    plan = EncodingPlan.create(cfg, dim, n, t)
    rng = np.random.default_rng(11)
    updates = [rng.normal(size=dim) * 0.02 for _ in range(n)]
    total, _, _ = run_round(plan, updates, 11)
    noise = total - clipped_sum(updates, clip)
    # n survivors carry n shares: variance n/t times the target (z C)^2 ...
    target_var = (z * clip) ** 2 * n / t
    achieved = n * (plan.local_stddev * plan.gamma) ** 2
    assert achieved >= target_var * (1 - 1e-12)
    assert achieved <= target_var * 1.01  # ceil() of the discrete scale costs < 1% here
    # ... checked empirically: relative s.e. of a variance estimate is sqrt(2/N).
    N = noise.size
    var = float(np.mean(noise**2))
    assert abs(var / achieved - 1) < 5 * math.sqrt(2 / N)
    # unbiased: |mean| within 5 standard errors
    assert abs(float(np.mean(noise))) < 5 * math.sqrt(achieved / N)


def test_shares_of_different_devices_are_independent() -> None:
    cfg = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=24)
    plan = EncodingPlan.create(cfg, 4096, 4, 4)
    enc = Encoder(plan, SEED)
    rng = noise_rng(3)
    zero = np.zeros(4096)
    a, _ = enc.encode(zero, rng)  # one generator used twice: its stream moves on
    b, _ = enc.encode(zero, rng)
    half = np.int64(plan.modulus // 2)

    def signed(v: np.ndarray) -> np.ndarray:
        s = v.astype(np.int64)
        return np.where(s >= half, s - np.int64(plan.modulus), s).astype(np.float64)

    r = np.corrcoef(signed(a), signed(b))[0, 1]
    assert abs(r) < 5 / math.sqrt(4096)
    # the same key gives the same encoding (tests can pin everything), another key not
    key = bytes(range(32))
    c, _ = Encoder(plan, SEED).encode(zero, SecureRng(key))
    d, _ = Encoder(plan, SEED).encode(zero, SecureRng(key))
    assert np.array_equal(c, d)
    e, _ = Encoder(plan, SEED).encode(zero, SecureRng(bytes(31) + b"\x01"))
    assert not np.array_equal(c, e)


def test_dropouts_keep_the_target_noise() -> None:
    n, t, z, clip = 10, 6, 1.0, 1.0
    for mechanism in ("ddgauss", "skellam", "gaussian"):
        plan = EncodingPlan.create(
            DPConfig(mechanism=mechanism, noise_multiplier=z, clip=clip), 5000, n, t
        )
        for s in range(t, n + 1):
            summed_var = s * (plan.local_stddev * plan.gamma) ** 2
            assert summed_var >= (z * clip) ** 2 * (1 - 1e-12)
            assert plan.privacy_event(s).n_shares == s
        assert (t - 1) * (plan.local_stddev * plan.gamma) ** 2 < (z * clip) ** 2


def test_decoding_only_survivors_works() -> None:
    n, t, dim = 6, 4, 2048
    cfg = DPConfig(mechanism="skellam", noise_multiplier=0.5, bits=22)
    plan = EncodingPlan.create(cfg, dim, n, t)
    rng = np.random.default_rng(5)
    updates = [rng.normal(size=dim) * 0.01 for _ in range(n)]
    enc = Encoder(plan, SEED)
    encoded = [enc.encode(u, noise_rng(5, i))[0] for i, u in enumerate(updates)]
    survivors = [0, 2, 3, 5]  # two dropped before their masked input: no noise from them
    out = Decoder(plan, SEED).decode(secure_sum([encoded[i] for i in survivors], plan), 4)
    noise = out.total - clipped_sum([updates[i] for i in survivors], cfg.clip)
    var = float(np.mean(noise**2))
    expected = 4 * (plan.local_stddev * plan.gamma) ** 2
    assert abs(var / expected - 1) < 5 * math.sqrt(2 / noise.size)


def test_modular_wrap_rate_at_most_configured() -> None:
    # Aligned updates of norm >= C (the worst case of the gamma rule) at a small bit
    # width and a loose clipping probability. The unwrapped aggregate is the sum of the
    # devices' signed values; the decoder wraps where it leaves [-2^(b-1), 2^(b-1)).
    n, dim, p = 20, 4096, 0.05
    cfg = DPConfig(mechanism="skellam", noise_multiplier=1.0, bits=12, modclip_prob=p)
    plan = EncodingPlan.create(cfg, dim, n, n)
    enc = Encoder(plan, SEED)
    rng = np.random.default_rng(21)
    noise = noise_rng(21)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    half = plan.modulus // 2
    wraps, coords = 0, 0
    for _ in range(3):
        agg = np.zeros(plan.encoded_dim, dtype=np.int64)
        for _ in range(n):
            e, _ = enc.encode(direction * 3.0, noise)
            v = e.astype(np.int64)
            agg += np.where(v >= half, v - plan.modulus, v)
        wraps += int(np.sum((agg < -half) | (agg >= half)))
        coords += agg.size
    rate = wraps / coords
    assert rate <= p
    # the bound is not vacuous here: the aggregate does use the range
    assert np.max(np.abs(agg)) > half / 8


def test_wrap_is_visible_when_bits_are_too_few() -> None:
    # The same check can fail: force gamma too small by lying about n.
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=10)
    plan = EncodingPlan.create(cfg, 64, 1, 1)
    u = np.ones(64) / 8.0
    total, _, _ = run_round(plan, [u] * 40, 0)  # 40 devices on a plan made for 1
    assert np.max(np.abs(total - 40 * u)) > 1.0


# ------------------------------------------------------------------- adaptive clipping


@pytest.mark.parametrize("mechanism", ["none", "ddgauss", "gaussian"])
def test_clipped_count_slot(mechanism: str) -> None:
    n, dim = 12, 256
    z = 0.0 if mechanism == "none" else 1.0
    cfg = DPConfig(
        mechanism=mechanism, noise_multiplier=z, bits=24, adaptive_clip=True,
        clipped_count_stddev=None if mechanism != "none" else 0.0,
    )
    plan = EncodingPlan.create(cfg, dim, n, n)
    assert plan.encoded_dim == plan.padded_dim + 1
    rng = np.random.default_rng(2)
    norms = [0.2, 0.5, 3.0, 4.0, 0.1, 2.5, 0.9, 1.5, 0.3, 0.4, 7.0, 0.6]
    updates = []
    for r in norms:
        v = rng.normal(size=dim)
        updates.append(v * r / np.linalg.norm(v))
    total, count, reports = run_round(plan, updates, 2)
    true_count = sum(r > 1.0 for r in norms)
    assert sum(rep.clipped for rep in reports) == true_count
    assert count is not None
    if mechanism == "none":
        assert count == true_count
    else:
        # noise on the decoded count has std sigma_b = n/20 (with n shares of t = n)
        sigma_b = n / 20
        achieved = plan.count_local_stddev * math.sqrt(n) / (2 * plan.count_scale)
        assert sigma_b <= achieved <= sigma_b * 1.05
        assert abs(count - true_count) < 5 * achieved


def test_update_clip_geometric_rule() -> None:
    # Andrew et al.: C <- C exp(-lr (unclipped_frac - target))
    assert update_clip(1.0, 50.0, 100, 0.5, 0.2) == pytest.approx(1.0)
    assert update_clip(1.0, 0.0, 100, 0.5, 0.2) == pytest.approx(math.exp(-0.1))
    assert update_clip(2.0, 100.0, 100, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.1))
    # noisy counts outside [0, n] are clamped
    assert update_clip(1.0, -30.0, 100, 0.5, 0.2) == pytest.approx(math.exp(-0.1))
    assert update_clip(1.0, 130.0, 100, 0.5, 0.2) == pytest.approx(math.exp(0.1))
    with pytest.raises(ValueError, match="-1"):
        update_clip(-1.0, 1.0, 10)


# -------------------------------------------------------------------- plan and config


def test_plan_is_deterministic_and_travels_as_json() -> None:
    cfg = DPConfig(mechanism="ddgauss", noise_multiplier=0.9, bits=18, adaptive_clip=True)
    a = EncodingPlan.create(cfg, 12345, 50, 30)
    b = EncodingPlan.create(cfg, 12345, 50, 30)
    assert a == b
    wire = json.loads(json.dumps(a.to_dict()))
    assert EncodingPlan.from_dict(wire) == a
    wire["gamma"] *= 1.5
    with pytest.raises(DPConfigError, match="gamma"):
        EncodingPlan.from_dict(wire)
    assert DPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_plan_rejects_impossible_parameters() -> None:
    with pytest.raises(DPConfigError, match="bits=8"):
        EncodingPlan.create(DPConfig(bits=8), 1000, 10_000, 5000)
    with pytest.raises(DPConfigError, match="min_contributors"):
        EncodingPlan.create(DPConfig(), 1000, 10, 11)
    with pytest.raises(DPConfigError, match="dim"):
        EncodingPlan.create(DPConfig(), 0, 10, 5)
    for bad in (
        dict(mechanism="laplace"),
        dict(clip=-1.0),
        dict(noise_multiplier=-0.5),
        dict(bits=70),
        dict(beta=1.0),
        dict(modclip_prob=0.0),
        dict(delta=1.0),
        dict(rotation="random"),
        dict(noise_multiplier=float("nan")),
    ):
        with pytest.raises(DPConfigError, match=repr(next(iter(bad.values())))[:4]):
            DPConfig(**bad)  # type: ignore[arg-type]


def test_encoder_and_decoder_reject_bad_input() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="none", noise_multiplier=0.0), 10, 2, 2)
    enc = Encoder(plan, SEED)
    rng = noise_rng(0)
    with pytest.raises(ValueError, match="11"):
        enc.encode(np.zeros(11), rng)
    with pytest.raises(ValueError, match="NaN"):
        enc.encode(np.full(10, np.nan), rng)
    dec = Decoder(plan, SEED)
    with pytest.raises(ValueError, match="shape"):
        dec.decode(np.zeros(3, dtype=np.uint64), 2)
    with pytest.raises(ValueError, match="2\\^"):
        dec.decode(np.full(plan.encoded_dim, plan.modulus, dtype=np.uint64), 2)
    with pytest.raises(DPConfigError, match="seed"):
        Encoder(plan, b"")


def test_report_holds_no_vector() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="skellam"), 64, 3, 2)
    _, rep = Encoder(plan, SEED).encode(np.ones(64), noise_rng(0))
    d = rep.to_dict()
    assert set(d) == {"norm", "clipped", "clip", "gamma", "local_stddev", "mechanism"}
    assert all(isinstance(v, (int, float, str, bool)) for v in d.values())


def test_gaussian_refuses_shares_that_rounding_would_erase() -> None:
    with pytest.raises(DPConfigError, match="below 1"):
        EncodingPlan.create(DPConfig(mechanism="gaussian", bits=9), 100_000, 1000, 1000)
    # the discrete mechanisms are accounted for what they add, whatever its size
    plan = EncodingPlan.create(DPConfig(mechanism="ddgauss", bits=9), 100_000, 1000, 1000)
    assert plan.local_stddev == 1.0


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 300),
    n=st.integers(1, 12),
    bits=st.integers(10, 40),
    rotation=st.sampled_from(["hadamard", "dft"]),
    beta=st.sampled_from([0.0, math.exp(-0.5)]),
    scale=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_rounding_error_inside_its_bound(
    dim: int, n: int, bits: int, rotation: str, beta: float, scale: float, seed: int
) -> None:
    cfg = DPConfig(mechanism="none", noise_multiplier=0.0, bits=bits, rotation=rotation,
                   beta=beta)
    try:
        plan = EncodingPlan.create(cfg, dim, n, n)
    except DPConfigError:
        return  # too few bits for n clients: refused, nothing to check
    rng = np.random.default_rng(seed)
    updates = [rng.normal(size=dim) * scale for _ in range(n)]
    total, _, _ = run_round(plan, updates, seed)
    err = np.linalg.norm(total - clipped_sum(updates, cfg.clip))
    assert err <= plan.gamma * n * math.sqrt(plan.padded_dim) + 1e-9


def test_encoder_needs_no_tensorflow() -> None:
    """The noise no longer comes from TensorFlow's process-global seed (which training
    code may set from a public value): encoding does not even import TensorFlow."""
    code = (
        "import sys, numpy as np\n"
        "from dp import DPConfig, Encoder, EncodingPlan\n"
        "from dp.prng import SecureRng\n"
        "for m in ('ddgauss', 'skellam', 'gaussian'):\n"
        "    plan = EncodingPlan.create(DPConfig(mechanism=m, noise_multiplier=1.0, bits=20),"
        " 256, 10, 5)\n"
        "    Encoder(plan, bytes(32)).encode(np.full(256, 0.01), SecureRng.from_os())\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('tensorflow', 'tensorflow_privacy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
