"""One federated-learning device speaking the secagg-dp HTTP API (CONTRACT.md, "HTTP API v1").

What a device does, round after round, until the server says training is "finished":

1. it long-polls ``GET /v1/rounds/current?wait=S&after=V`` (never a sleep loop) and, when it
   is sampled for a round, walks the secure-aggregation stages with a
   :class:`secagg.ClientProtocol`;
2. it fetches the global model, trains locally on its own shard with the compiled local
   update (:class:`clients.training.LocalTrainer`), and when the masked-input stage opens
   (and with it the round's rotation seed) clips, rotates, quantizes and noises the update
   with :class:`dp.Encoder` (its share of the distributed DP noise), and
3. uploads only the *masked* encoding ``y_u = x_u + PRG(b_u) ± Σ PRG(s_uv) mod 2^b``.

Threat model: the server is honest-but-curious (or, with ``active`` rounds, may lie about
who survived; the :class:`~secagg.ClientProtocol` refuses to reveal both shares of a
peer). The device never sends its update, its norm or whether it was clipped: the server
learns only the secure sum of at least ``t`` encodings, each already carrying its share
of DP noise, so the sum is DP even if the server sees every message.

The round logic is :class:`clients.round.DeviceRound`, the same object every engine
drives; :class:`RoundSession` only turns the server's JSON into its typed messages and
back. :class:`Device` glues it to a :class:`~clients.device.transport.ServerClient`
(signed httpx) and to a :class:`Trainer`. Two test/simulation hooks exist:
``on_encoded(round, encoded)`` sees the integer vector a device fed into secure
aggregation (so an end-to-end test can recompute the sum on the device side), and a
:class:`~clients.engines.common.DropoutSchedule` makes a device vanish at a chosen stage.
"""


from __future__ import annotations

import _thread
import base64
import binascii
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clients.device.transport import DeviceError, ServerClient, ServerRejected
from clients.engines.common import DropoutSchedule, training_seed

if TYPE_CHECKING:  # heavy imports (TensorFlow) stay lazy
    from clients.tasks import Task
    from dp.prng import SecureRng

T = TypeVar("T")

# Server stages that carry a protocol step for a sampled device, in order.
ADVERTISE = "advertise_keys"
SHARE = "share_keys"
MASKED = "masked_input"
CONSISTENCY = "consistency_check"
UNMASK = "unmask"
PROTOCOL_STAGES: tuple[str, ...] = (ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK)
FINISHED = "finished"

