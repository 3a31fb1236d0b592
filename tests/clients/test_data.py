"""clients.data.partition: coverage, reproducibility and measured Dirichlet skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.data import label_distribution, partition

# 10 balanced classes, 1,000 examples each (shuffled), for the skew measurements.
N_PER_CLASS = 1000
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), N_PER_CLASS))


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))
    assert all(len(p) >= 1 for p in parts)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    data=st.data(),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32),
)
def test_partition_covers_every_index_once(n, data, scheme, alpha, seed) -> None:  # type: ignore[no-untyped-def]
    n_clients = data.draw(st.integers(1, n))
    labels = np.random.default_rng(seed).integers(0, 5, size=n)
    parts = partition(labels, n_clients, scheme, alpha=alpha, seed=seed)
    assert len(parts) == n_clients
    _check_cover(parts, n)


def test_iid_sizes_balanced() -> None:
    parts = partition(LABELS, 7, "iid", seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_seeded_reproducibility(scheme: str) -> None:
    a = partition(LABELS, 10, scheme, alpha=0.5, seed=7)
    b = partition(LABELS, 10, scheme, alpha=0.5, seed=7)
    c = partition(LABELS, 10, scheme, alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _mean_tv(parts: list[np.ndarray]) -> float:
    """Mean total-variation distance of each client's label mix from the global (uniform)."""
    dist = label_distribution(LABELS, parts, 10)
    return float(np.mean(0.5 * np.abs(dist - 0.1).sum(axis=1)))


def test_dirichlet_small_alpha_is_skewed() -> None:
    # alpha = 0.05 over 10 clients: most clients hold 1-2 classes; TV near 0.8 is typical.
    tv = _mean_tv(partition(LABELS, 10, "dirichlet", alpha=0.05, seed=0))
    assert tv > 0.5, tv


def test_dirichlet_large_alpha_near_uniform() -> None:
    # alpha = 1000 over 10 clients: a client's share of a class ~ Beta(1000, 9000), relative
    # std 3%; a client holds ~1000 examples, so multinomial noise per class count is ~9.5%
    # relative. Expected mean TV ~ 10 * 0.1 * 0.8 * 0.1 / 2 ~ 0.04; bound 0.1.
    tv_dir = _mean_tv(partition(LABELS, 10, "dirichlet", alpha=1000.0, seed=0))
    tv_iid = _mean_tv(partition(LABELS, 10, "iid", seed=0))
    assert tv_dir < 0.1, tv_dir
    assert tv_iid < 0.05, tv_iid
    # Monotone in alpha, measured over several seeds.
    tvs = [
        np.mean([_mean_tv(partition(LABELS, 10, "dirichlet", alpha=a, seed=s)) for s in range(3)])
        for a in (0.05, 0.5, 5.0, 1000.0)
    ]
    assert tvs == sorted(tvs, reverse=True), tvs


def test_every_client_nonempty_with_tiny_alpha() -> None:
    labels = np.repeat(np.arange(3), 20)  # 60 examples, 3 classes, 50 clients
    parts = partition(labels, 50, "dirichlet", alpha=0.01, seed=3)
    _check_cover(parts, 60)


def test_continuous_labels_are_binned() -> None:
    y = np.random.default_rng(0).normal(size=5000).astype(np.float32)
    parts = partition(y, 10, "dirichlet", alpha=0.05, seed=0)
    _check_cover(parts, 5000)
    # Skewed: each client's targets cover a narrower range than the whole set's deciles.
    spreads = [np.std(y[p]) for p in parts if len(p) > 50]
    assert np.median(spreads) < 0.8 * np.std(y)
    iid = partition(y, 10, "iid", seed=0)
    assert all(abs(np.std(y[p]) - np.std(y)) < 0.1 for p in iid)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([0, 1, 2], 4), {}, "n_clients"),
        (([0, 1, 2], 0), {}, "n_clients"),
        (([0, 1, 2], 2.0), {}, "n_clients"),
        (([0, 1, 2], 2), {"scheme": "shards"}, "shards"),
        (([0, 1, 2], 2), {"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        (([0, 1, 2], 2), {"scheme": "dirichlet", "alpha": float("inf")}, "alpha"),
        (([0, 1, 2], 2), {"seed": -1}, "seed"),
        (([], 1), {}, "empty"),
        (([[0, 1], [1, 0]], 1), {}, "1-D"),
        (([0.5, float("nan"), 1.0], 2), {"scheme": "dirichlet"}, "NaN"),
    ],
)
def test_partition_rejects_bad_arguments(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition(*args, **kwargs)
