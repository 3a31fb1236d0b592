"""Split a data set across simulated devices: IID or Dirichlet label skew.

``partition(labels, n_clients, scheme, alpha, seed)`` returns one index array per client.
Every index appears in exactly one client's array, every client gets at least one
example, and the result depends only on the arguments (a seeded numpy Generator; this is
data shuffling, not key material, so numpy's generator is fine here).

Dirichlet label skew, per class (Hsu, Qi, Brown 2019, *Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification*, arXiv:1909.06335;
the per-class form used by Yurochkin et al. 2019 and Wang et al. 2020, FedMA): for each
class k draw proportions p_k ~ Dir(alpha * 1_N) over the N clients and deal class k's
examples (shuffled) to the clients in those proportions. Small alpha (0.1) gives each
client a few dominant classes; large alpha (1000) approaches IID.

Empty clients: with small alpha some client may get nothing. Instead of re-drawing until
none is empty (which may loop for a long time), a repair step gives each empty client one
example drawn at random (seeded) from the client that currently holds the most. This
moves at most ``n_clients`` examples, so the skew is essentially unchanged.

Continuous labels (regression, e.g. ``linreg``): "label skew" needs classes, so float
labels are first binned into ``n_bins`` (default 10) quantile bins of the target and the
Dirichlet split is applied to the bin ids: each client then sees a skewed range of
targets. IID ignores the labels' values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCHEMES = ("iid", "dirichlet")


def partition(
    labels: Sequence[int] | Sequence[float] | np.ndarray,
    n_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    *,
    n_bins: int = 10,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``n_clients`` index arrays (int64, sorted).

    Args:
        labels: 1-D labels (ints for classes; floats are quantile-binned, see module doc).
        n_clients: number of clients, 1 <= n_clients <= len(labels).
        scheme: ``"iid"`` (uniform shuffle, sizes differ by at most one) or ``"dirichlet"``.
        alpha: Dirichlet concentration (> 0), used by ``"dirichlet"`` only.
        seed: seeds the numpy Generator (>= 0).
        n_bins: number of quantile bins for continuous labels (>= 2).

    Raises:
        ValueError: on bad arguments, quoting the bad value.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("labels is empty")
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer):
        raise ValueError(f"n_clients must be an int, got {n_clients!r}")
    if not 1 <= n_clients <= n:
        raise ValueError(f"n_clients must be in 1..{n} (one example each), got {n_clients}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    if scheme == "iid":
        perm = rng.permutation(n)
        return [np.sort(part).astype(np.int64) for part in np.array_split(perm, n_clients)]

    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    classes = _class_ids(y, n_bins)
    return _dirichlet(classes, int(n_clients), float(alpha), rng)


def _class_ids(y: np.ndarray, n_bins: int) -> np.ndarray:
    """Integer class ids; float labels are binned by quantiles into <= n_bins bins."""
    if np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"labels must be numeric, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError("labels contain NaN or infinity")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    edges = np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, y, side="right").astype(np.int64)


def _dirichlet(
    classes: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    owner = np.empty(len(classes), dtype=np.int64)
    for k in np.unique(classes):
        idx = np.flatnonzero(classes == k)
        rng.shuffle(idx)
        p = rng.dirichlet(np.full(n_clients, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for client, chunk in enumerate(np.split(idx, cuts)):
            owner[chunk] = client
    counts = np.bincount(owner, minlength=n_clients)
    # Repair: each empty client takes one random example from the currently largest one.
    for client in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        candidates = np.flatnonzero(owner == donor)
        moved = candidates[rng.integers(len(candidates))]
        owner[moved] = client
        counts[donor] -= 1
        counts[client] += 1
    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def label_distribution(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-client class frequencies (rows sum to 1), for measuring skew."""
    y = np.asarray(labels).astype(np.int64)
    out = np.zeros((len(parts), n_classes))
    for i, idx in enumerate(parts):
        out[i] = np.bincount(y[idx], minlength=n_classes)[:n_classes] / max(len(idx), 1)
    return out


def holdout_count(n: int, fraction: float) -> int:
    """How many of a device's ``n`` examples are held out for federated evaluation: the
    last ``round(fraction * n)`` of its shard, at least 1 and leaving at least 1 to train
    on (0 when ``fraction`` is 0 or the shard has fewer than 2 examples)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A device's shard as (training part, held-out part) (:func:`holdout_count`)."""
    k = holdout_count(len(x), fraction)
    cut = len(x) - k
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
