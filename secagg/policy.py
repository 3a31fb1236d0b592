"""A device's local policy: which rounds it is willing to join.

Threat model. The server chooses every public parameter of a round: the threshold t, the
participant list, the graph and its seed, the number of bits, ``min_survivors`` and, in
active mode, the identity keys that the consistency signatures are checked against. A
device that takes them on trust protects nothing: with t = 1 a share is the secret
itself, with t at or below the number of colluding share holders the colluders rebuild
b_u or s^SK on their own, a low t in active mode lets a lying server split the holders
(:mod:`secagg.params`, "The split-view attack"), and identity keys chosen by the server
let it sign the consistency check in every other participant's name. The device
therefore checks the round against limits it holds itself (:class:`ClientPolicy`) and,
in active mode, the identity keys against keys it learned independently (pinned when
the peers registered, or read from a signed roster). :class:`secagg.ClientProtocol`
applies the check at construction and raises :class:`~secagg.errors.PolicyError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from secagg.errors import PolicyError
from secagg.graph import GRAPH_REGISTRY
from secagg.packing import MAX_BITS, MIN_BITS
from secagg.params import RoundParams

__all__ = ["ClientPolicy"]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"ClientPolicy.{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"ClientPolicy.{name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True)
class ClientPolicy:
    """The rounds a device accepts (checked before it sends anything).

    - ``min_threshold_fraction`` (0.25): t must be at least this fraction of the holders
      of one client's shares (n on the complete graph, k + 1 on H(n, k)). The finder's
      semi-honest choices are 0.26-0.57 of the holders at 10 % corrupt, its active ones
      0.51-0.71; the complete graph's are 2/3 unless dropout is large.
    - ``corrupt`` (0.1): the fraction of a cohort this device assumes may collude with the
      server. Every round must keep ``t > c`` and, in active mode, ``2t > holders + c``,
      with c the corrupt-holder bound this device computes itself
      (:meth:`RoundParams.threat_model_violation`); t >= 2 always.
    - ``sigma`` (40): statistical security of that bound on a Harary graph.
    - ``min_cohort`` (3), ``max_cohort`` (1,000,000): accepted number of participants. A
      cohort of 2 reveals each input to the other participant once the sum is known.
    - ``allowed_graphs`` (None): the neighbour graphs accepted; None accepts every graph
      registered in this process (the built-ins, installed ``secagg_dp.graphs`` entry
      points and plug-ins this process loaded itself; a server cannot add one when
      plug-in imports are off, see :mod:`secagg.plugins`). Names given here are resolved
      (a ``package.module:Class`` path is imported) at construction.
    - ``min_bits``, ``max_bits`` (8, 62): accepted modulus 2^bits.
    - ``require_active`` (False): refuse rounds without the consistency check. Without
      it (and pinned keys) a server that lies about survivors can unmask an input.
    - ``min_survivors_fraction`` (0.0): ``params.min_survivors`` must be at least this
      fraction of the participants (a device whose DP noise share is sized for m
      contributors should require m).
    - ``require_pinned_keys`` (False): in active mode, refuse unless the device was given
      pinned identity keys to check the round's against. Pinned keys, when given, are
      always checked, and every participant must have one.
    """

    min_threshold_fraction: float = 0.25
    corrupt: float = 0.1
    sigma: float = 40.0
    min_cohort: int = 3
    max_cohort: int = 1_000_000
    allowed_graphs: tuple[str, ...] | None = None
    min_bits: int = MIN_BITS
    max_bits: int = MAX_BITS
    require_active: bool = False
    min_survivors_fraction: float = 0.0
    require_pinned_keys: bool = False

    def __post_init__(self) -> None:
        f = _number("min_threshold_fraction", self.min_threshold_fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"ClientPolicy.min_threshold_fraction must be in [0, 1], got {f!r}")
        c = _number("corrupt", self.corrupt)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"ClientPolicy.corrupt must be in [0, 1), got {c!r}")
        if _number("sigma", self.sigma) <= 0:
            raise ValueError(f"ClientPolicy.sigma must be > 0, got {self.sigma!r}")
        lo, hi = _integer("min_cohort", self.min_cohort), _integer("max_cohort", self.max_cohort)
        if lo < 2 or hi < lo:
            raise ValueError(
                f"ClientPolicy cohort range must satisfy 2 <= min_cohort <= max_cohort, "
                f"got [{lo}, {hi}]"
            )
        graphs = self.allowed_graphs
        if graphs is not None:
            if isinstance(graphs, str) or not isinstance(graphs, (tuple, list)):
                raise ValueError(f"ClientPolicy.allowed_graphs must be a tuple, got {graphs!r}")
            object.__setattr__(self, "allowed_graphs", tuple(graphs))
            if not graphs:
                raise ValueError("ClientPolicy.allowed_graphs must not be empty")
            for g in graphs:
                try:
                    GRAPH_REGISTRY.resolve(g)
                except ValueError as exc:
                    raise ValueError(f"ClientPolicy.allowed_graphs: {exc}") from None
        b0, b1 = _integer("min_bits", self.min_bits), _integer("max_bits", self.max_bits)
        if not MIN_BITS <= b0 <= b1 <= MAX_BITS:
            raise ValueError(
                f"ClientPolicy bits range must satisfy {MIN_BITS} <= min_bits <= max_bits "
                f"<= {MAX_BITS}, got [{b0}, {b1}]"
            )
        m = _number("min_survivors_fraction", self.min_survivors_fraction)
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"ClientPolicy.min_survivors_fraction must be in [0, 1], got {m!r}")
        for name in ("require_active", "require_pinned_keys"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ClientPolicy.{name} must be a bool, got {getattr(self, name)!r}")

    def check(
        self, params: RoundParams, pinned_identity_keys: Mapping[int, bytes] | None = None
    ) -> None:
        """Raise :class:`PolicyError` (saying what and why) unless this device may join
        the round ``params``; in active mode compare its identity keys with
        ``pinned_identity_keys`` (participant id -> raw Ed25519 key)."""
        p = params
        if self.allowed_graphs is not None and p.graph not in self.allowed_graphs:
            raise PolicyError(
                f"round {p.round_id}: graph {p.graph!r} is not allowed by this device "
                f"(allowed: {self.allowed_graphs})"
            )
        if not self.min_cohort <= p.n <= self.max_cohort:
            raise PolicyError(
                f"round {p.round_id}: {p.n} participants, this device accepts "
                f"[{self.min_cohort}, {self.max_cohort}]"
            )
        if not self.min_bits <= p.bits <= self.max_bits:
            raise PolicyError(
                f"round {p.round_id}: bits={p.bits}, this device accepts "
                f"[{self.min_bits}, {self.max_bits}]"
            )
        if self.require_active and not p.active:
            raise PolicyError(
                f"round {p.round_id} is not in active mode, which this device requires "
                "(without the consistency check a lying server can unmask an input)"
            )
        need_t = math.ceil(self.min_threshold_fraction * p.share_holders - 1e-9)
        if p.threshold < need_t:
            raise PolicyError(
                f"round {p.round_id}: threshold {p.threshold} is below this device's minimum "
                f"{need_t} ({self.min_threshold_fraction:g} of {p.share_holders} share holders)"
            )
        why = p.threat_model_violation(self.corrupt, self.sigma)
        if why is not None:
            raise PolicyError(f"round {p.round_id}: {why}")
        need_m = math.ceil(self.min_survivors_fraction * p.n - 1e-9)
        if p.min_survivors < need_m:
            raise PolicyError(
                f"round {p.round_id}: min_survivors {p.min_survivors} is below this device's "
                f"minimum {need_m} ({self.min_survivors_fraction:g} of {p.n} participants)"
            )
        if p.active:
            self._check_identity_keys(p, pinned_identity_keys)

    def _check_identity_keys(self, p: RoundParams, pinned: Mapping[int, bytes] | None) -> None:
        if pinned is None:
            if self.require_pinned_keys:
                raise PolicyError(
                    f"round {p.round_id} is in active mode but this device has no pinned "
                    "identity keys: the round's keys come from the server and prove nothing"
                )
            return
        keys = p.identity_keys or {}
        unpinned = [c for c in p.participants if c not in pinned]
        if unpinned:
            raise PolicyError(
                f"round {p.round_id}: no pinned identity key for participants {unpinned[:10]}; "
                "this device cannot check their consistency signatures"
            )
        differ = [c for c in p.participants if keys.get(c) != pinned[c]]
        if differ:
            raise PolicyError(
                f"round {p.round_id}: identity keys of participants {differ[:10]} differ from "
                "the keys pinned on this device (the server substituted keys?)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe dict of the fields (``allowed_graphs`` as a list)."""
        d = asdict(self)
        if self.allowed_graphs is not None:
            d["allowed_graphs"] = list(self.allowed_graphs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientPolicy:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"ClientPolicy.from_dict needs a mapping, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ClientPolicy keys: {sorted(unknown)}")
        kw = dict(d)
        if isinstance(kw.get("allowed_graphs"), list):
            kw["allowed_graphs"] = tuple(kw["allowed_graphs"])
        return cls(**kw)
