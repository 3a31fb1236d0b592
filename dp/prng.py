"""The DP encoder's secret randomness: an AES-256-CTR keystream read as numpy arrays.

Why: a device's noise share protects its update only if the server cannot predict it.
Whoever can reproduce the generator can subtract the noise (and undo the randomized
rounding), so the draws must be as unpredictable as a key. numpy's generators (PCG64,
MT19937) are not: their output reveals their state, and a 64- or 128-bit seed is a
guessable target. Non-negotiable 1 of the project: secret DP noise comes from the OS
CSPRNG and from AES-CTR or ChaCha20 keyed by the full 256-bit seed.

`SecureRng` is that generator: a 32-byte key, AES-256 in CTR mode (pyca `cryptography`,
i.e. OpenSSL), the keystream read as little-endian 64-bit words and turned into numpy
arrays in bulk (about 6.7 GB/s of keystream on one core here, so a 65,536-entry encode
needs well under a millisecond of AES). The initial counter block is 0^128 by default:
each key feeds exactly one stream, and the counter advances monotonically over the
stream's life (the generator refuses to go on before the 128-bit counter could wrap), so
no (key, counter) pair is ever used twice. Copying or pickling a `SecureRng` is refused:
a copy would replay the same keystream, i.e. add the same noise twice.

Two ways to key it:

- `SecureRng.from_os()`: key = `os.urandom(32)`. What a real device uses.
- `SecureRng.for_simulation(seed, *labels)`: key = HKDF-SHA256(seed, labels). SIMULATION
  ONLY: reproducible research runs, where everyone who knows the seed knows the noise.

Draws (`keystream`, `words`, `random`) consume the stream in order; the same key gives the
same sequence of arrays whatever the sizes requested, as long as the sizes are the same.
Not thread-safe: one generator per device (per thread).
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_BYTES", "SecureRng", "require_secure_rng"]

KEY_BYTES = 32
_BLOCK = 16
#: Zero input for the CTR encryptor (keystream = AES-CTR(key, 0...0)); requests larger
#: than this are served in chunks.
_CHUNK = 1 << 22
_ZEROS = bytes(_CHUNK)
_TWO_M53 = 2.0**-53
#: HKDF salt of `for_simulation` (domain separation from every other use of a seed).
_SIM_SALT = b"secagg-dp/v1 dp.prng SIMULATION ONLY noise key"


def _encode_labels(seed: int, labels: tuple[str | int, ...]) -> bytes:
    """Injective encoding of (seed, labels): a type tag and a length before each item."""
    out = bytearray()
    for item in (seed, *labels):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TypeError(
                f"seed and labels must be int or str, got {type(item).__name__} {item!r}"
            )
        tag, raw = (b"i", str(item).encode("ascii")) if isinstance(item, int) else (
            b"s", item.encode("utf-8"))
        out += tag + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class SecureRng:
    """AES-256-CTR keystream generator handing out numpy arrays (see the module doc).

    `SecureRng(key)` takes a 32-byte secret key, e.g. from `os.urandom(32)` or an
    injected `random_bytes(32)`; anything else is refused. `initial_counter` exists for
    the NIST known-answer test; leave it at its default (each key is used once).
    """

    __slots__ = ("_enc", "_blocks_left", "_simulation", "_label", "_pending")

    def __init__(self, key: bytes, *, initial_counter: bytes = bytes(_BLOCK)) -> None:
        self._init(key, initial_counter, simulation=False, label="")

    def _init(self, key: bytes, initial_counter: bytes, *, simulation: bool, label: str) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"SecureRng key must be bytes, got {type(key).__name__}")
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"SecureRng key must be exactly {KEY_BYTES} bytes (AES-256), got {len(key)}"
            )
        if not isinstance(initial_counter, (bytes, bytearray)) or len(initial_counter) != _BLOCK:
            raise ValueError(
                f"initial_counter must be {_BLOCK} bytes, got {initial_counter!r}"
            )
        cipher = Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(initial_counter)))
        self._enc = cipher.encryptor()
        # OpenSSL increments the whole 128-bit block: refuse to reach the wrap-around.
        self._blocks_left = 2**128 - int.from_bytes(initial_counter, "big")
        self._simulation = simulation
        self._label = label
        # keystream bytes already produced but not yet handed out (partial last block)
        self._pending = b""

    @classmethod
    def from_os(cls) -> SecureRng:
        """A generator keyed from the OS CSPRNG (`os.urandom(32)`): what devices use."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def for_simulation(cls, seed: int, *labels: str | int) -> SecureRng:
        """SIMULATION ONLY: a deterministic generator for reproducible research runs.

        The key is HKDF-SHA256 of `seed` and `labels` (e.g. round id, device id,
        purpose), so the same (seed, labels) always gives the same noise, and different
        labels give independent streams. NOT SECRET: anyone who knows or guesses the
        seed can recompute every noise share and subtract it, so there is no
        differential privacy against such a party. Never use it on a real device; use
        `SecureRng.from_os()` there.
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"simulation seed must be an integer >= 0, got {seed!r}")
        info = _encode_labels(seed, labels)
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_SIM_SALT,
                   info=b"dp noise").derive(info)
        rng = cls.__new__(cls)
        rng._init(key, bytes(_BLOCK), simulation=True,
                  label=", ".join(repr(x) for x in (seed, *labels)))
        return rng

    @property
    def simulation(self) -> bool:
        """True for `for_simulation` generators (deterministic, not secret)."""
        return self._simulation

    def __repr__(self) -> str:
        if self._simulation:
            return (f"SecureRng(SIMULATION ONLY, not secret: deterministic key from "
                    f"seed/labels {self._label})")
        return "SecureRng(AES-256-CTR, secret key)"

    def _refuse_copy(self, *_: Any) -> NoReturn:
        raise TypeError(
            "a SecureRng cannot be copied or pickled: a copy replays the same keystream, "
            "i.e. the same noise; create one generator per use"
        )

    __copy__ = _refuse_copy
    __deepcopy__ = _refuse_copy
    __reduce__ = _refuse_copy
    __reduce_ex__ = _refuse_copy
    __getstate__ = _refuse_copy

    # ----------------------------------------------------------------- raw keystream

    def _fill(self, out: memoryview) -> None:
        """Write the next len(out) keystream bytes into `out`."""
        n = len(out)
        pos = 0
        if self._pending:
            take = min(n, len(self._pending))
            out[:take] = self._pending[:take]
            self._pending = self._pending[take:]
            pos = take
        whole = (n - pos) // _BLOCK * _BLOCK
        if whole:
            blocks = whole // _BLOCK
            if blocks > self._blocks_left:
                raise OverflowError("SecureRng keystream exhausted (counter would wrap)")
            self._blocks_left -= blocks
            # update_into needs len(input) + 15 bytes of room: write all but the last
            # block in place, then the last block through a small buffer.
            while whole > _BLOCK:
                step = min(_CHUNK, whole - _BLOCK)
                self._enc.update_into(memoryview(_ZEROS)[:step], out[pos:pos + step + _BLOCK])
                pos += step
                whole -= step
            out[pos:pos + _BLOCK] = self._enc.update(_ZEROS[:_BLOCK])
            pos += _BLOCK
        if pos < n:
            if self._blocks_left < 1:
                raise OverflowError("SecureRng keystream exhausted (counter would wrap)")
            self._blocks_left -= 1
            block = self._enc.update(_ZEROS[:_BLOCK])
            take = n - pos
            out[pos:] = block[:take]
            self._pending = block[take:]

    def keystream(self, n: int) -> bytes:
        """The next `n` raw keystream bytes."""
        n = _count(n)
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return bytes(buf)

    def words(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Uniform 64-bit words (np.uint64): the next 8 * n keystream bytes, little-endian."""
        shape = _shape(size)
        n = int(np.prod(shape, dtype=np.int64))
        out = np.empty(n, dtype=np.dtype("<u8"))
        if n:
            self._fill(out.view(np.uint8).data)
        return out.astype(np.uint64, copy=False).reshape(shape)

    def random(self, size: int | tuple[int, ...]) -> np.ndarray:
        """Uniform float64 in [0, 1) with 53 random bits: (word >> 11) * 2^-53, one word
        per value. Every value is a multiple of 2^-53, each one equally likely."""
        w = self.words(size)
        w >>= np.uint64(11)
        u = w.astype(np.float64)
        u *= _TWO_M53
        return u


def _count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"size must be an integer >= 0, got {n!r}")
    return int(n)


def _shape(size: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(size, tuple):
        return tuple(_count(s) for s in size)
    return (_count(size),)


def require_secure_rng(rng: object, where: str) -> SecureRng:
    """Return `rng` if it is a `SecureRng`; raise TypeError saying why otherwise."""
    if isinstance(rng, SecureRng):
        return rng
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        raise TypeError(
            f"{where} needs a dp.prng.SecureRng, got {type(rng).__module__}."
            f"{type(rng).__name__}: numpy's generators are not cryptographic (their "
            "output reveals their state and their seed is guessable), and whoever predicts "
            "the generator can subtract this device's noise; use SecureRng.from_os() "
            "(or SecureRng.for_simulation(seed, ...) in simulations)"
        )
    raise TypeError(f"{where} needs a dp.prng.SecureRng, got {type(rng).__name__} {rng!r}")
