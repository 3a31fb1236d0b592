"""The in-process research engine: one process, no sockets, the real protocol and noise.

``python -m clients run --engine local``. The server's round logic
(:class:`server.round.ServerCore`) and the devices' (:class:`clients.round.DeviceRound`)
run in this process and exchange typed messages by direct calls; the round log goes to
the same SQLite store as over HTTP, so the dashboard, ``--json-out`` and the benchmarks
read one format. What makes it fast (pfl-research's recipe): one model per worker with
the whole local update compiled once (:class:`clients.training.LocalTrainer`), DP
encoding batched over the round's devices (``dp.Encoder.encode_batch``), shards that are
index views, no simulated network.

With ``--seed`` a run is bit-for-bit reproducible on the same machine: same cohorts, same
dropouts, same noise, same accuracy curve (see :mod:`clients.engines.common` for what is
seeded and why that is for simulation only).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.engines.common import (
    DropoutSchedule,
    Population,
    identity_key,
    make_population,
    noise_rng,
    run_secure_round,
    sampler_source,
    simulation_random_bytes,
    training_seed,
)
from clients.options import (
    SimOptions,
    UsageError,
    build_experiment,
    resolve_noise,
    round_probe,
)
from clients.round import DeviceRound, RoundRefused
from secagg import SecAggError

__all__ = ["EngineResult", "InProcessEngine", "LocalFleet", "encode_many"]


class LocalFleet:
    """The simulated devices of this process: one compiled trainer, one
    :class:`clients.round.DeviceRound` per device of the round in flight.

    Training runs device after device through one compiled local update (one model,
    weights assigned in place); DP encoding runs in one batch over the round's devices."""

    def __init__(
        self,
        task: Any,
        population: Population,
        settings: Mapping[str, Any],
        seed: int | None,
        index_of: Mapping[int, int],
        identity_master: bytes | None = None,
    ) -> None:
        from clients.training import LocalTrainer

        self.identity_master = identity_master
        self.trainer = LocalTrainer(task, seed=int(settings["model_seed"]))
        self.population = population
        self.settings = dict(settings)
        self.seed = seed
        self.index_of = index_of
        self.round_id = -1
        self._pinned: dict[int, bytes] | None = None
        self.devices: dict[int, DeviceRound] = {}
        self.encoded: dict[int, np.ndarray] = {}

    def parts(self, cid: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """Device ``cid``'s (training part, held-out part) of its shard."""
        from clients.data import split_holdout

        x, y = self.population.shard(self.index_of[cid])
        return split_holdout(x, y, float(self.settings.get("eval_fraction", 0.0)))

    def train(
        self, round_id: int, device_ids: Sequence[int], weights: np.ndarray
    ) -> tuple[np.ndarray, list[int]]:
        """The devices' updates, and the devices that produced one: a device whose local
        training diverges (NaN or inf, e.g. from a global model that noise has blown up)
        has nothing to send and drops out of the round, as a real device would."""
        s = self.settings
        out = np.empty((len(device_ids), self.trainer.dim), dtype=np.float32)
        ok: list[int] = []
        for cid in device_ids:
            (x, y), _ = self.parts(cid)
            try:
                out[len(ok)] = self.trainer.update(
                    weights, x, y, epochs=s["local_epochs"], batch_size=s["batch_size"],
                    lr=s["lr"], seed=training_seed(int(s["seed"]), round_id, cid),
                )
            except FloatingPointError:
                continue
            ok.append(cid)
        return out[: len(ok)], ok

    def evaluate(self, plan: Any, device_ids: Sequence[int], weights: np.ndarray) -> np.ndarray:
        """The devices' (accuracy, examples, loss sum) of the global model they received,
        on their held-out parts (federated evaluation)."""
        cfg = plan.config
        return self.trainer.evaluate(
            weights, [self.parts(cid)[1] for cid in device_ids],
            max_examples=cfg.eval_max_examples, max_loss=cfg.eval_max_loss,
        )

    def encode_only(
        self, round_id: int, plan: Any, ids: Sequence[int], weights: np.ndarray,
        rotation_seed: bytes,
    ) -> dict[int, np.ndarray]:
        if not ids:
            return {}
        deltas, ok = self.train(round_id, ids, weights)
        if not ok:
            self.encoded = {}
            return self.encoded
        evaluations = self.evaluate(plan, ok, weights) if plan.config.eval_buckets else None
        self.encoded = encode_many(
            plan, rotation_seed, deltas, ok, round_id, self.seed, evaluations
        )
        return self.encoded

    def begin(self, params: Any, plan: Any, device_ids: Sequence[int]) -> list[int]:
        self.round_id = int(params.round_id)
        self.devices, self.encoded = {}, {}
        for cid in device_ids:
            key = pinned = None
            if params.active and self.identity_master is not None:
                key = identity_key(self.identity_master, self.index_of[cid])
                pinned = self._roster(device_ids)
            try:
                self.devices[cid] = DeviceRound(
                    params, plan, cid, signing_key=key, pinned_identity_keys=pinned
                )
            except RoundRefused:
                continue
        return sorted(self.devices)

    def _roster(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The participants' identity keys as the simulated operator knows them (derived
        from the run's secret, not taken from the round): what active rounds pin."""
        from cryptography.hazmat.primitives import serialization

        master = self.identity_master
        if master is None:  # pragma: no cover - callers check
            raise RuntimeError("active rounds need the run's identity secret")
        if self._pinned is None or set(self._pinned) != set(ids):
            self._pinned = {
                c: identity_key(master, self.index_of[c]).public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                for c in ids
            }
        return self._pinned

    def _each(self, ids: Sequence[int], step: Callable[[DeviceRound, int], Any]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for cid in ids:
            dev = self.devices.get(cid)
            if dev is None:
                continue
            try:
                out[cid] = step(dev, cid)
            except (SecAggError, RoundRefused):
                continue  # the device gave up on its own: a dropout from here on
        return out

    def advertise(self, ids: Sequence[int]) -> dict[int, Any]:
        return self._each(ids, lambda d, c: d.advertise())

    def share(
        self, keys_for: Mapping[int, Mapping[int, Any]], ids: Sequence[int]
    ) -> dict[int, Any]:
        return self._each(ids, lambda d, c: d.share(keys_for[c]))

    def masked(
        self, cts_for: Mapping[int, Mapping[int, bytes]], ids: Sequence[int],
        weights: np.ndarray, rotation_seed: bytes,
    ) -> dict[int, Any]:
        ids = [c for c in ids if c in self.devices]
        if not ids:
            return {}
        plan = self.devices[ids[0]].plan
        encoded = self.encode_only(self.round_id, plan, ids, weights, rotation_seed)
        ids = [c for c in ids if c in encoded]  # a device whose training diverged drops
        for cid in ids:
            self.devices[cid].set_encoded(encoded[cid])
        return self._each(ids, lambda d, c: d.masked(cts_for[c]))

    def consistency(self, request: Any, ids: Sequence[int]) -> dict[int, Any]:
        return self._each(ids, lambda d, c: d.consistency(request))

    def unmask(self, request: Any, ids: Sequence[int]) -> dict[int, Any]:
        return self._each(ids, lambda d, c: d.unmask(request))

    def encoded_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return {c: self.encoded[c] for c in ids if c in self.encoded}

    def close(self) -> None:
        self.devices, self.encoded = {}, {}


def encode_many(
    plan: Any,
    rotation_seed: bytes,
    deltas: np.ndarray,
    device_ids: Sequence[int],
    round_id: int,
    seed: int | None,
    evaluations: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """DP-encode the rows of ``deltas`` in one batch, each with its device's own noise
    (and, with federated evaluation on, its row of ``evaluations``)."""
    from dp import Encoder

    rngs = [noise_rng(seed, round_id, cid) for cid in device_ids]
    encoded, _reports = Encoder(plan, rotation_seed).encode_batch(deltas, rngs, evaluations)
    return {cid: np.asarray(encoded[i], dtype=np.uint64) for i, cid in enumerate(device_ids)}


@dataclass
class EngineResult:
    """What a run produced (the round log as the server's store holds it)."""

    rounds: list[dict[str, Any]]
    status: dict[str, Any]
    db_path: Path
    workdir: Path
    config: Any
    noise_multiplier: float
    elapsed_s: float
    engine: str
    secure_sum: str
    round_seconds: list[float] = field(default_factory=list)
    url: str | None = None
    log_path: Path | None = None
    stage_timeout: float | None = None
    device_errors: list[str] = field(default_factory=list)


class InProcessEngine:
    """The shared driver of the local and Ray engines (they differ in the backend).

    ``after_round(record)`` is called after every round (progress, tests).
    """

    name = "local"

    def __init__(
        self,
        opts: SimOptions,
        *,
        workdir: Path | None = None,
        console: Any = None,
        after_round: Callable[[dict[str, Any]], None] | None = None,
        keep_encoded: bool = False,
    ) -> None:
        self.opts = opts
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="secagg-dp-"))
        self.console = console
        self.after_round = after_round
        self.keep_encoded = keep_encoded
        self.encoded_log: list[dict[int, np.ndarray]] = []
        self.core: Any = None
        self.store: Any = None
        self.identity_master: bytes | None = None
        self.server: Any = None

    def stop(self) -> None:
        """Stop the dashboard server a ``--keep-serving`` run started, if any."""
        if self.server is not None:
            self.server.stop()

    # -- set-up
    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def make_fleet(
        self, task: Any, population: Population, settings: Mapping[str, Any],
        index_of: Mapping[int, int],
    ) -> Any:
        return LocalFleet(
            task, population, settings, self.opts.seed, index_of, self.identity_master
        )

    def setup(self) -> tuple[Any, Any, Population, float]:
        """Task, experiment config, population and z (raises UsageError on bad options)."""
        from clients.tasks import get_task

        opts = self.opts
        try:
            task = get_task(opts.task)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            data = task.load_data(opts.data_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        from clients.options import model_dim

        dim = model_dim(task, opts.seed)
        try:
            z = resolve_noise(opts, dim, int(round_probe(opts).min_survivors))
            experiment = build_experiment(opts, z, opts.stage_timeout or 30.0)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            population = make_population(
                data.x_train, data.y_train, opts.clients, opts.partition, opts.alpha, opts.seed
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return task, experiment, population, z

    def run(self) -> EngineResult:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from server.model import ModelService
        from server.round import ServerCore
        from server.store import Store

        t_start = time.monotonic()
        opts = self.opts
        task, experiment, population, z = self.setup()
        self.workdir.mkdir(parents=True, exist_ok=True)
        db_path = Path(opts.db) if opts.db else self.workdir / "secagg_dp.sqlite3"
        (self.workdir / "experiment.toml").write_text(experiment.to_toml(), encoding="utf-8")
        store = Store(db_path)
        self.store = store
        models = ModelService(opts.task, seed=opts.seed, data_dir=opts.data_dir)
        initial = models.load()
        core = ServerCore(
            experiment, store, models,
            random_bytes=simulation_random_bytes(opts.seed, "round"),
            sampler_source=sampler_source(opts.seed),
        )
        self.core = core
        self.identity_master = os.urandom(32)
        registered = self._register(store, opts.clients, opts.active, self.identity_master)
        core.restore(initial)
        index_of = {cid: i for i, cid in enumerate(sorted(registered))}
        settings = {
            "local_epochs": opts.local_epochs, "batch_size": opts.batch_size, "lr": opts.lr,
            "seed": opts.seed, "model_seed": opts.seed,
            "eval_fraction": experiment.training.eval_fraction,
        }
        fleet = self.make_fleet(task, population, settings, index_of)
        schedule = DropoutSchedule(opts.dropout, opts.seed) if opts.dropout > 0 else None
        self._say(
            f"[dim]engine {self.name}, secure sum {opts.secure_sum}, db {db_path}, z {z:g}; "
            f"noise and cohorts seeded from --seed {opts.seed} (simulation)[/dim]"
        )
        round_seconds: list[float] = []
        try:
            while True:
                t0 = time.perf_counter()
                rnd = core.begin_round(registered)
                if isinstance(rnd, str):
                    if core.finished_reason is not None or core.stop_reason() is not None:
                        break
                    rec = store.rounds()[-1]
                else:
                    out = run_secure_round(
                        core, rnd, fleet, schedule, index_of,
                        secure_sum=opts.secure_sum, keep_encoded=self.keep_encoded,
                    )
                    rec = out.record
                    if self.keep_encoded:
                        self.encoded_log.append(out.encoded)
                round_seconds.append(time.perf_counter() - t0)
                if self.after_round is not None:
                    self.after_round(rec)
        finally:
            fleet.close()
        rounds = store.rounds()
        status = core.epsilon_report()
        status["finished_reason"] = core.stop_reason() or core.finished_reason
        status["rounds_done"] = core.rounds_done
        if opts.json_out:
            import json

            Path(opts.json_out).write_text(json.dumps(rounds, indent=2) + "\n", encoding="utf-8")
        return EngineResult(
            rounds=rounds, status=status, db_path=db_path, workdir=self.workdir,
            config=experiment, noise_multiplier=z, elapsed_s=time.monotonic() - t_start,
            engine=self.name, secure_sum=opts.secure_sum, round_seconds=round_seconds,
        )

    @staticmethod
    def _register(store: Any, n: int, active: bool, master: bytes) -> dict[int, bytes]:
        """Register ``n`` simulated devices (device ``i`` is shard ``i``). Identity keys
        are real Ed25519 keys in active mode (signatures are checked); otherwise random
        placeholders, since a passive round never uses them."""
        from cryptography.hazmat.primitives import serialization

        keys = [
            identity_key(master, i).public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ) if active else os.urandom(32)
            for i in range(n)
        ]
        store.register_devices(keys)
        return store.device_keys()
