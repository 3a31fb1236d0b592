"""Shamir sharing over GF(2^256 + 297): any t shares rebuild, t - 1 do not."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    ShamirError,
    decode_share,
    encode_share,
    lagrange_at_zero,
    reconstruct,
    reconstruct_bytes,
    split,
    split_bytes,
)


def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_256() -> None:
    assert PRIME == (1 << 256) + 297
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime((1 << 256) + i) for i in range(1, 297, 2))


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 9),
    data=st.data(),
)
def test_any_t_shares_rebuild_and_t_minus_1_do_not(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, n))
    ids = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    xs = [i + 1 for i in ids]
    shares = dict(zip(xs, split_bytes([secret], t, xs, os.urandom)[0], strict=True))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert reconstruct_bytes({x: shares[x] for x in subset}, t) == secret
    if t >= 2:
        fewer = subset[: t - 1]
        with pytest.raises(ShamirError):
            reconstruct_bytes({x: shares[x] for x in fewer}, t)
        # pretending the threshold is t - 1 gives a wrong value (or a non-secret)
        try:
            wrong = reconstruct_bytes({x: shares[x] for x in fewer}, t - 1)
        except ShamirError:
            wrong = None
        assert wrong != secret


def test_every_t_subset_rebuilds_exactly() -> None:
    xs = [1, 2, 3, 4, 5, 6]
    secrets = [3, PRIME - 1]
    rows = split(secrets, 3, xs, os.urandom)
    for secret, row in zip(secrets, rows, strict=True):
        shares = dict(zip(xs, row, strict=True))
        for subset in itertools.combinations(xs, 3):
            assert reconstruct({x: shares[x] for x in subset}, 3) == secret


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    """Information-theoretic hiding: for t = 2, one share fits any secret (some line)."""
    xs = [1, 2]
    row = split([12345], 2, xs, os.urandom)[0]
    for candidate in (0, 1, 12345, PRIME - 1):
        slope = (row[0] - candidate) % PRIME  # line through (0, candidate) and (1, row[0])
        assert (candidate + slope * 1) % PRIME == row[0]


def test_lagrange_cached_per_holder_set() -> None:
    lagrange_at_zero.cache_clear()
    xs = (2, 5, 9)
    assert lagrange_at_zero(xs) is lagrange_at_zero(xs)
    assert lagrange_at_zero.cache_info().hits >= 1
    assert sum(lagrange_at_zero(xs)) % PRIME == 1  # interpolating the constant 1


def test_rejections() -> None:
    with pytest.raises(ShamirError):
        split([1], 3, [1, 2], os.urandom)
    with pytest.raises(ShamirError):
        split([1], 2, [1, 1], os.urandom)
    with pytest.raises(ShamirError):
        split([1], 2, [0, 1], os.urandom)  # abscissa 0 would be the secret
    with pytest.raises(ShamirError):
        split_bytes([b"short"], 1, [1], os.urandom)
    with pytest.raises(ShamirError):
        decode_share(b"\x00" * (SHARE_BYTES - 1))
    with pytest.raises(ShamirError):
        decode_share(encode_share(PRIME - 1)[:-1] + b"\xff")
    assert decode_share(encode_share(PRIME - 1)) == PRIME - 1


def test_corrupted_share_detected_as_non_secret_most_of_the_time() -> None:
    secret = os.urandom(32)
    xs = [1, 2, 3]
    shares = dict(zip(xs, split_bytes([secret], 3, xs, os.urandom)[0], strict=True))
    bad = dict(shares)
    bad[2] = encode_share((decode_share(bad[2]) + 1) % PRIME)
    try:
        value = reconstruct_bytes(bad, 3)
    except ShamirError:
        value = None
    assert value != secret
