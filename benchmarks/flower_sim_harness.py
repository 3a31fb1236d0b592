"""Run Flower's Ray simulation of the ``sim`` workload and print seconds per round.

This file runs inside its own venv (``benchmarks/.flwrsim-venv``: ``flwr[simulation]``,
which brings Ray, plus TensorFlow), never in the project's venv. It imports
``sim_workload`` (beside it: numpy and the project's IDX parser only) and nothing else
from this repository. ``benchmarks/baselines.py`` starts it::

    benchmarks/.flwrsim-venv/bin/python benchmarks/flower_sim_harness.py \
        --rounds 12 --train compiled

Flower is used the way its current (1.42) documentation shows: a ``ServerApp`` whose
``main`` runs the Message-API ``FedAvg`` strategy (``strategy.start``), a ``ClientApp``
with a ``@train()`` function, both run by ``flwr.simulation.run_simulation`` on its Ray
backend: 1000 virtual SuperNodes, ``fraction_train`` = cohort / devices, no client-side
evaluation (``fraction_evaluate=0``). Each SuperNode's partition is
``context.node_config["partition-id"]``; ``--client-cpus`` sets Ray's ``num_cpus`` per
ClientApp, so the machine's cores / client-cpus actors train in parallel.

The two training variants (``--train``) differ only in how a client trains:
- ``fit``: Keras ``model.fit(x, y, epochs, batch_size, verbose=0)``, as Flower's
  TensorFlow quickstart does;
- ``compiled``: one compiled ``tf.function`` SGD step per batch
  (``sim_workload.make_sgd_step``).
In both, each Ray actor builds its model and loads the data once and then assigns each
client's weights in place (``set_weights``), which is kinder to Flower than the
quickstart (it rebuilds the model on every call). The client code lives in this module
and the ClientApp handed to Flower is this module imported by name (not ``__main__``),
so Ray pickles it by reference and the per-actor cache survives from call to call.

What is timed: each round from the strategy's ``configure_train`` to the end of its
``aggregate_train``: sampling, sending the model to 100 ClientApps through Ray, their
training, the replies and FedAvg. Centralised evaluation is outside the loop; the test
accuracy is computed once, after the run, on the final arrays. The paired
compiled-floor pass runs in this process after each round's clock stops, while the
actors wait for the next round. Ray's start-up and the actors' first calls (TensorFlow
import, tracing) fall in the warm-up rounds.

Prints one ``BENCH_RESULT {json}`` line (see ``sim_workload.emit``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sim_workload as wl  # noqa: E402

FRAMEWORK = "flower-simulation"

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - depends on the venv
    raise SystemExit(
        f"error: flwr is not importable ({exc}); run this file with "
        "benchmarks/.flwrsim-venv/bin/python (make benchmarks/.flwrsim-venv/.installed)"
    ) from exc

# ---------------------------------------------------------------------------------------
# Client side: runs in Ray actors. One cached state per actor process.
# ---------------------------------------------------------------------------------------
_WORKER: dict[tuple[Any, ...], dict[str, Any]] = {}


def _worker_state(cfg: ConfigRecord) -> dict[str, Any]:
    """Data, shards and ONE model for this actor process, built on its first call."""
    key = tuple(cfg[k] for k in ("train", "seed", "devices", "per-device", "lr", "data-dir"))
    state = _WORKER.get(key)
    if state is None:
        import tensorflow as tf

        x, y, _, _ = wl.load_fashion(str(cfg["data-dir"]))
        shards = wl.iid_shards(len(x), int(cfg["devices"]), int(cfg["per-device"]),
                               int(cfg["seed"]))
        model = wl.build_fashion_cnn(int(cfg["seed"]))
        lr = float(cfg["lr"])
        state = {"x": x, "y": y, "shards": shards, "model": model}
        if cfg["train"] == "fit":
            model.compile(
                optimizer=tf.keras.optimizers.SGD(lr),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        else:
            state["step"] = wl.make_sgd_step(model, lr)
        _WORKER.clear()
        _WORKER[key] = state
    return state


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's local update: assign the global weights, train, return the weights."""
    cfg = msg.content["config"]
    state = _worker_state(cfg)
    model = state["model"]
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
    idx = state["shards"][int(context.node_config["partition-id"])]
    xd, yd = state["x"][idx], state["y"][idx]
    epochs, batch = int(cfg["epochs"]), int(cfg["batch"])
    if cfg["train"] == "fit":
        model.fit(xd, yd, epochs=epochs, batch_size=batch, verbose=0)
    else:
        step = state["step"]
        for _ in range(epochs):
            for b in range(0, len(idx), batch):
                step(xd[b : b + batch], yd[b : b + batch])
    content = RecordDict({
        "arrays": ArrayRecord(model.get_weights()),
        "metrics": MetricRecord({"num-examples": len(idx)}),
    })
    return Message(content=content, reply_to=msg)


