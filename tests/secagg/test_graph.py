"""Harary graphs (SecAgg+) and the parameter finder against Google's published table."""

from __future__ import annotations

import pytest

from secagg import RoundParams, find_harary_params
from secagg.graph import corrupt_neighbour_bound, harary_neighbours, ring_order

# Bell et al. 2020 / federated-compute's finder, semi-honest, sigma = 40, eta = 20.
# (n, corrupt, dropout) -> (k, t)
PUBLISHED = {
    (1000, 0.05, 0.05): (30, 17),
    (1000, 0.10, 0.10): (48, 27),
    (1000, 0.10, 0.30): (88, 36),
    (10_000, 0.05, 0.05): (34, 20),
    (10_000, 0.10, 0.10): (54, 31),
    (10_000, 0.10, 0.30): (108, 44),
    (1_000_000, 0.05, 0.05): (38, 22),
    (1_000_000, 0.10, 0.10): (64, 36),
    (1_000_000, 0.10, 0.30): (130, 52),
}


@pytest.mark.parametrize(("key", "expected"), sorted(PUBLISHED.items()))
def test_finder_matches_published_values(
    key: tuple[int, float, float], expected: tuple[int, int]
) -> None:
    n, corrupt, dropout = key
    assert find_harary_params(n, dropout, corrupt) == expected


def test_finder_monotone_and_validates() -> None:
    k1, t1 = find_harary_params(1000, 0.1, 0.1)
    k2, t2 = find_harary_params(1000, 0.2, 0.1)
    assert k2 >= k1
    assert 2 <= t1 <= k1
    with pytest.raises(ValueError):
        find_harary_params(1000, 0.6, 0.4)
    with pytest.raises(ValueError):
        find_harary_params(1000, -0.1, 0.1)
    with pytest.raises(ValueError):
        find_harary_params(2, 0.1, 0.1)


@pytest.mark.parametrize(("n", "k"), [(5, 2), (10, 4), (11, 10), (50, 12), (101, 22)])
def test_harary_is_k_regular_symmetric_and_connected(n: int, k: int) -> None:
    ids = tuple(range(3, 3 + 2 * n, 2))  # non-contiguous ids
    nb = harary_neighbours(ids, k, bytes(32), 1)
    assert set(nb) == set(ids)
    for u, vs in nb.items():
        assert len(vs) == k and u not in vs and list(vs) == sorted(vs)
        for v in vs:
            assert u in nb[v]
    seen, todo = {ids[0]}, [ids[0]]
    while todo:
        for v in nb[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    assert seen == set(ids)


def test_permutation_is_deterministic_and_seed_dependent() -> None:
    ids = list(range(40))
    a = ring_order(ids, bytes(32), 1)
    assert sorted(a) == ids
    assert ring_order(ids, bytes(32), 1) == a
    assert ring_order(ids, bytes(31) + b"\x01", 1) != a
    assert ring_order(ids, bytes(32), 2) != a  # bound to the round


def test_permutation_first_position_roughly_uniform() -> None:
    counts = [0] * 5
    for i in range(400):
        counts[ring_order(list(range(5)), i.to_bytes(32, "little"), 0)[0]] += 1
    # 400 draws, p = 1/5: mean 80, sd ~ 8; 5 sd tolerance
    assert all(40 <= c <= 120 for c in counts), counts


def test_round_params_harary_neighbours() -> None:
    p = RoundParams.create(0, list(range(200)), 10, 16, graph="harary", dropout=0.1, corrupt=0.1)
    assert p.graph == "harary" and (p.degree, p.threshold) == find_harary_params(200, 0.1, 0.1)
    for c in p.participants:
        assert len(p.neighbours(c)) == p.degree
        assert all(c in p.neighbours(v) for v in p.neighbours(c))
    assert p.threshold <= p.degree + 1


@pytest.mark.parametrize("n", [20, 50, 100, 1000, 10_000])
@pytest.mark.parametrize(("corrupt", "dropout"), [(0.05, 0.05), (0.1, 0.1), (0.1, 0.3), (0.0, 0.1)])
def test_active_finder_defeats_the_split_view(n: int, corrupt: float, dropout: float) -> None:
    """Active (k, t): 2t > (k + 1) + c with c the corrupt-neighbour bound, t <= k, and
    never smaller than the semi-honest choice."""
    k, t = find_harary_params(n, dropout, corrupt, active=True)
    c = corrupt_neighbour_bound(n, corrupt, k)
    assert 2 * t > k + 1 + c and c < t <= k and k % 2 == 0
    ks, ts = find_harary_params(n, dropout, corrupt)
    assert k >= ks and t >= ts
    # the semi-honest threshold is exactly one above the same corrupt bound
    assert ts == max(2, corrupt_neighbour_bound(n, corrupt, ks) + 1)


def test_active_finder_values() -> None:
    """The figures quoted in the issue's report (10 % corrupt, 10 % dropout): before the
    fix active mode used the semi-honest (6, 3), (22, 11) and (48, 27)."""
    assert find_harary_params(20, 0.1, 0.1, active=True) == (8, 6)
    assert find_harary_params(100, 0.1, 0.1, active=True) == (32, 22)
    assert find_harary_params(1000, 0.1, 0.1, active=True) == (100, 70)


def test_corrupt_neighbour_bound() -> None:
    assert corrupt_neighbour_bound(20, 0.1, 6) == 2  # only 2 corrupt clients exist
    assert corrupt_neighbour_bound(1000, 0.0, 40) == 0
    big = corrupt_neighbour_bound(1000, 0.1, 48)
    assert find_harary_params(1000, 0.1, 0.1) == (48, big + 1)
    with pytest.raises(ValueError):
        corrupt_neighbour_bound(10, 1.0, 4)
    with pytest.raises(ValueError):
        corrupt_neighbour_bound(10, 0.1, 10)