log = logging.getLogger("clients.device")
# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingSettings:
    """Local-training hyperparameters and the partition a device takes its shard from.

    The server's public config (``GET /v1/status`` -> ``config["training"]``) is the
    source of truth; CLI flags are only the fallback.
    """

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    eval_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.partition not in ("iid", "dirichlet"):
            raise ValueError(f"partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.eval_fraction <= 0.9:
            raise ValueError(f"eval_fraction must be in [0, 0.9], got {self.eval_fraction}")

    @classmethod
    def from_public_config(
        cls, config: Mapping[str, Any] | None, fallback: TrainingSettings
    ) -> TrainingSettings:
        """Overlay the server's public training config (if any) on ``fallback``."""
        if not config:
            return fallback
        section = config.get("training", config)
        if not isinstance(section, Mapping):
            return fallback
        values: dict[str, Any] = {}
        for name, cast in (
            ("local_epochs", int),
            ("batch_size", int),
            ("lr", float),
            ("partition", str),
            ("alpha", float),
            ("seed", int),
            ("eval_fraction", float),
        ):
            if section.get(name) is not None:
                values[name] = cast(section[name])
        current = {k: getattr(fallback, k) for k in fallback.__dataclass_fields__}
        current.update(values)
        return cls(**current)


def warm_up_encoder(dp_config: Any, dim: int, n_clients: int, min_contributors: int) -> None:
    """Encode one zero update once, so the first real round does not pay the encoder's
    one-off costs (plan, rotation buffers) inside a stage deadline."""
    from dp import Encoder, EncodingPlan
    from dp.prng import SecureRng

    plan = EncodingPlan.create(dp_config, dim, n_clients, min_contributors)
    evaluation = [0.0, 0.0, 0.0] if plan.config.eval_buckets else None  # an empty held-out set
    Encoder(plan, os.urandom(32)).encode(
        np.zeros(dim, dtype=np.float32), SecureRng.from_os(), evaluation
    )


class Trainer:
    """Compiled local training (:class:`clients.training.LocalTrainer`), optionally shared
    by many devices of one process.

    Everything TensorFlow does runs on the trainer's one worker thread (:meth:`call`),
    whichever device thread asks: TensorFlow sets up per-thread state on a thread's first
    ops, which with one thread per simulated device made nearly every call a first one.
    """

    def __init__(self, task: Task, lock: _thread.LockType | None = None) -> None:
        self.task = task
        self.lock = lock or threading.Lock()
        self._trainer: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf-worker")

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread under ``lock``; return its
        result (or raise its exception). Must not be called with ``lock`` held."""

        def job() -> T:
            with self.lock:
                return fn(*args, **kwargs)

        return self._worker.submit(job).result()

    def _local(self) -> Any:
        """The compiled :class:`clients.training.LocalTrainer` (built on first use, on the
        worker thread)."""
        if self._trainer is None:
            from clients.training import LocalTrainer

            self._trainer = LocalTrainer(self.task)
        return self._trainer

    def train(
        self,
        global_weights: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        settings: TrainingSettings,
        seed: int,
    ) -> np.ndarray:
        """Return the float32 update ``new - global`` after local epochs on ``(x, y)``."""

        def fit() -> np.ndarray:  # on the worker thread, under the lock
            return self._local().update(
                global_weights, x, y, epochs=settings.local_epochs,
                batch_size=settings.batch_size, lr=settings.lr, seed=seed,
            )

        return np.asarray(self.call(fit), dtype=np.float32)

    def evaluate(
        self, global_weights: np.ndarray, x: np.ndarray, y: np.ndarray, plan: Any
    ) -> np.ndarray:
        """This device's (accuracy, examples, loss sum) of ``global_weights`` on its
        held-out ``(x, y)``, within the plan's bounds (federated evaluation)."""

        def run() -> np.ndarray:
            return self._local().evaluate(
                global_weights, [(x, y)], max_examples=plan.config.eval_max_examples,
                max_loss=plan.config.eval_max_loss,
            )[0]

        return np.asarray(self.call(run), dtype=np.float64)


# --------------------------------------------------------------------------- one round


@dataclass
class RoundTrace:
    """Device-side record of one round (test hook only; never sent anywhere)."""

    round_id: int
    device_id: int
    model_version: int | None
    global_weights: np.ndarray
    delta: np.ndarray
    encoded: np.ndarray
    masked: bytes
    plan: dict[str, Any]
    rotation_seed: bytes


@dataclass
class RoundSession:
    """The JSON side of one round: the server's messages into a
    :class:`clients.round.DeviceRound` and its answers back. ``done`` lists the server
    stages this device completed; a device that missed a stage is ``lost`` for the round.
    """

    device_round: Any  # clients.round.DeviceRound
    plan_dict: dict[str, Any]
    drop_stage: str | None = None
    done: set[str] = field(default_factory=set)
    lost: bool = False
    delta: np.ndarray | None = None
    evaluation: np.ndarray | None = None
    trace: RoundTrace | None = None

    @property
    def round_id(self) -> int:
        return int(self.device_round.round_id)

    @property
    def device_id(self) -> int:
        return int(self.device_round.device_id)

    @property
    def params(self) -> Any:
        return self.device_round.params

    @property
    def plan(self) -> Any:
        return self.device_round.plan

    @property
    def encoded(self) -> np.ndarray | None:
        return self.device_round.encoded

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        device_id: int,
        signing_key: Ed25519PrivateKey | None,
        *,
        drop_stage: str | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        policy: Any = None,
        pinned_identity_keys: Mapping[int, bytes] | None = None,
    ) -> RoundSession:
        """Build the session from the ``GET /v1/rounds/current`` state of a sampled round
        (raises DeviceError when the round is malformed or breaks the device's checks)."""
        from clients.round import DeviceRound, RoundRefused
        from dp import EncodingPlan
        from secagg import RoundParams

        if state.get("params") is None or state.get("plan") is None:
            raise DeviceError(f"round {state.get('round')} state lacks params or plan")
        plan_dict = dict(state["plan"])
        try:
            params = RoundParams.from_dict(state["params"])
            plan = EncodingPlan.from_dict(plan_dict)
            dev = DeviceRound(
                params, plan, device_id, signing_key=signing_key, policy=policy,
                pinned_identity_keys=pinned_identity_keys, random_bytes=random_bytes,
            )
        except (RoundRefused, ValueError) as exc:
            raise DeviceError(str(exc)) from exc
        return cls(device_round=dev, plan_dict=plan_dict, drop_stage=drop_stage)

    def stages(self) -> tuple[str, ...]:
        """The protocol stages of this round, in order (consistency only when active)."""
        return tuple(s for s in PROTOCOL_STAGES if s != CONSISTENCY or self.params.active)

    def may_run(self, stage: str) -> bool:
        """True if every earlier stage of the round was completed by this device."""
        order = self.stages()
        if stage not in order:
            return False
        return all(s in self.done for s in order[: order.index(stage)])

    def silent_at(self, stage: str) -> bool:
        """True if the dropout schedule says this device has vanished by ``stage``."""
        if self.drop_stage is None:
            return False
        order = PROTOCOL_STAGES
        return order.index(stage) >= order.index(self.drop_stage)

    # -- protocol steps (pure)
    def advertise(self) -> dict[str, Any]:
        """AdvertiseKeys as JSON."""
        return dict(self.device_round.advertise().to_dict())

    def share(self, keys_json: Mapping[str, Any]) -> dict[str, Any]:
        """ShareKeys as JSON, given ``GET /keys`` (the neighbours' advertised keys)."""
        from secagg import AdvertiseKeys

        raw = keys_json.get("keys", {})
        keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in raw.items()}
        return dict(self.device_round.share(keys).to_dict())

    def encode(self, delta: np.ndarray, rotation_seed: bytes, rng: SecureRng) -> np.ndarray:
        """Clip, rotate, quantize and noise the update (and the federated evaluation, if
        the plan has it) into Z_{2^b} (dp.Encoder)."""
        return self.device_round.encode(delta, rotation_seed, rng, self.evaluation)

    def masked(self, shares_json: Mapping[str, Any]) -> bytes:
        """The packed masked input ``y_u``, given ``GET /shares`` (ciphertexts to us)."""
        raw = shares_json.get("ciphertexts", {})
        try:
            cts = {int(k): base64.b64decode(v, validate=True) for k, v in raw.items()}
        except (binascii.Error, TypeError, ValueError) as exc:
            raise DeviceError(f"malformed ciphertexts from the server: {exc}") from exc
        return bytes(self.device_round.masked(cts).data)

    def consistency(self, request_json: Mapping[str, Any]) -> dict[str, Any]:
        """ConsistencyCheck as JSON (active mode: sign the survivor set we were shown)."""
        from secagg import UnmaskRequest

        req = UnmaskRequest.from_dict(dict(request_json))
        return dict(self.device_round.consistency(req).to_dict())

    def unmask(self, request_json: Mapping[str, Any]) -> dict[str, Any]:
        """UnmaskShares as JSON; the ClientProtocol refuses contradictory requests."""
        from secagg import UnmaskRequest

        req = UnmaskRequest.from_dict(dict(request_json))
        return dict(self.device_round.unmask(req).to_dict())


