"""Checks of the SecAgg+ neighbour graphs that mutation testing (issue 16) showed
missing: the parameter finder against an exact reference (integer arithmetic and
fractions, no logarithms) in cases where each of its three conditions decides, the
ring permutation against a reference Fisher-Yates over the published AES-256-CTR
keystream (past the 256-word refill), its rejection sampling at the exact limit (a
scripted keystream), and the refusals of the finder, harary_neighbours, the Harary
degree check and register_graph with the bad value."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import secagg.graph as graph_mod
from secagg.crypto import label, prg_nonce
from secagg.graph import (
    GRAPH_REGISTRY,
    CompleteGraph,
    HararyGraph,
    corrupt_neighbour_bound,
    find_harary_params,
    harary_neighbours,
    register_graph,
    ring_order,
)

# ---------------------------------------------------------------- the parameter finder


def _tail(total: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P[X >= at_least] for X ~ Hypergeometric(total, marked, draws), exactly."""
    hits = sum(
        math.comb(marked, x) * math.comb(total - marked, draws - x)
        for x in range(at_least, draws + 1)
    )
    return Fraction(hits, math.comb(total, draws))


def _ref_bound(n: int, n_corrupt: int, k: int, sigma: int) -> int:
    """Smallest c with P[more than c of k neighbours corrupt] <= 2^-(sigma+1) / n."""
    c = 0
    while _tail(n, n_corrupt, k, c + 1) > Fraction(1, 2 ** (sigma + 1) * n):
        c += 1
    return c


