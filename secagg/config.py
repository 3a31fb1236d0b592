"""Protocol configuration: the one source of the secure-aggregation knobs.

Used by :meth:`secagg.RoundParams.create`, the server's ``ExperimentConfig`` ([protocol]
TOML section) and the benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from secagg.graph import GRAPH_REGISTRY

__all__ = ["ProtocolConfig", "GRAPHS"]

#: The built-in neighbour graphs; plug-ins add to ``secagg.graph.GRAPH_REGISTRY``.
GRAPHS = ("complete", "harary")


@dataclass(frozen=True)
class ProtocolConfig:
    """How rounds are secured.

    - ``graph``: ``"complete"`` (Bonawitz et al., CCS 2017: every pair of clients shares
      masks) or ``"harary"`` (Bell et al., CCS 2020, SecAgg+: a k-regular Harary graph
      on a random permutation, k = O(log n)), or any graph of
      ``secagg.graph.GRAPH_REGISTRY``: an installed ``secagg_dp.graphs`` entry point or a
      ``package.module:Class`` path (:mod:`secagg.plugins`).
    - ``dropout``: the fraction of sampled clients the protocol is sized to lose.
    - ``corrupt``: the fraction of sampled clients assumed to collude with the server;
      privacy holds while fewer than ``t`` of any client's share holders are corrupt.
    - ``active``: add the ConsistencyCheck round and Ed25519 signatures (the active
      adversary variant of Bonawitz et al.; needs the participants' identity keys).
    - ``min_survivors``: the fraction of the sampled clients whose masked inputs must
      arrive for the round to be unmasked (0: only the threshold t). Honest clients
      enforce it: they refuse to unmask a smaller survivor set. DP noise shares are sized
      for ``max(t, ceil(min_survivors * n))`` contributors, so a value near the expected
      survival rate adds far less noise than sizing for t (SecAgg+'s t is small), at
      the price of aborting rounds that lose more devices.
    """

    graph: str = "harary"
    dropout: float = 0.1
    corrupt: float = 0.1
    active: bool = False
    min_survivors: float = 0.0

    def __post_init__(self) -> None:
        GRAPH_REGISTRY.resolve(self.graph)  # ValueError naming the known graphs
        for name in ("dropout", "corrupt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.dropout + self.corrupt > 0.9:
            raise ValueError(
                f"dropout + corrupt must be <= 0.9, got {self.dropout} + {self.corrupt}"
            )
        if not isinstance(self.active, bool):
            raise ValueError(f"active must be a bool, got {self.active!r}")
        m = self.min_survivors
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0:
            raise ValueError(f"min_survivors must be a fraction in [0, 1], got {m!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProtocolConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"ProtocolConfig.from_dict needs a dict, got {type(d).__name__}")
        unknown = set(d) - {"graph", "dropout", "corrupt", "active", "min_survivors"}
        if unknown:
            raise ValueError(f"unknown ProtocolConfig keys: {sorted(unknown)}")
        return cls(**d)
