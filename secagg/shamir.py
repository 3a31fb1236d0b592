"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^256 + 297.

Why this field: every secret shared by the protocol is a 32-byte string (the self-mask
seed b_u and the X25519 mask key s_u^SK). p is the smallest prime above 2^256, so any
32-byte secret is ONE field element: no chunking, no padding, one Lagrange combination
per secret, and a share is 33 bytes. Python integers make 257-bit arithmetic exact and
fast enough (a client shares 2 secrets to k+1 holders with (k+1)·t multiply-adds; the
server combines t shares per secret with Lagrange coefficients cached per holder set).

Wrong shares. Reconstruction from exactly t shares cannot detect a wrong one: any t
points lie on some polynomial of degree t - 1, so a wrong share silently gives a wrong
secret (a result >= 2^256 is rejected, but a random wrong value lands there with
probability 297 / p, about 2^-248: that is no detection). Only extra shares help. With
m > t shares of one secret, :func:`shares_consistent` checks that all m lie on ONE
polynomial of degree < t, i.e. that the syndromes
``S_l = sum_i w_i x_i^l y_i`` (l = 0 .. m-t-1, w_i = 1 / prod_{j != i} (x_i - x_j)) of
the generalized Reed-Solomon code vanish; it tests one random combination
``sum_l rho^l S_l`` (one inner product per secret with a vector cached per holder set;
a wrong set passes with probability <= (m - t) / p). Any wrong share is detected as long
as at least t shares are right. :func:`find_wrong_shares` then locates up to
``floor((m - t) / 2)`` wrong shares (syndrome decoding: Berlekamp-Massey gives the error
locator, whose roots among the abscissas are the wrong shares; the unique-decoding
radius, as for Berlekamp-Welch). Beyond that radius the wrong shares cannot be told
from the right ones and :class:`ShamirError` is raised.

