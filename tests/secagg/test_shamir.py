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
    ShareChecker,
    check_vector,
    decode_share,
    encode_share,
    find_wrong_shares,
    lagrange_at_zero,
    reconstruct,
    reconstruct_bytes,
    shares_consistent,
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


def test_exactly_t_shares_do_not_detect_a_wrong_share() -> None:
    """Any t points fit a polynomial of degree t - 1: a wrong share gives a wrong 32-byte
    secret and no error (the >= 2^256 check fires with probability ~2^-248 only)."""
    secret = os.urandom(32)
    xs = [1, 2, 3]
    shares = dict(zip(xs, split_bytes([secret], 3, xs, os.urandom)[0], strict=True))
    bad = dict(shares)
    bad[2] = encode_share((decode_share(bad[2]) + 1) % PRIME)
    value = reconstruct_bytes(bad, 3)
    assert len(value) == 32 and value != secret


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(1, 8),
    extra=st.integers(0, 10),
    data=st.data(),
)
def test_extra_shares_detect_and_locate_wrong_ones(t: int, extra: int, data: st.DataObject) -> None:
    m = t + extra
    xs = data.draw(st.lists(st.integers(1, 2000), min_size=m, max_size=m, unique=True))
    secret = int.from_bytes(os.urandom(32), "little")
    shares = dict(zip(xs, split([secret], t, xs, os.urandom)[0], strict=True))
    n_wrong = data.draw(st.integers(0, extra // 2))
    wrong = data.draw(
        st.lists(st.sampled_from(xs), min_size=n_wrong, max_size=n_wrong, unique=True)
    )
    for x in wrong:
        shares[x] = (shares[x] + data.draw(st.integers(1, PRIME - 1))) % PRIME
    if extra:
        order = tuple(sorted(shares))
        vec = check_vector(order, t, int.from_bytes(os.urandom(40), "little") % PRIME)
        assert shares_consistent([shares[x] for x in order], vec) == (not wrong)
    found = find_wrong_shares(shares, t)
    assert found == frozenset(wrong)
    assert reconstruct({x: y for x, y in shares.items() if x not in found}, t) == secret


def test_wrong_shares_beyond_the_decoding_radius_are_refused() -> None:
    xs = list(range(1, 11))
    secret = int.from_bytes(os.urandom(32), "little")
    shares = dict(zip(xs, split([secret], 4, xs, os.urandom)[0], strict=True))
    for x in (2, 5, 7, 9):  # 4 wrong, radius floor((10 - 4) / 2) = 3
        shares[x] = (shares[x] + 12345) % PRIME
    with pytest.raises(ShamirError):
        find_wrong_shares(shares, 4)
    with pytest.raises(ShamirError, match="more than t"):
        check_vector(tuple(xs[:4]), 4, 5)


@pytest.mark.parametrize(
    ("t", "m", "n_wrong"), [(3, 3, 0), (3, 4, 0), (3, 5, 1), (5, 12, 3), (1, 4, 1)]
)
def test_share_checker_rebuilds_from_all_holders(t: int, m: int, n_wrong: int) -> None:
    checker = ShareChecker(t, int.from_bytes(os.urandom(40), "little"))
    for _ in range(3):  # the vectors of this holder set are reused
        xs = [3, 9, 10, 17, 30, 31, 40, 41, 50, 77, 78, 99][:m]
        secret = int.from_bytes(os.urandom(32), "little")
        shares = dict(zip(xs, split([secret], t, xs, os.urandom)[0], strict=True))
        for x in xs[1 : 1 + n_wrong]:
            shares[x] = (shares[x] + 1) % PRIME
        value, wrong = checker.reconstruct(shares)
        assert value == secret and wrong == frozenset(xs[1 : 1 + n_wrong])
    with pytest.raises(ShamirError):
        checker.reconstruct(dict(list(shares.items())[: t - 1]))


def test_share_checker_detects_what_it_cannot_locate() -> None:
    """One extra share detects a wrong one but cannot say which (radius 0)."""
    xs = [1, 2, 3, 4]
    shares = dict(zip(xs, split([12345], 3, xs, os.urandom)[0], strict=True))
    shares[2] = (shares[2] + 1) % PRIME
    with pytest.raises(ShamirError, match="cannot be told"):
        ShareChecker(3, 7).reconstruct(shares)
