"""Every refusal of the Shamir, crypto and packing primitives, at its boundary and with
its exact message (issue 16: mutation testing found refusals whose message, or whose
boundary value, no test pinned)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from secagg.crypto import (
    Keystream,
    aead_decrypt,
    aead_encrypt,
    x25519_agree,
    x25519_check_public,
    x25519_keypair,
)
from secagg.errors import MalformedMessageError
from secagg.packing import packed_size, unpack
from secagg.shamir import (
    PRIME,
    ShamirError,
    ShareChecker,
    decode_share,
    encode_share,
    split,
    split_bytes,
)
from tests.matching import exact as _exact


def test_shamir_refusals_at_the_field_boundary() -> None:
    with pytest.raises(ShamirError, match=_exact("secret out of field range")):
        split([PRIME], 2, [1, 2], os.urandom)
    assert len(split([PRIME - 1], 2, [1, 2], os.urandom)[0]) == 2
    with pytest.raises(ShamirError, match=_exact(f"share abscissa must be in [1, p), got {PRIME}")):
        split([1], 2, [1, PRIME], os.urandom)
    with pytest.raises(ShamirError, match=_exact("duplicate share abscissas in [1, 1]")):
        split([1], 2, [1, 1], os.urandom)
    with pytest.raises(ShamirError, match=_exact("threshold must be >= 1, got 0")):
        split([1], 0, [1, 2], os.urandom)
    with pytest.raises(ShamirError, match=_exact("threshold 3 exceeds the number of holders 2")):
        split([1], 3, [1, 2], os.urandom)
    with pytest.raises(ValueError, match=_exact("random_bytes returned the wrong number of bytes")):
        split([1], 2, [1, 2], lambda n: bytes(n - 1))
    with pytest.raises(ShamirError, match=_exact("secret must be 32 bytes, got 31")):
        split_bytes([bytes(31)], 2, [1, 2], os.urandom)
    with pytest.raises(ShamirError, match=_exact("threshold must be >= 1, got 0")):
        ShareChecker(0, 5)


def test_share_encoding_refusals() -> None:
    assert decode_share(encode_share(PRIME - 1)) == PRIME - 1
    with pytest.raises(ShamirError, match=_exact("share out of field range")):
        decode_share((PRIME).to_bytes(33, "little"))
    with pytest.raises(ShamirError, match=_exact("share must be 33 bytes, got 32")):
        decode_share(bytes(32))
    shares = dict(zip([1, 2, 3], split([7], 2, [1, 2, 3], os.urandom)[0], strict=True))
    with pytest.raises(ShamirError, match=_exact("share out of field range")):
        ShareChecker(2, 5).reconstruct({**shares, 3: PRIME})


def test_crypto_refusals() -> None:
    with pytest.raises(ValueError, match=_exact("random_bytes(32) must return 32 bytes")):
        x25519_keypair(lambda n: bytes(31))
    with pytest.raises(ValueError, match=_exact("random_bytes(32) must return 32 bytes")):
        x25519_keypair(lambda n: bytearray(32))  # bytes only
    with pytest.raises(MalformedMessageError, match=_exact("X25519 public key must be 32 bytes, "
                                                           "got 31")):
        x25519_agree(bytes(range(32)), bytes(31))
    with pytest.raises(MalformedMessageError, match="^X25519 agreement failed: "):
        x25519_agree(bytes(range(32)), bytes(32))  # the all-zero point
    with pytest.raises(MalformedMessageError, match=_exact("X25519 public key must be 32 bytes")):
        x25519_check_public(bytearray(32))  # type: ignore[arg-type]
    with pytest.raises(MalformedMessageError, match=_exact("X25519 public key is a point of "
                                                           "small order")):
        x25519_check_public(bytes(32))
    with pytest.raises(MalformedMessageError, match=_exact("peer key must be 32 bytes")):
        x25519_check_public(bytes(3), "peer key")
    with pytest.raises(ValueError, match=_exact("nonce must be 12 bytes, got 11")):
        aead_encrypt(bytes(32), bytes(11), b"", b"")
    with pytest.raises(MalformedMessageError, match=_exact("ciphertext too short: 27 bytes")):
        aead_decrypt(bytes(32), bytes(27), b"")
    blob = aead_encrypt(bytes(32), bytes(12), b"", b"ad")  # 28 bytes: nonce and tag only
    assert len(blob) == 28 and aead_decrypt(bytes(32), blob, b"ad") == b""
    ks = Keystream(4, np.uint32)
    with pytest.raises(ValueError, match=_exact("PRG seed must be 32 bytes, got 16")):
        ks.fill(bytes(16), b"L")
    assert ks.fill(bytes(32), b"L").any()
    ks.release()  # the keystream material is dropped: the buffer is all zero
    assert not np.frombuffer(ks._out, dtype=np.uint8).any()


def test_packing_refusals() -> None:
    from secagg.packing import pack

    with pytest.raises(ValueError, match=_exact("bits must be an int, got 8.0")):
        pack(np.zeros(2, dtype=np.uint64), 8.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=_exact("bits must be an int, got True")):
        packed_size(2, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=_exact("bits must be in [8, 62], got 63")):
        packed_size(2, 63)
    assert packed_size(0, 8) == 0 and unpack(b"", 8, 0).size == 0
    with pytest.raises(ValueError, match=_exact("dim must be >= 0, got -1")):
        packed_size(-1, 8)
    with pytest.raises(MalformedMessageError, match=_exact(
            "packed vector must be 2 bytes for dim=1, bits=12; got 3")):
        unpack(bytes(3), 12, 1)
    with pytest.raises(ValueError, match=_exact(
            "dtype must be uint32 or uint64, got <class 'numpy.int64'>")):
        unpack(bytes(2), 12, 1, np.int64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=_exact("uint32 cannot hold 33-bit entries")):
        unpack(bytes(packed_size(1, 33)), 33, 1, np.uint32)
    assert unpack(bytes(4), 32, 1, np.uint32).dtype == np.uint32
    # 1 entry of 12 bits: 4 padding bits in the last byte, each must be zero
    for bit in range(4, 8):
        with pytest.raises(MalformedMessageError, match=_exact(
                "non-zero padding bits in packed vector")):
            unpack(bytes([0, 1 << bit]), 12, 1)
    assert unpack(bytes([0xFF, 0x0F]), 12, 1).tolist() == [4095]
