"""Vectors mod 2^b on the wire: little-endian bit packing at b bits per entry.

Entry i occupies bits ``[i*b, (i+1)*b)`` of a little-endian bit string (bit j of the
string is bit ``j % 8`` of byte ``j // 8``); the last byte is zero-padded. This is the
body of ``POST /v1/rounds/{r}/masked-input``: ``ceil(d*b/8)`` bytes, never JSON numbers.

Vectorized: entries are processed in blocks of 8 (8 entries x b bits = exactly b
bytes), so packing is a fixed number (<= 8 * 9) of numpy column operations whatever the
dimension; b = 8, 16, 32 are a plain little-endian cast, other byte-aligned widths a
single strided copy.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import MalformedMessageError

__all__ = ["MIN_BITS", "MAX_BITS", "pack", "pack_reduced", "packed_size", "unpack", "word_dtype"]

MIN_BITS = 8
MAX_BITS = 62
#: Widths whose packed form is exactly a native little-endian integer array.
_NATIVE = {8: "<u1", 16: "<u2", 32: "<u4"}


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an int, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")


def word_dtype(bits: int) -> type[np.unsignedinteger]:
    """Storage word for arithmetic mod 2^bits: uint32 when bits <= 32, else uint64.

    Both word sizes are multiples of 2^bits, so wrapping numpy adds/subtracts followed
    by one final ``& (2^bits - 1)`` give exact results mod 2^bits."""
    _check_bits(bits)
    return np.uint32 if bits <= 32 else np.uint64


def packed_size(dim: int, bits: int) -> int:
    """Number of bytes of a packed vector of ``dim`` entries: ``ceil(dim * bits / 8)``."""
    _check_bits(bits)
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    return (dim * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2^bits`` (any integer dtype) into bytes.

    Raises ``ValueError`` naming the first offending entry if a value is out of range."""
    _check_bits(bits)
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"pack needs a 1-D array, got shape {v.shape}")
    if v.dtype.kind not in "iu":
        raise ValueError(f"pack needs an integer array, got dtype {v.dtype}")
    if v.size and v.dtype.kind == "i" and int(v.min()) < 0:
        raise ValueError(f"entry {int(np.argmin(v))} is negative: {int(v.min())}")
    if v.size and int(v.max()) >= (1 << bits):
        i = int(np.argmax(v))
        raise ValueError(f"entry {i} = {int(v[i])} does not fit in {bits} bits")
    return _pack_words(v, bits)


def pack_reduced(values: np.ndarray, bits: int) -> bytes:
    """:func:`pack` for a 1-D unsigned array already reduced mod ``2^bits`` (for example
    by ``& (2^bits - 1)``): the same bytes, without the range scans."""
    _check_bits(bits)
    return _pack_words(np.asarray(values), bits)


def _pack_words(v: np.ndarray, bits: int) -> bytes:
    dim = v.size
    size = packed_size(dim, bits)
    if bits in _NATIVE:
        return v.astype(_NATIVE[bits], copy=False).tobytes()
    u = v.astype("<u8", copy=False)
    if bits % 8 == 0:
        nb = bits // 8
        return u.view(np.uint8).reshape(dim, 8)[:, :nb].tobytes()
    nblocks = (dim + 7) // 8
    if dim % 8:
        padded = np.zeros(nblocks * 8, dtype="<u8")
        padded[:dim] = u
        u = padded
    blocks = u.reshape(nblocks, 8)
    out = np.zeros((nblocks, bits), dtype=np.uint8)
    for j in range(8):
        off = j * bits
        byte0, sh = off >> 3, off & 7
        col = blocks[:, j]
        for m in range((sh + bits + 7) // 8):
            if m == 0:
                piece = col << np.uint64(sh)
            else:
                piece = col >> np.uint64(8 * m - sh)
            out[:, byte0 + m] |= piece.astype(np.uint8)  # astype keeps the low byte
    return out.tobytes()[:size]


def unpack(
    data: bytes | bytearray | memoryview,
    bits: int,
    dim: int,
    dtype: type[np.unsignedinteger] = np.uint64,
) -> np.ndarray:
    """Inverse of :func:`pack`: ``dim`` entries as ``dtype`` (default ``np.uint64``).

    Raises :class:`MalformedMessageError` (a ``ValueError``) if ``len(data)`` is not
    ``packed_size(dim, bits)`` or the padding bits are not zero (one canonical encoding).
    """
    _check_bits(bits)
    size = packed_size(dim, bits)
    if len(data) != size:
        raise MalformedMessageError(
            f"packed vector must be {size} bytes for dim={dim}, bits={bits}; got {len(data)}"
        )
    if dtype not in (np.uint32, np.uint64):
        raise ValueError(f"dtype must be uint32 or uint64, got {dtype}")
    if dtype is np.uint32 and bits > 32:
        raise ValueError(f"uint32 cannot hold {bits}-bit entries")
    raw = np.frombuffer(data, dtype=np.uint8)
    pad_bits = size * 8 - dim * bits
    if pad_bits and int(raw[-1]) >> (8 - pad_bits):
        raise MalformedMessageError("non-zero padding bits in packed vector")
    if bits in _NATIVE:
        return np.frombuffer(data, dtype=_NATIVE[bits], count=dim).astype(dtype)
    if bits % 8 == 0:
        nb = bits // 8
        wide = np.zeros((dim, 8), dtype=np.uint8)
        wide[:, :nb] = raw.reshape(dim, nb)
        return wide.view("<u8").reshape(dim).astype(dtype)
    nblocks = (dim + 7) // 8
    buf = np.zeros(nblocks * bits, dtype=np.uint8)
    buf[:size] = raw
    blocks = buf.reshape(nblocks, bits)
    out = np.empty((nblocks, 8), dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for j in range(8):
        off = j * bits
        byte0, sh = off >> 3, off & 7
        acc = blocks[:, byte0].astype(np.uint64) >> np.uint64(sh)
        for m in range(1, (sh + bits + 7) // 8):
            acc |= blocks[:, byte0 + m].astype(np.uint64) << np.uint64(8 * m - sh)
        out[:, j] = acc & mask
    res = out.reshape(nblocks * 8)[:dim]
    return res.astype(dtype) if dtype is not np.uint64 else res.copy()