Shamir, "How to share a secret", CACM 1979; used as in Bonawitz et al., CCS 2017, Sec. 3.
Privacy: any t-1 shares are uniformly distributed and independent of the secret
(information-theoretic), given coefficients drawn uniformly from GF(p) (we draw 40
random bytes per coefficient and reduce mod p: statistical distance < 2^-63).
Share abscissas are ``client_id + 1`` (never 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "ShamirError",
    "ShareChecker",
    "check_vector",
    "decode_share",
    "encode_share",
    "find_wrong_shares",
    "lagrange_at_zero",
    "reconstruct",
    "reconstruct_bytes",
    "shares_consistent",
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


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod p of nonzero values with one modular inversion (Montgomery)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


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
    return tuple(num * v % PRIME for v in _batch_inverse(dens))


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
    """:func:`reconstruct` for 33-byte encoded shares of a 32-byte secret. A result that
    does not fit in 32 bytes raises :class:`ShamirError`; this is NOT a check of the
    shares (a wrong share almost always gives a wrong 32-byte value; see the module
    docstring and :func:`shares_consistent`)."""
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


# --------------------------------------------------------------------------- wrong shares


@lru_cache(maxsize=1024)
def _barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """w_i = 1 / prod_{j != i} (x_i - x_j) mod p: sum_i w_i f(x_i) = 0 for every f of
    degree <= len(xs) - 2 (it is the leading coefficient of the interpolant)."""
    _check_xs(xs)
    dens = []
    for i, xi in enumerate(xs):
        # abscissas are small (client id + 1): multiply exactly, reduce once
        d = 1
        for j, xj in enumerate(xs):
            if i != j:
                d *= xi - xj
        dens.append(d % PRIME)
    return tuple(_batch_inverse(dens))


def check_vector(xs: tuple[int, ...], threshold: int, rho: int) -> tuple[int, ...]:
    """``v`` with ``sum_i v_i y_i = sum_{l < m-t} rho^l S_l`` (module docstring):
    ``v_i = w_i * sum_{l < m-t} (rho x_i)^l``. Compute once per holder set and reuse
    for every secret held by that set."""
    m = len(xs)
    extra = m - threshold
    if extra < 1:
        raise ShamirError(f"a consistency check needs more than t={threshold} shares, got {m}")
    w = _barycentric_weights(xs)
    r = [rho * x % PRIME for x in xs]
    # geometric sums (r^extra - 1) / (r - 1); r = 1 gives extra
    dens = [(ri - 1) % PRIME for ri in r]
    invs = _batch_inverse([d if d else 1 for d in dens])
    out = []
    for wi, ri, di, inv in zip(w, r, dens, invs, strict=True):
        g = (pow(ri, extra, PRIME) - 1) * inv % PRIME if di else extra % PRIME
        out.append(wi * g % PRIME)
    return tuple(out)


def shares_consistent(ys: Sequence[int], vector: Sequence[int]) -> bool:
    """Whether the shares ``ys`` (in the order of the ``xs`` that ``vector`` was made
    for by :func:`check_vector`) pass the random consistency check."""
    return sum(map(int.__mul__, vector, ys)) % PRIME == 0


def _berlekamp_massey(seq: Sequence[int]) -> list[int]:
    """Shortest connection polynomial C (C[0] = 1) of ``seq`` over GF(p)."""
    c, b = [1], [1]
    length, shift, last = 0, 1, 1
    for n, s_n in enumerate(seq):
        d = s_n
        for i in range(1, length + 1):
            d += c[i] * seq[n - i]
        d %= PRIME
        if d == 0:
            shift += 1
            continue
        coef = d * pow(last, -1, PRIME) % PRIME
        new = c + [0] * max(0, len(b) + shift - len(c))
        for i, bi in enumerate(b):
            new[i + shift] = (new[i + shift] - coef * bi) % PRIME
        if 2 * length <= n:
            b, last, length, shift = c, d, n + 1 - length, 1
        else:
            shift += 1
        c = new
    return c[: length + 1] + [0] * max(0, length + 1 - len(c))


def find_wrong_shares(shares: Mapping[int, int], threshold: int) -> frozenset[int]:
    """Abscissas of the wrong shares among ``shares`` ``{x: y}`` (empty if they are
    consistent), by syndrome decoding of the Reed-Solomon code: the syndromes
    ``S_l = sum_i w_i x_i^l y_i`` (l < m - t) of e wrong shares at x_j form a linear
    recurrence whose connection polynomial (Berlekamp-Massey) is the error locator
    ``prod_j (1 - x_j z)``. Correct for ``e <= (m - t) / 2``; when the locator has the
    wrong number of roots among the abscissas (more wrong shares than that) raises
    :class:`ShamirError`. O(m (m - t)) big-integer products: run it only for a secret
    whose shares failed :func:`shares_consistent`."""
    xs = tuple(sorted(shares))
    m = len(xs)
    if m < threshold:
        raise ShamirError(f"need {threshold} shares, got {m}")
    for x in xs:
        if not 0 <= shares[x] < PRIME:
            raise ShamirError("share out of field range")
    extra = m - threshold
    if extra == 0:
        return frozenset()
    w = _barycentric_weights(xs)
    terms = [wi * shares[x] % PRIME for wi, x in zip(w, xs, strict=True)]
    syndromes = []
    for _ in range(extra):
        syndromes.append(sum(terms) % PRIME)
        terms = [tv * x % PRIME for tv, x in zip(terms, xs, strict=True)]
    if not any(syndromes):
        return frozenset()
    locator = _berlekamp_massey(syndromes)
    errors = len(locator) - 1
    if 2 * errors > extra:
        raise ShamirError(
            f"more than {extra // 2} of {m} shares are wrong (t={threshold}); they cannot be "
            "told from the right ones"
        )
    wrong = []
    for x in xs:  # x is a root of the reversed locator z^e * C(1/z)
        acc = 0
        for coef in locator:
            acc = (acc * x + coef) % PRIME
        if acc == 0:
            wrong.append(x)
    if len(wrong) != errors:
        raise ShamirError(
            f"the shares of this secret cannot be decoded ({errors} errors located at "
            f"{len(wrong)} holders; t={threshold}, {m} shares)"
        )
    return frozenset(wrong)


class ShareChecker:
    """Robust reconstruction for one round: check, locate, rebuild.

    ``rho`` is the random point of the consistency check (draw it from the OS CSPRNG
    after every share has arrived). Per holder set (the sorted abscissas) it caches two
    vectors over all m holders: the check vector (:func:`check_vector`) and the Lagrange
    coefficients at 0 of the interpolation through all m points, both from the same
    barycentric weights. A secret then costs two inner products of length m; on the
    complete graph every secret shares one holder set. When m == t nothing can be checked
    and the t shares are interpolated as they are.
    """

    def __init__(self, threshold: int, rho: int) -> None:
        if threshold < 1:
            raise ShamirError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self.rho = rho % PRIME
        self._vectors: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _vectors_for(self, xs: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        got = self._vectors.get(xs)
        if got is None:
            w = _barycentric_weights(xs)
            # l_i(0) = prod_{j != i} (0 - x_j) / (x_i - x_j) = w_i * (-1)^(m-1) * prod_{j != i} x_j
            total = math.prod(xs)
            sign = -1 if len(xs) % 2 == 0 else 1
            at_zero = tuple(sign * wi * (total // x) % PRIME for wi, x in zip(w, xs, strict=True))
            got = (check_vector(xs, self.threshold, self.rho), at_zero)
            self._vectors[xs] = got
        return got

    def reconstruct(self, shares: Mapping[int, int]) -> tuple[int, frozenset[int]]:
        """``(secret, wrong abscissas)``: with more than t shares, wrong ones are found
        (:func:`shares_consistent`), located (:func:`find_wrong_shares`) and left out;
        raises :class:`ShamirError` with fewer than t shares or too many wrong ones."""
        t = self.threshold
        if len(shares) < t:
            raise ShamirError(f"need {t} shares, got {len(shares)}")
        if len(shares) == t:
            return reconstruct(shares, t), frozenset()
        xs = tuple(sorted(shares))
        ys = [shares[x] for x in xs]
        for y in ys:
            if not 0 <= y < PRIME:
                raise ShamirError("share out of field range")
        check, at_zero = self._vectors_for(xs)
        if shares_consistent(ys, check):
            return sum(map(int.__mul__, at_zero, ys)) % PRIME, frozenset()
        wrong = find_wrong_shares(shares, t)
        rest = {x: y for x, y in shares.items() if x not in wrong}
        return reconstruct(rest, t), wrong
