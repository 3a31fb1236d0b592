"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^256 + 297.

Why this field: every secret shared by the protocol is a 32-byte string (the self-mask
seed b_u and the X25519 mask key s_u^SK). p is the smallest prime above 2^256, so any
32-byte secret is ONE field element: no chunking, no padding, one Lagrange combination
per secret, and a share is 33 bytes. Python integers make 257-bit arithmetic exact and
fast enough (a client shares 2 secrets to k+1 holders with (k+1)·t multiply-adds; the
server combines t shares per secret with Lagrange coefficients cached per holder set).
A reconstructed value >= 2^256 proves that some share was wrong (it is rejected).

Shamir, "How to share a secret", CACM 1979; used as in Bonawitz et al., CCS 2017, Sec. 3.
Privacy: any t-1 shares are uniformly distributed and independent of the secret
(information-theoretic), given coefficients drawn uniformly from GF(p) (we draw 40
random bytes per coefficient and reduce mod p: statistical distance < 2^-63).
Share abscissas are ``client_id + 1`` (never 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "ShamirError",
    "decode_share",
    "encode_share",
    "lagrange_at_zero",
    "reconstruct",
    "reconstruct_bytes",
    "split",
    "split_bytes",
]

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33
_COEFF_BYTES = 40


class ShamirError(ValueError):
    """Too few shares, duplicate abscissas, or an out-of-range share / secret."""


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ShamirError(f"duplicate share abscissas in {sorted(xs)}")
    for x in xs:
        if not 0 < x < PRIME:
            raise ShamirError(f"share abscissa must be in [1, p), got {x}")


def split(
    secrets: Sequence[int],
    threshold: int,
    xs: Sequence[int],
    random_bytes: Callable[[int], bytes],
) -> list[list[int]]:
    """Share each secret with a fresh random polynomial of degree ``threshold - 1``.

    Returns ``shares[i][j]`` = share of ``secrets[i]`` at abscissa ``xs[j]``. Vectorized
    over secrets: one call draws all coefficients with one ``random_bytes`` call and
    evaluates all polynomials by Horner's rule at each abscissa.
    """
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, got {threshold}")
    if threshold > len(xs):
        raise ShamirError(f"threshold {threshold} exceeds the number of holders {len(xs)}")
    _check_xs(xs)
    for s in secrets:
        if not 0 <= s < PRIME:
            raise ShamirError("secret out of field range")
    ncoef = threshold - 1
    raw = random_bytes(_COEFF_BYTES * ncoef * len(secrets))
    if len(raw) != _COEFF_BYTES * ncoef * len(secrets):
        raise ValueError("random_bytes returned the wrong number of bytes")
    out: list[list[int]] = []
    pos = 0
    for s in secrets:
        # coefficients a_{t-1}, ..., a_1 for Horner; a_0 = secret
        coeffs = []
        for _ in range(ncoef):
            coeffs.append(int.from_bytes(raw[pos : pos + _COEFF_BYTES], "little") % PRIME)
            pos += _COEFF_BYTES
        row = []
        for x in xs:
            acc = 0
            for c in coeffs:
                acc = (acc + c) * x % PRIME
            row.append((acc + s) % PRIME)
        out.append(row)
    return out


def split_bytes(
    secrets: Sequence[bytes],
    threshold: int,
    xs: Sequence[int],
    random_bytes: Callable[[int], bytes],
) -> list[list[bytes]]:
    """:func:`split` for 32-byte secrets, shares encoded as 33-byte strings."""
    for s in secrets:
        if len(s) != SECRET_BYTES:
            raise ShamirError(f"secret must be {SECRET_BYTES} bytes, got {len(s)}")
    ints = [int.from_bytes(s, "little") for s in secrets]
    return [[encode_share(v) for v in row] for row in split(ints, threshold, xs, random_bytes)]


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients l_i(0) = prod_{j!=i} x_j / (x_j - x_i) mod p, cached per
    holder set (the same survivors reconstruct many secrets). One modular inversion per
    set (Montgomery's batch-inversion trick)."""
    _check_xs(xs)
    num = 1
    for x in xs:
        num *= x
    num %= PRIME
    dens = []
    for i, xi in enumerate(xs):
        # abscissas are small (client id + 1): multiply exactly, reduce once
        d = xi
        for j, xj in enumerate(xs):
            if i != j:
                d *= xj - xi
        dens.append(d % PRIME)
    # batch inversion
    prefix = [1] * (len(dens) + 1)
    for i, d in enumerate(dens):
        prefix[i + 1] = prefix[i] * d % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    invs = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        invs[i] = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(num * v % PRIME for v in invs)


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """Secret from at least ``threshold`` shares ``{x: y}``; uses the ``threshold``
    smallest abscissas (so equal holder sets hit the coefficient cache).

    Raises :class:`ShamirError` with fewer than ``threshold`` shares: with t-1 shares
    the secret is information-theoretically hidden, so nothing is attempted."""
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares, got {len(shares)}")
    xs = tuple(sorted(shares)[:threshold])
    coeffs = lagrange_at_zero(xs)
    acc = 0
    for x, c in zip(xs, coeffs, strict=True):
        y = shares[x]
        if not 0 <= y < PRIME:
            raise ShamirError("share out of field range")
        acc += c * y
    return acc % PRIME


def reconstruct_bytes(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """:func:`reconstruct` for 33-byte encoded shares of a 32-byte secret; a result that
    does not fit in 32 bytes means a corrupted share and raises :class:`ShamirError`."""
    value = reconstruct({x: decode_share(s) for x, s in shares.items()}, threshold)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("reconstructed value is not a 32-byte secret (corrupted share)")
    return value.to_bytes(SECRET_BYTES, "little")


def encode_share(value: int) -> bytes:
    """33-byte little-endian encoding of a field element."""
    return value.to_bytes(SHARE_BYTES, "little")


def decode_share(data: bytes) -> int:
    """Inverse of :func:`encode_share`; rejects wrong length or values >= p."""
    if len(data) != SHARE_BYTES:
        raise ShamirError(f"share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= PRIME:
        raise ShamirError("share out of field range")
    return value
