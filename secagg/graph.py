"""Neighbour graphs and the SecAgg+ parameter finder.

- Complete graph: Bonawitz et al., CCS 2017 — every pair of participants shares masks;
  O(n) keys and shares per client.
- Harary graph H(n, k): Bell, Bonawitz, Gascón, Lepoint, Raykova, CCS 2020 (SecAgg+).
  The participants are placed on a ring in a uniformly random order and each is linked
  to the k/2 nearest on each side (k even). The order is a Fisher–Yates shuffle driven by
  AES-256-CTR keyed with the server's public 32-byte ``graph_seed`` (domain-separated by
  round id), so every device derives the same graph from the public round parameters.
  The permutation is public by design: security rests on the adversary's corruptions
  being independent of it (the server draws graph_seed after the sample is fixed).

Parameter finder (:func:`find_harary_params`), semi-honest model, written after the
analysis in Bell et al. 2020 (Sec. 4) and the bounds used by Google's production finder
(federated-compute ``graph_parameter_finder.cc``):

1. Security (statistical parameter sigma, split in two events of 2^-(sigma+1)):
   a. the graph of honest, surviving clients stays connected: a Harary graph is cut only
      by two disjoint runs of k/2 consecutive removed clients; union bound over the
      ``n(n-k-1)/2`` gap pairs of ``P[k given clients are all bad] =
      (B)_k / (n)_k`` (falling factorials, B = corrupt + dropped clients);
   b. no client has ``t`` or more corrupt neighbours: hypergeometric tail
      ``P[HG(n, floor(corrupt*n), k) >= t] <= 2^-(sigma+1) / n`` (union over clients).
2. Correctness (eta): every client keeps at least ``t`` surviving neighbours:
   ``P[HG(n, n - floor(dropout*n), k) < t] <= 2^-eta / n``.

The finder returns the smallest even k (and for it the smallest t >= 2) meeting all
three. Evaluated in log space with ``math.lgamma`` (exact tails by summation, no
normal approximation). It reproduces Google's published table exactly, e.g. n = 1000:
(30, 17) at 5 % corrupt / 5 % dropout, (48, 27) at 10/10, (88, 36) at 10/30 (see
tests/secagg/test_graph.py for all nine entries).

Active adversary (``active=True``): a server that lies about who survived can show the
survivor set S to some of a target's share holders and S minus the target to others
(the split-view attack), collecting shares of b_u from the first group and of s_u^SK
from the second. Condition 1b is replaced by ``2t > (k + 1) + c``, where c is the
corrupt-neighbour bound of 1b (:func:`corrupt_neighbour_bound`: more than c corrupt
neighbours happens with probability <= 2^-(sigma+1) / n per client) and k + 1 counts
the target's own share; :func:`secagg.params.split_view_floor` has the derivation. It
implies ``t > c``. (Google's finder uses ``2t > k + c`` for SEMI_MALICIOUS_SERVER
because its clients keep no share of their own secrets; here the owner keeps one and
reveals its own b_u share when shown S, so one more is needed.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.crypto import label, prg_nonce
from secagg.plugins import PluginRegistry

__all__ = [
    "GRAPH_REGISTRY",
    "CompleteGraph",
    "HararyGraph",
    "NeighbourGraph",
    "corrupt_neighbour_bound",
    "find_harary_params",
    "get_graph",
    "harary_neighbours",
    "register_graph",
    "ring_order",
]

_EPS = 1e-12  # guards floor(rate * n) against binary rounding of e.g. 0.1 * 1000


def _log_hypergeom_pmf(total: int, marked: int, draws: int) -> list[float]:
    """log P[X = x] for X ~ Hypergeometric(total, marked, draws), x = 0..draws: the
    first nonzero term from ``math.lgamma``, the others by the ratio
    P[x+1] / P[x] = (marked - x)(draws - x) / ((x + 1)(total - marked - draws + x + 1))."""
    lg = math.lgamma
    out = [-math.inf] * (draws + 1)
    lo = max(0, draws - (total - marked))
    hi = min(draws, marked)
    if lo > hi:  # pragma: no cover - impossible for 0 <= marked, draws <= total
        return out
    x = lo
    value = (
        lg(draws + 1)
        + lg(total - draws + 1)
        - lg(total + 1)
        + lg(marked + 1)
        - lg(x + 1)
        - lg(marked - x + 1)
        + lg(total - marked + 1)
        - lg(draws - x + 1)
        - lg(total - marked - draws + x + 1)
    )
    out[x] = value
    rest = total - marked - draws
    for x in range(lo, hi):
        value += math.log((marked - x) * (draws - x)) - math.log((x + 1) * (rest + x + 1))
        out[x + 1] = value
    return out


def _log_sum_exp(values: Sequence[float]) -> float:
    top = max(values, default=-math.inf)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _rate_count(name: str, rate: float, n: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
    return math.floor(rate * n + _EPS)


def corrupt_neighbour_bound(n: int, corrupt: float, k: int, sigma: float = 40) -> int:
    """The most corrupt neighbours a client has, except with probability at most
    ``2^-(sigma+1) / n``: the smallest c with ``P[HG(n, floor(corrupt*n), k) > c]``
    below that bound (the neighbours of a client on the randomly permuted ring are a
    uniform k-subset of the other clients; sampling from all n is the finder's slightly
    conservative convention). Used by the finder (condition 1b) and by devices, which
    recompute it from their own corrupt-fraction assumption (:class:`ClientPolicy`)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ValueError(f"k must be an int in [0, {n - 1}], got {k!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    pmf = _log_hypergeom_pmf(n, _rate_count("corrupt", corrupt, n), k)
    bound = -(sigma + 1) * math.log(2) - math.log(n)
    # walk down from c = k (empty tail), adding P[X = c] to the tail P[X > c - 1]
    tail = -math.inf
    c = k
    while c > 0:
        wider = _log_sum_exp([tail, pmf[c]])
        if wider > bound:
            break
        tail = wider
        c -= 1
    return c


def find_harary_params(
    n: int,
    dropout: float,
    corrupt: float,
    sigma: float = 40,
    eta: float = 20,
    *,
    active: bool = False,
) -> tuple[int, int]:
    """Smallest Harary degree ``k`` and a threshold ``t`` for ``n`` clients such that
    privacy fails with probability < 2^-sigma and the round fails (too few surviving
    neighbours) with probability < 2^-eta, against a fraction ``corrupt`` of clients
    colluding with the server and a fraction ``dropout`` of dropouts.

    ``active=False``: a semi-honest server (conditions 1a, 1b, 2 of the module
    docstring). ``active=True``: a server that may lie about the survivor set; t must
    also defeat the split-view attack, ``2t > k + 1 + c`` with c the corrupt-neighbour
    bound (module docstring). Raises ``ValueError`` if the inputs are out of range or no
    ``k < n - 1`` works (small n with large rates: use the complete graph then).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise ValueError(f"n must be an int >= 3, got {n!r}")
    n_corrupt = _rate_count("corrupt", corrupt, n)
    n_dropped = _rate_count("dropout", dropout, n)
    if dropout + corrupt > 0.9:
        raise ValueError(f"dropout + corrupt must be <= 0.9, got {dropout} + {corrupt}")
    if sigma <= 0 or eta <= 0:
        raise ValueError(f"sigma and eta must be > 0, got {sigma}, {eta}")
    if not isinstance(active, bool):
        raise ValueError(f"active must be a bool, got {active!r}")
    n_bad = n_corrupt + n_dropped
    n_alive = n - n_dropped
    log_sec = -(sigma + 1) * math.log(2)  # per event
    log_fail_client = -eta * math.log(2) - math.log(n)
    lg = math.lgamma
    for k in range(2, n - 1, 2):
        if k <= n_bad:  # else no run of k bad clients exists: connected surely
            log_disconnect = (
                math.log(n)
                + math.log(n - k - 1)
                - math.log(2)
                + lg(n_bad + 1)
                - lg(n_bad - k + 1)
                + lg(n - k + 1)
                - lg(n + 1)
            )
            if log_disconnect >= log_sec:
                continue
        c = corrupt_neighbour_bound(n, corrupt, k, sigma)
        t_min = max(c + 1, 2)
        if active:
            t_min = max(t_min, (k + 1 + c) // 2 + 1)
        alive_pmf = _log_hypergeom_pmf(n, n_alive, k)
        if t_min <= k and _log_sum_exp(alive_pmf[:t_min]) <= log_fail_client:
            return k, t_min
    raise ValueError(
        f"no Harary degree k < n - 1 meets the bounds for n={n}, dropout={dropout}, "
        f"corrupt={corrupt}, active={active}; use the complete graph"
    )


def ring_order(participants: Sequence[int], graph_seed: bytes, round_id: int) -> list[int]:
    """Uniformly random order of ``participants`` (a Fisher–Yates shuffle with unbiased
    rejection sampling), driven by AES-256-CTR keyed by the public ``graph_seed``."""
    if len(graph_seed) != 32:
        raise ValueError(f"graph_seed must be 32 bytes, got {len(graph_seed)}")
    order = list(participants)
    n = len(order)
    enc = Cipher(
        algorithms.AES(graph_seed), modes.CTR(prg_nonce(label("harary-permutation", round_id)))
    ).encryptor()
    buf = b""
    pos = 0
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            if pos + 8 > len(buf):
                buf = enc.update(bytes(8 * 256))
                pos = 0
            r = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
            if r < limit:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def harary_neighbours(
    participants: Sequence[int], degree: int, graph_seed: bytes, round_id: int
) -> dict[int, tuple[int, ...]]:
    """Neighbour sets of H(n, degree) on the ring given by :func:`ring_order`."""
    n = len(participants)
    if degree % 2 or not 2 <= degree <= n - 1:
        raise ValueError(f"Harary degree must be even and in [2, {n - 1}], got {degree}")
    order = ring_order(participants, graph_seed, round_id)
    half = degree // 2
    out: dict[int, tuple[int, ...]] = {}
    for pos, cid in enumerate(order):
        nbrs = {order[(pos + o) % n] for o in range(-half, half + 1) if o}
        out[cid] = tuple(sorted(nbrs))
    return out


# --------------------------------------------------------------------------- graph registry


class NeighbourGraph(ABC):
    """One family of neighbour graphs: who shares masks and key shares with whom.

    A round's graph is fixed by public values: the sorted participants, the ``degree``
    the family chose (None when it has none) and the server's ``graph_seed`` and round
    id, so every device derives the same neighbours. What an implementation promises,
    and what :class:`secagg.RoundParams` relies on:

    - :meth:`neighbourhoods` is symmetric (v is a neighbour of u iff u is one of v) and
      excludes u itself; otherwise pairwise masks do not cancel and sums come out wrong;
    - every client's secrets are shared among at most :meth:`share_holders` clients
      (itself included), so a threshold above that can never be met;
    - :meth:`corrupt_holder_bound` bounds the corrupt share holders of any one client,
      except with probability at most ``2^-(sigma+1) / n``: privacy needs ``t`` above it
      (checked by ``RoundParams.threat_model_violation`` on the server and on every device);
    - :meth:`choose` picks the degree and threshold for ``n`` participants under the
      stated dropout and corrupt fractions, or returns None to fall back to the complete
      graph (which then applies: the strongest guarantee, at O(n) cost per client).

    Register a new family with :func:`register_graph` (or the ``secagg_dp.graphs`` entry
    point group, or name it as ``package.module:Class``); the name travels in the round
    parameters, so devices must have the same family registered (``python -m clients
    device --graphs``).
    """

    name: str = ""

    @abstractmethod
    def choose(
        self, n: int, dropout: float, corrupt: float, *, active: bool
    ) -> tuple[int | None, int] | None:
        """``(degree, threshold)`` for ``n`` participants, or None for the complete graph."""

    @abstractmethod
    def check_degree(self, n: int, degree: int | None) -> None:
        """Raise ``ValueError`` unless ``degree`` is valid for ``n`` participants."""

    @abstractmethod
    def share_holders(self, n: int, degree: int | None) -> int:
        """How many clients hold shares of one client's secrets, the client included."""

    @abstractmethod
    def corrupt_holder_bound(
        self, n: int, degree: int | None, corrupt: float, sigma: float = 40
    ) -> int:
        """The most corrupt share holders of one client when a fraction ``corrupt`` of
        the ``n`` participants collude (``n >= 2``), failing with probability at most
        ``2^-(sigma+1) / n``."""

    @abstractmethod
    def neighbourhoods(
        self, participants: Sequence[int], degree: int | None, graph_seed: bytes, round_id: int
    ) -> Mapping[int, tuple[int, ...]]:
        """Sorted neighbours of every participant (a mapping may compute them lazily)."""


class _AllOthers(Mapping[int, tuple[int, ...]]):
    """The complete graph's neighbourhoods, computed per client on demand (the full table
    is n^2 ids)."""

    def __init__(self, participants: Sequence[int]) -> None:
        self._participants = tuple(participants)
        self._members = frozenset(self._participants)
        self._cache: dict[int, tuple[int, ...]] = {}

    def __getitem__(self, cid: int) -> tuple[int, ...]:
        if cid not in self._members:
            raise KeyError(cid)
        found = self._cache.get(cid)
        if found is None:
            found = self._cache[cid] = tuple(p for p in self._participants if p != cid)
        return found

    def __iter__(self) -> Iterator[int]:
        return iter(self._participants)

    def __len__(self) -> int:
        return len(self._participants)


class CompleteGraph(NeighbourGraph):
    """Every pair of participants is linked (Bonawitz et al., CCS 2017); threshold from
    :func:`secagg.params.complete_threshold`."""

    name = "complete"

    def choose(
        self, n: int, dropout: float, corrupt: float, *, active: bool
    ) -> tuple[int | None, int] | None:
        from secagg.params import complete_threshold

        return None, complete_threshold(n, dropout, corrupt, active)

    def check_degree(self, n: int, degree: int | None) -> None:
        if degree is not None:
            raise ValueError(f"degree must be None for the complete graph, got {degree!r}")

    def share_holders(self, n: int, degree: int | None) -> int:
        return n

    def corrupt_holder_bound(
        self, n: int, degree: int | None, corrupt: float, sigma: float = 40
    ) -> int:
        return min(math.floor(corrupt * n + 1e-9), n - 1)

    def neighbourhoods(
        self, participants: Sequence[int], degree: int | None, graph_seed: bytes, round_id: int
    ) -> Mapping[int, tuple[int, ...]]:
        return _AllOthers(participants)


class HararyGraph(NeighbourGraph):
    """H(n, k) on a random ring (Bell et al., CCS 2020, SecAgg+): degree and threshold
    from :func:`find_harary_params`; the complete graph when no k <= n - 2 meets the
    bounds (small n)."""

    name = "harary"

    def choose(
        self, n: int, dropout: float, corrupt: float, *, active: bool
    ) -> tuple[int | None, int] | None:
        try:
            k, t = find_harary_params(n, dropout, corrupt, active=active) if n >= 3 else (0, 0)
        except ValueError:
            return None
        return (k, t) if 2 <= k <= n - 2 else None

    def check_degree(self, n: int, degree: int | None) -> None:
        k = degree
        if not isinstance(k, int) or isinstance(k, bool) or k % 2 or not 2 <= k <= n - 1:
            raise ValueError(f"harary degree must be even and in [2, {n - 1}], got {k!r}")

    def share_holders(self, n: int, degree: int | None) -> int:
        return int(degree or 0) + 1

    def corrupt_holder_bound(
        self, n: int, degree: int | None, corrupt: float, sigma: float = 40
    ) -> int:
        return corrupt_neighbour_bound(n, float(corrupt), int(degree or 0), sigma)

    def neighbourhoods(
        self, participants: Sequence[int], degree: int | None, graph_seed: bytes, round_id: int
    ) -> Mapping[int, tuple[int, ...]]:
        return harary_neighbours(participants, int(degree or 0), graph_seed, round_id)


def _adopt_graph(obj: Any, name: str) -> NeighbourGraph:
    if isinstance(obj, type) and issubclass(obj, NeighbourGraph):
        obj = obj()
    if not isinstance(obj, NeighbourGraph):
        raise TypeError(f"needs a NeighbourGraph subclass or instance, got {obj!r}")
    return obj


#: Every neighbour graph by name: "complete", "harary", then plug-ins (:mod:`secagg.plugins`).
GRAPH_REGISTRY: PluginRegistry[NeighbourGraph] = PluginRegistry(
    "graph", "secagg_dp.graphs", _adopt_graph
)
GRAPH_REGISTRY.update({g.name: g for g in (CompleteGraph(), HararyGraph())})


def register_graph(graph: NeighbourGraph | type[NeighbourGraph], *, replace: bool = False) -> Any:
    """Register a :class:`NeighbourGraph` subclass (instantiated with no arguments) or
    instance under its ``name``; returns its argument, so it works as a class decorator.
    ``ValueError`` if the name is taken (unless ``replace``) or is not an identifier."""
    instance = _adopt_graph(graph, getattr(graph, "name", "?"))
    name = instance.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"graph name must be a non-empty identifier, got {name!r}")
    if name in GRAPH_REGISTRY and not replace:
        raise ValueError(f"graph {name!r} is already registered ({GRAPH_REGISTRY[name]!r})")
    GRAPH_REGISTRY[name] = instance
    return graph


def get_graph(name: str) -> NeighbourGraph:
    """The neighbour graph called ``name`` (:meth:`PluginRegistry.resolve`)."""
    return GRAPH_REGISTRY.resolve(name)
