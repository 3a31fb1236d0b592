"""One federated-learning device speaking the secagg-dp HTTP API (CONTRACT.md, "HTTP API v1").

What a device does, round after round, until the server says training is "finished":

1. it long-polls ``GET /v1/rounds/current?wait=S&after=V`` (never a sleep loop) and, when it
   is sampled for a round, walks the secure-aggregation stages with a
   :class:`secagg.ClientProtocol`;
2. it fetches the global model, trains locally with Keras on its own shard
   (:func:`clients.training.train_local`), clips, rotates, quantizes and noises the update
   with :class:`dp.Encoder` (its share of the distributed DP noise), and
3. uploads only the *masked* encoding ``y_u = x_u + PRG(b_u) ± Σ PRG(s_uv) mod 2^b``.

Threat model: the server is honest-but-curious (or, with ``active`` rounds, may lie about
who survived; the :class:`~secagg.ClientProtocol` refuses to reveal both shares of a
peer). The device never sends its update, its norm or whether it was clipped: the server
learns only the secure sum of at least ``t`` encodings, each already carrying its share
of DP noise, so the sum is DP even if the server sees every message.

Every request after registration is signed with the device's long-term Ed25519 key
(:func:`secagg.auth.sign_request`) over method, path+query, timestamp, nonce and the body
hash, so a network attacker can neither impersonate nor replay it.

The round logic (:class:`RoundSession`) is free of I/O: it turns the JSON the server sent
into protocol messages. :class:`Device` glues it to a :class:`ServerClient` (httpx) and
to a :class:`Trainer`. Two test/simulation hooks exist: ``on_encoded(round, encoded)``
sees the integer vector a device fed into secure aggregation (so an end-to-end test can
recompute the sum on the device side), and a :class:`DropoutSchedule` makes a device
vanish at a chosen stage of a round.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

if TYPE_CHECKING:  # heavy imports (TensorFlow) stay lazy
    from clients.tasks import Task

log = logging.getLogger("clients.device")
T = TypeVar("T")

# Server stages that carry a protocol step for a sampled device, in order.
ADVERTISE = "advertise_keys"
SHARE = "share_keys"
MASKED = "masked_input"
CONSISTENCY = "consistency_check"
UNMASK = "unmask"
PROTOCOL_STAGES: tuple[str, ...] = (ADVERTISE, SHARE, MASKED, CONSISTENCY, UNMASK)
# Stages a simulated device may vanish at (CLI spelling -> server stage name).
DROPOUT_STAGES: dict[str, str] = {
    "advertise": ADVERTISE,
    "share": SHARE,
    "masked-input": MASKED,
    "unmask": UNMASK,
}
FINISHED = "finished"
MAX_WAIT_S = 60.0


class DeviceError(RuntimeError):
    """The device cannot go on (bad configuration, unknown to the server, ...)."""


class ServerRejected(Exception):
    """The server answered a device request with a 4xx/5xx status."""

    def __init__(self, status: int, detail: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------- identity


def generate_identity() -> Ed25519PrivateKey:
    """A fresh long-term Ed25519 identity key (OS CSPRNG, via ``cryptography``)."""
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key the server registers."""
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    """Load a raw 32-byte Ed25519 private key from ``path``, creating it (mode 0600) if absent.

    Persisting the key lets a restarted device keep its device id (the server answers the
    same public key with the same id).
    """
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise DeviceError(f"key file {path} holds {len(raw)} bytes, expected 32 (raw Ed25519)")
        return Ed25519PrivateKey.from_private_bytes(raw)
    key = generate_identity()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return key


# --------------------------------------------------------------------------- transport


