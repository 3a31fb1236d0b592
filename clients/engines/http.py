"""The HTTP engine: a real server on loopback and N real devices, all talking HTTP.

``python -m clients run --engine http`` (the default, and what ``make run`` shows) writes
an :class:`server.config.ExperimentConfig` as TOML, starts ``python -m server`` as a
subprocess (uvicorn on a free loopback port, SQLite in a temporary directory unless
``--db`` is given, its output in ``server.log`` next to it), waits for it with a
readiness probe, and runs N :class:`clients.device.Device` objects in threads of this
process. The devices share one TensorFlow runtime (training is serialized on one worker
thread), but every byte between a device and the server crosses HTTP, signed, exactly as
separate device processes would send it. The server runs the same round logic as the
in-process engines (:mod:`server.round`); only the transport differs.

What is printed comes from the server (``GET /v1/rounds``, ``GET /v1/status``): the
server is the source of truth for survivors, accuracy and ε.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from clients.device import (
    Device,
    DeviceError,
    ServerClient,
    Trainer,
    TrainingSettings,
    generate_identity,
)
from clients.device.process import OnEncoded, OnTrace, warm_up_encoder
from clients.engines.common import DropoutSchedule, count, fmt, make_population
from clients.engines.local import EngineResult
from clients.options import (
    SimOptions,
    UsageError,
    build_experiment,
    model_dim,
    resolve_noise,
    round_probe,
)

__all__ = ["HttpEngine", "LocalServer", "ServerStartError", "free_port"]

PROTOCOL_ORDER = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


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
        config_path: Path | None,
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
        config = [] if self.config_path is None else ["--config", str(self.config_path)]
        return [
            self.python, "-m", "server", *config,
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


class HttpEngine:
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
        self._population: Any = None

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
        return round_probe(self.opts)

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
                active=experiment.protocol.active,
                min_survivors=experiment.protocol.min_survivors,
            )
            from server.round import corrupt_bound

            EncodingPlan.create(
                experiment.dp, dim, len(participants), probe.min_survivors,
                corrupt=corrupt_bound(experiment.protocol.corrupt, len(participants)),
            )
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
        return TrainingSettings(o.local_epochs, o.batch_size, o.lr, o.partition, o.alpha, o.seed,
                                o.eval_fraction if o.eval_on else 0.0)

    def _shard(self, data: Any, index: int, settings: TrainingSettings) -> tuple[Any, Any]:
        """Shard ``index`` of the experiment's seeded partition (computed once)."""
        if self._population is None:
            self._population = make_population(
                data.x_train, data.y_train, self.opts.clients, settings.partition,
                settings.alpha, settings.seed,
            )
        return self._population.shard(index)

    def run(self) -> EngineResult:
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
        if opts.active:
            # Active mode: each device checks the round's identity keys against a roster
            # the operator built from the devices themselves (each knows its own key and
            # the id it registered under), not against the list the round hands over.
            from clients.device import public_key_bytes

            for dev in devices:
                dev.register()
            roster = {dev.device_id: public_key_bytes(dev.client.signing_key)
                      for dev in devices}
            for dev in devices:
                dev.pinned_identity_keys = roster
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
        return EngineResult(
            rounds=rounds, status=status, db_path=db_path, log_path=log_path,
            workdir=self.workdir, url=self.server.url, config=experiment,
            noise_multiplier=z, stage_timeout=timeout, engine="http", secure_sum="protocol",
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
