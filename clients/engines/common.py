"""What the in-process and Ray engines share: the population, seeds, and one secure round.

A research engine runs the *same* round logic as the deployed server and devices —
:class:`server.round.ServerCore` / :class:`server.round.RoundState` on the server side,
:class:`clients.round.DeviceRound` on the device side — and only replaces the network by
direct calls. What differs between engines is where the heavy device work (local
training and DP encoding) runs: an :class:`Fleet`.

Simulation randomness (reproducible research runs; never used by a deployed server or
device): the cohort sampler is ``random.Random`` seeded from ``--seed``; the server's
round randomness (graph seed, rotation seed) and each device's noise come from AES-CTR
keystreams keyed by HKDF of the seed and labels (``dp.prng.SecureRng.for_simulation``).
Secure-aggregation keys and masks still come from the OS CSPRNG: they cancel exactly in
the sum, so they do not affect reproducibility.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from secagg import AbortError, Stage

__all__ = [
    "DropoutSchedule",
    "count",
    "fmt",
    "DROPOUT_STAGES",
    "Population",
    "RoundOutcome",
    "Fleet",
    "exact_sum",
    "make_population",
    "noise_rng",
    "run_secure_round",
    "simulation_random_bytes",
    "training_seed",
]

# Stages a simulated device may vanish at (CLI spelling -> server stage name).
DROPOUT_STAGES: dict[str, str] = {
    "advertise": "advertise_keys",
    "share": "share_keys",
    "masked-input": "masked_input",
    "unmask": "unmask",
}
_STAGE_OF_NAME = {
    "advertise_keys": Stage.ADVERTISE_KEYS,
    "share_keys": Stage.SHARE_KEYS,
    "masked_input": Stage.MASKED_INPUT,
    "consistency_check": Stage.CONSISTENCY_CHECK,
    "unmask": Stage.UNMASK,
}


class DropoutSchedule:
    """Seeded choice of the stage at which a simulated device vanishes in a round.

    For each (round, device index), with probability ``rate`` the device picks one of
    advertise / share / masked-input / unmask uniformly and goes silent from that stage
    on for the rest of the round. Simulation randomness only (numpy is fine here: it
    decides nothing secret).
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.seed = seed

    def stage_for(self, round_id: int, device_index: int) -> str | None:
        """The server stage name the device vanishes at in ``round_id``, or None."""
        if self.rate <= 0.0:
            return None
        rng = np.random.default_rng([self.seed, round_id, device_index, 0x5EC])
        if rng.random() >= self.rate:
            return None
        names = list(DROPOUT_STAGES.values())
        return names[int(rng.integers(len(names)))]

    def alive(self, round_id: int, device_index: int, stage: Stage) -> bool:
        """Whether the device still answers at ``stage`` of ``round_id``."""
        name = self.stage_for(round_id, device_index)
        if name is None:
            return True
        return stage.order < _STAGE_OF_NAME[name].order