# ---------------------------------------------------------------------------------------
# Server side: runs in this process.
# ---------------------------------------------------------------------------------------
class TimedFedAvg(FedAvg):  # type: ignore[misc]
    """Flower's FedAvg, timing each round from configure_train to aggregate_train's end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_times: list[float] = []
        self._start = 0.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Any:
        self._start = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        out = super().aggregate_train(server_round, replies)
        self.round_times.append(time.perf_counter() - self._start)
        RUN["measurement"].between_rounds()  # paired floor pass; the actors are idle now
        RUN["replies"].append(len(replies) - len(errors))
        if errors:
            RUN["errors"].append(errors[0])
        return out


RUN: dict[str, Any] = {"replies": [], "errors": []}


def make_server_app(args: argparse.Namespace) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model = wl.build_fashion_cnn(args.seed)
        RUN["params"] = wl.check_params(model)
        strategy = TimedFedAvg(
            fraction_train=args.cohort / args.devices,
            fraction_evaluate=0.0,
            min_train_nodes=args.cohort,
            min_available_nodes=args.devices,
        )
        RUN["strategy"] = strategy
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.get_weights()),
            num_rounds=args.rounds,
            train_config=ConfigRecord({
                "train": args.train, "seed": args.seed, "devices": args.devices,
                "per-device": args.per_device, "lr": args.lr, "epochs": args.epochs,
                "batch": args.batch, "data-dir": args.data_dir,
            }),
        )
        RUN["final_arrays"] = result.arrays.to_numpy_ndarrays()

    return app


def run(args: argparse.Namespace) -> dict[str, Any]:
    import flower_sim_harness as by_name  # the ClientApp, picklable by reference
    import flwr
    from flwr.simulation import run_simulation

    m = wl.Measurement(args)  # data, shards, the traced floor
    RUN["measurement"] = m
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    run_simulation(
        server_app=make_server_app(args),
        client_app=by_name.client_app,
        num_supernodes=args.devices,
        backend_config={
            "client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "logging_level": logging.ERROR,
                          "log_to_driver": False},
        },
    )
    total = time.perf_counter() - t0
    times = RUN["strategy"].round_times if "strategy" in RUN else []
    if "final_arrays" not in RUN or len(times) != args.rounds:
        raise RuntimeError(
            f"simulation ended after {len(times)} of {args.rounds} rounds"
            + (f"; first client error: {RUN['errors'][0]}" if RUN["errors"] else "")
        )
    short = [n for n in RUN["replies"] if n != args.cohort]
    if short:
        raise RuntimeError(
            f"rounds with fewer than {args.cohort} replies: {RUN['replies']}; "
            f"first client error: {RUN['errors'][0] if RUN['errors'] else 'none'}"
        )
    model = wl.build_fashion_cnn(args.seed)
    model.set_weights(RUN["final_arrays"])
    version = getattr(flwr, "__version__", "") or wl.dist_version("flwr")
    return m.record(FRAMEWORK, version, times, total, model, train=args.train,
                    ray=wl.dist_version("ray"), client_cpus=args.client_cpus,
                    actors=int(cores // args.client_cpus))


def main(argv: list[str] | None = None) -> int:
    parser = wl.workload_parser(__doc__.splitlines()[0])
    parser.add_argument("--train", choices=("compiled", "fit"), default="compiled")
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="Ray num_cpus per ClientApp (cores / this = parallel actors)")
    return wl.harness_main(FRAMEWORK, parser, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
