"""Cryptographic primitives, all from ``cryptography`` (pyca).

Recipes, not protocol: every function takes its key, nonce, labels and randomness as
arguments, so the known-answer tests pin every input (the pyca pattern: randomness
enters only at the protocol layer).

- Key agreement: X25519 (RFC 7748) followed by HKDF-SHA256 (RFC 5869) with a distinct
  ``info`` label per derived key. Labels bind the protocol version, the purpose, the
  round id and both parties, so a key derived for one round, pair or purpose is
  unrelated to every other one (Bonawitz et al. 2017, Sec. 3: KA.agree then a KDF).
- Share encryption: ChaCha20-Poly1305 (RFC 8439) with associated data binding round,
  sender and receiver.
- Signatures (active mode): Ed25519 (RFC 8032) over domain-separated messages.
- PRG for masks: AES-256-CTR keyed by the full 256-bit seed; the 16-byte initial counter
  block is ``SHA-256(label)[:8] || 0^64`` where the label names the round, the purpose
  and the pair. The keystream is read as little-endian 32- or 64-bit words.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Iterable

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import MalformedMessageError, SignatureError

__all__ = [
    "PROTOCOL_LABEL",
    "RandomBytes",
    "concat_ids",
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "KEY_BYTES",
    "Keystream",
    "aead_decrypt",
    "aead_encrypt",
    "ed25519_public_bytes",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "label",
    "prg_nonce",
    "prg_words",
    "x25519_agree",
    "x25519_check_public",
    "x25519_keypair",
    "x25519_private_key",
    "x25519_public_from_private",
]

PROTOCOL_LABEL = b"secagg-dp/v1"
KEY_BYTES = 32
RandomBytes = Callable[[int], bytes]
AEAD_NONCE_BYTES = 12
AEAD_TAG_BYTES = 16


def label(purpose: str, round_id: int, *parties: int) -> bytes:
    """Domain-separation label: ``b"secagg-dp/v1|<purpose>|" + be64(round) + be64(ids)...``.

    Fixed-width integers make the encoding injective (no two tuples share a label).
    """
    return (
        PROTOCOL_LABEL
        + b"|"
        + purpose.encode("ascii")
        + b"|"
        + struct.pack(f">{1 + len(parties)}Q", round_id, *parties)
    )


# --------------------------------------------------------------------------- X25519 / HKDF


def x25519_keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """Fresh X25519 key pair ``(private_raw, public_raw)`` from ``random_bytes(32)``.

    The 32 random bytes are the RFC 7748 scalar (clamped by X25519 itself).
    """
    raw = random_bytes(KEY_BYTES)
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise ValueError("random_bytes(32) must return 32 bytes")
    return raw, x25519_public_from_private(raw)


def x25519_public_from_private(private_raw: bytes) -> bytes:
    """Raw public key of a raw X25519 private key."""
    key = X25519PrivateKey.from_private_bytes(private_raw)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_private_key(private_raw: bytes) -> X25519PrivateKey:
    """Parse a raw X25519 private key once (parsing costs more than an agreement)."""
    return X25519PrivateKey.from_private_bytes(private_raw)


def x25519_agree(private: bytes | X25519PrivateKey, public_raw: bytes) -> bytes:
    """Raw X25519 shared secret; an all-zero result (small-order point) raises
    :class:`MalformedMessageError`. ``private`` is raw bytes or a parsed key (faster
    when one key agrees with many peers)."""
    if len(public_raw) != KEY_BYTES:
        raise MalformedMessageError(f"X25519 public key must be 32 bytes, got {len(public_raw)}")
    key = (
        private
        if isinstance(private, X25519PrivateKey)
        else X25519PrivateKey.from_private_bytes(private)
    )
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError as err:
        raise MalformedMessageError(f"X25519 agreement failed: {err}") from err


#: u-coordinates (mod p) of the X25519 points of small order (RFC 7748 Sec. 6.1; the
#: same list as libsodium's blocklist): 0 and p - 1 (orders 2 and 4), 1 (order 1 on the
#: twist), and the two points of order 8.
_P25519 = 2**255 - 19
_SMALL_ORDER_U = frozenset({
    0,
    1,
    _P25519 - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})


def x25519_is_small_order(public_raw: bytes) -> bool:
    """Whether an X25519 public key encodes a point of small order, including
    non-canonical encodings (u + p) and a set top bit (ignored by X25519, RFC 7748)."""
    u = int.from_bytes(public_raw, "little") & ((1 << 255) - 1)
    return u % _P25519 in _SMALL_ORDER_U


def x25519_check_public(public_raw: bytes, what: str = "X25519 public key") -> None:
    """Reject a public key of small order (RFC 7748 Sec. 6.1: the shared secret with it
    is all zero whatever the other key, so it carries no secret), including non-canonical
    encodings of such points, by its u-coordinate (no scalar multiplication: the server
    checks every advertised key, the client every neighbour's). Raises
    :class:`MalformedMessageError` naming ``what``."""
    if not isinstance(public_raw, bytes) or len(public_raw) != KEY_BYTES:
        raise MalformedMessageError(f"{what} must be {KEY_BYTES} bytes")
    if x25519_is_small_order(public_raw):
        raise MalformedMessageError(f"{what} is a point of small order")


def hkdf_sha256(
    ikm: bytes, info: bytes, length: int = KEY_BYTES, salt: bytes | None = None
) -> bytes:
    """HKDF-SHA256 (RFC 5869). ``info`` must name the purpose and bind round and parties."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# --------------------------------------------------------------------------- AEAD


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305: returns ``nonce || ciphertext || tag``."""
    if len(nonce) != AEAD_NONCE_BYTES:
        raise ValueError(f"nonce must be {AEAD_NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def aead_decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; any tampering, wrong key or wrong associated data
    raises :class:`SignatureError` (an authentication failure)."""
    if len(blob) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
        raise MalformedMessageError(f"ciphertext too short: {len(blob)} bytes")
    try:
        return ChaCha20Poly1305(key).decrypt(
            blob[:AEAD_NONCE_BYTES], blob[AEAD_NONCE_BYTES:], associated_data
        )
    except InvalidTag as err:
        raise SignatureError("share ciphertext failed authentication") from err


# --------------------------------------------------------------------------- Ed25519


def ed25519_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """Raw 32-byte public key of an Ed25519 private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes)."""
    return key.sign(message)


def ed25519_verify(public_raw: bytes, signature: bytes, message: bytes) -> None:
    """Verify or raise :class:`SignatureError` (never returns a bool)."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError) as err:
        raise SignatureError("invalid Ed25519 signature") from err


# --------------------------------------------------------------------------- PRG


def prg_nonce(prg_label: bytes) -> bytes:
    """Initial AES-CTR counter block for a PRG label: ``SHA-256(label)[:8] || 0^64``.

    The low 64 bits count blocks, so streams never wrap for any realistic length."""
    return hashlib.sha256(prg_label).digest()[:8] + bytes(8)


@functools.lru_cache(maxsize=4)
def _zero_bytes(nbytes: int) -> bytes:
    """An immutable all-zero input for the CTR encryptor, shared by every Keystream of
    that size (keystream = AES-CTR(0...0))."""
    return bytes(nbytes)


class Keystream:
    """Reusable AES-256-CTR keystream generator for ``count`` words of ``dtype``.

    It keeps one zero buffer and one output buffer and fills the output with
    ``update_into``, so producing a mask allocates nothing: the cost is the raw
    keystream plus the caller's single in-place add. The returned array is a view of the
    internal buffer, valid until the next :meth:`fill`.
    """

    def __init__(self, count: int, dtype: type[np.unsignedinteger]) -> None:
        self.count = int(count)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.nbytes = self.count * self.dtype.itemsize
        self._zeros = _zero_bytes(self.nbytes)
        self._out = bytearray(self.nbytes + 15)
        self._view = np.frombuffer(self._out, dtype=self.dtype, count=self.count)

    def fill(self, seed: bytes, prg_label: bytes) -> np.ndarray:
        """Keystream words for ``(seed, label)``; a view reused by the next call."""
        if len(seed) != KEY_BYTES:
            raise ValueError(f"PRG seed must be 32 bytes, got {len(seed)}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(prg_nonce(prg_label))).encryptor()
        enc.update_into(self._zeros, self._out)
        return self._view

    def release(self) -> None:
        """Zero the output buffer (drop keystream material)."""
        np.frombuffer(self._out, dtype=np.uint8).fill(0)


def prg_words(seed: bytes, prg_label: bytes, count: int, bits: int) -> np.ndarray:
    """First ``count`` PRG words masked to ``bits`` bits, as ``np.uint64`` (for tests and
    one-off use; the protocol uses :class:`Keystream` and masks lazily)."""
    dtype = np.uint32 if bits <= 32 else np.uint64
    ks = Keystream(count, dtype).fill(seed, prg_label)
    return (ks & dtype((1 << bits) - 1)).astype(np.uint64)


def concat_ids(ids: Iterable[int]) -> bytes:
    """Injective encoding of a sorted id set for signatures."""
    ids = list(ids)
    return struct.pack(f">Q{len(ids)}Q", len(ids), *ids)
