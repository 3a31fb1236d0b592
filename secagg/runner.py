"""In-process transport: drive N :class:`ClientProtocol` objects and one
:class:`AggregatorProtocol` through a round, with a dropout schedule.

Used by tests, the fast simulation and the cost benchmark. It measures, per client,
the upload bytes (``len(json.dumps(msg.to_dict()))`` of AdvertiseKeys, ShareKeys,
ConsistencyCheck and UnmaskShares, plus the raw packed masked input, which travels as
an octet-stream body) and the CPU-side seconds spent in each party's protocol code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.aggregator import AggregatorProtocol
from secagg.client import ClientProtocol
from secagg.errors import AbortError
from secagg.params import RoundParams
from secagg.policy import ClientPolicy
from secagg.stage import Stage

__all__ = ["RoundResult", "run_round"]


@dataclass(frozen=True)
class RoundResult:
    """Outcome of :func:`run_round`.

    ``sum``: np.uint64 array, the exact sum mod 2^b of the survivors' inputs.
    ``timings``: seconds — ``server`` (all aggregator calls), ``server_<stage>`` per
    stage (``server_unmask`` includes :meth:`AggregatorProtocol.finish`),
    ``client_mean`` / ``client_max`` / ``client_total`` over clients, ``client_<stage>_mean``,
    and ``total`` (wall time of the whole round); all wall-clock (``perf_counter``).
    CPU-time twins (``thread_time``, robust to other load on the machine):
    ``server_cpu``, ``server_cpu_<stage>``, ``client_cpu_mean``, ``client_cpu_max``.
    ``upload_bytes``: client id -> bytes uploaded. ``client_seconds``: client id ->
    seconds in its protocol code.
    """

    sum: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    timings: dict[str, float]
    upload_bytes: dict[int, int]
    client_seconds: dict[int, float] = field(default_factory=dict)
    dropouts_by_stage: dict[str, list[int]] = field(default_factory=dict)


def _json_size(msg: object) -> int:
    return len(json.dumps(msg.to_dict(), separators=(",", ":")).encode())  # type: ignore[attr-defined]


def run_round(
    params: RoundParams,
    inputs: Mapping[int, np.ndarray],
    dropouts: Mapping[int, Stage] | None = None,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    signing_keys: Mapping[int, Ed25519PrivateKey] | None = None,
    policy: ClientPolicy | None = None,
) -> RoundResult:
    """Run one round in process. ``dropouts[cid] = Stage.X``: cid vanishes before
    sending its stage-X message (Stage.CONSISTENCY_CHECK in passive mode means "before
    Unmasking"). A client that aborts on its own (too few neighbours left) counts as a
    dropout. Raises :class:`AbortError` if the round aborts (nothing is revealed).
    ``signing_keys`` (client -> Ed25519 key) is required in active mode. ``policy``: every
    client's :class:`ClientPolicy` (None: the defaults); a round outside it raises
    :class:`~secagg.errors.PolicyError` before any message is sent."""
    dropouts = dict(dropouts or {})
    for cid, stage in dropouts.items():
        if not params.is_participant(cid):
            raise ValueError(f"dropout schedule names non-participant {cid}")
        if not isinstance(stage, Stage):
            raise ValueError(f"dropout stage of {cid} must be a Stage, got {stage!r}")
    needs_input = [
        c
        for c in params.participants
        if c not in dropouts or dropouts[c].order > Stage.MASKED_INPUT.order
    ]
    missing = [c for c in needs_input if c not in inputs]
    if missing:
        raise ValueError(f"inputs missing for clients {missing[:10]}")
    if params.active and signing_keys is None:
        raise ValueError("active mode needs signing_keys")
    t_start = time.perf_counter()
    client_s = {c: 0.0 for c in params.participants}
    client_stage_s: dict[str, float] = {}
    upload = {c: 0 for c in params.participants}
    server_s: dict[str, float] = {}
    client_cpu = {c: 0.0 for c in params.participants}
    server_cpu: dict[str, float] = {}

    def alive(cid: int, stage: Stage) -> bool:
        d = dropouts.get(cid)
        return d is None or d.order > stage.order

    def timed_client(cid: int, stage: Stage, fn: Callable[[], object]) -> object:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            dt = time.perf_counter() - t0
            client_cpu[cid] += time.thread_time() - c0
            client_s[cid] += dt
            client_stage_s[stage.value] = client_stage_s.get(stage.value, 0.0) + dt

    def timed_server(stage: Stage, fn: Callable[[], object]) -> object:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            server_s[stage.value] = server_s.get(stage.value, 0.0) + time.perf_counter() - t0
            server_cpu[stage.value] = server_cpu.get(stage.value, 0.0) + time.thread_time() - c0

    clients = {
        c: ClientProtocol(
            params,
            c,
            signing_key=None if signing_keys is None else signing_keys[c],
            random_bytes=random_bytes,
            policy=policy,
        )
        for c in params.participants
    }
    agg = AggregatorProtocol(params)
    stage_counts: dict[str, int] = {}

    def send(
        stage: Stage,
        cid: int,
        make: Callable[[], object],
        add: Callable[[object], None],
        raw: bool = False,
    ) -> None:
        try:
            msg = timed_client(cid, stage, make)
        except AbortError:
            return  # the client gave up on its own: a dropout from here on
        stage_counts[stage.value] = stage_counts.get(stage.value, 0) + 1
        upload[cid] += len(msg.data) if raw else _json_size(msg)  # type: ignore[attr-defined]
        timed_server(stage, lambda: add(msg))

    s = Stage.ADVERTISE_KEYS
    for c in params.participants:
        if alive(c, s):
            send(s, c, clients[c].advertise_keys, agg.add_advertise)  # type: ignore[arg-type]
    keys = timed_server(s, agg.close_advertise)
    s = Stage.SHARE_KEYS
    for c, k in keys.items():  # type: ignore[attr-defined]
        if alive(c, s):
            send(s, c, lambda c=c, k=k: clients[c].share_keys(k), agg.add_share_keys)  # type: ignore[misc,arg-type]
    cts = timed_server(s, agg.close_share_keys)
    s = Stage.MASKED_INPUT
    for c, ct in cts.items():  # type: ignore[attr-defined]
        if alive(c, s):
            send(
                s,
                c,
                lambda c=c, ct=ct: clients[c].masked_input(ct, inputs[c]),  # type: ignore[misc]
                agg.add_masked_input,  # type: ignore[arg-type]
                raw=True,
            )
    request = timed_server(s, agg.close_masked_input)
    if params.active:
        s = Stage.CONSISTENCY_CHECK
        for c in request.survivors:  # type: ignore[attr-defined]
            if alive(c, s):
                send(s, c, lambda c=c: clients[c].consistency_check(request), agg.add_consistency)  # type: ignore[misc,arg-type]
        request = timed_server(s, agg.close_consistency)
    s = Stage.UNMASK
    senders = request.signatures if params.active else request.survivors  # type: ignore[attr-defined]
    for c in sorted(senders):
        if alive(c, s) and alive(c, Stage.CONSISTENCY_CHECK):
            send(s, c, lambda c=c: clients[c].unmask(request), agg.add_unmask)  # type: ignore[misc,arg-type]
    result = timed_server(s, agg.finish)
    total = time.perf_counter() - t_start
    active_clients = [c for c in params.participants if client_s[c] > 0]
    secs = [client_s[c] for c in active_clients] or [0.0]
    timings = {
        "total": total,
        "server": sum(server_s.values()),
        "client_total": sum(secs),
        "client_mean": sum(secs) / len(secs),
        "client_max": max(secs),
    }
    cpus = [client_cpu[c] for c in active_clients] or [0.0]
    timings["client_cpu_mean"] = sum(cpus) / len(cpus)
    timings["client_cpu_max"] = max(cpus)
    timings["server_cpu"] = sum(server_cpu.values())
    for k, v in server_s.items():
        timings[f"server_{k}"] = v
        timings[f"server_cpu_{k}"] = server_cpu[k]
    for k, v in client_stage_s.items():
        timings[f"client_{k}_mean"] = v / max(1, stage_counts.get(k, 1))
    return RoundResult(
        sum=result,  # type: ignore[arg-type]
        survivors=agg.survivors,
        dropped=agg.dropped,
        timings=timings,
        upload_bytes=upload,
        client_seconds=client_s,
        dropouts_by_stage=agg.dropouts_by_stage(),
    )
