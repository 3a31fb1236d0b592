"""Encoder.encode_batch: row i is encode(updates[i]) with the same key, bit for bit;
the encoder takes only SecureRng; rotation works row-wise on 2-D arrays."""

from __future__ import annotations

import numpy as np
import pytest

from dp import DPConfig, Encoder, EncodingPlan, get_mechanism
from dp.prng import SecureRng
from dp.rotation import padded_dim, rotate, rotation_signs, unrotate

SEED = b"public-round-seed-0123456789abcd"


def keys(m: int, salt: int = 0) -> list[bytes]:
    return [bytes([salt, i]) * 16 for i in range(m)]


def updates(m: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows of very different norms: some clipped (C = 1), some not."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(m, dim))
    u *= (np.geomspace(0.05, 5.0, m) / np.linalg.norm(u, axis=1))[:, None]
    return u


@pytest.mark.parametrize(
    "mechanism,rotation,adaptive,bits",
    [
        ("ddgauss", "hadamard", False, 16),
        ("ddgauss", "dft", True, 20),
        ("skellam", "hadamard", True, 16),
        ("skellam", "dft", False, 40),
        ("gaussian", "hadamard", False, 18),
        ("none", "hadamard", True, 16),
    ],
)
def test_batch_rows_equal_single_encodes_bit_for_bit(
    mechanism: str, rotation: str, adaptive: bool, bits: int
) -> None:
    m, dim = 11, 700  # 11 rows: more than one block of rows, and not a multiple of it
    z = 0.0 if mechanism == "none" else 1.0
    cfg = DPConfig(mechanism=mechanism, noise_multiplier=z, bits=bits, rotation=rotation,
                   adaptive_clip=adaptive, beta=np.exp(-0.5))
    plan = EncodingPlan.create(cfg, dim, 20, 10)
    enc = Encoder(plan, SEED)
    u = updates(m, dim)
    batch, reports = enc.encode_batch(u, [SecureRng(k) for k in keys(m)])
    assert batch.dtype == np.uint64 and batch.shape == (m, plan.encoded_dim)
    assert np.all(batch < np.uint64(plan.modulus))
    for i, key in enumerate(keys(m)):
        single, report = enc.encode(u[i], SecureRng(key))
        assert np.array_equal(batch[i], single), i
        assert reports[i] == report
    assert [r.clipped for r in reports] == list(np.linalg.norm(u, axis=1) > cfg.clip)
    # other keys, other encodings (the noise and the rounding come from the key)
    other, _ = enc.encode_batch(u, [SecureRng(k) for k in keys(m, salt=1)])
    assert not np.array_equal(other, batch)


def test_batch_of_real_size_equals_singles() -> None:
    """The benchmark's shape: d = 56,714 padded to 65,536, 16 bits, ddgauss."""
    cfg = DPConfig(mechanism="ddgauss", noise_multiplier=1.0, bits=16)
    plan = EncodingPlan.create(cfg, 56_714, 100, 80)
    enc = Encoder(plan, SEED)
    u = updates(3, 56_714, seed=1)
    batch, _ = enc.encode_batch(u, [SecureRng(k) for k in keys(3)])
    for i, key in enumerate(keys(3)):
        assert np.array_equal(batch[i], enc.encode(u[i], SecureRng(key))[0])


def test_encoder_refuses_numpy_generators() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="ddgauss"), 64, 3, 2)
    enc = Encoder(plan, SEED)
    with pytest.raises(TypeError, match="Encoder.encode needs a dp.prng.SecureRng.*numpy"):
        enc.encode(np.zeros(64), np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"rngs\[1\].*numpy"):
        enc.encode_batch(np.zeros((2, 64)), [SecureRng.from_os(), np.random.default_rng(0)])
    for name in ("ddgauss", "skellam", "gaussian", "none"):
        with pytest.raises(TypeError, match="not cryptographic"):
            get_mechanism(name).add_noise(np.zeros(4, dtype=np.int64), 3.0, 1.0, 1.0,
                                          np.random.default_rng(0))  # type: ignore[arg-type]


def test_batch_refuses_bad_input_before_drawing_anything() -> None:
    plan = EncodingPlan.create(DPConfig(mechanism="skellam"), 64, 3, 2)
    enc = Encoder(plan, SEED)
    key = bytes(range(32))
    rng = SecureRng(key)
    bad = np.zeros((3, 64))
    bad[2, 5] = np.inf
    with pytest.raises(ValueError, match="row 2"):
        enc.encode_batch(bad, [SecureRng.from_os(), rng, SecureRng.from_os()])
    # rng was not touched: it still starts where a fresh one with its key starts
    assert rng.keystream(32) == SecureRng(key).keystream(32)
    with pytest.raises(ValueError, match="shape"):
        enc.encode_batch(np.zeros((2, 63)), [rng, rng])
    with pytest.raises(ValueError, match="shape"):
        enc.encode_batch(np.zeros(64), [rng])
    with pytest.raises(ValueError, match="2 updates but 1 generators"):
        enc.encode_batch(np.zeros((2, 64)), [rng])
    empty, reports = enc.encode_batch(np.zeros((0, 64)), [])
    assert empty.shape == (0, plan.encoded_dim) and reports == []


@pytest.mark.parametrize("rotation", ["hadamard", "dft"])
def test_rotation_of_a_batch_is_row_by_row(rotation: str) -> None:
    dim = 1000
    d = padded_dim(dim, rotation)
    signs = rotation_signs(SEED, d)
    x = updates(5, dim)
    y = rotate(x, signs, rotation)
    assert y.shape == (5, d)
    for i in range(5):
        assert np.array_equal(y[i], rotate(x[i], signs, rotation))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1),
                               rtol=1e-12)
    back = unrotate(y, signs, rotation, dim)
    np.testing.assert_allclose(back, x, atol=1e-12)
    assert np.array_equal(back[3], unrotate(y[3], signs, rotation, dim))