def training_seed(seed: int, round_id: int, device_id: int) -> int:
    """A per (experiment, round, device) seed for local shuffling (not a secret)."""
    digest = hashlib.sha256(f"train/{seed}/{round_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def noise_rng(seed: int | None, round_id: int, device_id: int) -> Any:
    """The device's noise generator: keyed from the OS CSPRNG, or — simulation only —
    from ``seed`` so that a research run is reproducible."""
    from dp.prng import SecureRng

    if seed is None:
        return SecureRng.from_os()
    return SecureRng.for_simulation(seed, "device-noise", round_id, device_id)


def simulation_random_bytes(seed: int, label: str) -> Callable[[int], bytes]:
    """A deterministic byte source for the simulated server (graph and rotation seeds).

    SIMULATION ONLY: anyone who knows ``seed`` can predict it. A deployed server uses
    ``os.urandom``."""
    from dp.prng import SecureRng

    rng = SecureRng.for_simulation(seed, "server", label)

    def draw(n: int) -> bytes:
        return bytes(rng.keystream(n))

    return draw


def sampler_source(seed: int) -> random.Random:
    """The simulated server's cohort sampler (seeded: SIMULATION ONLY)."""
    return random.Random(hashlib.sha256(f"sampler/{seed}".encode()).digest())  # noqa: S311


def identity_key(master: bytes, index: int) -> Any:
    """Simulated device ``index``'s Ed25519 identity, derived with HKDF-SHA256 from a
    32-byte ``master`` secret the engine draws from the OS CSPRNG once per run (so Ray
    workers can hold the keys of their devices without the keys crossing processes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secagg.crypto import hkdf_sha256

    if len(master) != 32:
        raise ValueError(f"identity master secret must be 32 bytes, got {len(master)}")
    seed = hkdf_sha256(master, b"secagg-dp/sim-identity/" + str(int(index)).encode(), 32)
    return Ed25519PrivateKey.from_private_bytes(seed)


@dataclass
class Population:
    """The simulated devices: their data are index views into one shared array."""

    x: np.ndarray
    y: np.ndarray
    shards: list[np.ndarray]

    def shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.shards[index]
        return self.x[idx], self.y[idx]

    def __len__(self) -> int:
        return len(self.shards)


def make_population(
    x: np.ndarray, y: np.ndarray, n_clients: int, scheme: str, alpha: float, seed: int
) -> Population:
    """Partition once (IID or Dirichlet) into ``n_clients`` index arrays (int32)."""
    from clients.data import partition

    parts = partition(y, n_clients, scheme=scheme, alpha=alpha, seed=seed)
    return Population(x, y, [np.asarray(p, dtype=np.int32) for p in parts])


class Fleet(Protocol):
    """Where the simulated devices' side of a round runs (this process, Ray actors).

    Each method acts for the listed devices and returns the messages of those that
    answered; a device that refuses or aborts on its own is simply absent (a dropout).
    ``masked`` trains and DP-encodes the devices' updates before masking them."""

    def begin(self, params: Any, plan: Any, device_ids: Sequence[int]) -> list[int]: ...

    def advertise(self, ids: Sequence[int]) -> dict[int, Any]: ...

    def share(
        self, keys_for: Mapping[int, Mapping[int, Any]], ids: Sequence[int]
    ) -> dict[int, Any]: ...

    def masked(
        self, cts_for: Mapping[int, Mapping[int, bytes]], ids: Sequence[int],
        weights: np.ndarray, rotation_seed: bytes,
    ) -> dict[int, Any]: ...

    def consistency(self, request: Any, ids: Sequence[int]) -> dict[int, Any]: ...

    def unmask(self, request: Any, ids: Sequence[int]) -> dict[int, Any]: ...

    def encode_only(
        self, round_id: int, plan: Any, ids: Sequence[int], weights: np.ndarray,
        rotation_seed: bytes,
    ) -> dict[int, np.ndarray]: ...

    def encoded_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class RoundOutcome:
    record: dict[str, Any]
    encoded: dict[int, np.ndarray] = field(default_factory=dict)


def exact_sum(encoded: Mapping[int, np.ndarray], ids: Sequence[int], modulus: int) -> np.ndarray:
    """The exact sum mod 2^b of the given devices' encoded vectors (``--secure-sum exact``)."""
    total = np.zeros_like(next(iter(encoded.values())), dtype=np.uint64)
    for cid in ids:
        total += encoded[cid]  # wraps mod 2^64; reduced below (2^b divides 2^64)
    return total & np.uint64(modulus - 1)


def run_secure_round(
    core: Any,
    rnd: Any,
    fleet: Fleet,
    schedule: DropoutSchedule | None,
    index_of: Mapping[int, int],
    *,
    secure_sum: str = "protocol",
    keep_encoded: bool = False,
) -> RoundOutcome:
    """Walk one round through the real stages with direct calls; its record.

    ``index_of`` maps a device id to its shard index (the dropout schedule's key).
    ``secure_sum="exact"`` skips key agreement and masking and hands the server the
    exact modular sum of the same encoded vectors the protocol would have summed (a test
    shows the two agree bit for bit); the record says which was used.
    """

    def alive(cid: int, stage: Stage) -> bool:
        return schedule is None or schedule.alive(rnd.round_id, index_of[cid], stage)

    def deliver(stage: Stage, msgs: Mapping[int, Any]) -> None:
        for cid in sorted(msgs):
            rnd.accept(stage, cid, msgs[cid])

    weights = core.weights
    participants = list(rnd.participants)
    t_round = time.perf_counter()
    if secure_sum == "exact":
        contributors = [c for c in participants if alive(c, Stage.MASKED_INPUT)]
        encoded = fleet.encode_only(
            rnd.round_id, rnd.plan, contributors, weights, rnd.rotation_seed
        )
        contributors = [c for c in contributors if c in encoded]  # training diverged: none
        rnd.timings["train_encode"] = time.perf_counter() - t_round
        if len(contributors) < rnd.params.min_survivors:
            return RoundOutcome(core.abort(rnd, (
                f"below threshold: {len(contributors)} contributors, "
                f"{rnd.params.min_survivors} needed")))
        rec = core.release(
            rnd,
            lambda: exact_sum(encoded, contributors, rnd.plan.modulus),
            secure_sum="exact",
            survivors=tuple(contributors),
        )
        return RoundOutcome(rec, dict(encoded) if keep_encoded else {})

    try:
        stage, _ = rnd.advance()  # advertise
        joined = set(fleet.begin(rnd.params, rnd.plan, participants))
        deliver(
            stage, fleet.advertise([c for c in participants if c in joined and alive(c, stage)])
        )
        stage, _ = rnd.advance()  # share keys
        ids = [c for c in sorted(rnd.expected) if alive(c, stage)]
        deliver(stage, fleet.share({c: rnd.keys_for[c] for c in ids}, ids))
        stage, _ = rnd.advance()  # masked input (the rotation seed is public from here)
        ids = [c for c in sorted(rnd.expected) if alive(c, stage)]
        t0 = time.perf_counter()
        masked = fleet.masked({c: rnd.cts_for[c] for c in ids}, ids, weights, rnd.rotation_seed)
        rnd.timings["devices_masked_input"] = time.perf_counter() - t0
        deliver(stage, masked)
        del masked
        stage, _ = rnd.advance()
        if stage == Stage.CONSISTENCY_CHECK:
            ids = [c for c in sorted(rnd.expected) if alive(c, stage)]
            deliver(stage, fleet.consistency(rnd.consistency_request, ids))
            stage, _ = rnd.advance()
        ids = [c for c in sorted(rnd.expected)
               if alive(c, stage) and alive(c, Stage.CONSISTENCY_CHECK)]
        deliver(stage, fleet.unmask(rnd.unmask_request, ids))
        rnd.advance()  # done
        rnd.timings["round_protocol"] = time.perf_counter() - t_round
    except AbortError as err:
        return RoundOutcome(core.abort(rnd, f"below threshold: {err}"))
    encoded = fleet.encoded_of(list(rnd.agg.survivors)) if keep_encoded else {}
    try:
        rec = core.release(rnd)
    except AbortError as err:
        return RoundOutcome(core.abort(rnd, f"unmasking failed: {err}"))
    return RoundOutcome(rec, encoded)


def count(value: Any) -> int | None:
    """A round-log field that may be a number or a list of ids, as a count."""
    if value is None:
        return None
    if isinstance(value, list | tuple | set | dict):
        return len(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def fmt(value: Any, spec: str = ".3f") -> str:
    """Format a number for the table ('-' when absent)."""
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isinf(v):
        return "∞"
    return format(v, spec)


# --------------------------------------------------------------------------- simulation