class ServerClient:
    """The device's HTTP transport: httpx plus request signing.

    Every request after registration carries ``X-Device-Id``, ``X-Timestamp``,
    ``X-Nonce`` and ``X-Signature`` from :func:`secagg.auth.sign_request`, computed over
    the exact path and query string httpx sends.
    """

    def __init__(
        self,
        base_url: str,
        signing_key: Ed25519PrivateKey,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.signing_key = signing_key
        self.device_id: int | None = None
        self._timeout = timeout
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=2.0),  # below uvicorn's 5 s keep-alive
        )
        self._own_http = http is None

    def close(self) -> None:
        """Close the underlying httpx client if this object created it."""
        if self._own_http:
            self._http.close()

    # -- low level
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        sign: bool = True,
        retries_429: int = 20,
    ) -> httpx.Response:
        """Send one (signed) request; raise :class:`ServerRejected` on a status >= 400.

        429 (rate limited) is retried with the server's ``Retry-After`` (bounded), since
        a device that gives up there would be counted as a dropout for no reason.
        """
        import json as _json

        body = b""
        headers: dict[str, str] = {}
        if json_body is not None:
            body = _json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif content is not None:
            body = content
            headers["Content-Type"] = content_type or "application/octet-stream"
        resent = False
        attempt = 0
        while True:
            req = self._http.build_request(
                method,
                path,
                params=dict(params) if params else None,
                content=body if body else None,
                headers=headers,
                timeout=timeout if timeout is not None else self._timeout,
            )
            if sign:  # a fresh timestamp and nonce for every (re)send
                req.headers.update(self._auth_headers(method, req.url.raw_path.decode(), body))
            try:
                resp = self._http.send(req)
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError,
                    httpx.WriteError):
                # Typically the keep-alive race: the server closed an idle connection just
                # as this request went out on it. Resend once on a new connection.
                if resent:
                    raise
                resent = True
                continue
            if resp.status_code == 429 and attempt < retries_429:
                attempt += 1
                delay = _retry_after(resp.headers.get("Retry-After"))
                time.sleep(delay)  # rate-limit backoff, not a polling loop
                continue
            break
        if resent and method == "POST" and resp.status_code == 409:
            # the first copy may have arrived before the connection broke; if it did not,
            # the next stage will tell (this device is then out of the round)
            return resp
        if resp.status_code >= 400:
            raise ServerRejected(resp.status_code, _detail(resp), method, path)
        return resp

    def _auth_headers(self, method: str, path_with_query: str, body: bytes) -> dict[str, str]:
        from secagg.auth import sign_request

        if self.device_id is None:
            raise DeviceError("device is not registered yet; cannot sign requests")
        headers = sign_request(
            self.signing_key, self.device_id, method, path_with_query, body, audience=self.base_url
        )
        return {str(k): str(v) for k, v in headers.items()}

    # -- API
    def register(self) -> int:
        """``POST /v1/devices`` with the raw public key; returns and remembers the device id."""
        pk = base64.b64encode(public_key_bytes(self.signing_key)).decode()
        resp = self.request("POST", "/v1/devices", json_body={"public_key": pk}, sign=False)
        device_id = int(resp.json()["device_id"])
        self.device_id = device_id
        return device_id

    def status(self) -> dict[str, Any]:
        """``GET /v1/status`` (public)."""
        return dict(self.request("GET", "/v1/status", sign=False).json())

    def current(self, wait: float, after: int, skip_round: int | None = None) -> dict[str, Any]:
        """Long-poll ``GET /v1/rounds/current`` until the state version exceeds ``after``
        (and, with ``skip_round``, the server has left that round)."""
        wait = max(0.0, min(wait, MAX_WAIT_S))
        params: dict[str, Any] = {"wait": _fmt_wait(wait), "after": after}
        if skip_round is not None:
            params["skip_round"] = skip_round
        resp = self.request(
            "GET",
            "/v1/rounds/current",
            params=params,
            timeout=wait + self._timeout,
            sign=self.device_id is not None,
        )
        return dict(resp.json())

    def model(self) -> tuple[np.ndarray, int | None]:
        """``GET /v1/model``: float32 little-endian flat weights and their version."""
        resp = self.request("GET", "/v1/model")
        weights = np.frombuffer(resp.content, dtype="<f4").astype(np.float32)
        version = resp.headers.get("X-Model-Version")
        return weights, (int(version) if version is not None else None)

    def get_json(self, path: str) -> dict[str, Any]:
        """Signed GET returning a JSON object."""
        return dict(self.request("GET", path).json())

    def post_json(self, path: str, payload: Mapping[str, Any]) -> None:
        """Signed POST of a JSON object (expects 2xx)."""
        self.request("POST", path, json_body=dict(payload))

    def post_bytes(self, path: str, data: bytes) -> None:
        """Signed POST of an octet-stream body (the packed masked input)."""
        self.request("POST", path, content=data, content_type="application/octet-stream")