def _ref_find(
    n: int, dropout: float, corrupt: float, sigma: int, eta: int, active: bool
) -> tuple[int, int] | None:
    """Bell et al. 2020 as the module docstring states it: the smallest even k with
    (1a) union bound n(n-k-1)/2 * (B)_k/(n)_k < 2^-(sigma+1) when k <= B (B = corrupt +
    dropped clients), (1b) t above the corrupt-neighbour bound c (active: also
    2t > k + 1 + c), (2) P[fewer than t of k neighbours survive] <= 2^-eta / n."""
    n_corrupt = math.floor(corrupt * n + 1e-12)
    n_dropped = math.floor(dropout * n + 1e-12)
    bad = n_corrupt + n_dropped
    for k in range(2, n - 1, 2):
        if k <= bad:
            cut = Fraction(n * (n - k - 1), 2) * Fraction(math.perm(bad, k), math.perm(n, k))
            if cut >= Fraction(1, 2 ** (sigma + 1)):
                continue
        c = _ref_bound(n, n_corrupt, k, sigma)
        t = max(c + 1, 2)
        if active:
            t = max(t, (k + 1 + c) // 2 + 1)
        short = 1 - _tail(n, n - n_dropped, k, t)
        if t <= k and short <= Fraction(1, 2**eta * n):
            return k, t
    return None


FINDER_CASES = [
    # (n, dropout, corrupt, sigma, eta, active), then what the reference gives
    ((40, 0.0, 0.5, 20, 10, False), (20, 19)),  # 1a decides (k = 18 cuts too often)
    ((40, 0.5, 0.0, 20, 10, False), (20, 2)),  # 1a decides, no corrupt clients
    ((100, 0.0, 0.5, 20, 10, False), (28, 27)),
    ((100, 0.0, 0.6, 40, 20, False), (48, 47)),
    ((400, 0.0, 0.3, 40, 20, False), (32, 31)),
    ((400, 0.5, 0.0, 20, 10, False), (36, 2)),
    ((150, 0.0, 0.6, 20, 10, False), (40, 39)),
    ((1000, 0.0, 0.3, 20, 10, False), (24, 22)),
    # 1a at its edge: the union bound at the chosen k is 0.99948 of 2^-(sigma+1), at
    # k - 2 it is 1.0042 times it, so any change of its terms moves k
    ((176, 0.5, 0.0, 40, 20, False), (44, 2)),
    ((90, 0.3, 0.0, 40, 20, False), (24, 2)),
    ((64, 0.6, 0.0, 20, 10, False), (28, 2)),
    ((186, 0.3, 0.0, 20, 10, False), (18, 2)),
    ((22, 0.5, 1 / 22, 20, 10, False), (14, 2)),  # k = 12 = B is cut too often
    ((12, 0.0, 0.3, 40, 20, False), (4, 4)),  # t = k
    ((60, 0.0, 0.5, 40, 20, False), (30, 30)),
    ((12, 0.3, 0.1, 40, 20, True), (10, 7)),  # k = n - 2
    ((12, 0.2, 0.2, 40, 20, True), (8, 6)),
    ((30, 0.05, 0.4, 20, 10, True), (16, 15)),
    ((60, 0.3, 0.1, 40, 20, True), (44, 26)),
    ((150, 0.1, 0.1, 40, 20, False), (28, 16)),
    ((150, 0.1, 0.1, 40, 20, True), (46, 32)),
    ((400, 0.1, 0.1, 20, 10, True), (54, 38)),  # 2 and the split view decide
    ((1000, 0.1, 0.1, 20, 10, False), (28, 16)),
    ((4, 0.0, 0.0, 40, 20, False), (2, 2)),
    ((12, 0.4, 0.4, 40, 20, False), (10, 5)),  # k = n - 2, every k <= B cut too often
    ((12, 0.3, 0.3, 40, 20, True), None),
    ((10, 0.4, 0.4, 40, 20, False), None),
]


@pytest.mark.parametrize(("args", "want"), FINDER_CASES)
def test_finder_matches_the_exact_reference(
    args: tuple[int, float, float, int, int, bool], want: tuple[int, int] | None
) -> None:
    n, dropout, corrupt, sigma, eta, active = args
    assert _ref_find(*args) == want
    if want is None:
        with pytest.raises(ValueError) as err:
            find_harary_params(n, dropout, corrupt, sigma, eta, active=active)
        assert str(err.value) == (
            f"no Harary degree k < n - 1 meets the bounds for n={n}, dropout={dropout}, "
            f"corrupt={corrupt}, active={active}; use the complete graph"
        )
    else:
        assert find_harary_params(n, dropout, corrupt, sigma, eta, active=active) == want


def test_corrupt_holder_bound_is_the_exact_tail_at_sigma_40_by_default() -> None:
    """n = 100, k = 16, 20 % corrupt: the bound is 15 at sigma = 40 (16 at 41, 13 at 20),
    so the default and a passed sigma both matter."""
    g = HararyGraph()
    assert [_ref_bound(100, 20, 16, s) for s in (40, 41, 20)] == [15, 16, 13]
    assert g.corrupt_holder_bound(100, 16, 0.2) == 15
    assert g.corrupt_holder_bound(100, 16, 0.2, 20) == 13
    assert corrupt_neighbour_bound(100, 0.2, 16, 20) == 13


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 2}, "n must be an int >= 3, got 2"),
        ({"n": 5.0}, "n must be an int >= 3, got 5.0"),
        ({"n": True}, "n must be an int >= 3, got True"),
        ({"corrupt": 1.0}, "corrupt must be in [0, 1), got 1.0"),
        ({"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
        ({"dropout": 0.5, "corrupt": 0.5}, "dropout + corrupt must be <= 0.9, got 0.5 + 0.5"),
        ({"dropout": 0.6, "corrupt": 0.35}, "dropout + corrupt must be <= 0.9, got 0.6 + 0.35"),
        ({"sigma": 0}, "sigma and eta must be > 0, got 0, 20"),
        ({"eta": 0}, "sigma and eta must be > 0, got 40, 0"),
        ({"sigma": -1, "eta": -1}, "sigma and eta must be > 0, got -1, -1"),
        ({"active": "yes"}, "active must be a bool, got 'yes'"),
        ({"n": 3}, "no Harary degree k < n - 1 meets the bounds for n=3, dropout=0.1, "
                   "corrupt=0.1, active=False; use the complete graph"),
    ],
)  # fmt: skip
def test_finder_refusals_name_the_bad_value(kwargs: dict, message: str) -> None:
    args = {"n": 100, "dropout": 0.1, "corrupt": 0.1, "sigma": 40, "eta": 20, "active": False}
    args.update(kwargs)
    active = args.pop("active")
    with pytest.raises(ValueError) as err:
        find_harary_params(**args, active=active)
    assert str(err.value) == message


