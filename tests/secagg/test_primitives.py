"""Known-answer and must-reject tests for the primitives (RFC 7748, 5869, 8439)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg import MalformedMessageError, ProtocolError, SignatureError
from secagg.crypto import (
    Keystream,
    aead_decrypt,
    aead_encrypt,
    ed25519_public_bytes,
    ed25519_sign,
    ed25519_verify,
    hkdf_sha256,
    label,
    prg_nonce,
    prg_words,
    x25519_agree,
    x25519_public_from_private,
)

H = bytes.fromhex


def test_x25519_rfc7748_section_6_1() -> None:
    a = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    a_pub = H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    b = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    b_pub = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    k = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519_public_from_private(a) == a_pub
    assert x25519_public_from_private(b) == b_pub
    assert x25519_agree(a, b_pub) == k
    assert x25519_agree(b, a_pub) == k


def test_x25519_rejects_small_order_point_and_bad_length() -> None:
    a = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    with pytest.raises(MalformedMessageError):
        x25519_agree(a, bytes(32))  # the zero point: all-zero shared secret
    with pytest.raises(MalformedMessageError):
        x25519_agree(a, bytes(31))


def test_hkdf_sha256_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        H("0b" * 22),
        info=H("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
        salt=H("000102030405060708090a0b0c"),
    )
    assert okm == H(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_labels_separate_keys() -> None:
    ikm = bytes(32)
    keys = {
        hkdf_sha256(ikm, label("pairwise-mask-seed", 1, 2, 3)),
        hkdf_sha256(ikm, label("pairwise-mask-seed", 2, 2, 3)),
        hkdf_sha256(ikm, label("pairwise-mask-seed", 1, 2, 4)),
        hkdf_sha256(ikm, label("share-encryption-key", 1, 2, 3)),
        hkdf_sha256(ikm, label("share-encryption-key", 1, 3, 2)),
    }
    assert len(keys) == 5


RFC8439_KEY = bytes(range(0x80, 0xA0))
RFC8439_NONCE = H("070000004041424344454647")
RFC8439_AAD = H("50515253c0c1c2c3c4c5c6c7")
RFC8439_PT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
RFC8439_CT = H(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_TAG = H("1ae10b594f09e26a7e902ecbd0600691")


def test_chacha20_poly1305_rfc8439_2_8_2() -> None:
    blob = aead_encrypt(RFC8439_KEY, RFC8439_NONCE, RFC8439_PT, RFC8439_AAD)
    assert blob == RFC8439_NONCE + RFC8439_CT + RFC8439_TAG
    assert aead_decrypt(RFC8439_KEY, blob, RFC8439_AAD) == RFC8439_PT


@pytest.mark.parametrize("where", ["nonce", "body", "tag"])
def test_aead_rejects_tampering(where: str) -> None:
    blob = bytearray(aead_encrypt(RFC8439_KEY, RFC8439_NONCE, RFC8439_PT, RFC8439_AAD))
    pos = {"nonce": 0, "body": 20, "tag": len(blob) - 1}[where]
    blob[pos] ^= 1
    with pytest.raises(SignatureError):
        aead_decrypt(RFC8439_KEY, bytes(blob), RFC8439_AAD)


def test_aead_rejects_wrong_key_wrong_ad_and_short_input() -> None:
    blob = aead_encrypt(RFC8439_KEY, RFC8439_NONCE, RFC8439_PT, RFC8439_AAD)
    with pytest.raises(SignatureError):
        aead_decrypt(bytes(32), blob, RFC8439_AAD)
    with pytest.raises(SignatureError):
        aead_decrypt(RFC8439_KEY, blob, RFC8439_AAD + b"x")
    with pytest.raises(ProtocolError):
        aead_decrypt(RFC8439_KEY, blob[:20], RFC8439_AAD)


def test_ed25519_sign_verify_and_reject() -> None:
    key = Ed25519PrivateKey.generate()
    pub = ed25519_public_bytes(key)
    sig = ed25519_sign(key, b"message")
    ed25519_verify(pub, sig, b"message")
    with pytest.raises(SignatureError):
        ed25519_verify(pub, sig, b"messagf")
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError):
        ed25519_verify(pub, bad, b"message")
    with pytest.raises(SignatureError):
        ed25519_verify(ed25519_public_bytes(Ed25519PrivateKey.generate()), sig, b"message")


def test_label_encoding_is_fixed_width() -> None:
    lab = label("pairwise-mask", 7, 1, 2)
    assert lab == b"secagg-dp/v1|pairwise-mask|" + struct.pack(">3Q", 7, 1, 2)
    assert label("x", 1, 23) != label("x", 12, 3)


SEED = bytes(range(32))
LAB = b"secagg-dp/v1|pairwise-mask|" + struct.pack(">3Q", 7, 1, 2)


def _reference_keystream(seed: bytes, lab: bytes, nbytes: int) -> bytes:
    """AES-256-CTR from its definition: AES-ECB of successive big-endian counter blocks."""
    start = int.from_bytes(hashlib.sha256(lab).digest()[:8] + bytes(8), "big")
    enc = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    blocks = b"".join(
        ((start + i) % (1 << 128)).to_bytes(16, "big") for i in range((nbytes + 15) // 16)
    )
    return (enc.update(blocks) + enc.finalize())[:nbytes]


def test_prg_fixed_vector_32_bit_words() -> None:
    words = prg_words(SEED, LAB, 4, 32)
    # regression constants (first words of the documented construction) ...
    assert words.tolist() == [1873086801, 3995870294, 3062510063, 2843551742]
    # ... and derived independently from the AES-CTR definition
    ref = np.frombuffer(_reference_keystream(SEED, LAB, 16), dtype="<u4").astype(np.uint64)
    assert words.tolist() == ref.tolist()
    assert prg_nonce(LAB) == hashlib.sha256(LAB).digest()[:8] + bytes(8)


@pytest.mark.parametrize("bits", [8, 20, 31, 32, 33, 47, 62])
def test_prg_words_are_little_endian_masked(bits: int) -> None:
    count = 37
    width = 4 if bits <= 32 else 8
    raw = _reference_keystream(SEED, LAB, count * width)
    ref = np.frombuffer(raw, dtype="<u4" if width == 4 else "<u8").astype(np.uint64)
    ref &= np.uint64((1 << bits) - 1)
    assert prg_words(SEED, LAB, count, bits).tolist() == ref.tolist()


def test_prg_fixed_vector_62_bit_words() -> None:
    assert prg_words(SEED, LAB, 2, 62).tolist() == [3327074178378828113, 2989589702581563887]


def test_keystream_domain_separation_and_reuse() -> None:
    ks = Keystream(64, np.uint32)
    a = ks.fill(SEED, LAB).copy()
    b = ks.fill(SEED, LAB + b"x").copy()
    c = ks.fill(bytes(32), LAB).copy()
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(ks.fill(SEED, LAB), a)
    with pytest.raises(ValueError):
        ks.fill(SEED[:16], LAB)  # never a 128-bit key


def test_small_order_check_agrees_with_the_all_zero_agreement() -> None:
    """The u-coordinate blocklist rejects exactly the keys whose X25519 agreement is all
    zero (cryptography refuses those): every small-order point in every encoding
    (canonical, + p, top bit set), and no random key."""
    import os

    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    from secagg.crypto import x25519_is_small_order

    p = 2**255 - 19
    probe = X25519PrivateKey.generate()

    def agreement_fails(raw: bytes) -> bool:
        try:
            probe.exchange(X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            return True
        return False

    candidates = [0, 1, p - 1,
                  325606250916557431795983626356110631294008115727848805560023387167927233504,
                  39382357235489614581723060781553021112529911719440698176882885853963445705823]
    encodings = []
    for u in candidates:
        for enc in (u, u + p, u | (1 << 255), (u + p) | (1 << 255)):
            if enc < 2**256:
                encodings.append(enc.to_bytes(32, "little"))
    encodings += [os.urandom(32) for _ in range(200)]
    encodings += [i.to_bytes(32, "little") for i in range(2, 40)]
    for raw in encodings:
        assert x25519_is_small_order(raw) == agreement_fails(raw), raw.hex()
    assert sum(x25519_is_small_order(r) for r in encodings) >= 12
