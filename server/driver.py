"""The HTTP transport of the server's round logic: asyncio, deadlines, long-polls.

All of the round logic — sampling, stages, the privacy charge, decoding, the server
optimizer, evaluation, the round log — lives in :class:`server.round.ServerCore` and
:class:`server.round.RoundState`, which the in-process and Ray engines call too. This
module only adds what a network needs: stage deadlines, per-version long-poll events for
devices, an ``asyncio.Lock`` per round so that each message either lands before its stage
closes or is refused with 409, and worker threads for the heavy steps so that the event
loop keeps answering.

Threat model: see :mod:`server.round`. A masked input is added to the running sum inside
the request that carries it (:meth:`RoundDriver.submit_masked_input`) and is never
stored, logged or kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from secagg import AbortError, AdvertiseKeys, SecAggError, Stage, UnmaskRequest, packed_size
from server.config import ExperimentConfig
from server.round import (
    STAGE_NAMES,
    RoundError,
    RoundState,
    ServerCore,
    stage_rank,
)
from server.store import Store

__all__ = ["RoundDriver", "RoundError", "Snapshot", "STAGE_NAMES"]

log = logging.getLogger("server.driver")

#: masked inputs at least this long are added to the running sum in a worker thread
THREAD_MIN_BYTES = 1 << 16


@dataclass(frozen=True)
class Snapshot:
    """The state devices long-poll on (``GET /v1/rounds/current``)."""

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

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.config: ExperimentConfig = core.config
        self.store: Store = core.store
        self.models = core.models
        self._version = 0
        self._changed = asyncio.Event()
        self._registered = asyncio.Event()
        self._stage = "waiting"
        self._round: RoundState | None = None
        self._lock = asyncio.Lock()
        self._all_in = asyncio.Event()
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        # operator controls (server.control): a pause takes effect between rounds; disabled
        # devices are left out of the candidates a round is sampled from
        self.paused = False
        self._resumed = asyncio.Event()
        self.disabled: frozenset[int] = frozenset()
        self.start_requested = False

    # ---------------------------------------------------------------- state
    def restore(self, initial_weights: np.ndarray) -> None:
        self.core.restore(initial_weights)
        if self.core.finished_reason is not None:
            self._stage = "finished"
        log.info(
            "restored: model version %d, %d rounds done, %d devices registered",
            self.core.model_version, self.core.rounds_done, self.store.device_count(),
        )

    @property
    def weights(self) -> np.ndarray:
        return self.core.weights

    @property
    def model_bytes(self) -> bytes:
        return self.core.model_bytes

    @property
    def model_version(self) -> int:
        return self.core.model_version

    @property
    def rounds_done(self) -> int:
        return self.core.rounds_done

    @property
    def sample_rate(self) -> float | None:
        return self.core.sample_rate

    @property
    def accountant(self) -> Any:
        return self.core.accountant

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
        return self.core.finished_reason

    def epsilon_report(self) -> dict[str, Any]:
        return self.core.epsilon_report()

    def snapshot(self) -> Snapshot:
        r = self._round
        if r is None:
            last = self.core.last_round_id
            return Snapshot(
                round=last if self._stage in ("done", "aborted") else None,
                stage=self._stage, version=self._version, deadline=None, params=None,
                plan=None, rotation_seed=None, model_version=self.core.model_version,
                participants=frozenset(),
            )
        seed_public = getattr(r, "rotation_seed_public", True)
        return Snapshot(
            round=r.round_id,
            stage=self._stage,
            version=self._version,
            deadline=self._deadline,
            params=r.params.to_dict(),
            plan=r.plan.to_dict(),
            rotation_seed=r.rotation_seed if seed_public else None,
            model_version=self.core.model_version,
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
        round is over, training finishes, or the timeout passes.
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
        return (
            skip_round is not None
            and self._round is not None
            and self._round.round_id == skip_round
        )

    def notify_registered(self) -> None:
        self._registered.set()

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
                reason = self.core.stop_reason()
                if reason is not None:
                    self._finish(reason)
                    return
                if self.paused:
                    await self._wait_resumed()
                    continue
                registered = self.candidates()
                if len(registered) < 2:
                    self._registered.clear()
                    await self._registered.wait()
                    continue
                rnd = self.core.begin_round(registered)
                if isinstance(rnd, str):
                    if self.core.finished_reason is not None:
                        self._finish(self.core.finished_reason)
                        return
                    self._publish("aborted")  # a cohort too small: next round
                    continue
                await self._run_round(rnd)
        except asyncio.CancelledError:
            await self._abort_current("server shutting down")
            raise
        except Exception as err:  # a server bug: log it, stop cleanly, keep serving GETs
            log.exception("round driver stopped by an internal error")
            await self._abort_current(f"internal error: {type(err).__name__}")
            self.core.finished_reason = f"internal error: {type(err).__name__}: {err}"
            self._finish(self.core.finished_reason)

    async def _wait_for_registration(self) -> None:
        cfg = self.config.server
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.registration_timeout
        if self._stage != "waiting":
            self._publish("waiting")
        while True:
            n = self.store.device_count()
            if n >= cfg.clients or (self.start_requested and n >= 2):
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

    # ---------------------------------------------------------------- operator controls
    def candidates(self) -> dict[int, bytes]:
        """The registered devices a round may sample: all but the disabled ones."""
        keys = self.store.device_keys()
        return {i: k for i, k in keys.items() if i not in self.disabled} if self.disabled else keys

    def pause(self) -> None:
        """No new round starts until :meth:`resume`; a round in flight runs to its end."""
        self.paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    async def _wait_resumed(self) -> None:
        self._publish("paused")
        log.info("training paused by the operator")
        await self._resumed.wait()
        log.info("training resumed by the operator")

    def start_now(self) -> None:
        """Start rounds without waiting for ``clients`` registrations (2 suffice), and run
        the loop again if it had finished (the caller cleared the reason)."""
        self.start_requested = True
        self._registered.set()
        if self._task is not None and self._task.done():
            self._task = None
            self._publish("waiting")
        self.start()

    def touch(self) -> None:
        """Bump the state version (same stage) so long-polling dashboards refresh."""
        self._publish(self._stage)

    def _finish(self, reason: str) -> None:
        self.core.finished_reason = reason
        self._round = None
        log.info("training finished: %s", reason)
        self._publish("finished")

    # ---------------------------------------------------------------- one round
    async def _run_round(self, rnd: RoundState) -> None:
        self._round = rnd
        loop = asyncio.get_running_loop()
        timeout = self.config.server.stage_timeout
        try:
            while True:
                async with self._lock:
                    t0 = loop.time()
                    stage, _expected = rnd.advance()
                    if stage == Stage.DONE:
                        break
                    self._all_in = asyncio.Event()
                    if rnd.all_in:
                        self._all_in.set()
                    self._deadline = time.time() + timeout
                name = STAGE_NAMES[stage]
                log.info("round %d: stage %s opens for %d devices", rnd.round_id, name,
                         len(rnd.expected))
                self._publish(name)
                try:
                    await asyncio.wait_for(self._all_in.wait(), timeout)
                except TimeoutError:
                    pass
                rnd.timings[name] = loop.time() - t0
        except AbortError as err:
            await self._end_aborted(rnd, f"below threshold: {err}")
            return
        try:
            async with self._lock:
                await asyncio.to_thread(self.core.release, rnd)
        except AbortError as err:  # charged already (write-ahead): the charge stays
            await self._end_aborted(rnd, f"unmasking failed: {err}")
            return
        self._round = None
        self._deadline = None
        self._publish("done")

    async def _end_aborted(self, rnd: RoundState, reason: str) -> None:
        async with self._lock:
            self.core.abort(rnd, reason)
        self._round = None
        self._deadline = None
        self._publish("aborted")

    async def _abort_current(self, reason: str) -> None:
        rnd = self._round
        if rnd is not None and rnd.stage not in (Stage.DONE, Stage.ABORTED):
            try:
                await self._end_aborted(rnd, reason)
            except Exception:  # pragma: no cover - best effort during shutdown
                log.exception("could not record the abort of round %d", rnd.round_id)

    # ---------------------------------------------------------------- device messages
    def _round_for(self, round_id: int, device_id: int) -> RoundState:
        rnd = self._round
        if rnd is None or rnd.round_id != round_id:
            last = self.core.last_round_id
            current = None if rnd is None else rnd.round_id
            if (last is not None and round_id <= last) or (
                current is not None and round_id < current
            ):
                raise RoundError(409, f"round {round_id} is closed")
            raise RoundError(404, f"unknown round {round_id}")
        if device_id not in rnd.params.participants:
            raise RoundError(403, f"device {device_id} is not a participant of round {round_id}")
        return rnd

    def _accepted(self, all_in: bool) -> None:
        if all_in:
            self._all_in.set()

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
        async with self._lock:
            rnd.check(stage, device_id)
            try:
                msg = rnd.message_for(stage, payload, device_id)
                all_in = rnd.accept(stage, device_id, msg)
            except (SecAggError, RoundError):
                raise
            except (TypeError, KeyError, ValueError, AttributeError, IndexError,
                    OverflowError) as err:
                # from_dict raises ProtocolError on anything malformed; if some input slips
                # through as another error it is still the device's fault: 400
                raise RoundError(
                    400, f"malformed {STAGE_NAMES[stage]} message ({type(err).__name__})"
                ) from None
            self._accepted(all_in)

    def masked_input_size(self, round_id: int) -> int | None:
        """Exact body length of a masked input for ``round_id`` (None if unknown round)."""
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
        async with self._lock:
            rnd.check(Stage.MASKED_INPUT, device_id)
            msg = rnd.masked_message(device_id, data)
            if len(data) >= THREAD_MIN_BYTES:
                all_in = await asyncio.to_thread(rnd.accept, Stage.MASKED_INPUT, device_id, msg)
            else:
                all_in = rnd.accept(Stage.MASKED_INPUT, device_id, msg)
            del msg
            self._accepted(all_in)

    @staticmethod
    def _require_stage_at_least(rnd: RoundState, stage: Stage, what: str) -> None:
        if rnd.stage == Stage.ABORTED or stage_rank(rnd.stage) < stage_rank(stage):
            raise RoundError(
                409,
                f"{what} of round {rnd.round_id} are not available in stage "
                f"{STAGE_NAMES.get(rnd.stage, rnd.stage)}",
            )

    def keys_for(self, round_id: int, device_id: int) -> dict[int, AdvertiseKeys]:
        rnd = self._round_for(round_id, device_id)
        self._require_stage_at_least(rnd, Stage.SHARE_KEYS, "keys")
        if rnd.keys_for is None:
            raise RoundError(409, f"the keys of round {round_id} are no longer relayed")
        if device_id not in rnd.keys_for:
            raise RoundError(409, f"device {device_id} dropped out of round {round_id}")
        return rnd.keys_for[device_id]

    def ciphertexts_for(self, round_id: int, device_id: int) -> dict[int, bytes]:
        rnd = self._round_for(round_id, device_id)
        self._require_stage_at_least(rnd, Stage.MASKED_INPUT, "ciphertexts")
        if rnd.cts_for is None:
            raise RoundError(409, f"the ciphertexts of round {round_id} are no longer relayed")
        if device_id not in rnd.cts_for:
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


def registered_keys(store: Store) -> Mapping[int, bytes]:
    """The registered devices' identity keys (public)."""
    return store.device_keys()
