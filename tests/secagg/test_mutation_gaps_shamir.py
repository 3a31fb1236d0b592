"""Robust Shamir reconstruction, tested where mutation testing found it thin (issue 16):
error location at every number of wrong shares up to the decoding radius, the exact
refusals beyond it, share 0 as a valid share, and the range and count checks."""

from __future__ import annotations

import random
import re

import pytest

from secagg.shamir import PRIME, ShamirError, ShareChecker, find_wrong_shares, split


def _shares(secret: int, t: int, xs: list[int], seed: int) -> dict[int, int]:
    gen = random.Random(seed)  # test data only: the polynomial's randomness is not a secret
    row = split([secret], t, xs, gen.randbytes)[0]
    return dict(zip(xs, row, strict=True))


@pytest.mark.parametrize("t", [2, 3, 4])
def test_every_error_count_up_to_the_radius_is_located(t: int) -> None:
    gen = random.Random(t)
    for m in range(t + 1, t + 8):
        for e in range((m - t) // 2 + 1):
            for trial in range(3):
                xs = gen.sample(range(1, 200), m)
                shares = _shares(gen.randrange(PRIME), t, xs, 1000 * m + 10 * e + trial)
                wrong = set(gen.sample(xs, e))
                for x in wrong:
                    shares[x] = (shares[x] + gen.randrange(1, PRIME)) % PRIME
                assert find_wrong_shares(shares, t) == wrong, (t, m, e, trial)
                secret, found = ShareChecker(t, gen.randrange(PRIME)).reconstruct(shares)
                assert found == wrong


def test_beyond_the_radius_the_refusal_says_so() -> None:
    shares = _shares(5, 3, [1, 2, 3, 4, 5], 1)
    shares[1] = (shares[1] + 1) % PRIME
    shares[2] = (shares[2] + 1) % PRIME
    with pytest.raises(ShamirError) as err:
        find_wrong_shares(shares, 3)
    assert str(err.value) in (
        "more than 1 of 5 shares are wrong (t=3); they cannot be told from the right ones",
        "the shares of this secret cannot be decoded (1 errors located at 0 holders; t=3, "
        "5 shares)",
    )


def test_beyond_the_radius_many_cases_are_refused_never_mislocated() -> None:
    """With e > (m - t) / 2 wrong shares, the decoder must not return a wrong set as if
    it were right: it raises, or (rarely, when the wrong shares happen to lie on another
    polynomial of degree < t with enough right ones) returns a set of at most the radius."""
    gen = random.Random(7)
    refused = 0
    for trial in range(60):
        t, m = 3, 3 + gen.randrange(2, 7)
        radius = (m - t) // 2
        xs = gen.sample(range(1, 100), m)
        shares = _shares(gen.randrange(PRIME), t, xs, trial)
        for x in gen.sample(xs, radius + 1):
            shares[x] = gen.randrange(PRIME)
        try:
            found = find_wrong_shares(shares, t)
        except ShamirError as err:
            refused += 1
            assert re.search(
                rf"more than {radius} of {m} shares are wrong \(t=3\); they cannot be told "
                r"from the right ones|cannot be decoded \(\d+ errors located at \d+ holders; "
                rf"t=3, {m} shares\)", str(err)), str(err)
        else:
            assert len(found) <= radius
    assert refused >= 55


def test_a_zero_share_is_a_valid_share() -> None:
    """f(x) = a (x - 4): the share at 4 is 0, and must be accepted (range is [0, p))."""
    a, xs = 123456789, [1, 2, 4, 6]
    shares = {x: a * (x - 4) % PRIME for x in xs}
    assert shares[4] == 0
    assert find_wrong_shares(shares, 2) == frozenset()
    secret, wrong = ShareChecker(2, 99).reconstruct(shares)
    assert secret == (-4 * a) % PRIME and wrong == frozenset()


@pytest.mark.parametrize("bad", [PRIME, PRIME + 5, -1])
def test_out_of_range_shares_are_refused(bad: int) -> None:
    shares = _shares(5, 2, [1, 2, 3], 3)
    shares[2] = bad
    with pytest.raises(ShamirError, match=r"^share out of field range$"):
        find_wrong_shares(shares, 2)
    with pytest.raises(ShamirError, match=r"^share out of field range$"):
        ShareChecker(2, 5).reconstruct(shares)


def test_too_few_shares_are_refused_with_the_count() -> None:
    shares = _shares(5, 3, [1, 2, 3], 3)
    del shares[3]
    with pytest.raises(ShamirError, match=r"^need 3 shares, got 2$"):
        find_wrong_shares(shares, 3)
    with pytest.raises(ShamirError, match=r"^need 3 shares, got 2$"):
        ShareChecker(3, 5).reconstruct(shares)
    assert find_wrong_shares(_shares(5, 3, [1, 2, 3], 3), 3) == frozenset()  # m == t


@pytest.mark.parametrize("secret,ok", [(2**256 - 1, True), (2**256, False), (PRIME - 1, False)])
def test_reconstruct_bytes_at_the_32_byte_boundary(secret: int, ok: bool) -> None:
    """2^256 - 1 is the largest 32-byte secret; 2^256 .. p - 1 are field elements that
    no 32-byte secret maps to (a corrupted share), refused with the reason."""
    from secagg.shamir import encode_share, reconstruct_bytes

    row = split([secret], 2, [1, 2, 3], random.Random(2).randbytes)[0]
    shares = {x: encode_share(y) for x, y in zip([1, 2, 3], row, strict=True)}
    if ok:
        assert reconstruct_bytes(shares, 2) == secret.to_bytes(32, "little")
    else:
        with pytest.raises(ShamirError, match="^" + re.escape(
            "reconstructed value is not a 32-byte secret (corrupted share)"
        ) + "$"):
            reconstruct_bytes(shares, 2)


def test_three_wrong_of_six_is_refused_as_beyond_the_radius() -> None:
    xs = [1, 2, 3, 4, 5, 6]
    shares = _shares(5, 3, xs, 1)
    for x in (1, 2, 3):
        shares[x] = (shares[x] + x) % PRIME
    with pytest.raises(ShamirError, match=r"^more than 1 of 6 shares are wrong \(t=3\); they "
                       r"cannot be told from the right ones$"):
        find_wrong_shares(shares, 3)
    shares[3] = (shares[3] - 3) % PRIME  # two wrong of six: also beyond the radius 1
    with pytest.raises(ShamirError, match=r"^(more than 1 of 6|the shares of this secret "
                       r"cannot be decoded \(\d errors located at \d holders; t=3, 6 shares\))"):
        find_wrong_shares(shares, 3)


def _lfsr(conn: list[int], init: list[int], n: int) -> list[int]:
    """s_k = -sum_{i>=1} conn[i] s_{k-i} mod p, from the first len(conn) - 1 terms."""
    s = list(init)
    while len(s) < n:
        s.append(-sum(c * s[-i] for i, c in enumerate(conn) if i) % PRIME)
    return s


@pytest.mark.parametrize(
    "conn,init",
    [
        ([1, 0, PRIME - 1], [0, 1]),  # s_k = s_{k-2}: a zero discrepancy at k = 0
        ([1, 0, 0, PRIME - 1], [0, 0, 1]),  # two leading zeros
        ([1, 0, PRIME - 1], [1, 0]),  # zero discrepancy after the first step
        ([1, 5, 0, 7], [3, 0, 0]),
        ([1, PRIME - 2, 1], [1, 2]),  # s_k = 2 s_{k-1} - s_{k-2}: 1, 2, 3, 4, ...
    ],
)
def test_berlekamp_massey_finds_the_shortest_recurrence(conn: list[int], init: list[int]) -> None:
    from secagg.shamir import _berlekamp_massey

    length = len(conn) - 1
    seq = _lfsr(conn, init, 2 * length + 2)
    assert _berlekamp_massey(seq) == conn
    assert _berlekamp_massey(seq[: 2 * length]) == conn  # 2L terms determine it


def test_berlekamp_massey_of_random_recurrences() -> None:
    from secagg.shamir import _berlekamp_massey

    gen = random.Random(11)
    for length in range(1, 6):
        for _ in range(5):
            conn = [1] + [gen.randrange(PRIME) for _ in range(length)]
            seq = _lfsr(conn, [gen.randrange(PRIME) for _ in range(length)], 2 * length)
            got = _berlekamp_massey(seq)
            assert got == conn  # unique: L nonzero-det terms, 2L terms


def test_reconstruct_refusals_name_their_reason() -> None:
    from secagg.shamir import reconstruct

    shares = _shares(5, 2, [1, 2, 3], 4)
    assert reconstruct(shares, 2) == 5
    with pytest.raises(ShamirError, match=r"^threshold must be >= 1, got 0$"):
        reconstruct(shares, 0)
    with pytest.raises(ShamirError, match=r"^need 4 shares, got 3$"):
        reconstruct(shares, 4)
    for bad in (PRIME, -1):
        with pytest.raises(ShamirError, match=r"^share out of field range$"):
            reconstruct({**shares, 1: bad}, 2)


def test_consistency_check_uses_every_syndrome() -> None:
    """Two wrong shares chosen so that the first syndrome S_0 = sum w_i y_i stays 0: a
    check on S_0 alone passes them; the check on sum_l rho^l S_l must not."""
    from secagg.shamir import _barycentric_weights, check_vector, shares_consistent

    xs, t = (1, 2, 3, 4, 5), 2  # m - t = 3 syndromes
    ys = [split([9], t, list(xs), random.Random(3).randbytes)[0][i] for i in range(5)]
    w = _barycentric_weights(xs)
    e0 = 12345
    e1 = -e0 * w[0] * pow(w[1], -1, PRIME) % PRIME  # w0 e0 + w1 e1 = 0
    bad = list(ys)
    bad[0], bad[1] = (ys[0] + e0) % PRIME, (ys[1] + e1) % PRIME
    assert sum(wi * y for wi, y in zip(w, bad, strict=True)) % PRIME == 0  # S_0 blind
    for rho in (7, 123456789, random.Random(5).randrange(2, PRIME)):
        vec = check_vector(xs, t, rho)
        assert shares_consistent(ys, vec)
        assert not shares_consistent(bad, vec)


@pytest.mark.parametrize("x", [1, 3, 5])
def test_consistency_check_when_rho_is_an_inverse_abscissa(x: int) -> None:
    """rho * x = 1: that holder's geometric sum is the special case `extra`."""
    from secagg.shamir import check_vector, shares_consistent

    xs, t = (1, 2, 3, 4, 5), 2
    rho = pow(x, -1, PRIME)
    ys = split([9], t, list(xs), random.Random(4).randbytes)[0]
    vec = check_vector(xs, t, rho)
    assert shares_consistent(ys, vec)
    for i in range(5):
        bad = list(ys)
        bad[i] = (bad[i] + 1) % PRIME
        assert not shares_consistent(bad, vec)
    secret, wrong = ShareChecker(t, rho).reconstruct(dict(zip(xs, ys, strict=True)))
    assert secret == 9 and wrong == frozenset()
