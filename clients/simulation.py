"""Local simulation: a real server on loopback and N real devices, all talking HTTP.

``python -m clients run`` writes an :class:`server.config.ExperimentConfig` as TOML, starts
``python -m server`` as a subprocess (uvicorn on a free loopback port, SQLite in a
temporary directory unless ``--db`` is given, its output in ``server.log`` next to it),
waits for it with a readiness probe, and runs N :class:`clients.device.Device` objects in
threads of this process. The devices share one TensorFlow runtime (training is serialized
under a lock, which is also the fastest way on two cores), but every byte between a device
and the server crosses HTTP, signed, exactly as separate device processes would send it.

What is printed comes from the server (``GET /v1/rounds``, ``GET /v1/status``): the
server is the source of truth for survivors, accuracy and ε.

Privacy figures: ε is reported twice. ``ε`` assumes nothing about who took part (valid
against this server, which knows whom it sampled); ``ε amplified`` uses Poisson
subsampling at q = per_round / clients and is valid only if the adversary does not learn
who took part in a round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx

from clients.device import (
    Device,
    DeviceError,
    DropoutSchedule,
    OnEncoded,
    OnTrace,
    ServerClient,
    Trainer,
    TrainingSettings,
    generate_identity,
    warm_up_encoder,
)

PROTOCOL_ORDER = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


class UsageError(ValueError):
    """A bad option or configuration value (printed as one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimOptions:
    """Every knob of ``python -m clients run`` (CLI flag ``--a-b`` = field ``a_b``)."""

    task: str = "fashion"
    clients: int = 20
    per_round: int = 10
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    server_lr: float = 1.0
    partition: str = "iid"
    alpha: float = 0.5
    mechanism: str = "ddgauss"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    bits: int = 20
    graph: str = "harary"
    dropout: float = 0.0
    min_survivors: float = 0.0
    seed: int = 0
    json_out: str | None = None
    db: str | None = None
    stage_timeout: float | None = None
    data_dir: str | None = None
    active: bool = False
    keep_serving: bool = False
    port: int = 0

    DEFAULT_NOISE_MULTIPLIER = 0.15

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise UsageError("give either noise_multiplier or target_epsilon, not both")
        for name in ("clients", "per_round", "rounds", "local_epochs", "batch_size", "bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.clients < 2:
            raise UsageError(f"clients must be >= 2, got {self.clients}")
        if not 2 <= self.per_round <= self.clients:
            raise UsageError(
                f"per_round must be in [2, clients={self.clients}], got {self.per_round}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.min_survivors <= 1.0:
            raise UsageError(f"min_survivors must be in [0, 1], got {self.min_survivors}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise UsageError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.stage_timeout is not None and not self.stage_timeout > 0:
            raise UsageError(f"stage_timeout must be > 0, got {self.stage_timeout}")
        if not 0 <= self.port < 65536:
            raise UsageError(f"port must be in [0, 65535], got {self.port}")

    @property
    def sample_rate(self) -> float:
        """q = per_round / clients (the sampling rate the amplified ε assumes)."""
        return self.per_round / self.clients


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "clients": (int,), "per_round": (int,), "rounds": (int,),
    "local_epochs": (int,), "batch_size": (int,), "lr": (float, int),
    "server_lr": (float, int), "partition": (str,), "alpha": (float, int),
    "mechanism": (str,), "noise_multiplier": (float, int), "target_epsilon": (float, int),
    "delta": (float, int), "clip": (float, int), "bits": (int,), "graph": (str,),
    "dropout": (float, int), "min_survivors": (float, int), "seed": (int,),
    "json_out": (str,), "db": (str,),
    "stage_timeout": (float, int), "data_dir": (str,), "active": (bool,),
    "keep_serving": (bool,), "port": (int,),
}


def load_options_file(path: Path) -> dict[str, Any]:
    """Read a flat TOML file whose keys are the ``run`` flags (``per-round`` or ``per_round``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in _FIELD_TYPES:
            known = ", ".join(sorted(k.replace("_", "-") for k in _FIELD_TYPES))
            raise UsageError(f"unknown key {raw_key!r} in {str(path)!r}; known: {known}")
        types = _FIELD_TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise UsageError(
                f"{raw_key} in {str(path)!r} must be {types[0].__name__}, got {value!r}"
            )
        number: Any = value
        out[key] = float(number) if float in types and not isinstance(value, bool) else value
    return out


def merge_options(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> SimOptions:
    """Defaults < config file < explicit CLI flags (a CLI noise choice replaces the file's)."""
    merged = dict(file_values)
    if "noise_multiplier" in cli_values or "target_epsilon" in cli_values:
        merged.pop("noise_multiplier", None)
        merged.pop("target_epsilon", None)
    merged.update(cli_values)
    return SimOptions(**merged)


# --------------------------------------------------------------------------- CLI parser


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m clients run``; only flags given explicitly land in the namespace."""
    d = SimOptions()
    p = parser or OneLineParser(prog="python -m clients run")
    p.argument_default = argparse.SUPPRESS
    p.description = (
        "Start a secagg-dp server on loopback and N devices, and train for R rounds with "
        "secure aggregation and distributed DP. Every flag can also be set in --config."
    )

    def add(flag: str, help_text: str, **kw: Any) -> None:
        name = flag[2:].replace("-", "_")
        default = getattr(d, name)
        p.add_argument(flag, help=f"{help_text} (default: {default})", **kw)

    p.add_argument("--config", type=Path, help="TOML file with the same keys as these flags; "
                   "flags given on the command line override it (default: none)")
    add("--task", "task to train: fashion | digits | linreg", type=str)
    add("--clients", "number of devices (and of data shards)", type=int)
    add("--per-round", "devices sampled per round", type=int)
    add("--rounds", "training rounds", type=int)
    add("--local-epochs", "local epochs per round", type=int)
    add("--batch-size", "local minibatch size", type=int)
    add("--lr", "local SGD learning rate", type=float)
    add("--server-lr", "server learning rate applied to the decoded mean update", type=float)
    add("--partition", "data partition across devices", choices=("iid", "dirichlet"))
    add("--alpha", "Dirichlet concentration for --partition dirichlet", type=float)
    add("--mechanism", "DP noise mechanism", choices=("ddgauss", "skellam", "gaussian", "none"))
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float,
                       help="z: std of the summed noise is z*clip "
                            f"(default: {SimOptions.DEFAULT_NOISE_MULTIPLIER})")
    noise.add_argument("--target-epsilon", type=float,
                       help="calibrate z (dp.calibrate_noise) so that after --rounds rounds the "
                            "amplified ε (sampling q = per-round/clients) is this, at --delta "
                            "(default: none)")
    add("--delta", "DP δ", type=float)
    add("--clip", "L2 clip norm of each device's update", type=float)
    add("--bits", "bits per entry of the secure sum (modulus 2^bits)", type=int)
    add("--graph", "secagg neighbour graph", choices=("complete", "harary"))
    add("--dropout", "probability that a sampled device vanishes at a random stage", type=float)
    add("--min-survivors", "fraction of the sampled devices that must survive for a round "
        "to be unmasked (devices enforce it); noise shares are sized for that many "
        "(0: the secagg threshold t)", type=float)
    add("--seed", "seed of the partition, model init and dropout schedule", type=int)
    add("--json-out", "write the per-round log (from the server) as JSON here", type=str)
    add("--db", "SQLite file of the server (None: one in a temporary directory)", type=str)
    add("--stage-timeout", "seconds per protocol stage (None: measured from local "
        "training time)", type=float)
    add("--data-dir", "where the task's data lives (None: the task's default)", type=str)
    add("--active", "active-adversary mode: consistency check and signatures",
        action="store_true")
    add("--keep-serving", "keep the server up after training, for the dashboard",
        action="store_true")
    add("--port", "server port on 127.0.0.1 (0: a free one)", type=int)
    return p


# --------------------------------------------------------------------------- server


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server subprocess exited or did not become ready in time."""


class LocalServer:
    """``python -m server`` as a subprocess on loopback, with a readiness probe.

    The server writes its log to ``log_path`` (``--log-file``); its stdout and stderr go
    to ``<log_path stem>-console.log`` next to it. ``stop()`` sends SIGTERM (uvicorn shuts
    down gracefully), then SIGKILL after a grace period.
    """

    def __init__(
        self,
        config_path: Path,
        db_path: Path,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        python: str = sys.executable,
    ) -> None:
        self.config_path = config_path
        self.db_path = db_path
        self.log_path = log_path
        self.host = host
        self.port = port or free_port(host)
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        # uvicorn's and Python's own output (tracebacks, access log) go here
        self.console_path = log_path.with_name(log_path.stem + "-console.log")

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The server command line."""
        return [
            self.python, "-m", "server",
            "--config", str(self.config_path),
            "--db", str(self.db_path),
            "--host", self.host,
            "--port", str(self.port),
            "--log-file", str(self.log_path),
        ]

    def start(self, ready_timeout: float = 120.0) -> None:
        """Spawn the server and wait until ``GET /v1/status`` answers (bounded in time)."""
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.console_path, "ab")  # noqa: SIM115 (handed to the child)
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + ready_timeout
        delay = 0.1
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise ServerStartError(
                        f"server exited with status {self.proc.returncode}; "
                        f"see {self.console_path}: {self.log_tail()}"
                    )
                try:
                    if http.get("/v1/status").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(
                        f"server not ready after {ready_timeout:.0f} s; see {self.log_path}"
                    )
                time.sleep(delay)  # readiness probe backoff (bounded by the deadline)
                delay = min(delay * 1.5, 1.0)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server log, on one line."""
        try:
            text = self.console_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- experiment


def model_dim(task: Any, seed: int = 0) -> int:
    """Number of float parameters of the task's model (the DP/secagg dimension before padding)."""
    model = task.build_model(seed)
    return int(sum(int(w.size) for w in model.get_weights()))


def resolve_noise(opts: SimOptions, dim: int, threshold: int | None = None) -> float:
    """z from --noise-multiplier, from --target-epsilon (calibrated), or the default.

    The calibration targets the *amplified* ε (Poisson sampling at q = per_round/clients)
    after the planned rounds, with noise shares sized for ``threshold`` contributors (t,
    or the enforced minimum survivor count).
    """
    if opts.mechanism == "none":
        return 0.0
    if opts.noise_multiplier is not None:
        return float(opts.noise_multiplier)
    if opts.target_epsilon is None:
        return SimOptions.DEFAULT_NOISE_MULTIPLIER
    from dp import calibrate_noise

    return float(
        calibrate_noise(
            opts.target_epsilon,
            mechanism=opts.mechanism,
            sample_rate=opts.sample_rate,
            rounds=opts.rounds,
            delta=opts.delta,
            accountant="rdp",
            clients_per_round=opts.per_round,
            bits=opts.bits,
            dim=dim,
            clip=opts.clip,
            min_contributors=threshold,
        )
    )


def build_experiment(opts: SimOptions, noise_multiplier: float, stage_timeout: float) -> Any:
    """The :class:`server.config.ExperimentConfig` the server runs (raises ValueError)."""
    from clients.tasks.config import TrainingConfig
    from dp import DPConfig
    from secagg.config import ProtocolConfig
    from server.config import ExperimentConfig, ServerConfig

    return ExperimentConfig(
        server=ServerConfig(
            rounds=opts.rounds,
            clients=opts.clients,
            per_round=opts.per_round,
            server_lr=opts.server_lr,
            stage_timeout=float(stage_timeout),
            registration_timeout=120.0,
            seed=opts.seed,
            data_dir=opts.data_dir,
        ),
        protocol=ProtocolConfig(
            graph=opts.graph, dropout=max(0.1, min(opts.dropout, 0.5)), active=opts.active,
            min_survivors=opts.min_survivors,
        ),
        dp=DPConfig(
            mechanism=opts.mechanism,
            clip=opts.clip,
            noise_multiplier=noise_multiplier,
            bits=opts.bits,
            delta=opts.delta,
        ),
        training=TrainingConfig(
            task=opts.task,
            local_epochs=opts.local_epochs,
            batch_size=opts.batch_size,
            lr=opts.lr,
            partition=opts.partition,
            alpha=opts.alpha,
            seed=opts.seed,
        ),
    )


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


@dataclass
class SimulationResult:
    """What a run produced (all figures as the server reported them)."""

    rounds: list[dict[str, Any]]
    status: dict[str, Any]
    db_path: Path
    log_path: Path
    workdir: Path
    url: str
    config: Any
    noise_multiplier: float
    stage_timeout: float
    elapsed_s: float
    device_errors: list[str] = field(default_factory=list)


class Simulation:
    """A server subprocess plus N in-process devices; see the module docstring.

    ``on_encoded`` / ``on_trace`` are the device test hooks (see :class:`Device`);
    ``console`` is a rich Console (None: quiet, no progress output).
    """

    def __init__(
        self,
        opts: SimOptions,
        *,
        workdir: Path | None = None,
        console: Any = None,
        on_encoded: OnEncoded | None = None,
        on_trace: OnTrace | None = None,
        after_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.opts = opts
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="secagg-dp-"))
        self.console = console
        self.on_encoded = on_encoded
        self.on_trace = on_trace
        self.after_round = after_round
        self.stop_event = threading.Event()
        self.server: LocalServer | None = None
        self.device_errors: list[str] = []

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def validate(self) -> None:
        """Build the experiment config once with placeholders, before anything heavy runs.

        Raises :class:`UsageError` (one line) on any ValueError from the dp / secagg /
        server / tasks configuration classes.
        """
        z = self.opts.noise_multiplier
        if z is None:
            z = SimOptions.DEFAULT_NOISE_MULTIPLIER if self.opts.mechanism != "none" else 0.0
        try:
            build_experiment(self.opts, z, self.opts.stage_timeout or 30.0)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def threshold(self) -> int:
        """The secagg threshold t the server will use for a full round of per_round devices."""
        return int(self._probe().threshold)

    def min_contributors(self) -> int:
        """The fewest noise shares an unmasked full round can have: t, or the enforced
        minimum survivor count (``--min-survivors``) when that is larger. Noise is
        calibrated for this many contributors."""
        return int(self._probe().min_survivors)

    def _probe(self) -> Any:
        from secagg import RoundParams

        o = self.opts
        try:
            return RoundParams.create(
                0, tuple(range(o.per_round)), 1, o.bits, graph=o.graph,
                dropout=max(0.1, min(o.dropout, 0.5)), active=False,
                min_survivors=o.min_survivors,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def preflight(self, experiment: Any, dim: int) -> None:
        """Check that a full round is plannable (threshold, encoding plan) before starting.

        The server would otherwise find out only at its first round (for example: too few
        bits for the number of contributors).
        """
        from dp import EncodingPlan
        from secagg import RoundParams

        participants = tuple(range(self.opts.per_round))
        try:
            probe = RoundParams.create(
                0, participants, 1, experiment.dp.bits, graph=experiment.protocol.graph,
                dropout=experiment.protocol.dropout, corrupt=experiment.protocol.corrupt,
                active=False, min_survivors=experiment.protocol.min_survivors,
            )
            EncodingPlan.create(experiment.dp, dim, len(participants), probe.min_survivors)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def prepare(self) -> tuple[Any, Any, Trainer, float, float]:
        """Load task and data, measure local training, choose z and the stage timeout."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from clients.tasks import get_task

        opts = self.opts
        try:
            task = get_task(opts.task)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        data = task.load_data(opts.data_dir)
        dim = model_dim(task, opts.seed)
        z = resolve_noise(opts, dim, self.min_contributors())
        trainer = Trainer(task)
        # Train once (this traces the model: the first fit is slow) and time a second run:
        # the stage that absorbs local training must fit per_round trainings done one
        # after another under the shared lock.
        # The DP encoder is warmed up too (tensorflow-privacy's first call is slow) and the
        # second encode is timed with the training.
        settings = self._settings()
        x, y = self._shard(data, 0, settings)
        weights = _flat_weights(task, opts.seed)
        trainer.train(weights, x, y, settings, seed=0)
        self._warm_encoder(trainer, z, dim)
        t1 = time.perf_counter()
        trainer.train(weights, x, y, settings, seed=1)
        self._warm_encoder(trainer, z, dim)
        per = time.perf_counter() - t1
        if opts.stage_timeout is not None:
            timeout = float(opts.stage_timeout)
        else:
            timeout = round(min(max(3.0 * opts.per_round * per + 5.0, 8.0), 300.0), 1)
        return task, data, trainer, z, timeout

    def _warm_encoder(self, trainer: Trainer, z: float, dim: int) -> None:
        trainer.call(warm_up_encoder, self._dp_config(z), dim, self.opts.per_round,
                     self.min_contributors())

    def _dp_config(self, z: float) -> Any:
        from dp import DPConfig

        o = self.opts
        return DPConfig(mechanism=o.mechanism, clip=o.clip, noise_multiplier=z, bits=o.bits,
                        delta=o.delta)

    def _settings(self) -> TrainingSettings:
        o = self.opts
        return TrainingSettings(o.local_epochs, o.batch_size, o.lr, o.partition, o.alpha, o.seed)

    def _shard(self, data: Any, index: int, settings: TrainingSettings) -> tuple[Any, Any]:
        from clients.device import shard_indices

        idx = shard_indices(data.y_train, index, self.opts.clients, settings)
        return data.x_train[idx], data.y_train[idx]

    def run(self) -> SimulationResult:
        """Run the whole experiment; the server is stopped on return unless kept serving."""
        import numpy as np

        t_start = time.monotonic()
        opts = self.opts
        self.validate()
        task, data, trainer, z, timeout = self.prepare()
        try:
            experiment = build_experiment(opts, z, timeout)
        except ValueError as exc:  # any config error from dp/secagg/server/tasks
            raise UsageError(str(exc)) from None
        self.preflight(experiment, model_dim(task, opts.seed))
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "experiment.toml"
        config_path.write_text(experiment.to_toml(), encoding="utf-8")
        db_path = Path(opts.db) if opts.db else self.workdir / "secagg_dp.sqlite3"
        log_path = self.workdir / "server.log"
        self.server = LocalServer(config_path, db_path, log_path, port=opts.port)
        self._say(f"[dim]server: {self.server.url}  db: {db_path}  log: {log_path}  "
                  f"stage timeout: {timeout:g} s  z: {z:g}[/dim]")
        self.server.start()
        settings = self._settings()
        # One small connection pool per device, not one shared pool: httpcore scans every
        # connection of a pool on each request under the pool's lock, which with a
        # thousand devices long-polling at once serialized the whole simulation (measured
        # at 1000 clients: the lock-holder's encode took 5x longer than standalone). The
        # loopback is plain HTTP; one TLS context is shared so that a thousand clients do
        # not each load the CA bundle.
        tls = ssl.create_default_context()
        url = self.server.url

        def new_http() -> httpx.Client:
            return httpx.Client(
                base_url=url,
                timeout=30.0,
                verify=tls,
                # keep idle connections for less time than uvicorn (5 s), so a request
                # never goes out on a connection the server is closing
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2,
                                    keepalive_expiry=2.0),
            )

        http = new_http()
        device_https: list[httpx.Client] = []
        schedule = DropoutSchedule(opts.dropout, opts.seed) if opts.dropout > 0 else None
        devices: list[Device] = []
        for i in range(opts.clients):
            x, y = self._shard(data, i, settings)
            device_https.append(new_http())
            client = ServerClient(url, generate_identity(), http=device_https[-1])
            devices.append(Device(
                client, task, np.asarray(x), np.asarray(y), settings,
                trainer=trainer, index=i, dropout=schedule, on_encoded=self.on_encoded,
                on_trace=self.on_trace, poll_wait=30.0, stop=self.stop_event,
            ))
        threads = [
            threading.Thread(target=self._device_main, args=(dev,), name=f"device-{i}",
                             daemon=True)
            for i, dev in enumerate(devices)
        ]
        for th in threads:
            th.start()
        try:
            self._monitor(http)
        finally:
            self.stop_event.set()
            for th in threads:
                th.join(timeout=5.0)
        rounds = list(_get_json(http, "/v1/rounds"))
        status = dict(_get_json(http, "/v1/status"))
        http.close()
        for dev_http in device_https:
            dev_http.close()
        if opts.json_out:
            Path(opts.json_out).write_text(json.dumps(rounds, indent=2) + "\n", encoding="utf-8")
        return SimulationResult(
            rounds=rounds, status=status, db_path=db_path, log_path=log_path,
            workdir=self.workdir, url=self.server.url, config=experiment,
            noise_multiplier=z, stage_timeout=timeout,
            elapsed_s=time.monotonic() - t_start, device_errors=list(self.device_errors),
        )

    def _device_main(self, device: Device) -> None:
        try:
            device.run()
        except (DeviceError, httpx.HTTPError, ValueError) as exc:
            if not self.stop_event.is_set():
                self.device_errors.append(f"device {device.index}: {exc}")
                if self.console is not None:
                    self.console.print(f"[red]device {device.index} stopped: {exc}[/red]")
        except RuntimeError:
            # httpx refuses requests on the shared client once the simulation has closed
            # it; a device still long-polling at shutdown just ends.
            if not self.stop_event.is_set():
                raise

    def _monitor(self, http: httpx.Client) -> None:
        """Follow the server's state by long-poll until training is finished."""
        progress = None
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                TimeElapsedColumn(), console=self.console, transient=False,
            )
            progress.start()
        bars: dict[int, Any] = {}
        reported: set[int] = set()
        version = -1
        last_round: int | None = None
        try:
            while True:
                if self.server is not None and self.server.proc is not None \
                        and self.server.proc.poll() is not None:
                    raise ServerStartError(
                        f"server exited with status {self.server.proc.returncode}: "
                        f"{self.server.log_tail()}"
                    )
                try:
                    resp = http.get("/v1/rounds/current", params={"wait": 30, "after": version},
                                    timeout=45.0)
                    resp.raise_for_status()
                except httpx.TransportError:
                    time.sleep(0.2)  # the server is probably restarting or gone; re-checked above
                    continue
                state = resp.json()
                version = int(state.get("version", version))
                stage = str(state.get("stage"))
                rnd = state.get("round")
                if rnd is not None and last_round is not None and rnd != last_round:
                    self._finish_round(http, last_round, bars, reported, progress)
                if rnd is not None and progress is not None and stage in PROTOCOL_ORDER + (
                    "done", "aborted"
                ):
                    if rnd not in bars:
                        total = len(PROTOCOL_ORDER) if self.opts.active else \
                            len(PROTOCOL_ORDER) - 1
                        bars[rnd] = progress.add_task(f"round {rnd}", total=total, stage="")
                    order = [s for s in PROTOCOL_ORDER
                             if s != "consistency_check" or self.opts.active]
                    done = order.index(stage) if stage in order else len(order)
                    progress.update(bars[rnd], completed=done, stage=stage.replace("_", " "))
                if rnd is not None:
                    last_round = int(rnd)
                if stage in ("done", "aborted") and rnd is not None:
                    self._finish_round(http, int(rnd), bars, reported, progress)
                if stage == "finished" or state.get("training_done"):
                    if last_round is not None:
                        self._finish_round(http, last_round, bars, reported, progress)
                    return
        finally:
            if progress is not None:
                progress.stop()

    def _finish_round(
        self,
        http: httpx.Client,
        rnd: int,
        bars: dict[int, Any],
        reported: set[int],
        progress: Any,
    ) -> None:
        if rnd in reported:
            return
        rows = [r for r in _get_json(http, "/v1/rounds") if r.get("round") == rnd]
        if not rows or rows[-1].get("status") == "running":
            return
        row = rows[-1]
        reported.add(rnd)
        if progress is not None and rnd in bars:
            ok = row.get("status") == "done"
            text = (f"round {rnd} [green]done[/green] acc {fmt(row.get('accuracy'))} "
                    f"ε {fmt(row.get('epsilon'), '.2f')}") if ok else \
                f"round {rnd} [red]{row.get('status')}[/red]"
            task = progress.tasks[[t.id for t in progress.tasks].index(bars[rnd])]
            progress.update(bars[rnd], completed=task.total, description=text,
                            stage=f"{count(row.get('survivors'))}/{count(row.get('sampled'))}")
        if self.after_round is not None:
            self.after_round(row)

    def stop(self) -> None:
        """Stop devices and the server."""
        self.stop_event.set()
        if self.server is not None:
            self.server.stop()


def _get_json(http: httpx.Client, path: str, attempts: int = 5) -> Any:
    """GET a public JSON resource, retrying transport errors (the request is idempotent:
    a connection dropped under load must not end the whole run)."""
    for attempt in range(attempts):
        try:
            resp = http.get(path)
            resp.raise_for_status()
            return resp.json()
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _flat_weights(task: Any, seed: int) -> Any:
    from clients.tasks.weights import get_flat_weights

    return get_flat_weights(task.build_model(seed))


# --------------------------------------------------------------------------- output


def round_table(rounds: Sequence[Mapping[str, Any]]) -> Any:
    """A rich Table of the round log."""
    from rich.table import Table

    table = Table(title="rounds (from the server's log)")
    for col in ("round", "status", "survivors/sampled", "accuracy", "loss", "ε", "ε amplified"):
        table.add_column(col, justify="right")
    for r in rounds:
        table.add_row(
            str(r.get("round")),
            str(r.get("status", "")),
            f"{count(r.get('survivors'))}/{count(r.get('sampled'))}",
            fmt(r.get("accuracy")),
            fmt(r.get("loss")),
            fmt(r.get("epsilon"), ".3g"),
            fmt(r.get("epsilon_amplified"), ".3g"),
        )
    return table


def summary_lines(result: SimulationResult, opts: SimOptions) -> list[str]:
    """The closing summary: accuracy, both ε with their assumptions, δ, DB, dashboard."""
    done = [r for r in result.rounds if r.get("status") == "done"]
    last = done[-1] if done else {}
    st = result.status
    eps = st.get("epsilon", last.get("epsilon"))
    eps_amp = st.get("epsilon_amplified", last.get("epsilon_amplified"))
    delta = st.get("delta", last.get("delta", opts.delta))
    metric = "R²" if opts.task == "linreg" else "accuracy"
    lines = [
        f"rounds completed: {len(done)}/{len(result.rounds)} "
        f"({result.elapsed_s:.0f} s, stage timeout {result.stage_timeout:g} s)",
        f"final {metric}: {fmt(last.get('accuracy'))}   loss: {fmt(last.get('loss'))}",
        f"ε = {fmt(eps, '.4g')} at δ = {fmt(delta, '.1e')}  (no amplification: holds even "
        "against a server that knows who was sampled)",
        f"ε amplified = {fmt(eps_amp, '.4g')} at δ = {fmt(delta, '.1e')}  (Poisson "
        f"subsampling at q = {opts.sample_rate:.3g}: holds only if the adversary does not "
        "learn who took part)",
        f"mechanism {opts.mechanism}, z = {result.noise_multiplier:.4g}, clip {opts.clip:g}, "
        f"{opts.bits} bits, graph {opts.graph}",
        f"database: {result.db_path}   server log: {result.log_path}",
        f"dashboard: python -m server --config {result.workdir / 'experiment.toml'} "
        f"--db {result.db_path} --port 8000   then open http://127.0.0.1:8000/",
    ]
    from dp import accounting_note

    note = accounting_note(opts.mechanism)
    if note is not None:
        lines.insert(4, f"note: {note}")
    if opts.mechanism == "none":
        lines[2:4] = ["ε = ∞: mechanism none adds no noise (secure aggregation only, "
                      "no differential privacy)"]
    reason = st.get("finished_reason")
    if reason:
        lines.append(f"server: training finished: {reason}")
    if result.device_errors:
        lines.append(f"device errors: {len(result.device_errors)} (first: "
                     f"{result.device_errors[0]})")
    return lines


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point of ``python -m clients run``; returns the exit status."""
    from rich.console import Console

    parser = parser or build_parser()
    ns = parser.parse_args(argv)  # argparse exits 2 on a bad flag
    console = Console(stderr=False)
    cli = {k: v for k, v in vars(ns).items() if k != "config" and k in _FIELD_TYPES}
    try:
        file_values = load_options_file(ns.config) if getattr(ns, "config", None) else {}
        opts = merge_options(file_values, cli)
    except (UsageError, TypeError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    sim = Simulation(opts, console=console)
    interrupted = False
    try:
        result = sim.run()
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping devices and server[/yellow]")
        sim.stop()
        return 130
    except UsageError as exc:
        sim.stop()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ServerStartError, DeviceError, httpx.HTTPError, OSError) as exc:
        sim.stop()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not interrupted and not opts.keep_serving:
            sim.stop()
    console.print(round_table(result.rounds))
    for line in summary_lines(result, opts):
        console.print(line, highlight=False)
    if opts.json_out:
        console.print(f"round log written to {opts.json_out}", highlight=False)
    completed = sum(1 for r in result.rounds if r.get("status") == "done")
    status = 0
    if completed < opts.rounds:
        print(f"{parser.prog}: error: only {completed} of {opts.rounds} rounds completed "
              f"({result.status.get('finished_reason') or 'see the server log'})",
              file=sys.stderr)
        status = 1
    if opts.keep_serving:
        console.print(f"serving the dashboard at {result.url}/  (Ctrl-C to stop)",
                      highlight=False)
        try:
            while sim.server is not None and sim.server.proc is not None \
                    and sim.server.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sim.server.proc.wait(timeout=1.0)
        except KeyboardInterrupt:
            pass
        finally:
            sim.stop()
    return status


__all__ = [
    "LocalServer", "SimOptions", "Simulation", "SimulationResult", "UsageError",
    "build_parser", "free_port", "main", "merge_options", "load_options_file",
]
