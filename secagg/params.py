"""Public parameters of one secure-aggregation round.

Threat model (Bonawitz et al., CCS 2017; Bell et al., CCS 2020): the server and up to a
fraction ``corrupt`` of the sampled clients are honest-but-curious and may collude;
fewer than ``t`` corrupt share holders per client keep every individual input hidden
(only the sum of at least ``t`` inputs is revealed). With ``active=True`` the
ConsistencyCheck round and Ed25519 signatures (long-term identity keys registered
beforehand, a PKI) stop a server from showing different survivor sets to different
clients. The parameters themselves are public; ``graph_seed`` is public randomness
drawn by the server after the participants are fixed.

The split-view attack and the active-mode threshold (:func:`split_view_floor`)
-------------------------------------------------------------------------------
Signatures make every honest client commit to ONE survivor set, but a lying server may
show different sets to different clients. Take a target u whose masked input arrived.
Its b_u shares are held by h clients: u itself and its neighbours (h = k + 1 on H(n, k),
h = n on the complete graph); an honest holder reveals a b_u share when shown a set S
with u in it. Its s_u^SK shares are held by the same clients, and a neighbour reveals
one when shown S' = S minus u (u "dropped"); u never reveals its own. Let c of u's
neighbours be corrupt: they sign any set and hand both shares to the server.

The server shows S to a group A of honest clients and S' to a disjoint group B (an
honest client signs one set and refuses to unmask any other). It needs t shares of each
secret:  b_u: |A ∩ N(u)| + [u ∈ A] + c >= t  and  s_u^SK: |B ∩ N(u)| + c >= t,
with |A ∩ N(u)| + |B ∩ N(u)| <= k - c honest neighbours. Adding the two,
``2t <= (k - c) + 1 + 2c = h + c`` whenever the split works, and conversely any
t with 2t <= h + c is met by putting max(0, t - 1 - c) honest neighbours and u in A and
the rest in B. Each view must also carry t valid consistency signatures by its own
survivors; on a Harary graph the server recruits non-neighbours for that, so only the
share count binds; on the complete graph every participant is a neighbour and the same
count (u signs S) gives the same bound. Hence active rounds need

    2t > h + c,  i.e.  t >= floor((h + c) / 2) + 1,

with c the corrupt-neighbour bound: floor(corrupt * n) on the complete graph (every
corrupt client is a neighbour) and, on H(n, k), the statistical bound of
:func:`secagg.graph.corrupt_neighbour_bound`. With c = 0 the condition (2t > h) is a
property of the parameters alone and :class:`RoundParams` enforces it; the bound with c
is enforced by :meth:`RoundParams.create` (with the configured corrupt fraction) and by
each device (:class:`secagg.policy.ClientPolicy`, with its own assumption).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from secagg.config import ProtocolConfig
from secagg.graph import GRAPH_REGISTRY, NeighbourGraph
from secagg.messages import b64decode, b64encode
from secagg.packing import MAX_BITS, MIN_BITS, word_dtype

__all__ = ["RoundParams", "complete_threshold", "split_view_floor"]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def split_view_floor(holders: int, corrupt_holders: int) -> int:
    """Smallest threshold that defeats the split-view attack (module docstring):
    ``floor((holders + corrupt_holders) / 2) + 1``, i.e. the least t with
    ``2t > holders + corrupt_holders``. ``holders`` counts every holder of a client's
    b_u shares, the client included (k + 1 on H(n, k), n on the complete graph)."""
    for name, v in (("holders", holders), ("corrupt_holders", corrupt_holders)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    return (holders + corrupt_holders) // 2 + 1


def complete_threshold(n: int, dropout: float, corrupt: float, active: bool = False) -> int:
    """Threshold for the complete graph: ``max(2, floor(2n/3) + 1)``, lowered to
    ``floor(n(1 - dropout))`` when that still exceeds the corrupt clients (and, in active
    mode, the split-view floor ``2t > n + floor(corrupt * n)``), so that the expected
    survivors can finish; at most ``n``. In active mode the floor wins over liveness:
    when ``n(1 - dropout)`` is below it the round needs more survivors than expected."""
    if n <= 1:
        return 1
    n_corrupt = math.floor(corrupt * n + 1e-9)
    t = max(2, 2 * n // 3 + 1)
    cap = math.floor(n * (1.0 - dropout) + 1e-9)
    floor_ = max(2, n_corrupt + 1, split_view_floor(n, n_corrupt) if active else 0)
    t = max(t, floor_)
    if cap >= floor_:
        t = min(t, cap)
    return min(t, n)


@dataclass(frozen=True)
class RoundParams:
    """Round parameters (public; sent to every device with the round).

    ``threshold`` t: any t share holders rebuild a secret, t - 1 learn nothing. The
    round outputs the exact sum mod 2^bits of the survivors' inputs when at least t
    survive (and every survivor / dropped client keeps t responsive neighbours);
    otherwise it aborts and reveals nothing.

    ``min_survivors`` m (t <= m <= n; 0 means t): the round is unmasked only if at least
    m masked inputs arrived. Honest clients refuse to unmask a smaller survivor set, so
    the bound holds against the server too; DP noise shares may then be sized for m.
    """

    round_id: int
    participants: tuple[int, ...]
    dim: int
    bits: int
    threshold: int
    graph: str
    degree: int | None
    graph_seed: bytes
    active: bool = False
    identity_keys: Mapping[int, bytes] | None = None
    min_survivors: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.round_id) or self.round_id < 0:
            raise ValueError(f"round_id must be an int >= 0, got {self.round_id!r}")
        if isinstance(self.participants, list):
            object.__setattr__(self, "participants", tuple(self.participants))
        if not isinstance(self.participants, tuple) or not self.participants:
            raise ValueError(f"participants must be a non-empty tuple, got {self.participants!r}")
        for cid in self.participants:
            if not _is_int(cid) or cid < 0:
                raise ValueError(f"participant ids must be ints >= 0, got {cid!r}")
        if list(self.participants) != sorted(set(self.participants)):
            raise ValueError("participants must be sorted and unique")
        if not _is_int(self.dim) or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {self.bits!r}")
        # Only graphs registered here: round parameters come from the server, and a
        # device that forbids plug-in imports (secagg.plugins) imports nothing they name.
        family = GRAPH_REGISTRY.resolve(self.graph)
        n = len(self.participants)
        family.check_degree(n, self.degree)
        max_t = family.share_holders(n, self.degree)
        if not _is_int(self.threshold) or not 1 <= self.threshold <= max_t:
            raise ValueError(
                f"threshold must be an int in [1, {max_t}] (neighbours + 1), got {self.threshold!r}"
            )
        if not _is_int(self.min_survivors) or self.min_survivors < 0:
            raise ValueError(f"min_survivors must be an int >= 0, got {self.min_survivors!r}")
        if self.min_survivors == 0:
            object.__setattr__(self, "min_survivors", self.threshold)
        if not self.threshold <= self.min_survivors <= n:
            raise ValueError(
                f"min_survivors must be in [threshold={self.threshold}, {n}], "
                f"got {self.min_survivors}"
            )
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != 32:
            raise ValueError("graph_seed must be 32 bytes")
        if not isinstance(self.active, bool):
            raise ValueError(f"active must be a bool, got {self.active!r}")
        if self.identity_keys is not None:
            keys = {}
            for cid, key in dict(self.identity_keys).items():
                if not _is_int(cid):
                    raise ValueError(f"identity_keys ids must be ints, got {cid!r}")
                if not isinstance(key, bytes) or len(key) != 32:
                    raise ValueError(f"identity key of {cid} must be 32 raw bytes")
                keys[cid] = key
            object.__setattr__(self, "identity_keys", keys)
        if self.active:
            if self.identity_keys is None:
                raise ValueError("active mode needs identity_keys for every participant")
            missing = [c for c in self.participants if c not in self.identity_keys]
            if missing:
                raise ValueError(f"identity_keys missing for participants {missing[:10]}")
            holders = max_t
            floor_t = split_view_floor(holders, 0)
            if self.threshold < floor_t:
                raise ValueError(
                    f"active mode needs threshold >= {floor_t} (2t > {holders} share "
                    f"holders) even with no corrupt client, got {self.threshold}: a server "
                    "could split the holders into two groups of t and unmask an input"
                )
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "_members", frozenset(self.participants))
        object.__setattr__(self, "_family", family)

    def __hash__(self) -> int:
        keys = None if self.identity_keys is None else tuple(sorted(self.identity_keys.items()))
        return hash(
            (
                self.round_id,
                self.participants,
                self.dim,
                self.bits,
                self.threshold,
                self.graph,
                self.degree,
                self.graph_seed,
                self.active,
                keys,
                self.min_survivors,
            )
        )

    # ------------------------------------------------------------------ graph

    @property
    def modulus(self) -> int:
        """2 ** bits: the secure sum is computed modulo this."""
        return 1 << self.bits

    @property
    def word_dtype(self) -> type:
        """numpy storage word: uint32 if bits <= 32 else uint64."""
        return word_dtype(self.bits)

    @property
    def n(self) -> int:
        """Number of participants."""
        return len(self.participants)

    @property
    def share_holders(self) -> int:
        """How many clients hold shares of one client's secrets, the client included:
        ``n`` on the complete graph, ``degree + 1`` on a Harary graph."""
        return self.family.share_holders(self.n, self.degree)

    @property
    def family(self) -> NeighbourGraph:
        """The neighbour graph ``graph`` names (``secagg.graph.GRAPH_REGISTRY``)."""
        return self._family  # type: ignore[attr-defined,no-any-return]

    def corrupt_holder_bound(self, corrupt: float, sigma: float = 40) -> int:
        """The most corrupt share holders (neighbours) one client has if a fraction
        ``corrupt`` of the participants collude with the server: ``floor(corrupt * n)``
        on the complete graph (capped at n - 1), the statistical bound of
        :func:`secagg.graph.corrupt_neighbour_bound` (failure <= 2^-(sigma+1) / n per
        client) on a Harary graph."""
        if isinstance(corrupt, bool) or not isinstance(corrupt, (int, float)) or not (
            0.0 <= corrupt < 1.0
        ):
            raise ValueError(f"corrupt must be in [0, 1), got {corrupt!r}")
        if self.n < 2:
            return 0
        return self.family.corrupt_holder_bound(self.n, self.degree, float(corrupt), sigma)

    def threat_model_violation(self, corrupt: float, sigma: float = 40) -> str | None:
        """Why these parameters do not protect an honest client's input against a
        server colluding with a fraction ``corrupt`` of the participants, or None.

        Checks ``t >= 2`` (t = 1 makes every share the secret), ``t > c`` (c corrupt
        holders must not reach t on their own) and, in active mode, the split-view
        condition ``2t > holders + c`` (module docstring); c is
        :meth:`corrupt_holder_bound`."""
        t = self.threshold
        if self.n >= 2 and t < 2:
            return f"threshold {t} < 2: a single share reveals the secret"
        c = self.corrupt_holder_bound(corrupt, sigma)
        if self.n >= 2 and t <= c:
            return (
                f"threshold {t} <= {c}, the corrupt share holders expected at "
                f"corrupt={corrupt}: they could rebuild a secret on their own"
            )
        if self.active:
            need = split_view_floor(self.share_holders, c)
            if t < need:
                return (
                    f"active threshold {t} < {need}: with {self.share_holders} share holders "
                    f"and up to {c} corrupt ones (corrupt={corrupt}) a lying server can split "
                    "the holders into two views of t and unmask an input (needs 2t > "
                    "holders + corrupt holders)"
                )
        return None

    def is_participant(self, cid: int) -> bool:
        """Whether ``cid`` was sampled for this round."""
        return cid in self._members  # type: ignore[attr-defined]

    def _neighbourhoods(self) -> Mapping[int, tuple[int, ...]]:
        cache: dict[str, Any] = self._cache  # type: ignore[attr-defined]
        if "graph" not in cache:
            cache["graph"] = self.family.neighbourhoods(
                self.participants, self.degree, self.graph_seed, self.round_id
            )
        return cache["graph"]

    def neighbours(self, cid: int) -> tuple[int, ...]:
        """Sorted neighbours of ``cid`` (excluding ``cid``); ``ValueError`` if unknown."""
        if not self.is_participant(cid):
            raise ValueError(f"client {cid} is not a participant of round {self.round_id}")
        return tuple(self._neighbourhoods()[cid])

    def neighbour_set(self, cid: int) -> frozenset[int]:
        """:meth:`neighbours` as a cached frozenset."""
        cache: dict[Any, Any] = self._cache  # type: ignore[attr-defined]
        key = ("set", cid)
        if key not in cache:
            cache[key] = frozenset(self.neighbours(cid))
        return cache[key]

    # ------------------------------------------------------------------ (de)serialize

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (bytes as base64, identity keys keyed by decimal strings)."""
        return {
            "round_id": self.round_id,
            "participants": list(self.participants),
            "dim": self.dim,
            "bits": self.bits,
            "threshold": self.threshold,
            "graph": self.graph,
            "degree": self.degree,
            "graph_seed": b64encode(self.graph_seed),
            "active": self.active,
            "min_survivors": self.min_survivors,
            "identity_keys": None
            if self.identity_keys is None
            else {str(k): b64encode(v) for k, v in sorted(self.identity_keys.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundParams:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on anything malformed."""
        if not isinstance(d, Mapping):
            raise ValueError("RoundParams.from_dict needs a mapping")
        required = (
            "round_id",
            "participants",
            "dim",
            "bits",
            "threshold",
            "graph",
            "degree",
            "graph_seed",
        )
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"RoundParams: missing fields {missing}")
        extra = set(d) - set(required) - {"active", "identity_keys", "min_survivors"}
        if extra:
            raise ValueError(f"RoundParams: unknown fields {sorted(extra)}")
        participants = d["participants"]
        if not isinstance(participants, (list, tuple)):
            raise ValueError("participants must be a list")
        keys_raw = d.get("identity_keys")
        keys: dict[int, bytes] | None = None
        if keys_raw is not None:
            if not isinstance(keys_raw, Mapping):
                raise ValueError("identity_keys must be an object")
            keys = {}
            for k, v in keys_raw.items():
                try:
                    cid = int(k)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"identity_keys key {k!r} is not an id") from err
                keys[cid] = b64decode(v, f"identity_keys[{k}]")
        return cls(
            round_id=d["round_id"],
            participants=tuple(participants),
            dim=d["dim"],
            bits=d["bits"],
            threshold=d["threshold"],
            graph=d["graph"],
            degree=d["degree"],
            graph_seed=b64decode(d["graph_seed"], "graph_seed"),
            active=d.get("active", False),
            identity_keys=keys,
            min_survivors=d.get("min_survivors", 0),
        )

    @classmethod
    def create(
        cls,
        round_id: int,
        participants: Iterable[int],
        dim: int,
        bits: int,
        *,
        graph: str = "complete",
        dropout: float = 0.1,
        corrupt: float = 0.1,
        active: bool = False,
        identity_keys: Mapping[int, bytes] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        config: ProtocolConfig | None = None,
        min_survivors: float = 0.0,
    ) -> RoundParams:
        """Choose degree and threshold and draw ``graph_seed``.

        ``config`` (a :class:`ProtocolConfig`) overrides ``graph/dropout/corrupt/active``
        and ``min_survivors`` (a fraction of the participants; the count is at least t).
        Complete graph: :func:`complete_threshold`. Harary: :func:`find_harary_params`
        (``active=True`` in active mode: the split-view bound); when no Harary degree
        below n - 1 meets the bounds (small n), the complete graph is used instead (it is
        the limit of H(n, k) and has the strongest guarantees). The result is checked
        with :meth:`threat_model_violation` at ``corrupt``: parameters that would let the
        server (with that many colluding clients) unmask an input raise ``ValueError``.
        Participants are sorted; duplicates raise ``ValueError``.
        """
        if config is not None:
            graph, dropout, corrupt, active, min_survivors = (
                config.graph,
                config.dropout,
                config.corrupt,
                config.active,
                config.min_survivors,
            )
        else:
            ProtocolConfig(
                graph=graph, dropout=dropout, corrupt=corrupt, active=active,
                min_survivors=min_survivors,
            )
        parts = tuple(sorted(participants))
        if len(set(parts)) != len(parts):
            raise ValueError("participants contain duplicates")
        n = len(parts)
        chosen = GRAPH_REGISTRY.resolve(graph).choose(n, dropout, corrupt, active=active)
        if chosen is None:  # no degree of this family fits n: the complete graph's limit
            graph = "complete"
            chosen = GRAPH_REGISTRY.resolve(graph).choose(n, dropout, corrupt, active=active)
            if chosen is None:  # pragma: no cover - the complete graph always chooses
                raise ValueError(f"no parameters for n={n} on the complete graph")
        degree, threshold = chosen
        seed = random_bytes(32)
        params = cls(
            round_id=round_id,
            participants=parts,
            dim=dim,
            bits=bits,
            threshold=threshold,
            graph=graph,
            degree=degree,
            graph_seed=seed,
            active=active,
            identity_keys=identity_keys,
            min_survivors=max(threshold, math.ceil(min_survivors * n - 1e-9)),
        )
        why = params.threat_model_violation(corrupt)
        if why is not None:
            raise ValueError(f"no safe parameters for n={n}, graph={graph}: {why}")
        return params