def test_finder_accepts_the_edges_of_its_ranges() -> None:
    """dropout + corrupt = 0.9 exactly, and sigma, eta below 1, are allowed."""
    assert find_harary_params(100, 0.5, 0.4, active=False) is not None
    assert find_harary_params(100, 0.1, 0.1, 0.5, 20) == _ref_find(100, 0.1, 0.1, 1, 20, False)
    assert find_harary_params(100, 0.1, 0.1, 40, 0.5) is not None


@pytest.mark.parametrize("degree", [True, 3, 0, 8, -2, "4", None])
def test_harary_degree_check_refuses_with_the_value(degree: object) -> None:
    with pytest.raises(ValueError) as err:
        HararyGraph().check_degree(7, degree)  # type: ignore[arg-type]
    assert str(err.value) == f"harary degree must be even and in [2, 6], got {degree!r}"
    for ok in (2, 4, 6):  # 6 = n - 1: the complete graph, still a valid Harary degree
        HararyGraph().check_degree(7, ok)


def test_complete_graph_neighbourhood_of_an_outsider_is_a_key_error() -> None:
    nbrs = CompleteGraph().neighbourhoods([1, 5, 9], None, bytes(32), 0)
    assert nbrs[5] == (1, 9) and nbrs[5] == (1, 9) and list(nbrs) == [1, 5, 9]
    with pytest.raises(KeyError) as err:
        nbrs[4]
    assert err.value.args == (4,)


# ---------------------------------------------------------------- the ring permutation


