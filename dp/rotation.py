"""Random rotations that flatten a vector before integer rounding.

Kairouz, Liu, Steinke (ICML 2021, Sec. 4) and Agarwal, Kairouz, Liu (NeurIPS 2021)
rotate the clipped update by a random orthogonal matrix so that its energy is spread
evenly over the coordinates (each one ~ C/sqrt(d)), which keeps the modular wrap rare
and the rounding error small. Two choices, as in TensorFlow Federated:

- "hadamard": x -> H D x / sqrt(d), D a diagonal of random signs, H the Walsh-Hadamard
  matrix; the vector is zero-padded to the next power of two.
- "dft": x -> F D x, with the real vector read as a complex vector of half the length
  (first half real parts, second half imaginary parts) and F the unitary DFT; the
  vector is zero-padded to an even length.

Both are orthogonal, so L2 norms are preserved and the inverse is exact (up to float
rounding).

The signs come from the *public* per-round `rotation_seed`: the rotation needs to be
random only with respect to the data, not secret from anyone (the server chooses it
and every device uses the same one, which is what makes the sum decodable). They are
expanded with numpy's PCG64, a deterministic generator that is fine for public
randomness and must never be used for keys, masks or DP noise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["padded_dim", "rotation_signs", "rotate", "unrotate"]


def padded_dim(dim: int, rotation: str) -> int:
    """Length of the rotated vector for an input of length `dim`."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim!r}")
    if rotation == "hadamard":
        return 1 << (dim - 1).bit_length()
    if rotation == "dft":
        return dim + (dim % 2) if dim > 1 else 2
    raise ValueError(f"unknown rotation {rotation!r}")


def rotation_signs(seed: bytes, length: int) -> np.ndarray:
    """Deterministic public +-1 signs (float64) expanded from the round's seed."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) == 0:
        raise ValueError(f"rotation seed must be non-empty bytes, got {seed!r}")
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(bytes(seed), "little")))
    return np.where(gen.integers(0, 2, size=length, dtype=np.int8) == 1, 1.0, -1.0)


def _fwht_row(y: np.ndarray) -> None:
    """Unnormalized Walsh-Hadamard transform of one contiguous float64 row, in place.

    Radix-4 butterflies (two levels per pass over the row, one radix-2 level when the
    number of levels is odd), elementwise numpy only: the result of a row never depends
    on the other rows of a batch, and a 65,536-entry row (512 KB) stays in cache."""
    d = y.shape[0]
    h = 1
    while h < d:
        if 4 * h <= d:
            v = y.reshape(d // (4 * h), 4, h)
            a, b, c, e = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
            s0, s1, s2, s3 = a + b, a - b, c + e, c - e
            np.add(s0, s2, out=a)
            np.add(s1, s3, out=b)
            np.subtract(s0, s2, out=c)
            np.subtract(s1, s3, out=e)
            h *= 4
        else:
            v = y.reshape(d // (2 * h), 2, h)
            a, b = v[:, 0], v[:, 1]
            s = a - b
            a += b
            b[...] = s
            h *= 2


def _fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform along the last axis (length 2^k), row
    by row (see `_fwht_row`), for arrays of any leading shape."""
    d = x.shape[-1]
    y = np.array(x, dtype=np.float64, copy=True, order="C")
    for row in y.reshape(-1, d):
        _fwht_row(row)
    y *= 1.0 / np.sqrt(d)
    return y


def rotate(x: np.ndarray, signs: np.ndarray, rotation: str) -> np.ndarray:
    """Pad `x` (shape (..., n), e.g. one update or a batch of them, one per row) to
    len(signs) along the last axis and apply the randomized rotation to every row."""
    d = signs.shape[-1]
    x = np.asarray(x)
    n = x.shape[-1]
    if rotation == "hadamard":
        # one row at a time from padding to scaling: the row stays in cache throughout
        out = np.empty(x.shape[:-1] + (d,), dtype=np.float64)
        norm = 1.0 / np.sqrt(d)
        for row, src in zip(out.reshape(-1, d), x.reshape(-1, n), strict=True):
            row[:n] = src
            row[n:] = 0.0
            row *= signs
            _fwht_row(row)
            row *= norm
        return out
    v = np.zeros(x.shape[:-1] + (d,), dtype=np.float64)
    v[..., :n] = x
    v *= signs
    if rotation == "dft":
        h = d // 2
        z = np.fft.fft(v[..., :h] + 1j * v[..., h:], norm="ortho", axis=-1)
        return np.concatenate((z.real, z.imag), axis=-1)
    raise ValueError(f"unknown rotation {rotation!r}")


def unrotate(y: np.ndarray, signs: np.ndarray, rotation: str, dim: int) -> np.ndarray:
    """Exact inverse of `rotate` (row-wise along the last axis), truncated to the first
    `dim` coordinates."""
    y = np.asarray(y, dtype=np.float64)
    if rotation == "hadamard":
        v = _fwht(y)
    elif rotation == "dft":
        h = signs.shape[-1] // 2
        z = np.fft.ifft(y[..., :h] + 1j * y[..., h:], norm="ortho", axis=-1)
        v = np.concatenate((z.real, z.imag), axis=-1)
    else:
        raise ValueError(f"unknown rotation {rotation!r}")
    return (v * signs)[..., :dim]