# --------------------------------------------------------------------------- device


OnEncoded = Callable[[int, np.ndarray], None]
OnTrace = Callable[[RoundTrace], None]
class Device:
    """A device process: long-poll, and for every round it is sampled in, take part.

    Args:
        client: the signed HTTP transport.
        task: the learning task (``clients.tasks.get_task(name)``).
        x, y: this device's training shard (never leaves the device).
        settings: local training settings (server config wins where present).
        trainer: local trainer (shared under a lock by devices of one process).
        index: a stable index (the shard number) used by the dropout schedule.
        dropout: optional :class:`DropoutSchedule` (simulation only).
        on_encoded: test hook ``(round, encoded vector)`` called after the masked input
            built from that vector was accepted by the server.
        on_trace: test hook receiving a :class:`RoundTrace` at the same moment.
        poll_wait: long-poll duration in seconds (<= 60).
        stop: event that makes :meth:`run` return at the next poll.
        policy: the device's local ``secagg.ClientPolicy`` (None: its secure defaults);
            a round outside it is refused with a log line.
        pinned_identity_keys: peers' identity keys learned independently of the server
            (a roster); in active rounds the round's keys must match them.
    """

    def __init__(
        self,
        client: ServerClient,
        task: Task,
        x: np.ndarray,
        y: np.ndarray,
        settings: TrainingSettings,
        *,
        trainer: Trainer | None = None,
        index: int = 0,
        dropout: DropoutSchedule | None = None,
        on_encoded: OnEncoded | None = None,
        on_trace: OnTrace | None = None,
        poll_wait: float = 30.0,
        stop: threading.Event | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        policy: Any = None,
        pinned_identity_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.pinned_identity_keys = pinned_identity_keys
        self.task = task
        self.x = x
        self.y = y
        self.settings = settings
        self.trainer = trainer or Trainer(task)
        self.index = index
        self.dropout = dropout
        self.on_encoded = on_encoded
        self.on_trace = on_trace
        self.poll_wait = poll_wait
        self.stop = stop or threading.Event()
        self.random_bytes = random_bytes
        self.session: RoundSession | None = None
        self.rounds_completed: list[int] = []
        self.rounds_lost: list[int] = []
        self._failures = 0  # consecutive 401 / 5xx answers (backoff, not exit)

    @property
    def device_id(self) -> int:
        """The id the server assigned at registration."""
        if self.client.device_id is None:
            raise DeviceError("device is not registered")
        return self.client.device_id

    def register(self) -> int:
        """Register the identity key with the server (idempotent)."""
        return self.client.register()

    # -- main loop
    def run(self) -> None:
        """Take part in rounds until the server reports "finished" or ``stop`` is set."""
        if self.client.device_id is None:
            self.register()
        version = -1
        skip_round: int | None = None  # a round this device is not sampled in
        failures = 0
        while not self.stop.is_set():
            if self._failures:  # the server refused us lately (401 / 5xx): back off
                self.stop.wait(min(0.2 * 2 ** min(self._failures, 6), 10.0))
            try:
                state = self.client.current(self.poll_wait, version, skip_round)
            except httpx.TransportError as exc:
                if self.stop.is_set():
                    break
                failures += 1
                if failures > 20:
                    raise DeviceError(f"server unreachable: {exc}") from exc
                self.stop.wait(min(0.1 * 2**failures, 3.0))  # reconnect backoff
                continue
            except ServerRejected as exc:
                if exc.status != 401 and exc.status < 500:
                    raise
                self._failures += 1
                if self._failures > 50:
                    raise DeviceError(f"server keeps refusing us: {exc}") from exc
                log.warning("device %s: long-poll refused (%s), backing off",
                            self.client.device_id, exc.status)
                continue
            failures = 0
            version = int(state.get("version", version))
            if state.get("stage") == FINISHED:
                log.info("device %s: training finished", self.client.device_id)
                self._end_session()
                return
            self.handle(state)
            rid = state.get("round")
            in_round = state.get("stage") in PROTOCOL_STAGES and isinstance(rid, int)
            skip_round = rid if in_round and not state.get("sampled") else None
        self._end_session()

    def handle(self, state: Mapping[str, Any]) -> None:
        """React to one server state: run the protocol step it calls for, if any."""
        round_id = state.get("round")
        stage = str(state.get("stage"))
        if self.session is not None and self.session.round_id != round_id:
            self._end_session()
        if round_id is None or not state.get("sampled"):
            return
        if stage not in PROTOCOL_STAGES:  # waiting / done / aborted
            if self.session is not None and stage in ("done", "aborted"):
                self._end_session()
            return
        if self.session is None:
            if stage != ADVERTISE:
                return  # joined after the round started: sit it out
            drop = self.dropout.stage_for(int(round_id), self.index) if self.dropout else None
            try:
                self.session = RoundSession.from_state(
                    state,
                    self.device_id,
                    self.client.signing_key,
                    drop_stage=drop,
                    random_bytes=self.random_bytes,
                    policy=self.policy,
                    pinned_identity_keys=self.pinned_identity_keys,
                )
            except (DeviceError, ValueError) as exc:
                log.warning("device %s: cannot join round %s: %s", self.device_id, round_id, exc)
                return
        session = self.session
        if session.lost or stage in session.done:
            return
        if session.silent_at(stage):
            if not session.lost:
                log.info("device %s: vanishing at %s of round %s", self.device_id, stage, round_id)
            session.lost = True
            return
        if not session.may_run(stage):
            log.info("device %s: missed a stage before %s of round %s", self.device_id, stage,
                     round_id)
            session.lost = True
            return
        step = {
            ADVERTISE: self.advertise_keys,
            SHARE: self.share_keys,
            MASKED: self.masked_input,
            CONSISTENCY: self.consistency_check,
            UNMASK: self.unmask,
        }[stage]
        from secagg import SecAggError

        try:
            step(session, state)
        except httpx.TransportError as exc:
            log.info("device %s: out of round %s at %s: network error %s", self.device_id,
                     round_id, stage, exc)
            session.lost = True
            return
        except (ServerRejected, SecAggError, DeviceError) as exc:
            if isinstance(exc, ServerRejected) and (exc.status == 401 or exc.status >= 500):
                # a full nonce quota, a clock hiccup or a server restart: not a reason to
                # leave training; this round is lost, the next poll backs off and goes on
                log.warning("device %s: server answered %s at %s of round %s: %s",
                            self.device_id, exc.status, stage, round_id, exc.detail)
                self._failures += 1
            else:
                log.info("device %s: out of round %s at %s: %s", self.device_id, round_id,
                         stage, exc)
            session.lost = True
            return
        self._failures = 0
        session.done.add(stage)

    def _end_session(self) -> None:
        s = self.session
        if s is None:
            return
        if UNMASK in s.done:
            self.rounds_completed.append(s.round_id)
        else:
            self.rounds_lost.append(s.round_id)
        self.session = None

    def _path(self, session: RoundSession, leaf: str) -> str:
        return f"/v1/rounds/{session.round_id}/{leaf}"

    # -- one method per stage
    def advertise_keys(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 0: advertise fresh X25519 keys, then train on the global model.

        Keys go out first so the advertise stage can close at once; training then
        overlaps the wait for the other devices' keys. A device that will vanish before
        its masked input does not train at all. Encoding waits for the masked-input stage,
        where the round's rotation seed is published.
        """
        self.client.post_json(self._path(session, "keys"), session.advertise())
        if session.drop_stage in (SHARE, MASKED):
            return
        if len(self.x) == 0:
            raise DeviceError("this device's shard is empty: nothing to train on")
        from clients.data import split_holdout

        (x, y), held_out = split_holdout(self.x, self.y, self.settings.eval_fraction)
        global_weights, version = self.client.model()
        if session.plan.config.eval_buckets:
            # the model as received, on data it never trained on
            session.evaluation = self.trainer.evaluate(global_weights, *held_out, session.plan)
        seed = training_seed(self.settings.seed, session.round_id, session.device_id)
        session.delta = self.trainer.train(global_weights, x, y, self.settings, seed)
        if self.on_trace is not None:
            session.trace = RoundTrace(
                round_id=session.round_id,
                device_id=session.device_id,
                model_version=version,
                global_weights=global_weights,
                delta=session.delta,
                encoded=np.zeros(0, np.uint64),
                masked=b"",
                plan=session.plan_dict,
                rotation_seed=b"",
            )

    def share_keys(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 1: Shamir-share b_u and s_sk to the neighbours (encrypted to each)."""
        keys = self.client.get_json(self._path(session, "keys"))
        self.client.post_json(self._path(session, "shares"), session.share(keys))

    def masked_input(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 2: encode with the round's rotation seed (public from this stage on),
        mask, and upload the packed masked encoding (octet-stream)."""
        if session.delta is None:
            raise DeviceError("no trained update to send")
        seed_b64 = state.get("rotation_seed")
        if not isinstance(seed_b64, str):
            raise DeviceError(f"round {session.round_id}: no rotation seed at masked input")
        try:
            rotation_seed = base64.b64decode(seed_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DeviceError(f"malformed rotation seed: {exc}") from exc
        from dp.prng import SecureRng

        rng = SecureRng(self.random_bytes(32))  # AES-256-CTR keyed from the OS CSPRNG
        encoded = self.trainer.call(session.encode, session.delta, rotation_seed, rng)
        shares = self.client.get_json(self._path(session, "shares"))
        data = session.masked(shares)
        self.client.post_bytes(self._path(session, "masked-input"), data)
        if self.on_encoded is not None:
            self.on_encoded(session.round_id, encoded.copy())
        if self.on_trace is not None and session.trace is not None:
            session.trace.encoded = encoded
            session.trace.rotation_seed = rotation_seed
            session.trace.masked = data
            self.on_trace(session.trace)

    def consistency_check(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 3 (active mode): sign the survivor set the server announced."""
        request = self.client.get_json(self._path(session, "consistency"))
        self.client.post_json(self._path(session, "consistency"), session.consistency(request))

    def unmask(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 4: reveal b_u shares of survivors or s_sk shares of the dropped, never both."""
        request = self.client.get_json(self._path(session, "unmask"))
        self.client.post_json(self._path(session, "unmask"), session.unmask(request))