def _fisher_yates(items: list[int], words: Iterator[int]) -> list[int]:
    """Reference: for i = n-1 .. 1 draw 64-bit words until one is below the largest
    multiple of i + 1 that fits in 2^64 (unbiased), then swap i with word mod (i + 1)."""
    order = list(items)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = (2**64 // bound) * bound
        r = next(words)
        while r >= limit:
            r = next(words)
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def _words(stream: bytes) -> Iterator[int]:
    for k in range(0, len(stream) - 7, 8):
        yield int.from_bytes(stream[k : k + 8], "little")


def _keystream(seed: bytes, round_id: int, nbytes: int) -> bytes:
    nonce = prg_nonce(label("harary-permutation", round_id))
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    return enc.update(bytes(nbytes))


@pytest.mark.parametrize(
    ("n", "round_id", "seed"),
    [(2, 0, bytes(32)), (9, 7, bytes(range(32))), (300, 12, bytes(range(100, 132)))],
)
def test_ring_order_is_fisher_yates_over_the_labelled_keystream(
    n: int, round_id: int, seed: bytes
) -> None:
    """The permutation every device derives: AES-256-CTR keyed by graph_seed with the
    nonce of label("harary-permutation", round_id), read as 64-bit little-endian words.
    n = 300 needs more than the 256 words of one refill."""
    participants = [3 * c + 1 for c in range(n)]
    stream = _keystream(seed, round_id, 8 * 4 * n)
    assert ring_order(participants, seed, round_id) == _fisher_yates(participants, _words(stream))


class _ScriptedCipher:
    """Stands in for ``Cipher(AES(key), CTR(nonce))``: its encryptor returns a scripted
    keystream (zeros once the script is used up), so rejection sampling can be driven
    to its exact boundaries."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream
        self.pos = 0

    def __call__(self, algorithm: object, mode: object) -> _ScriptedCipher:
        return self

    def encryptor(self) -> _ScriptedCipher:
        return self

    def update(self, data: bytes) -> bytes:
        out = self.stream[self.pos : self.pos + len(data)]
        self.pos += len(data)
        return out + bytes(len(data) - len(out))


def test_ring_order_rejects_exactly_the_words_at_or_above_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For each position i the words limit = 2^64 - (2^64 mod (i + 1)) and 2^64 - 1 must
    be rejected (they would bias the draw) and limit - 1 accepted. The script puts
    them first at every step whose bound is not a power of two, then a varying word."""
    n = 13
    script: list[int] = []
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        if limit < 1 << 64:
            script += [limit, (1 << 64) - 1, limit - 1 - 7 * i]
        else:
            script += [(1 << 64) - 1 - 5 * i]
    stream = b"".join(w.to_bytes(8, "little") for w in script)
    monkeypatch.setattr(graph_mod, "Cipher", _ScriptedCipher(stream))
    participants = list(range(n))
    got = ring_order(participants, bytes(32), 1)
    assert got == _fisher_yates(participants, iter(script))
    assert got != participants


@pytest.mark.parametrize("degree", [0, 3, 6, 8, -2])
def test_harary_neighbours_refuses_a_bad_degree(degree: int) -> None:
    with pytest.raises(ValueError) as err:
        harary_neighbours(list(range(6)), degree, bytes(32), 1)
    assert str(err.value) == f"Harary degree must be even and in [2, 5], got {degree}"
    assert len(harary_neighbours(list(range(6)), 4, bytes(32), 1)) == 6


@pytest.mark.parametrize("name", ["", "two words", "9lives", "dash-ed"])
def test_register_graph_refuses_a_name_that_is_not_an_identifier(name: str) -> None:
    before = dict(GRAPH_REGISTRY)
    bad = type("BadName", (CompleteGraph,), {"name": name})
    try:
        with pytest.raises(ValueError) as err:
            register_graph(bad)
        assert str(err.value) == f"graph name must be a non-empty identifier, got {name!r}"
        assert dict(GRAPH_REGISTRY) == before
    finally:
        if dict(GRAPH_REGISTRY) != before:  # only if a broken check let it in
            GRAPH_REGISTRY.clear()
            GRAPH_REGISTRY.update(before)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_ring_order_refuses_a_seed_that_is_not_32_bytes(size: int) -> None:
    with pytest.raises(ValueError) as err:
        ring_order([1, 2, 3], bytes(size), 0)
    assert str(err.value) == f"graph_seed must be 32 bytes, got {size}"


@pytest.mark.parametrize("n", [2, 7, 30, 100])
def test_corrupt_neighbour_bound_is_the_exact_tail(n: int) -> None:
    """For every k < n, several corrupt fractions and sigmas: the smallest c with
    P[more than c corrupt among k neighbours] <= 2^-(sigma+1) / n, exactly."""
    for corrupt in (0.0, 0.1, 0.25, 0.5, 0.9):
        for sigma in (1, 10, 40):
            ks = range(0, n, 1 if n < 50 else 9)
            got = [corrupt_neighbour_bound(n, corrupt, k, sigma) for k in ks]
            n_corrupt = math.floor(corrupt * n + 1e-12)
            assert got == [_ref_bound(n, n_corrupt, k, sigma) for k in ks]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 0.1, 0), "n must be an int >= 2, got 1"),
        ((4.0, 0.1, 2), "n must be an int >= 2, got 4.0"),
        ((True, 0.1, 0), "n must be an int >= 2, got True"),
        ((10, 0.1, 10), "k must be an int in [0, 9], got 10"),
        ((10, 0.1, -1), "k must be an int in [0, 9], got -1"),
        ((10, 0.1, True), "k must be an int in [0, 9], got True"),
        ((10, 0.1, 2.0), "k must be an int in [0, 9], got 2.0"),
        ((10, 0.1, 4, 0), "sigma must be > 0, got 0"),
        ((10, 1.0, 4), "corrupt must be in [0, 1), got 1.0"),
        ((10, "0.1", 4), "corrupt must be in [0, 1), got '0.1'"),
    ],
)
def test_corrupt_neighbour_bound_refusals_name_the_bad_value(args: tuple, message: str) -> None:
    with pytest.raises(ValueError) as err:
        corrupt_neighbour_bound(*args)
    assert str(err.value) == message
    assert corrupt_neighbour_bound(10, 0.5, 0, 0.5) == 0  # k = 0 and sigma < 1 are allowed


def test_complete_graph_degree_and_corrupt_holders() -> None:
    """The complete graph takes no degree, and its corrupt holders are floor(corrupt n)
    up to all n - 1 others."""
    with pytest.raises(ValueError) as err:
        CompleteGraph().check_degree(5, 4)
    assert str(err.value) == "degree must be None for the complete graph, got 4"
    g = CompleteGraph()
    assert [g.corrupt_holder_bound(10, None, c) for c in (0.0, 0.1, 0.35, 0.95)] == [0, 1, 3, 9]
