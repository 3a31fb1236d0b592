"""dp.prng.SecureRng: AES-256-CTR keystream (known answers), keys, streams, refusals."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dp.prng import SecureRng, require_secure_rng

# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt
KAT_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
KAT_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
KAT_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710"
)
KAT_CIPHER = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228" "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d" "dfc9c58db67aada613c2dd08457941a6"
)


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_keystream_known_answer_nist_sp800_38a_f55() -> None:
    rng = SecureRng(KAT_KEY, initial_counter=KAT_COUNTER)
    assert xor(rng.keystream(64), KAT_PLAIN) == KAT_CIPHER
    # the same stream read in odd pieces (partial blocks carried over, never re-drawn)
    rng = SecureRng(KAT_KEY, initial_counter=KAT_COUNTER)
    pieces = b"".join(rng.keystream(n) for n in (5, 11, 1, 15, 17, 0, 15))
    assert xor(pieces, KAT_PLAIN) == KAT_CIPHER
    # ... and as little-endian 64-bit words after a 3-byte read
    rng = SecureRng(KAT_KEY, initial_counter=KAT_COUNTER)
    ks = xor(KAT_PLAIN, KAT_CIPHER)
    assert rng.keystream(3) == ks[:3]
    words = rng.words(7)
    assert words.dtype == np.uint64
    assert words.tolist() == list(np.frombuffer(ks[3:59], dtype="<u8"))


def test_long_reads_cross_chunks_without_gaps_or_repeats() -> None:
    key = bytes(range(32))
    n = (1 << 22) * 2 + 40  # beyond two internal chunks, not a whole number of blocks
    reference = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(
        bytes(n + 24))
    rng = SecureRng(key)
    got = rng.keystream(n) + rng.words(3).astype("<u8").tobytes()
    assert got == reference


def test_counter_never_wraps() -> None:
    rng = SecureRng(bytes(32), initial_counter=b"\xff" * 16)  # one block left
    rng.keystream(16)
    with pytest.raises(OverflowError, match="wrap"):
        rng.keystream(1)
    rng = SecureRng(bytes(32), initial_counter=b"\xff" * 15 + b"\xfe")
    with pytest.raises(OverflowError, match="wrap"):
        rng.words(5)  # 40 bytes need 3 blocks, 2 left


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33), bytes(64)])
def test_refuses_keys_that_are_not_32_bytes(key: bytes) -> None:
    with pytest.raises(ValueError, match=f"got {len(key)}"):
        SecureRng(key)


def test_refuses_keys_that_are_not_bytes() -> None:
    with pytest.raises(TypeError, match="str"):
        SecureRng("k" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_counter"):
        SecureRng(bytes(32), initial_counter=bytes(12))


def test_from_os_keys_are_fresh_and_not_shown() -> None:
    a, b = SecureRng.from_os(), SecureRng.from_os()
    assert a.keystream(32) != b.keystream(32)
    assert not a.simulation
    assert "SIMULATION" not in repr(a)
    assert repr(a) == "SecureRng(AES-256-CTR, secret key)"


def test_simulation_keys_are_hkdf_of_seed_and_labels() -> None:
    a = SecureRng.for_simulation(7, "round", 3, "device", 12)
    # the derivation is pinned: HKDF-SHA256 with the documented salt and encoding
    info = b"i\x00\x00\x00\x017" + b"s\x00\x00\x00\x05round" + b"i\x00\x00\x00\x013"
    info += b"s\x00\x00\x00\x06device" + b"i\x00\x00\x00\x0212"
    key = HKDF(algorithm=hashes.SHA256(), length=32,
               salt=b"secagg-dp/v1 dp.prng SIMULATION ONLY noise key",
               info=b"dp noise").derive(info)
    assert a.keystream(48) == SecureRng(key).keystream(48)
    # deterministic, and every input matters; labels are encoded injectively
    streams = {
        SecureRng.for_simulation(*args).keystream(16)
        for args in [(7, "round", 3, "device", 12), (8, "round", 3, "device", 12),
                     (7, "round", 3, "device", 13), (7, "ab"), (7, "a", "b"), (7, 1),
                     (7, "1"), (7,), (7, "")]
    }
    assert len(streams) == 9
    assert (SecureRng.for_simulation(7, "ab").keystream(16)
            == SecureRng.for_simulation(7, "ab").keystream(16))


def test_simulation_generators_say_so_loudly() -> None:
    rng = SecureRng.for_simulation(1, "x")
    assert rng.simulation
    assert "SIMULATION ONLY" in repr(rng) and "not secret" in repr(rng)
    assert "SIMULATION ONLY" in (SecureRng.for_simulation.__doc__ or "")
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="seed"):
            SecureRng.for_simulation(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        SecureRng.for_simulation(1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        SecureRng.for_simulation(1, False)


def test_uniforms_are_the_top_53_bits_of_the_words() -> None:
    key = bytes(range(1, 33))
    u = SecureRng(key).random(100_000)
    w = SecureRng(key).words(100_000)
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u, (w >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))
    n = u.size  # mean 1/2, variance 1/12: within 5 standard errors
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    assert SecureRng(key).random((3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match="-1"):
        SecureRng(key).random(-1)


def test_copies_and_pickles_are_refused() -> None:
    rng = SecureRng.from_os()
    for clone in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="same keystream"):
            clone(rng)


def test_require_secure_rng_explains_why() -> None:
    rng = SecureRng.from_os()
    assert require_secure_rng(rng, "here") is rng
    for bad in (np.random.default_rng(0), np.random.RandomState(0)):
        with pytest.raises(TypeError, match="numpy.*not cryptographic.*subtract"):
            require_secure_rng(bad, "here")
    with pytest.raises(TypeError, match="here needs a dp.prng.SecureRng, got int"):
        require_secure_rng(42, "here")
