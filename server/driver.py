"""The round driver: samples devices, runs the secagg stages with deadlines, applies FedAvg.

Threat model. The server is honest-but-curious: it follows the protocol but would like to
learn individual updates. It therefore only ever holds what ``secagg.AggregatorProtocol``
keeps (public keys, opaque ciphertexts for relay, a running sum mod 2^b, id sets, unmask
shares). A masked input is added to the running sum inside the request that carries it
(:meth:`RoundDriver.submit_masked_input`) and is never stored, logged or kept. What the
server learns per round is the decoded sum of the survivors' clipped, noised updates,
which is differentially private by the distributed noise the devices added (dp/); the
accountant charges exactly what that round guaranteed. Devices are authenticated
(secagg.auth) so nobody can speak for another device in the protocol.

Concurrency. Everything runs on one asyncio loop. Devices learn of stage changes by
long-poll on a per-version event (:meth:`RoundDriver.wait_for_change`); the driver waits
for "all expected messages arrived" on an event with the stage deadline as timeout; one
``asyncio.Lock`` per round makes every ``add_*``/``close_*`` atomic with the stage checks,
so a message either lands before the stage closes or is refused with 409.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dp import Decoder, EncodingPlan, PrivacyAccountant, update_clip
from secagg import (
    AbortError,
    AdvertiseKeys,
    AggregatorProtocol,
    ConsistencyCheck,
    MaskedInput,
    RoundParams,
    SecAggError,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from server.config import ExperimentConfig
from server.errors import ApiError
from server.model import ModelService, fedavg_step
from server.store import Store

__all__ = ["RoundDriver", "RoundError", "Snapshot", "STAGE_NAMES"]

log = logging.getLogger("server.driver")

#: masked inputs at least this long are added to the running sum in a worker thread
THREAD_MIN_BYTES = 1 << 16

STAGE_NAMES: dict[Stage, str] = {
    Stage.ADVERTISE_KEYS: "advertise_keys",
    Stage.SHARE_KEYS: "share_keys",
    Stage.MASKED_INPUT: "masked_input",
    Stage.CONSISTENCY_CHECK: "consistency_check",
    Stage.UNMASK: "unmask",
    Stage.DONE: "done",
    Stage.ABORTED: "aborted",
}
_ORDER = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
    Stage.DONE,
]


def _rank(stage: Stage) -> int:
    return _ORDER.index(stage) if stage in _ORDER else -1


class RoundError(ApiError):
    """A device request that does not fit the round state; carries the HTTP status."""


@dataclass
class _Round:
    """In-memory state of the round in flight (never a device's vector)."""

    round_id: int
    params: RoundParams
    plan: EncodingPlan
    rotation_seed: bytes
    agg: AggregatorProtocol
    sample_rate: float
    started_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stage: Stage = Stage.ADVERTISE_KEYS
    expected: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    deadline: float | None = None
    keys_for: dict[int, dict[int, AdvertiseKeys]] | None = None
    cts_for: dict[int, dict[int, bytes]] | None = None
    consistency_request: UnmaskRequest | None = None
    unmask_request: UnmaskRequest | None = None
    dropouts: dict[str, list[int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.params.participants)


@dataclass(frozen=True)
class Snapshot:
    """The public state devices long-poll on (``GET /v1/rounds/current``)."""

    round: int | None
    stage: str
    version: int
    deadline: float | None
    params: dict[str, Any] | None
    plan: dict[str, Any] | None
    rotation_seed: bytes | None
    model_version: int
    participants: frozenset[int]


class RoundDriver:
    """Runs rounds until the configured count, the ε budget, or too many aborts stop it."""

    def __init__(
        self,
        config: ExperimentConfig,
        store: Store,
        models: ModelService,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.store = store
        self.models = models
        self._random_bytes = random_bytes
        self._sampler = random.SystemRandom()
        self._version = 0
        self._changed = asyncio.Event()
        self._registered = asyncio.Event()
        self._stage = "waiting"
        self._round: _Round | None = None
        self._last_round_id: int | None = None
        self._finished_reason: str | None = None
        self._weights = np.zeros(0, dtype=np.float32)
        self._momentum: np.ndarray | None = None
        self.model_version = 0
        self._model_bytes: bytes = b""
        self.accountant: PrivacyAccountant | None = None
        self.sample_rate: float | None = None
        self.rounds_done = 0
        self._clip = float(config.dp.clip)
        self._consecutive_aborts = 0
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- startup / state
    def restore(self, initial_weights: np.ndarray) -> None:
        """Load the latest model, mark a crashed round aborted, rebuild the accountant."""
        aborted = self.store.abort_running("server restarted while the round was in flight")
        for rid in aborted:
            log.warning("round %d was in flight at the last shutdown: marked aborted", rid)
        latest = self.store.latest_model()
        if latest is None:
            self._weights = np.asarray(initial_weights, dtype=np.float32).copy()
            self.store.save_model(0, self._weights)
            self.model_version = 0
        else:
            if latest.weights.size != np.asarray(initial_weights).size:
                raise ValueError(
                    f"database {str(self.store.path)!r} holds a model of {latest.weights.size} "
                    f"weights; task {self.config.training.task!r} has "
                    f"{np.asarray(initial_weights).size}"
                )
            self._weights = latest.weights
            self._momentum = latest.momentum
            self.model_version = latest.version
        self._model_bytes = self._weights.astype("<f4").tobytes()
        stored_task = self.store.get_meta("task")
        if stored_task is not None and stored_task != self.config.training.task:
            raise ValueError(
                f"database {str(self.store.path)!r} belongs to task {stored_task!r}, "
                f"not {self.config.training.task!r}"
            )
        self.store.set_meta("task", self.config.training.task)
        self.store.set_meta("dim", int(self._weights.size))
        stored_clip = self.store.get_meta("clip")
        if self.config.dp.adaptive_clip and stored_clip is not None:
            self._clip = float(stored_clip)
        q = self.store.get_meta("sample_rate")
        events = self.store.privacy_events()
        if q is not None:
            self._make_accountant(float(q))
            for plan_dict, n, _ in events:
                plan = EncodingPlan.from_dict(plan_dict)
                self.accountant.compose(plan.privacy_event(n))  # type: ignore[union-attr]
        self.rounds_done = sum(1 for r in self.store.rounds() if r.get("status") == "done")
        self._last_round_id = self.store.next_round_id() - 1
        if self._last_round_id < 0:
            self._last_round_id = None
        if self.rounds_done >= self.config.server.rounds:
            self._stage = "finished"
            self._finished_reason = "all planned rounds are done"
        log.info(
            "restored: model version %d, %d rounds done, %d devices registered",
            self.model_version,
            self.rounds_done,
            self.store.device_count(),
        )

    def _make_accountant(self, q: float) -> None:
        self.sample_rate = q
        self.accountant = PrivacyAccountant(
            self.config.dp, sample_rate=q, accountant=self.config.server.accountant
        )

    @property
    def weights(self) -> np.ndarray:
        return self._weights

    @property
    def model_bytes(self) -> bytes:
        return self._model_bytes

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def version(self) -> int:
        return self._version

    @property
    def finished(self) -> bool:
        return self._stage == "finished"

    @property
    def finished_reason(self) -> str | None:
        return self._finished_reason

    def snapshot(self) -> Snapshot:
        r = self._round
        if r is None:
            return Snapshot(
                round=self._last_round_id if self._stage in ("done", "aborted") else None,
                stage=self._stage,
                version=self._version,
                deadline=None,
                params=None,
                plan=None,
                rotation_seed=None,
                model_version=self.model_version,
                participants=frozenset(),
            )
        return Snapshot(
            round=r.round_id,
            stage=self._stage,
            version=self._version,
            deadline=r.deadline,
            params=r.params.to_dict(),
            plan=r.plan.to_dict(),
            rotation_seed=r.rotation_seed,
            model_version=self.model_version,
            participants=frozenset(r.participants),
        )

    def _publish(self, stage: str) -> None:
        self._stage = stage
        self._version += 1
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait_for_change(
        self, after: int, timeout: float, skip_round: int | None = None
    ) -> Snapshot:
        """Long-poll: return as soon as ``version > after`` or ``timeout`` passed.

        With ``skip_round`` (a device that is not sampled in that round), stage changes
        inside that round do not count: the poll returns once another round starts, the
        round is over and the server waits for the next one, training finishes, or the
        timeout passes. With a thousand registered devices this spares the server and the
        devices a thousand needless wake-ups per stage.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        while self._version <= after or self._skipped(skip_round):
            remaining = end - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return self.snapshot()

    def _skipped(self, skip_round: int | None) -> bool:
        """Whether the state is still inside ``skip_round`` (see :meth:`wait_for_change`)."""
        return (
            skip_round is not None
            and self._round is not None
            and self._round.round_id == skip_round
        )

    def notify_registered(self) -> None:
        self._registered.set()

    def epsilon_report(self) -> dict[str, Any]:
        if self.accountant is None:
            return {"epsilon": 0.0, "epsilon_amplified": 0.0, "delta": self.config.dp.delta}
        rep = self.accountant.report()
        return {
            "epsilon": float(rep.epsilon),
            "epsilon_amplified": float(rep.epsilon_amplified),
            "delta": float(rep.delta),
        }

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="round-driver")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - shutting down
                pass

    async def run(self) -> None:
        """Main loop (the app starts it as a background task)."""
        try:
            if self.finished:
                return
            await self._wait_for_registration()
            while True:
                cfg = self.config.server
                if self.rounds_done >= cfg.rounds:
                    self._finish(f"all {cfg.rounds} planned rounds are done")
                    return
                if self._consecutive_aborts >= cfg.max_consecutive_aborts:
                    self._finish(f"{self._consecutive_aborts} rounds in a row aborted")
                    return
                registered = self.store.device_keys()
                if len(registered) < 2:
                    self._registered.clear()
                    await self._registered.wait()
                    continue
                if not await self._run_one_round(registered):
                    return
        except asyncio.CancelledError:
            await self._abort_current("server shutting down")
            raise
        except Exception as err:  # a server bug: log it, stop cleanly, keep serving GETs
            log.exception("round driver stopped by an internal error")
            await self._abort_current(f"internal error: {type(err).__name__}")
            self._finish(f"internal error: {type(err).__name__}: {err}")

    async def _wait_for_registration(self) -> None:
        cfg = self.config.server
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.registration_timeout
        if self._stage != "waiting":
            self._publish("waiting")
        while True:
            n = self.store.device_count()
            if n >= cfg.clients:
                return
            remaining = end - loop.time()
            if remaining <= 0 and n >= 2:
                log.info("registration timeout: starting with %d of %d devices", n, cfg.clients)
                return
            self._registered.clear()
            try:
                await asyncio.wait_for(
                    self._registered.wait(), remaining if remaining > 0 else None
                )
            except TimeoutError:
                pass

    def _finish(self, reason: str) -> None:
        self._finished_reason = reason
        self._round = None
        log.info("training finished: %s", reason)
        self._publish("finished")

    # ---------------------------------------------------------------- one round
    def _plan_round(
        self, round_id: int, sampled: list[int], registered: Mapping[int, bytes]
    ) -> tuple[RoundParams, EncodingPlan]:
        proto = self.config.protocol
        dp_cfg = self.config.dp
        if dp_cfg.adaptive_clip:
            dp_cfg = dataclasses.replace(dp_cfg, clip=self._clip)
        dim = int(self._weights.size)
        identity = {cid: registered[cid] for cid in sampled} if proto.active else None
        # RoundParams fixes the threshold t (and the minimum survivor count) from n, graph
        # and the configured fractions; the plan gives the encoded length; the final params
        # carry that length (same t, same graph seed).
        provisional = RoundParams.create(
            round_id,
            tuple(sampled),
            dim,
            dp_cfg.bits,
            graph=proto.graph,
            dropout=proto.dropout,
            corrupt=proto.corrupt,
            active=proto.active,
            identity_keys=identity,
            random_bytes=self._random_bytes,
            min_survivors=proto.min_survivors,
        )
        # Shares are sized for the fewest contributors an unmasked round can have: t, or
        # the clients' enforced minimum survivor count when one is configured.
        plan = EncodingPlan.create(
            dp_cfg, dim, n_clients=len(sampled), min_contributors=provisional.min_survivors
        )
        params = dataclasses.replace(provisional, dim=int(plan.encoded_dim))
        return params, plan

    async def _run_one_round(self, registered: Mapping[int, bytes]) -> bool:
        """Run one round; False when the driver must stop (budget)."""
        cfg = self.config.server
        round_id = self.store.next_round_id()
        n_reg = len(registered)
        k = min(cfg.per_round, n_reg)
        sampled = sorted(self._sampler.sample(sorted(registered), k))
        try:
            params, plan = self._plan_round(round_id, sampled, registered)
        except ValueError as err:  # DPConfigError / RoundParams: the configuration cannot work
            self._finish(f"cannot plan round {round_id} with {k} devices: {err}")
            return False
        if self.accountant is None:
            q = min(1.0, cfg.per_round / n_reg)
            self.store.set_meta("sample_rate", q)
            self._make_accountant(q)
        accountant = self.accountant
        if accountant is None:  # pragma: no cover - set just above
            raise RuntimeError("accountant missing")
        budget = cfg.epsilon_budget
        if budget is not None and accountant.would_exceed(
            plan.privacy_event(params.min_survivors), budget
        ):
            self._finish(
                f"the epsilon budget {budget:g} would be exceeded by round {round_id} "
                f"(worst case {params.min_survivors} contributors)"
            )
            return False
        rnd = _Round(
            round_id=round_id,
            params=params,
            plan=plan,
            rotation_seed=self._random_bytes(32),
            agg=AggregatorProtocol(params),
            sample_rate=float(self.sample_rate or 0.0),
            started_at=time.time(),
        )
        self._round = rnd
        self.store.put_round(self._record(rnd, "running"))
        log.info(
            "round %d: sampled %d of %d devices, threshold %d, graph %s, dim %d, bits %d",
            round_id,
            len(sampled),
            n_reg,
            params.threshold,
            params.graph,
            params.dim,
            params.bits,
        )
        try:
            total = await self._run_stages(rnd)
        except AbortError as err:
            await self._end_aborted(rnd, f"below threshold: {err}")
            return True
        await self._apply(rnd, total)
        return True

    async def _run_stage(self, rnd: _Round, stage: Stage, expected: set[int]) -> None:
        """Open ``stage``, wait until every expected sender arrived or the deadline."""
        loop = asyncio.get_running_loop()
        timeout = self.config.server.stage_timeout
        t0 = loop.time()
        async with rnd.lock:
            rnd.stage = stage
            rnd.expected = set(expected)
            rnd.received = set()
            rnd.all_in = asyncio.Event()
            rnd.deadline = time.time() + timeout
            if not rnd.expected:
                rnd.all_in.set()
        name = STAGE_NAMES[stage]
        log.info("round %d: stage %s opens for %d devices", rnd.round_id, name, len(expected))
        self._publish(name)
        try:
            await asyncio.wait_for(rnd.all_in.wait(), timeout)
        except TimeoutError:
            pass
        async with rnd.lock:
            missing = sorted(rnd.expected - rnd.received)
            rnd.expected = set()
        rnd.dropouts[name] = missing
        rnd.timings[name] = loop.time() - t0
        if missing:
            log.info("round %d: stage %s closed, dropouts %s", rnd.round_id, name, missing)
        else:
            log.info("round %d: stage %s closed, all arrived", rnd.round_id, name)

    async def _run_stages(self, rnd: _Round) -> np.ndarray:
        agg = rnd.agg
        await self._run_stage(rnd, Stage.ADVERTISE_KEYS, set(rnd.participants))
        async with rnd.lock:
            rnd.keys_for = agg.close_advertise()
            expected = set(agg.expected_senders())
        await self._run_stage(rnd, Stage.SHARE_KEYS, expected)
        async with rnd.lock:
            rnd.cts_for = agg.close_share_keys()
            expected = set(agg.expected_senders())
        await self._run_stage(rnd, Stage.MASKED_INPUT, expected)
        async with rnd.lock:
            request = agg.close_masked_input()
            expected = set(agg.expected_senders())
        if rnd.params.active:
            rnd.consistency_request = request
            await self._run_stage(rnd, Stage.CONSISTENCY_CHECK, expected)
            async with rnd.lock:
                request = agg.close_consistency()
                expected = set(agg.expected_senders())
        rnd.unmask_request = request
        await self._run_stage(rnd, Stage.UNMASK, expected)
        async with rnd.lock:
            t0 = time.perf_counter()
            total = await asyncio.to_thread(agg.finish)
            rnd.timings["reconstruct"] = time.perf_counter() - t0
        return np.asarray(total)

    async def _apply(self, rnd: _Round, total_mod: np.ndarray) -> None:
        """Decode the sum, FedAvg, evaluate, charge the accountant, persist."""
        survivors = tuple(rnd.agg.survivors)
        n = len(survivors)
        cfg = self.config.server
        t0 = time.perf_counter()
        decoded = await asyncio.to_thread(Decoder(rnd.plan, rnd.rotation_seed).decode, total_mod, n)
        mean = np.asarray(decoded.total, dtype=np.float64) / n
        clip_rate = None
        new_clip = None
        if decoded.clipped_count is not None:
            count = float(decoded.clipped_count)
            clip_rate = float(min(1.0, max(0.0, count / n)))
            dp_cfg = self.config.dp
            if dp_cfg.adaptive_clip and math.isfinite(count):
                new_clip = update_clip(self._clip, count, n, dp_cfg.target_quantile, dp_cfg.clip_lr)
        new_w, new_m = fedavg_step(self._weights, mean, self._momentum, cfg.server_lr, cfg.momentum)
        rnd.timings["decode_update"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        version = self.model_version + 1
        try:
            metrics = await asyncio.to_thread(self.models.evaluate, new_w, version)
        except Exception as err:  # evaluation must not lose the round
            log.exception("round %d: evaluation failed", rnd.round_id)
            metrics = {"loss": math.nan, "accuracy": math.nan, "error": str(err)}  # type: ignore[dict-item]
        rnd.timings["evaluate"] = time.perf_counter() - t1
        accountant = self.accountant
        if accountant is None:  # pragma: no cover - created before the round
            raise RuntimeError("accountant missing")
        accountant.compose(rnd.plan.privacy_event(n))
        record = self._record(rnd, "done")
        record.update(self.epsilon_report())
        record["accuracy"] = _finite(metrics.get("accuracy"))
        record["loss"] = _finite(metrics.get("loss"))
        record["clip_rate"] = clip_rate
        record["model_version"] = version
        record["survivors"] = list(survivors)
        record["finished_at"] = time.time()
        self.store.finish_round_with_model(
            record,
            rnd.plan.to_dict(),
            n,
            rnd.sample_rate,
            version,
            new_w,
            new_m,
        )
        self._weights, self._momentum = new_w, new_m
        if new_clip is not None:
            self._clip = new_clip
            self.store.set_meta("clip", new_clip)
        self._model_bytes = new_w.astype("<f4").tobytes()
        self.model_version = version
        self.rounds_done += 1
        self._consecutive_aborts = 0
        self._round = None
        self._last_round_id = rnd.round_id
        log.info(
            "round %d done: %d survivors, accuracy %s, loss %s, epsilon %.4g (amplified %.4g)",
            rnd.round_id,
            n,
            record["accuracy"],
            record["loss"],
            record["epsilon"],
            record["epsilon_amplified"],
        )
        self._publish("done")

    async def _end_aborted(self, rnd: _Round, reason: str) -> None:
        async with rnd.lock:
            rnd.stage = Stage.ABORTED
            rnd.expected = set()
        record = self._record(rnd, "aborted")
        record["abort_reason"] = reason
        record["finished_at"] = time.time()
        self.store.put_round(record)
        self._consecutive_aborts += 1
        self._round = None
        self._last_round_id = rnd.round_id
        log.info("round %d aborted: %s (no privacy charged)", rnd.round_id, reason)
        self._publish("aborted")

    async def _abort_current(self, reason: str) -> None:
        rnd = self._round
        if rnd is not None:
            try:
                await self._end_aborted(rnd, reason)
            except Exception:  # pragma: no cover - best effort during shutdown
                log.exception("could not record the abort of round %d", rnd.round_id)

    def _record(self, rnd: _Round, status: str) -> dict[str, Any]:
        rep = self.epsilon_report()
        survivors: list[int] = []
        if status == "done":
            survivors = list(rnd.agg.survivors)
        return {
            "round": rnd.round_id,
            "status": status,
            "sampled": list(rnd.participants),
            "survivors": survivors,
            "dropouts": {k: list(v) for k, v in rnd.dropouts.items()},
            "threshold": rnd.params.threshold,
            "graph": rnd.params.graph,
            "degree": rnd.params.degree,
            "dim": rnd.params.dim,
            "bits": rnd.params.bits,
            "accuracy": None,
            "loss": None,
            "metric": self.models.task.metric_name,
            "epsilon": rep["epsilon"],
            "epsilon_amplified": rep["epsilon_amplified"],
            "delta": rep["delta"],
            "epsilon_budget": self.config.server.epsilon_budget,
            "sample_rate": rnd.sample_rate,
            "clip": float(rnd.plan.config.clip),
            "clip_rate": None,
            "model_version": self.model_version,
            "started_at": rnd.started_at,
            "finished_at": None,
            "timings": dict(rnd.timings),
        }

    # ---------------------------------------------------------------- device messages
    def _round_for(self, round_id: int, device_id: int) -> _Round:
        rnd = self._round
        if rnd is None or rnd.round_id != round_id:
            last = self._last_round_id
            current = None if rnd is None else rnd.round_id
            if (last is not None and round_id <= last) or (
                current is not None and round_id < current
            ):
                raise RoundError(409, f"round {round_id} is closed")
            raise RoundError(404, f"unknown round {round_id}")
        if device_id not in rnd.params.participants:
            raise RoundError(403, f"device {device_id} is not a participant of round {round_id}")
        return rnd

    @staticmethod
    def _check_stage(rnd: _Round, stage: Stage, device_id: int) -> None:
        if rnd.stage != stage:
            raise RoundError(
                409,
                f"round {rnd.round_id} is in stage {STAGE_NAMES.get(rnd.stage, rnd.stage)}, "
                f"not {STAGE_NAMES[stage]}",
            )
        if device_id in rnd.received:
            raise RoundError(
                409, f"device {device_id} already sent its {STAGE_NAMES[stage]} message"
            )
        if device_id not in rnd.expected:
            raise RoundError(
                409,
                f"device {device_id} is not expected in stage {STAGE_NAMES[stage]} of round "
                f"{rnd.round_id} (dropped earlier or stage closed)",
            )

    @staticmethod
    def _accepted(rnd: _Round, device_id: int) -> None:
        rnd.received.add(device_id)
        if rnd.expected and rnd.expected <= rnd.received:
            rnd.all_in.set()

    async def submit(
        self, round_id: int, device_id: int, stage: Stage, payload: dict[str, Any]
    ) -> None:
        """Accept a JSON protocol message of ``device_id`` for ``stage`` of ``round_id``."""
        rnd = self._round_for(round_id, device_id)
        if "sender" in payload and payload["sender"] != device_id:
            raise RoundError(
                403, f"sender {payload['sender']!r} is not the authenticated device {device_id}"
            )
        if "round_id" in payload and payload["round_id"] != round_id:
            raise RoundError(
                400, f"round_id {payload['round_id']!r} does not match the URL round {round_id}"
            )
        async with rnd.lock:
            self._check_stage(rnd, stage, device_id)
            try:
                self._parse_and_add(rnd, stage, round_id, device_id, payload)
            except SecAggError:
                raise
            except (
                TypeError,
                KeyError,
                ValueError,
                AttributeError,
                IndexError,
                OverflowError,
            ) as err:
                # from_dict is meant to raise ProtocolError on anything malformed; if some
                # input slips through as another error it is still the device's fault: 400
                raise RoundError(
                    400, f"malformed {STAGE_NAMES[stage]} message ({type(err).__name__})"
                ) from None
            self._accepted(rnd, device_id)

    @staticmethod
    def _parse_and_add(
        rnd: _Round, stage: Stage, round_id: int, device_id: int, payload: dict[str, Any]
    ) -> None:
        payload = dict(payload)
        payload["round_id"] = round_id
        payload["sender"] = device_id
        msg: Any
        if stage == Stage.ADVERTISE_KEYS:
            msg = AdvertiseKeys.from_dict(payload)
            rnd.agg.add_advertise(msg)
        elif stage == Stage.SHARE_KEYS:
            msg = ShareKeys.from_dict(payload)
            rnd.agg.add_share_keys(msg)
        elif stage == Stage.CONSISTENCY_CHECK:
            msg = ConsistencyCheck.from_dict(payload)
            rnd.agg.add_consistency(msg)
        elif stage == Stage.UNMASK:
            msg = UnmaskShares.from_dict(payload)
            rnd.agg.add_unmask(msg)
        else:  # pragma: no cover - routes only pass the stages above
            raise RoundError(400, f"stage {stage} takes no JSON message")

    def masked_input_size(self, round_id: int) -> int | None:
        """Exact body length of a masked input for ``round_id`` (None if unknown round)."""
        from secagg import packed_size

        rnd = self._round
        if rnd is None or rnd.round_id != round_id:
            return None
        return int(packed_size(rnd.params.dim, rnd.params.bits))

    async def submit_masked_input(self, round_id: int, device_id: int, data: bytes) -> None:
        """Add a masked input to the running sum, inside this call; ``data`` is not kept."""
        rnd = self._round_for(round_id, device_id)
        size = self.masked_input_size(round_id)
        if size is not None and len(data) != size:
            raise RoundError(400, f"masked input must be exactly {size} bytes, got {len(data)}")
        async with rnd.lock:
            self._check_stage(rnd, Stage.MASKED_INPUT, device_id)
            msg = MaskedInput(round_id=round_id, sender=device_id, data=data)
            if len(data) >= THREAD_MIN_BYTES:
                await asyncio.to_thread(rnd.agg.add_masked_input, msg)
            else:
                rnd.agg.add_masked_input(msg)
            del msg
            self._accepted(rnd, device_id)

    def _require_stage_at_least(self, rnd: _Round, stage: Stage, what: str) -> None:
        if rnd.stage == Stage.ABORTED or _rank(rnd.stage) < _rank(stage):
            raise RoundError(
                409,
                f"{what} of round {rnd.round_id} are not available in stage "
                f"{STAGE_NAMES.get(rnd.stage, rnd.stage)}",
            )

    def keys_for(self, round_id: int, device_id: int) -> dict[int, AdvertiseKeys]:
        rnd = self._round_for(round_id, device_id)
        self._require_stage_at_least(rnd, Stage.SHARE_KEYS, "keys")
        if rnd.keys_for is None or device_id not in rnd.keys_for:
            raise RoundError(409, f"device {device_id} dropped out of round {round_id}")
        return rnd.keys_for[device_id]

    def ciphertexts_for(self, round_id: int, device_id: int) -> dict[int, bytes]:
        rnd = self._round_for(round_id, device_id)
        self._require_stage_at_least(rnd, Stage.MASKED_INPUT, "ciphertexts")
        if rnd.cts_for is None or device_id not in rnd.cts_for:
            raise RoundError(409, f"device {device_id} dropped out of round {round_id}")
        return rnd.cts_for[device_id]

    def consistency_request(self, round_id: int, device_id: int) -> UnmaskRequest:
        rnd = self._round_for(round_id, device_id)
        if not rnd.params.active:
            raise RoundError(409, f"round {round_id} is passive: it has no consistency check")
        self._require_stage_at_least(rnd, Stage.CONSISTENCY_CHECK, "the consistency request")
        if rnd.consistency_request is None:  # pragma: no cover - set before the stage opens
            raise RoundError(409, "consistency request not ready")
        return rnd.consistency_request

    def unmask_request(self, round_id: int, device_id: int) -> UnmaskRequest:
        rnd = self._round_for(round_id, device_id)
        self._require_stage_at_least(rnd, Stage.UNMASK, "the unmask request")
        if rnd.unmask_request is None:  # pragma: no cover - set before the stage opens
            raise RoundError(409, "unmask request not ready")
        return rnd.unmask_request


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
