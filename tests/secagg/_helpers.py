"""Shared helpers for the secagg tests: a stepwise round driver and state fingerprints."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import AggregatorProtocol, ClientPolicy, ClientProtocol, RoundParams
from secagg.crypto import ed25519_public_bytes

#: Policy for tests of the protocol's mechanics on tiny hand-made rounds (2 clients,
#: low thresholds): no corrupt-client assumption, no threshold fraction. Only t >= 2
#: and, in active mode, 2t > share holders (RoundParams itself) still apply.
MECHANICS = ClientPolicy(min_threshold_fraction=0.0, corrupt=0.0, min_cohort=2)


def det_random(seed: bytes = b"test"):
    """Deterministic random_bytes for reproducible tests (SHA-256 in counter mode)."""
    state = {"i": 0}

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + state["i"].to_bytes(8, "little")).digest()
            state["i"] += 1
        return out[:n]

    return random_bytes


def make_params(
    n: int = 5,
    dim: int = 33,
    bits: int = 20,
    *,
    graph: str = "complete",
    threshold: int | None = None,
    degree: int | None = None,
    active: bool = False,
    round_id: int = 7,
    ids: tuple[int, ...] | None = None,
) -> tuple[RoundParams, dict[int, Ed25519PrivateKey] | None]:
    participants = ids if ids is not None else tuple(range(n))
    signing = None
    identity = None
    if active:
        signing = {c: Ed25519PrivateKey.generate() for c in participants}
        identity = {c: ed25519_public_bytes(k) for c, k in signing.items()}
    if threshold is None:
        threshold = max(2, (2 * len(participants)) // 3 + 1) if graph == "complete" else 2
    params = RoundParams(
        round_id=round_id,
        participants=participants,
        dim=dim,
        bits=bits,
        threshold=threshold,
        graph=graph,
        degree=degree,
        graph_seed=bytes(range(32)),
        active=active,
        identity_keys=identity,
    )
    return params, signing


@dataclass
class Round:
    """A round stepped by hand: clients, aggregator and the relayed messages."""

    params: RoundParams
    clients: dict[int, ClientProtocol]
    agg: AggregatorProtocol
    inputs: dict[int, np.ndarray]
    msgs: dict[str, Any] = field(default_factory=dict)

    def advertise(self) -> None:
        self.msgs["adv"] = {c: cl.advertise_keys() for c, cl in self.clients.items()}
        for m in self.msgs["adv"].values():
            self.agg.add_advertise(m)
        self.msgs["keys"] = self.agg.close_advertise()

    def share(self) -> None:
        self.msgs["share"] = {
            c: self.clients[c].share_keys(k) for c, k in self.msgs["keys"].items()
        }
        for m in self.msgs["share"].values():
            self.agg.add_share_keys(m)
        self.msgs["cts"] = self.agg.close_share_keys()

    def masked(self, senders: list[int] | None = None) -> None:
        senders = list(self.msgs["cts"]) if senders is None else senders
        self.msgs["masked"] = {
            c: self.clients[c].masked_input(self.msgs["cts"][c], self.inputs[c]) for c in senders
        }

    def add_masked(self) -> None:
        for m in self.msgs["masked"].values():
            self.agg.add_masked_input(m)

    def to_unmask(self, senders: list[int] | None = None) -> Any:
        """Walk the round to the unmask request, with masked inputs from ``senders``
        (every client that got ciphertexts when None); returns the request."""
        self.advertise()
        self.share()
        self.masked(senders)
        self.add_masked()
        self.msgs["request"] = self.agg.close_masked_input()
        return self.msgs["request"]


def make_round(n: int = 5, dim: int = 33, bits: int = 20, seed: int = 0, **kw: Any) -> Round:
    params, signing = make_params(n, dim, bits, **kw)
    rng = np.random.default_rng(seed)
    inputs = {c: rng.integers(0, 1 << bits, dim, dtype=np.uint64) for c in params.participants}
    clients = {
        c: ClientProtocol(
            params,
            c,
            signing_key=None if signing is None else signing[c],
            random_bytes=det_random(b"client%d" % c),
            policy=MECHANICS,
        )
        for c in params.participants
    }
    r = Round(params, clients, AggregatorProtocol(params), inputs)
    r.msgs["signing"] = signing
    return r


def fingerprint(obj: Any, _seen: set[int] | None = None) -> Any:
    """Deep, comparable snapshot of an object's state (arrays by content)."""
    seen = _seen if _seen is not None else set()
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, (int, float, str, bytes, bool, type(None))):
        return obj
    if isinstance(obj, (frozenset, set)):
        return ("set", tuple(sorted(fingerprint(v, seen) for v in obj)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(fingerprint(v, seen) for v in obj))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((repr(k), fingerprint(v, seen)) for k, v in obj.items())))
    if id(obj) in seen:
        return ("seen", type(obj).__name__)
    seen.add(id(obj))
    if hasattr(obj, "__dict__"):
        return (
            type(obj).__name__,
            tuple(
                sorted(
                    (k, fingerprint(v, seen))
                    for k, v in vars(obj).items()
                    if k != "params" and not callable(v)
                )
            ),
        )
    return repr(obj)


def walk(obj: Any, _seen: set[int] | None = None):
    """Yield every leaf value reachable from obj's attributes and containers."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, (str, bytes, int, float, np.ndarray, type(None))):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(k, seen)
            yield from walk(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from walk(v, seen)
    elif hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            yield from walk(v, seen)
