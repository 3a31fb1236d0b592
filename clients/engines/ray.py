"""The Ray research engine: device work in Ray actors, the server's logic in this process.

``python -m clients run --engine ray [--workers W] [--ray-address ADDR]``. Each of W
actors is a :class:`clients.engines.local.LocalFleet` for the devices whose shard index
is ≡ its rank mod W: it loads the task's data and the seeded partition itself (shards
are index views), builds one model, compiles the local update once, and for every round
runs its devices' whole side — advertise, share keys, train, DP-encode, mask, unmask —
with the same :class:`clients.round.DeviceRound` as every other transport. The driver
process runs :class:`server.round.ServerCore` exactly as the local engine does. Each
actor's TensorFlow uses one thread, so W actors use W cores without oversubscription.

Messages cross processes as our own wire forms (``to_dict()`` dicts, raw bytes for the
masked inputs), never as our Python objects. Ray serializes those plain values with its
own transport.

On a cluster: start Ray on each machine (``ray start --head`` on one, ``ray start
--address HEAD:6379`` on the others), install this package and the task's data on each
(Fashion-MNIST: ``apt-get install dataset-fashion-mnist``), then run with
``--ray-address HEAD:6379 --workers W``.

Determinism: devices are assigned to actors by index and each actor walks its devices
in order, so a seeded run with the same W is repeatable; against the local engine the
accuracy curve agrees within the tolerance the tests state (TensorFlow's one-thread and
two-thread kernels may sum in a different order, and a last-bit difference can flip a
randomized-rounding decision).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clients.engines.local import InProcessEngine
from clients.options import UsageError

__all__ = ["RayEngine", "RayFleet"]


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=1)
    class FleetActor:
        """One worker's devices (see the module docstring)."""

        def __init__(self, spec: dict[str, Any]) -> None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            from clients.engines.common import make_population
            from clients.engines.local import LocalFleet
            from clients.tasks import get_task

            task = get_task(spec["task"])
            data = task.load_data(spec["data_dir"])
            population = make_population(
                data.x_train, data.y_train, spec["clients"], spec["partition"],
                spec["alpha"], spec["partition_seed"],
            )
            index_of = {int(k): int(v) for k, v in spec["index_of"]}
            self.fleet = LocalFleet(
                task, population, spec["settings"], spec["noise_seed"], index_of,
                spec["identity_master"],
            )

        def begin(self, params: dict[str, Any], plan: dict[str, Any], ids: list[int]) -> list[int]:
            from dp import EncodingPlan
            from secagg import RoundParams

            return self.fleet.begin(
                RoundParams.from_dict(params), EncodingPlan.from_dict(plan), ids
            )

        def advertise(self, ids: list[int]) -> dict[int, dict[str, Any]]:
            return _dicts(self.fleet.advertise(ids))

        def share(self, keys_for: dict[int, dict[int, dict[str, Any]]], ids: list[int]) -> Any:
            from secagg import AdvertiseKeys

            keys = {c: {int(p): AdvertiseKeys.from_dict(k) for p, k in kk.items()}
                    for c, kk in keys_for.items()}
            return _dicts(self.fleet.share(keys, ids))

        def masked(
            self, cts_for: dict[int, dict[int, bytes]], weights: np.ndarray,
            rotation_seed: bytes, ids: list[int],
        ) -> dict[int, bytes]:
            out = self.fleet.masked(cts_for, ids, weights, rotation_seed)
            return {c: bytes(m.data) for c, m in out.items()}

        def consistency(self, request: dict[str, Any], ids: list[int]) -> Any:
            from secagg import UnmaskRequest

            return _dicts(self.fleet.consistency(UnmaskRequest.from_dict(request), ids))

        def unmask(self, request: dict[str, Any], ids: list[int]) -> Any:
            from secagg import UnmaskRequest

            return _dicts(self.fleet.unmask(UnmaskRequest.from_dict(request), ids))

        def encode_only(
            self, round_id: int, plan: dict[str, Any], weights: np.ndarray,
            rotation_seed: bytes, ids: list[int],
        ) -> dict[int, np.ndarray]:
            from dp import EncodingPlan

            return self.fleet.encode_only(
                round_id, EncodingPlan.from_dict(plan), ids, weights, rotation_seed
            )

        def encoded_of(self, ids: list[int]) -> dict[int, np.ndarray]:
            return self.fleet.encoded_of(ids)

    return FleetActor


