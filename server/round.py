"""The server's side of a round, written once: transport-free, synchronous, no clock.

Every transport calls this logic — the FastAPI driver (:mod:`server.driver`, asyncio
around it with deadlines and long-polls), the in-process engine
(:mod:`clients.engines.local`) and the Ray engine (:mod:`clients.engines.ray`). A
transport only moves messages and decides when a stage closes; sampling, the
:class:`secagg.AggregatorProtocol` stages, dropouts, the privacy charge, decoding, the
server optimizer, evaluation and the round log in SQLite all live here.

Threat model. The server is honest-but-curious. It only ever holds what
``AggregatorProtocol`` keeps (public keys, opaque ciphertexts for relay — dropped as soon
as the stage that needs them closes —, a running sum mod 2^b, id sets, unmask shares).
A masked input is added to the running sum inside :meth:`RoundState.accept` and is not
kept. What the server learns per round is the decoded sum of the survivors' clipped,
noised updates; the accountant is charged for it *before* it is unmasked (write-ahead, in
SQLite), so a crash between unmasking and the round log can never leave a seen sum
uncharged.

Sampling. With DP on, the default is Poisson sampling (each registered device joins a
round independently with probability q = per_round / N), which is what the amplified ε
assumes; ``sampling = "fixed"`` samples exactly ``per_round`` and is accounted with a
sampling-without-replacement bound. The deployed server draws the cohort from the OS
CSPRNG (``random.SystemRandom``); simulations inject a seeded generator (and say so).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dp import Decoder, EncodingPlan, PrivacyAccountant, corrupt_count, update_clip
from secagg import (
    AdvertiseKeys,
    AggregatorProtocol,
    ConsistencyCheck,
    MaskedInput,
    RoundParams,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from server.config import ExperimentConfig
from server.errors import ApiError
from server.model import ModelService
from server.optimizers import ServerOptimizer
from server.store import Store

__all__ = [
    "CohortSampler",
    "RoundError",
    "RoundState",
    "ServerCore",
    "STAGE_NAMES",
    "STAGE_ORDER",
    "stage_rank",
]

log = logging.getLogger("server.round")

STAGE_NAMES: dict[Stage, str] = {
    Stage.ADVERTISE_KEYS: "advertise_keys",
    Stage.SHARE_KEYS: "share_keys",
    Stage.MASKED_INPUT: "masked_input",
    Stage.CONSISTENCY_CHECK: "consistency_check",
    Stage.UNMASK: "unmask",
    Stage.DONE: "done",
    Stage.ABORTED: "aborted",
}
STAGE_ORDER = [
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
    Stage.DONE,
]


def stage_rank(stage: Stage) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else -1


class RoundError(ApiError):
    """A device message that does not fit the round state; carries the HTTP status."""


# --------------------------------------------------------------------------- sampling


class UniformSource(Protocol):
    def random(self) -> float: ...

    def sample(self, population: Sequence[int], k: int) -> list[int]: ...


class CohortSampler:
    """Who takes part in a round.

    ``poisson``: every registered device independently with probability ``q`` (the cohort
    size varies; this is the sampling the amplified ε of ``dp`` assumes by default).
    ``fixed``: exactly ``min(k, N)`` devices uniformly without replacement.

    ``source`` is ``random.SystemRandom()`` on a deployed server (OS CSPRNG: an observer
    must not predict who takes part). Simulations pass a seeded ``random.Random`` so that
    a research run is reproducible — simulation only.
    """

    def __init__(self, kind: str, per_round: int, source: UniformSource | None = None) -> None:
        if kind not in ("poisson", "fixed"):
            raise ValueError(f"sampling must be 'poisson' or 'fixed', got {kind!r}")
        if isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1:
            raise ValueError(f"per_round must be an integer >= 1, got {per_round!r}")
        self.kind = kind
        self.per_round = per_round
        self.source: UniformSource = source if source is not None else random.SystemRandom()

    def rate(self, population: int) -> float:
        return min(1.0, self.per_round / population)

    def sample(self, registered: Sequence[int], population: int) -> list[int]:
        ids = sorted(registered)
        if self.kind == "fixed":
            return sorted(self.source.sample(ids, min(self.per_round, len(ids))))
        q = self.rate(population)
        return [i for i in ids if self.source.random() < q]


# --------------------------------------------------------------------------- one round


@dataclass
class RoundState:
    """The round in flight (never a device's vector): stage bookkeeping around the
    aggregator. Transports call :meth:`accept` for each message and :meth:`advance`
    when a stage closes (all arrived or deadline)."""

    round_id: int
    params: RoundParams
    plan: EncodingPlan
    rotation_seed: bytes
    agg: AggregatorProtocol
    sample_rate: float
    started_at: float
    stage: Stage = Stage.ADVERTISE_KEYS
    expected: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)
    keys_for: dict[int, dict[int, AdvertiseKeys]] | None = None
    cts_for: dict[int, dict[int, bytes]] | None = None
    consistency_request: UnmaskRequest | None = None
    unmask_request: UnmaskRequest | None = None
    dropouts: dict[str, list[int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    opened: bool = False
    #: enabled devices the cohort was drawn from (operator-disabled ones are left out)
    candidates: int | None = None
    #: the cohort size the accountant charges (see :func:`charged_cohort`), of this N
    charged_cohort: int | None = None
    charged_population: int | None = None
    #: the sampler's per-round target when the round was drawn
    per_round: int | None = None

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(self.params.participants)

    @property
    def all_in(self) -> bool:
        return self.expected <= self.received

    @property
    def rotation_seed_public(self) -> bool:
        """The rotation seed is revealed when the masked-input stage opens: after the keys
        are fixed and the local update trained, so no device can shape its update around
        it before then (a device that aligns it afterwards shows up in the wrap report)."""
        return stage_rank(self.stage) >= stage_rank(Stage.MASKED_INPUT)

    def open(self, stage: Stage, expected: set[int]) -> None:
        self.stage = stage
        self.expected = set(expected)
        self.received = set()
        self.opened = True

    def close(self) -> list[int]:
        """Close the open stage: who was expected and did not arrive is a dropout."""
        missing = sorted(self.expected - self.received)
        self.dropouts[STAGE_NAMES[self.stage]] = missing
        self.expected = set()
        return missing

    def check(self, stage: Stage, device_id: int) -> None:
        if device_id not in self.params.participants:
            raise RoundError(
                403, f"device {device_id} is not a participant of round {self.round_id}"
            )
        if self.stage != stage:
            raise RoundError(
                409,
                f"round {self.round_id} is in stage {STAGE_NAMES.get(self.stage, self.stage)}, "
                f"not {STAGE_NAMES[stage]}",
            )
        if device_id in self.received:
            raise RoundError(
                409, f"device {device_id} already sent its {STAGE_NAMES[stage]} message"
            )
        if device_id not in self.expected:
            raise RoundError(
                409,
                f"device {device_id} is not expected in stage {STAGE_NAMES[stage]} of round "
                f"{self.round_id} (dropped earlier or stage closed)",
            )

    def accept(self, stage: Stage, device_id: int, msg: Any) -> bool:
        """Check and add one typed message; True when every expected sender arrived.

        Raises :class:`RoundError` (stage / participant problems) or the aggregator's
        :class:`secagg.SecAggError` (malformed, replayed, bad signature, ...)."""
        self.check(stage, device_id)
        if getattr(msg, "sender", device_id) != device_id:
            raise RoundError(
                403, f"sender {msg.sender!r} is not the authenticated device {device_id}"
            )
        if getattr(msg, "round_id", self.round_id) != self.round_id:
            raise RoundError(
                400, f"round_id {msg.round_id!r} does not match round {self.round_id}"
            )
        adders: dict[Stage, Callable[[Any], None]] = {
            Stage.ADVERTISE_KEYS: self.agg.add_advertise,
            Stage.SHARE_KEYS: self.agg.add_share_keys,
            Stage.MASKED_INPUT: self.agg.add_masked_input,
            Stage.CONSISTENCY_CHECK: self.agg.add_consistency,
            Stage.UNMASK: self.agg.add_unmask,
        }
        adders[stage](msg)
        self.received.add(device_id)
        return self.all_in

    def advance(self) -> tuple[Stage, set[int]]:
        """Close the open stage and open the next; returns (stage, expected senders).

        Returns ``(Stage.DONE, set())`` after Unmasking. Raises :class:`AbortError` when
        too few remain (nothing is revealed). Relayed material is dropped once the stage
        that needs it has closed: keys after ShareKeys, ciphertexts after MaskedInput."""
        agg = self.agg
        if not self.opened:
            nxt, expected = Stage.ADVERTISE_KEYS, set(self.participants)
        else:
            self.close()
            if self.stage == Stage.ADVERTISE_KEYS:
                self.keys_for = agg.close_advertise()
                nxt = Stage.SHARE_KEYS
            elif self.stage == Stage.SHARE_KEYS:
                self.keys_for = None
                self.cts_for = agg.close_share_keys()
                nxt = Stage.MASKED_INPUT
            elif self.stage == Stage.MASKED_INPUT:
                self.cts_for = None
                request = agg.close_masked_input()
                if self.params.active:
                    self.consistency_request = request
                    nxt = Stage.CONSISTENCY_CHECK
                else:
                    self.unmask_request = request
                    nxt = Stage.UNMASK
            elif self.stage == Stage.CONSISTENCY_CHECK:
                self.unmask_request = agg.close_consistency()
                nxt = Stage.UNMASK
            elif self.stage == Stage.UNMASK:
                self.stage = Stage.DONE
                return Stage.DONE, set()
            else:
                raise RuntimeError(f"cannot advance from stage {self.stage}")
            expected = set(agg.expected_senders())
        self.open(nxt, expected)
        return nxt, expected

    def message_for(self, stage: Stage, payload: Mapping[str, Any], device_id: int) -> Any:
        """Parse a JSON protocol message of ``device_id`` (the round id and sender come
        from the authenticated request, not the body)."""
        data = dict(payload)
        data["round_id"] = self.round_id
        data["sender"] = device_id
        parse: Callable[[dict[str, Any]], Any] = {
            Stage.ADVERTISE_KEYS: AdvertiseKeys.from_dict,
            Stage.SHARE_KEYS: ShareKeys.from_dict,
            Stage.CONSISTENCY_CHECK: ConsistencyCheck.from_dict,
            Stage.UNMASK: UnmaskShares.from_dict,
        }[stage]
        return parse(data)

    def masked_message(self, device_id: int, data: bytes) -> MaskedInput:
        return MaskedInput(round_id=self.round_id, sender=device_id, data=data)


# --------------------------------------------------------------------------- the server


class ServerCore:
    """Everything the server does across rounds, minus transport and clock.

    ``begin_round`` samples and plans; a transport walks the stages on the returned
    :class:`RoundState`; ``release`` charges the accountant (write-ahead), unmasks,
    decodes, steps the server optimizer, evaluates and persists; ``abort`` records an
    aborted round (no charge: nothing was unmasked).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        store: Store,
        models: ModelService,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        sampler_source: UniformSource | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.models = models
        self._random_bytes = random_bytes
        cfg = config.server
        self.sampler = CohortSampler(cfg.sampling, cfg.per_round, sampler_source)
        self.optimizer = ServerOptimizer(
            name=cfg.server_opt,
            lr=cfg.server_lr,
            momentum=cfg.momentum,
            beta1=cfg.server_beta1,
            beta2=cfg.server_beta2,
            eps=cfg.server_eps,
        )
        self.weights = np.zeros(0, dtype=np.float32)
        self.opt_state: list[np.ndarray] = []
        self.model_version = 0
        self.model_bytes = b""
        self.accountant: PrivacyAccountant | None = None
        self.sample_rate: float | None = None
        self.population: int | None = None
        self.rounds_done = 0
        self.consecutive_aborts = 0
        self.last_round_id: int | None = None
        self.clip = float(config.dp.clip)
        self.finished_reason: str | None = None

    # ------------------------------------------------------------ state
    def restore(self, initial_weights: np.ndarray) -> None:
        """Load the latest model, settle a crashed round, rebuild the accountant."""
        aborted = self.store.abort_running("server restarted while the round was in flight")
        for rid in aborted:
            log.warning("round %d was in flight at the last shutdown: marked aborted", rid)
        dim = int(np.asarray(initial_weights).size)
        latest = self.store.latest_model()
        if latest is None:
            self.weights = np.asarray(initial_weights, dtype=np.float32).copy()
            self.store.save_model(0, self.weights)
            self.model_version = 0
            self.opt_state = self.optimizer.initial_state(dim)
        else:
            if latest.weights.size != dim:
                raise ValueError(
                    f"database {str(self.store.path)!r} holds a model of {latest.weights.size} "
                    f"weights; task {self.config.training.task!r} has {dim}"
                )
            self.weights = latest.weights
            self.model_version = latest.version
            self.opt_state = self.optimizer.unpack_state(latest.momentum, dim)
        self.model_bytes = self.weights.astype("<f4").tobytes()
        stored_task = self.store.get_meta("task")
        if stored_task is not None and stored_task != self.config.training.task:
            raise ValueError(
                f"database {str(self.store.path)!r} belongs to task {stored_task!r}, "
                f"not {self.config.training.task!r}"
            )
        self.store.set_meta("task", self.config.training.task)
        self.store.set_meta("dim", dim)
        stored_clip = self.store.get_meta("clip")
        if self.config.dp.adaptive_clip and stored_clip is not None:
            self.clip = float(stored_clip)
        q = self.store.get_meta("sample_rate")
        population = self.store.get_meta("population")
        if population is not None and self.store.get_meta("legacy_population") is None:
            # the N of rounds logged before each round kept its own (it never changed then)
            self.store.set_meta("legacy_population", int(population))
        if q is not None:
            self._make_accountant(float(q), None if population is None else int(population))
            self._replay_ledger()
        self.rounds_done = sum(1 for r in self.store.rounds() if r.get("status") == "done")
        last = self.store.next_round_id() - 1
        self.last_round_id = last if last >= 0 else None
        if self.rounds_done >= self.config.server.rounds:
            self.finished_reason = "all planned rounds are done"

    def _replay_ledger(self) -> None:
        """Compose every charged round of the store, in order, into the accountant."""
        accountant = self.accountant
        if accountant is None:  # pragma: no cover - callers make it first
            raise RuntimeError("accountant missing")
        population = self.population
        legacy = self.store.get_meta("legacy_population")
        for plan_dict, n, _, cohort, charged_of in self.store.privacy_ledger():
            charged_of = legacy if charged_of is None else charged_of
            if (
                self.sampler.kind == "poisson"
                and population is not None
                and charged_of is not None
                and population > charged_of
            ):
                # charged as c of a smaller N: the same fraction (or more) of today's N
                cohort = min(population, -(-cohort * population // charged_of))
            plan = EncodingPlan.from_dict(plan_dict)
            accountant.compose(plan.privacy_event(n), cohort=cohort)

    def _sync_accountant(self, candidates: int) -> None:
        """Make the accountant match the sampling the next round does.

        The first round fixes the population N (the devices it is drawn from) and
        q = per_round / N. Later, devices register or the operator changes ``per_round``
        (Poisson only) or disables and enables devices (``server.control``); then the
        accountant is rebuilt for the new (q, N) and the stored ledger replayed, which is
        exactly what a restart does (meta ``sample_rate``/``population``). The amplified
        bounds grow with the sampling fraction (see :func:`charged_cohort`), so:

        - Poisson: every round is charged as its cohort s_r of N without replacement, so
          q itself only decides whether there is an amplified figure (q < 1). N grows
          with the candidates (a cohort may then exceed the old N); earlier rounds are
          replayed at ceil(c * N_new / N_old) of N_new, at least their old fraction.
          Fewer candidates than N: the round's own charge is raised instead.
        - Fixed size: the accountant charges k of N every round. When fewer than N devices
          are enabled, N shrinks to that number for good, and every earlier round is then
          charged at k / N_new >= k / N_old; more candidates than N keep N (k of N is
          then more than k of the candidates): an upper bound, never an undercharge.
        """
        if self.accountant is None or self.population is None:
            q, population = self.sampler.rate(candidates), candidates
        else:
            population = self.population
            if self.sampler.kind == "fixed":
                population = min(population, candidates)
            else:
                population = max(population, candidates)
            q = self.sampler.rate(population)
            if q == self.sample_rate and population == self.population:
                return
        self.store.set_meta("sample_rate", q)
        self.store.set_meta("population", population)
        rebuild = self.accountant is not None
        self._make_accountant(q, population)
        if rebuild:
            self._replay_ledger()
            log.info("accountant rebuilt for sample rate %.4g of %d devices", q, population)

    def _make_accountant(self, q: float, population: int | None) -> None:
        self.sample_rate = q
        self.population = population
        self.accountant = PrivacyAccountant(
            self.config.dp,
            sample_rate=q,
            accountant=self.config.server.accountant,
            sampling=self.config.server.sampling,
            population=population,
            corrupt_fraction=self.config.protocol.corrupt,
        )

    def epsilon_report(self) -> dict[str, Any]:
        """The accountant's report, JSON-safe: an infinite ε (no guarantee, or an amplified
        figure refused for this mechanism and sampling) is None, with the adjacency each
        figure holds under and the sampling and collusion it assumes."""
        if self.accountant is None:
            return {"epsilon": 0.0, "epsilon_amplified": 0.0, "delta": self.config.dp.delta,
                    "sampling": self.sampler.kind,
                    "corrupt_fraction": self.config.protocol.corrupt}
        return dict(self.accountant.report().to_dict())

    def stop_reason(self) -> str | None:
        """Why no further round may start (planned rounds done, too many aborts)."""
        cfg = self.config.server
        if self.finished_reason is not None:
            return self.finished_reason
        if self.rounds_done >= cfg.rounds:
            return f"all {cfg.rounds} planned rounds are done"
        if self.consecutive_aborts >= cfg.max_consecutive_aborts:
            return f"{self.consecutive_aborts} rounds in a row aborted"
        return None

    # ------------------------------------------------------------ planning
    def plan(
        self, round_id: int, sampled: Sequence[int], registered: Mapping[int, bytes]
    ) -> tuple[RoundParams, EncodingPlan]:
        """Secagg parameters and the encoding plan of a round with cohort ``sampled``."""
        proto = self.config.protocol
        dp_cfg = self.config.dp
        if dp_cfg.adaptive_clip:
            dp_cfg = dataclasses.replace(dp_cfg, clip=self.clip)
        dim = int(self.weights.size)
        identity = {cid: registered[cid] for cid in sampled} if proto.active else None
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
        # Shares are sized for the fewest honest contributors an unmasked round can have:
        # the minimum survivor count less the colluding devices the threat model allows.
        plan = EncodingPlan.create(
            dp_cfg,
            dim,
            n_clients=len(sampled),
            min_contributors=provisional.min_survivors,
            corrupt=corrupt_bound(proto.corrupt, len(sampled)),
        )
        params = dataclasses.replace(provisional, dim=int(plan.encoded_dim))
        return params, plan

    def begin_round(self, registered: Mapping[int, bytes]) -> RoundState | str:
        """Sample a cohort and plan the round; return its state, or why training stops.

        A cohort too small to run securely (Poisson sampling can draw one) is recorded
        as an aborted round: nothing is released, nothing is charged."""
        reason = self.stop_reason()
        if reason is not None:
            return reason
        round_id = self.store.next_round_id()
        n_reg = len(registered)
        self._sync_accountant(n_reg)
        population = int(self.population or n_reg)
        # ``registered`` holds the enabled devices only: the Poisson rate follows them
        # (per_round of n_reg expected), and the round is charged as drawn from n_reg
        sampled = self.sampler.sample(sorted(registered), n_reg)
        charged = charged_cohort(len(sampled), population, n_reg)
        if len(sampled) < 2:
            self._record_small_cohort(round_id, sampled)
            return self.stop_reason() or ""
        try:
            params, plan = self.plan(round_id, sampled, registered)
        except ValueError as err:
            if self.sampler.kind == "poisson" and len(sampled) < self.sampler.per_round:
                self._record_small_cohort(round_id, sampled, str(err))
                return self.stop_reason() or ""
            self.finished_reason = (
                f"cannot plan round {round_id} with {len(sampled)} devices: {err}"
            )
            return self.finished_reason
        accountant = self.accountant
        if accountant is None:  # pragma: no cover - made just above
            raise RuntimeError("accountant missing")
        budget = self.config.server.epsilon_budget
        worst = plan.privacy_event(params.min_survivors)
        if budget is not None and accountant.would_exceed(worst, budget, cohort=charged):
            self.finished_reason = (
                f"the epsilon budget {budget:g} would be exceeded by round {round_id} "
                f"(worst case {params.min_survivors} contributors)"
            )
            return self.finished_reason
        rnd = RoundState(
            round_id=round_id,
            params=params,
            plan=plan,
            rotation_seed=self._random_bytes(32),
            agg=AggregatorProtocol(params),
            sample_rate=float(self.sampler.rate(n_reg)),
            started_at=time.time(),
            candidates=n_reg,
            charged_cohort=charged,
            charged_population=population,
            per_round=self.sampler.per_round,
        )
        self.store.put_round(self.record(rnd, "running"))
        log.info(
            "round %d: sampled %d of %d devices, threshold %d, graph %s, dim %d, bits %d",
            round_id, len(sampled), n_reg, params.threshold, params.graph, params.dim,
            params.bits,
        )
        return rnd

    def _record_small_cohort(self, round_id: int, sampled: Sequence[int], why: str = "") -> None:
        now = time.time()
        n = len(sampled)
        record = {
            "round": round_id, "status": "aborted", "sampled": list(sampled), "survivors": [],
            "abort_reason": f"cohort of {n} too small for a secure round" + (
                f" ({why})" if why else ""),
            "started_at": now, "finished_at": now, "sample_rate": self.sample_rate,
            "sampling": self.sampler.kind, "model_version": self.model_version,
        }
        record.update(self.epsilon_report())
        self.store.put_round(record)
        self.consecutive_aborts += 1
        self.last_round_id = round_id
        log.info("round %d aborted: %s (no privacy charged)", round_id, record["abort_reason"])

    # ------------------------------------------------------------ the end of a round
    def release(
        self,
        rnd: RoundState,
        compute_sum: Callable[[], np.ndarray] | None = None,
        *,
        secure_sum: str = "protocol",
        survivors: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Charge, unmask, decode, step, evaluate and persist the round; its record.

        The privacy charge is written to SQLite *before* the sum is computed, so a crash
        in between leaves a charged round (see :meth:`Store.abort_running`). ``compute_sum``
        defaults to the aggregator's unmasking; the exact-sum simulation passes the exact
        modular sum of the same encoded vectors instead (``secure_sum="exact"``, with the
        ``survivors`` whose vectors it summed).
        """
        survivors = tuple(rnd.agg.survivors if survivors is None else survivors)
        n = len(survivors)
        accountant = self.accountant
        if accountant is None:  # pragma: no cover - created in begin_round
            raise RuntimeError("accountant missing")
        event = rnd.plan.privacy_event(n)
        self.store.charge_round(rnd.round_id, rnd.plan.to_dict(), n, rnd.sample_rate)
        accountant.compose(event, cohort=rnd.charged_cohort or len(rnd.participants))
        t0 = time.perf_counter()
        total_mod = np.asarray(rnd.agg.finish() if compute_sum is None else compute_sum())
        rnd.timings["reconstruct"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = Decoder(rnd.plan, rnd.rotation_seed).decode(total_mod, n)
        mean = np.asarray(decoded.total, dtype=np.float64) / n
        clip_rate = new_clip = None
        if decoded.clipped_count is not None:
            count = float(decoded.clipped_count)
            clip_rate = float(min(1.0, max(0.0, count / n)))
            dp_cfg = self.config.dp
            if dp_cfg.adaptive_clip and math.isfinite(count):
                new_clip = update_clip(self.clip, count, n, dp_cfg.target_quantile, dp_cfg.clip_lr)
        new_w, new_state = self.optimizer.step(self.weights, mean, self.opt_state)
        rnd.timings["decode_update"] = time.perf_counter() - t0
        version = self.model_version + 1
        metrics: dict[str, Any] = {"loss": None, "accuracy": None}
        every = self.config.server.eval_every
        last_planned = self.rounds_done + 1 >= self.config.server.rounds
        if every > 0 and ((self.rounds_done + 1) % every == 0 or last_planned):
            t1 = time.perf_counter()
            try:
                metrics = self.models.evaluate(new_w, version)
            except Exception as err:  # evaluation must not lose the round
                log.exception("round %d: evaluation failed", rnd.round_id)
                metrics = {"loss": None, "accuracy": None, "error": str(err)}
            rnd.timings["evaluate"] = time.perf_counter() - t1
        record = self.record(rnd, "done")
        record.update(self.epsilon_report())
        record["accuracy"] = _finite(metrics.get("accuracy"))
        record["loss"] = _finite(metrics.get("loss"))
        record["clip_rate"] = clip_rate
        record["model_version"] = version
        record["survivors"] = list(survivors)
        record["secure_sum"] = secure_sum
        # devices whose unmask shares were found wrong and left out (a count: who took
        # part is not published)
        record["excluded_senders"] = len(getattr(rnd.agg, "excluded_senders", ()) or ())
        if decoded.evaluation is not None:
            # what the devices measured on their held-out splits, of the model they were
            # sent at the start of this round (the previous round's release)
            record["federated_eval"] = dict(decoded.evaluation, model_version=self.model_version)
        record["wrap"] = decoded.wrap_report()
        if record["wrap"]["wrap_suspected"]:
            log.warning(
                "round %d: the decoded sum may have wrapped mod 2^%d (%d coordinates near "
                "the edge, %d outliers): the update may be corrupted",
                rnd.round_id, rnd.params.bits, record["wrap"]["near_wrap"],
                record["wrap"]["outliers"],
            )
        record["finished_at"] = time.time()
        self.store.finish_round_with_model(
            record, rnd.plan.to_dict(), n, rnd.sample_rate, version, new_w,
            self.optimizer.pack_state(new_state),
        )
        self.weights, self.opt_state = new_w, new_state
        if new_clip is not None:
            self.clip = new_clip
            self.store.set_meta("clip", new_clip)
        self.model_bytes = new_w.astype("<f4").tobytes()
        self.model_version = version
        self.rounds_done += 1
        self.consecutive_aborts = 0
        self.last_round_id = rnd.round_id
        rnd.stage = Stage.DONE
        log.info(
            "round %d done: %d survivors, accuracy %s, epsilon %s (amplified %s)",
            rnd.round_id, n, record["accuracy"], record["epsilon"], record["epsilon_amplified"],
        )
        return record

    def abort(self, rnd: RoundState, reason: str) -> dict[str, Any]:
        """Record an aborted round. Nothing is charged unless the write-ahead charge was
        already made (an abort while unmasking): then the charge stays."""
        rnd.stage = Stage.ABORTED
        rnd.expected = set()
        record = self.record(rnd, "aborted")
        record["abort_reason"] = reason
        record["charged"] = self.store.is_charged(rnd.round_id)
        record["finished_at"] = time.time()
        self.store.put_round(record)
        self.consecutive_aborts += 1
        self.last_round_id = rnd.round_id
        log.info("round %d aborted: %s (charged: %s)", rnd.round_id, reason, record["charged"])
        return record

    def record(self, rnd: RoundState, status: str) -> dict[str, Any]:
        rep = self.epsilon_report()
        return {
            "round": rnd.round_id,
            "status": status,
            "sampled": list(rnd.participants),
            "survivors": [],
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
            "sampling": self.sampler.kind,
            "epsilon_budget": self.config.server.epsilon_budget,
            "sample_rate": rnd.sample_rate,
            "per_round": rnd.per_round,
            "candidates": rnd.candidates,
            "charged_cohort": rnd.charged_cohort,
            "charged_population": rnd.charged_population,
            "clip": float(rnd.plan.config.clip),
            "clip_rate": None,
            "model_version": self.model_version,
            "started_at": rnd.started_at,
            "finished_at": None,
            "timings": dict(rnd.timings),
        }


def charged_cohort(sampled: int, population: int, candidates: int) -> int:
    """The cohort size to charge a round with, for an accountant of population N.

    A round draws ``sampled`` devices from the ``candidates`` enabled ones; given that size
    the cohort is a uniform subset of them, so its amplified cost is the bound at
    gamma = sampled / candidates (a disabled device is never sampled: its cost is 0). The
    accountant computes gamma = cohort / N. With N candidates that is ``sampled``; with
    fewer it is ceil(sampled * N / candidates), the smallest cohort whose gamma is >= the
    true one. (More candidates than N happen only under fixed-size sampling, whose N does
    not grow: k of N is then more than k of the candidates; see
    ``ServerCore._sync_accountant``.) An upper bound, because the subsampled RDP bounds
    used (Wang-Balle-Kasiviswanathan, general and Gaussian) are
    log(1 + sum_j gamma^j a_j) / (alpha - 1) with a_j >= 0: non-decreasing in gamma
    (tests/server/test_control.py checks it through the accountant).
    """
    if candidates >= population or sampled == 0:
        return sampled
    return min(population, -(-sampled * population // candidates))


def corrupt_bound(fraction: float, n: int) -> int:
    """How many of ``n`` sampled devices the threat model lets collude with the server
    (``dp.corrupt_count``: one rounding rule for the sizing and the accountant)."""
    return int(corrupt_count(fraction, n))


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