def _fmt_wait(wait: float) -> str:
    return str(int(wait)) if float(wait).is_integer() else f"{wait:.3f}"


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.05), 5.0) if value is not None else 0.2
    except ValueError:
        return 0.2


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:300]


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
        ):
            if section.get(name) is not None:
                values[name] = cast(section[name])
        current = {k: getattr(fallback, k) for k in fallback.__dataclass_fields__}
        current.update(values)
        return cls(**current)


def warm_up_encoder(dp_config: Any, dim: int, n_clients: int, min_contributors: int) -> None:
    """Encode one zero update once, so the first real round does not pay the DP samplers'
    start-up cost (tensorflow-privacy's discrete Gaussian takes seconds on its first call,
    long enough to miss a stage deadline)."""
    from dp import Encoder, EncodingPlan

    plan = EncodingPlan.create(dp_config, dim, n_clients, min_contributors)
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    Encoder(plan, os.urandom(32)).encode(np.zeros(dim, dtype=np.float32), rng)


class Trainer:
    """Local Keras training, optionally shared by many devices of one process.

    TensorFlow is not happy with several threads fitting models at once, and on two
    cores nothing is gained by trying, so training runs under ``lock``; the model is
    built once and reused (weights are overwritten by ``train_local`` every time).

    All of it runs on the trainer's one worker thread (:meth:`call`), whichever device
    thread asks. TensorFlow sets up per-thread state on a thread's first eager ops: a
    ddgauss encode measured 0.27-0.40 s on a fresh thread against 0.07-0.09 s on a thread
    that had encoded before. With one thread per simulated device nearly every encode was
    a first one, and at 1000 clients this tripled the time of the stage that absorbs the
    sampled devices' training and encoding.
    """

    def __init__(self, task: Task, lock: threading.Lock | None = None) -> None:
        self.task = task
        self.lock = lock or threading.Lock()
        self._model: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf-worker")

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread under ``lock``; return its
        result (or raise its exception). Must not be called with ``lock`` held."""

        def job() -> T:
            with self.lock:
                return fn(*args, **kwargs)

        return self._worker.submit(job).result()

    def train(
        self,
        global_weights: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        settings: TrainingSettings,
        seed: int,
    ) -> np.ndarray:
        """Return the float32 update ``new - global`` after local epochs on ``(x, y)``."""
        from clients.training import train_local

        def fit() -> np.ndarray:  # on the worker thread, under the lock
            if self._model is None:
                self._model = self.task.build_model()
            return train_local(
                self.task,
                self._model,
                global_weights,
                x,
                y,
                settings.local_epochs,
                settings.batch_size,
                settings.lr,
                seed,
            )

        return np.asarray(self.call(fit), dtype=np.float32)


# --------------------------------------------------------------------------- dropout


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
    """The device's part of one secure-aggregation round, without any I/O.

    It wraps one :class:`secagg.ClientProtocol` and translates the server's JSON into
    protocol messages and back. ``done`` lists the server stages this device completed;
    a device that missed a stage (too slow, vanished) is ``lost`` for the round.
    """

    round_id: int
    device_id: int
    params: Any  # secagg.RoundParams
    plan: Any  # dp.EncodingPlan
    plan_dict: dict[str, Any]
    rotation_seed: bytes
    protocol: Any  # secagg.ClientProtocol
    drop_stage: str | None = None
    done: set[str] = field(default_factory=set)
    lost: bool = False
    encoded: np.ndarray | None = None
    trace: RoundTrace | None = None

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        device_id: int,
        signing_key: Ed25519PrivateKey | None,
        *,
        drop_stage: str | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> RoundSession:
        """Build the session from the ``GET /v1/rounds/current`` state of a sampled round."""
        from dp import EncodingPlan
        from secagg import ClientProtocol, RoundParams

        if state.get("params") is None or state.get("plan") is None:
            raise DeviceError(f"round {state.get('round')} state lacks params or plan")
        params = RoundParams.from_dict(state["params"])
        plan_dict = dict(state["plan"])
        plan = EncodingPlan.from_dict(plan_dict)
        seed_b64 = state.get("rotation_seed")
        if not isinstance(seed_b64, str):
            raise DeviceError(f"round {state.get('round')} state lacks a rotation_seed")
        rotation_seed = base64.b64decode(seed_b64, validate=True)
        if int(plan.encoded_dim) != int(params.dim):
            raise DeviceError(
                f"encoding plan length {plan.encoded_dim} != secagg dim {params.dim}"
            )
        if device_id not in params.participants:
            raise DeviceError(
                f"device {device_id} is not a participant of round {params.round_id}"
            )
        if int(plan.min_contributors) > int(params.min_survivors):
            # The share is sized for min_contributors shares, but the protocol would let
            # the round be unmasked with fewer: the summed noise could fall short.
            raise DeviceError(
                f"noise shares sized for {plan.min_contributors} contributors, but the "
                f"round may be unmasked with {params.min_survivors}"
            )
        protocol = ClientProtocol(
            params,
            device_id,
            signing_key=signing_key if params.active else None,
            random_bytes=random_bytes,
        )
        return cls(
            round_id=int(params.round_id),
            device_id=device_id,
            params=params,
            plan=plan,
            plan_dict=plan_dict,
            rotation_seed=rotation_seed,
            protocol=protocol,
            drop_stage=drop_stage,
        )

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
        return dict(self.protocol.advertise_keys().to_dict())

    def share(self, keys_json: Mapping[str, Any]) -> dict[str, Any]:
        """ShareKeys as JSON, given ``GET /keys`` (the neighbours' advertised keys)."""
        from secagg import AdvertiseKeys

        raw = keys_json.get("keys", {})
        keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in raw.items()}
        return dict(self.protocol.share_keys(keys).to_dict())

    def encode(self, delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clip, rotate, quantize and noise the update into Z_{2^b} (dp.Encoder)."""
        from dp import Encoder

        encoded, _report = Encoder(self.plan, self.rotation_seed).encode(delta, rng)
        encoded = np.asarray(encoded, dtype=np.uint64)
        self.encoded = encoded
        return encoded

    def masked(self, shares_json: Mapping[str, Any], encoded: np.ndarray) -> bytes:
        """The packed masked input ``y_u``, given ``GET /shares`` (ciphertexts to us)."""
        raw = shares_json.get("ciphertexts", {})
        try:
            cts = {int(k): base64.b64decode(v, validate=True) for k, v in raw.items()}
        except (binascii.Error, TypeError, ValueError) as exc:
            raise DeviceError(f"malformed ciphertexts from the server: {exc}") from exc
        return bytes(self.protocol.masked_input(cts, encoded).data)

    def consistency(self, request_json: Mapping[str, Any]) -> dict[str, Any]:
        """ConsistencyCheck as JSON (active mode: sign the survivor set we were shown)."""
        from secagg import UnmaskRequest

        req = UnmaskRequest.from_dict(dict(request_json))
        return dict(self.protocol.consistency_check(req).to_dict())

    def unmask(self, request_json: Mapping[str, Any]) -> dict[str, Any]:
        """UnmaskShares as JSON; the ClientProtocol refuses contradictory requests."""
        from secagg import UnmaskRequest

        req = UnmaskRequest.from_dict(dict(request_json))
        return dict(self.protocol.unmask(req).to_dict())


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
    ) -> None:
        self.client = client
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
            if isinstance(exc, ServerRejected) and exc.status == 401:
                raise DeviceError(f"server rejected our authentication: {exc}") from exc
            log.info("device %s: out of round %s at %s: %s", self.device_id, round_id, stage, exc)
            session.lost = True
            return
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
        """Stage 0: advertise fresh X25519 keys, then train and encode the update.

        Keys go out first so the advertise stage can close at once; training then
        overlaps the wait for the other devices' keys. A device that will vanish before
        its masked input does not train at all.
        """
        self.client.post_json(self._path(session, "keys"), session.advertise())
        if session.drop_stage in (SHARE, MASKED):
            return
        if len(self.x) == 0:
            raise DeviceError("this device's shard is empty: nothing to train on")
        global_weights, version = self.client.model()
        seed = _training_seed(self.settings.seed, session.round_id, session.device_id)
        delta = self.trainer.train(global_weights, self.x, self.y, self.settings, seed)
        rng = np.random.default_rng(int.from_bytes(self.random_bytes(16), "little"))
        # on the trainer's TensorFlow thread, under its lock: no other device of this
        # process trains or encodes meanwhile
        encoded = self.trainer.call(session.encode, delta, rng)
        if self.on_trace is not None:
            session.trace = RoundTrace(
                round_id=session.round_id,
                device_id=session.device_id,
                model_version=version,
                global_weights=global_weights,
                delta=delta,
                encoded=encoded,
                masked=b"",
                plan=session.plan_dict,
                rotation_seed=session.rotation_seed,
            )

    def share_keys(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 1: Shamir-share b_u and s_sk to the neighbours (encrypted to each)."""
        keys = self.client.get_json(self._path(session, "keys"))
        self.client.post_json(self._path(session, "shares"), session.share(keys))

    def masked_input(self, session: RoundSession, state: Mapping[str, Any]) -> None:
        """Stage 2: upload the packed masked encoding (octet-stream)."""
        if session.encoded is None:
            raise DeviceError("no encoded update to send")
        shares = self.client.get_json(self._path(session, "shares"))
        data = session.masked(shares, session.encoded)
        self.client.post_bytes(self._path(session, "masked-input"), data)
        if self.on_encoded is not None:
            self.on_encoded(session.round_id, session.encoded.copy())
        if self.on_trace is not None and session.trace is not None:
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


def _training_seed(seed: int, round_id: int, device_id: int) -> int:
    """A per (experiment, round, device) seed for local shuffling (not a secret)."""
    digest = hashlib.sha256(f"train/{seed}/{round_id}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0-based shard I of N) and validate it."""
    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/10), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard needs 0 <= I < N, got {text!r}")
    return index, count


def shard_indices(
    labels: np.ndarray, index: int, count: int, settings: TrainingSettings
) -> np.ndarray:
    """Indices of shard ``index`` of the seeded partition shared by the whole experiment."""
    from clients.data import partition

    parts = partition(labels, count, scheme=settings.partition, alpha=settings.alpha,
                      seed=settings.seed)
    if len(parts) != count:
        raise DeviceError(f"partition returned {len(parts)} shards, expected {count}")
    return np.asarray(parts[index])


# --------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m clients device``."""
    if parser is None:
        from clients.simulation import OneLineParser

        parser = OneLineParser(prog="python -m clients device")
    p = parser
    p.description = (
        "Run one device: register, then take part in every round it is sampled in until the "
        "server says training is finished."
    )
    p.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--task", required=True, help="task name: fashion | digits | linreg")
    p.add_argument("--shard", required=True,
                   help="I/N: take shard I (0-based) of the experiment's N-way partition")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the task's data lives (default: the task's own default)")
    p.add_argument("--key-file", type=Path, default=None,
                   help="persist the Ed25519 identity here (created if missing; default: "
                        "a fresh key each run)")
    p.add_argument("--partition", choices=("iid", "dirichlet"), default="iid",
                   help="partition scheme if the server does not publish one (default: iid)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet alpha if the server does not publish one (default: 0.5)")
    p.add_argument("--seed", type=int, default=0,
                   help="partition seed if the server does not publish one (default: 0)")
    p.add_argument("--local-epochs", type=int, default=1,
                   help="local epochs if the server does not publish them (default: 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="batch size if the server does not publish it (default: 32)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="local learning rate if the server does not publish it (default: 0.05)")
    p.add_argument("--wait", type=float, default=30.0,
                   help="long-poll duration in seconds, at most 60 (default: 30)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="how long to keep trying to reach the server at start (default: 60)")
    p.add_argument("-v", "--verbose", action="store_true", help="log protocol progress")
    return p


def _wait_for_server(client: ServerClient, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return client.status()
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise DeviceError(f"server {client.base_url} unreachable: {exc}") from exc
            time.sleep(delay)  # bounded connect backoff before the first request
            delay = min(delay * 2, 2.0)


def warm_up(device: Device, public_config: Mapping[str, Any] | None) -> None:
    """Pay TensorFlow's one-off costs (model tracing, the DP sampler's first call) before
    registering, so the first round's stage deadlines are not spent on them."""
    import dataclasses

    from clients.tasks.weights import get_flat_weights

    weights = get_flat_weights(device.task.build_model(device.settings.seed))
    n = min(len(device.x), device.settings.batch_size)
    quick = dataclasses.replace(device.settings, local_epochs=1)
    device.trainer.train(weights, device.x[:n], device.y[:n], quick, seed=0)
    dp_section = (public_config or {}).get("dp")
    server_section = (public_config or {}).get("server") or {}
    if not isinstance(dp_section, Mapping):
        return
    try:
        from dp import DPConfig

        per_round = int(server_section.get("per_round", 10))
        device.trainer.call(warm_up_encoder, DPConfig.from_dict(dict(dp_section)),
                            int(weights.size), per_round, max(2, (2 * per_round) // 3))
    except (ValueError, TypeError, KeyError) as exc:
        log.info("encoder warm-up skipped: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clients device``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        index, count = parse_shard(args.shard)
        if not 0 < args.wait <= MAX_WAIT_S:
            raise ValueError(f"--wait must be in (0, {MAX_WAIT_S:g}], got {args.wait}")
        fallback = TrainingSettings(args.local_epochs, args.batch_size, args.lr, args.partition,
                                    args.alpha, args.seed)
        from clients.tasks import get_task

        task = get_task(args.task)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = load_or_create_identity(args.key_file) if args.key_file else generate_identity()
    client = ServerClient(args.server, key)
    try:
        status = _wait_for_server(client, args.connect_timeout)
        settings = TrainingSettings.from_public_config(status.get("config"), fallback)
        server_task = (status.get("config") or {}).get("training", {}).get("task")
        if server_task is not None and server_task != task.name:
            raise DeviceError(f"server trains task {server_task!r}, device has {task.name!r}")
        data = task.load_data(args.data_dir)
        idx = shard_indices(np.asarray(data.y_train), index, count, settings)
        device = Device(client, task, np.asarray(data.x_train)[idx], np.asarray(data.y_train)[idx],
                        settings, index=index, poll_wait=args.wait)
        warm_up(device, status.get("config"))
        device_id = device.register()
        log.info("registered as device %d with %d examples", device_id, len(idx))
        device.run()
    except KeyboardInterrupt:
        return 130
    except (DeviceError, ServerRejected, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"device {client.device_id}: finished; took part in "
          f"{len(device.rounds_completed)} round(s)")
    return 0