def _dicts(msgs: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
    return {int(c): dict(m.to_dict()) for c, m in msgs.items()}


class RayFleet:
    """The :class:`clients.engines.common.Fleet` interface over W Ray actors."""

    def __init__(self, spec: dict[str, Any], index_of: Mapping[int, int], workers: int) -> None:
        import ray

        self.ray = ray
        self.workers = workers
        self.index_of = dict(index_of)
        actor = _actor_class()
        self.actors = [actor.remote(spec) for _ in range(workers)]
        ray.get([a.encoded_of.remote([]) for a in self.actors])  # wait until all are up
        self.round_id = -1

    def _split(self, ids: Sequence[int]) -> list[list[int]]:
        parts: list[list[int]] = [[] for _ in self.actors]
        for cid in ids:
            parts[self.index_of[cid] % self.workers].append(int(cid))
        return parts

    def _fan(self, method: str, ids: Sequence[int], *args: Any, per: Any = None) -> dict:
        """Call ``method(*args, part)`` (or ``method(*per(part), part)``) on every actor
        with its part of ``ids``, in parallel; merge the answers."""
        calls = [
            getattr(actor, method).remote(*(per(part) if per is not None else args), part)
            for actor, part in zip(self.actors, self._split(ids), strict=True)
            if part
        ]
        out: dict[int, Any] = {}
        for result in self.ray.get(calls):
            out.update({int(k): v for k, v in result.items()})
        return out

    def begin(self, params: Any, plan: Any, device_ids: Sequence[int]) -> list[int]:
        self.round_id = int(params.round_id)
        p, pl = params.to_dict(), plan.to_dict()
        calls = [a.begin.remote(p, pl, part)
                 for a, part in zip(self.actors, self._split(device_ids), strict=True)]
        joined: list[int] = []
        for res in self.ray.get(calls):
            joined.extend(res)
        return sorted(joined)

    def advertise(self, ids: Sequence[int]) -> dict[int, Any]:
        from secagg import AdvertiseKeys

        return {c: AdvertiseKeys.from_dict(m) for c, m in self._fan("advertise", ids).items()}

    def share(
        self, keys_for: Mapping[int, Mapping[int, Any]], ids: Sequence[int]
    ) -> dict[int, Any]:
        from secagg import ShareKeys

        def per(part: list[int]) -> tuple[Any, ...]:
            return ({c: {p: k.to_dict() for p, k in keys_for[c].items()} for c in part},)

        return {c: ShareKeys.from_dict(m) for c, m in self._fan("share", ids, per=per).items()}

    def masked(
        self, cts_for: Mapping[int, Mapping[int, bytes]], ids: Sequence[int],
        weights: np.ndarray, rotation_seed: bytes,
    ) -> dict[int, Any]:
        from secagg import MaskedInput

        w = self.ray.put(np.asarray(weights, dtype=np.float32))

        def per(part: list[int]) -> tuple[Any, ...]:
            return ({c: dict(cts_for[c]) for c in part}, w, rotation_seed)

        return {
            c: MaskedInput(round_id=self.round_id, sender=c, data=data)
            for c, data in self._fan("masked", ids, per=per).items()
        }

    def consistency(self, request: Any, ids: Sequence[int]) -> dict[int, Any]:
        from secagg import ConsistencyCheck

        msgs = self._fan("consistency", ids, request.to_dict())
        return {c: ConsistencyCheck.from_dict(m) for c, m in msgs.items()}

    def unmask(self, request: Any, ids: Sequence[int]) -> dict[int, Any]:
        from secagg import UnmaskShares

        return {c: UnmaskShares.from_dict(m)
                for c, m in self._fan("unmask", ids, request.to_dict()).items()}

    def encode_only(
        self, round_id: int, plan: Any, ids: Sequence[int], weights: np.ndarray,
        rotation_seed: bytes,
    ) -> dict[int, np.ndarray]:
        w = self.ray.put(np.asarray(weights, dtype=np.float32))
        return self._fan("encode_only", ids, round_id, plan.to_dict(), w, rotation_seed)

    def encoded_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self._fan("encoded_of", ids)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


class RayEngine(InProcessEngine):
    """:class:`clients.engines.local.InProcessEngine` with a :class:`RayFleet`."""

    name = "ray"

    def make_fleet(
        self, task: Any, population: Any, settings: Mapping[str, Any],
        index_of: Mapping[int, int],
    ) -> Any:
        opts = self.opts
        start_ray(opts.ray_address, opts.workers)
        import ray

        workers = opts.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        spec = {
            "task": opts.task, "data_dir": opts.data_dir, "clients": opts.clients,
            "partition": opts.partition, "alpha": opts.alpha, "partition_seed": opts.seed,
            "settings": dict(settings), "noise_seed": opts.seed,
            "index_of": sorted(index_of.items()), "identity_master": self.identity_master,
        }
        self._say(f"[dim]ray: {workers} workers[/dim]")
        return RayFleet(spec, index_of, workers)

    def run(self) -> Any:
        start_ray(self.opts.ray_address, self.opts.workers)  # fail fast, before any work
        try:
            return super().run()
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()


def start_ray(address: str | None, workers: int | None) -> None:
    """Start a local Ray (``address`` None) or join a cluster; a one-line UsageError if
    the address cannot be reached."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address is None:
        kwargs["num_cpus"] = workers or os.cpu_count() or 1
    else:
        check_reachable(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot start or join Ray at {address!r}: {first}") from None


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast (UsageError) when a Ray address names no listening host:port, instead of
    letting ``ray.init`` retry for a minute. ``auto`` and ``local`` are left to Ray."""
    import socket

    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise UsageError(f"ray address must be HOST:PORT, got {address!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"ray address must be HOST:PORT, got {address!r}") from None
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as exc:
        raise UsageError(f"cannot reach Ray at {address!r}: {exc.strerror or exc}") from None
