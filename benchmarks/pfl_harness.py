"""Run pfl-research's simulation of the ``sim`` workload and print seconds per round.

This file runs inside pfl-research's own venv (``benchmarks/.pfl-venv``, PyPI ``pfl``
with its TensorFlow extra), never in the project's venv: pfl needs TensorFlow >= 2.16
and numpy 2, we pin TensorFlow 2.15. It imports ``sim_workload`` (beside it: numpy and
the project's IDX parser only) and nothing else from this repository.
``benchmarks/baselines.py`` starts it::

    benchmarks/.pfl-venv/bin/python benchmarks/pfl_harness.py --rounds 12

pfl is used the way its own benchmarks use it (``benchmarks/image_classification/tf/
train.py`` in apple/pfl-research): a Keras model wrapped in ``TFModel`` with an SGD
local optimizer whose rate pfl overrides with ``local_learning_rate``, a central SGD
optimizer at rate 1.0 (FedAvg: the new model is the mean of the devices' models),
``FederatedAveraging``, a ``FederatedDataset`` of per-user datasets sampled by
``MinimizeReuseUserSampler``, ``SimulatedBackend`` with ``WeightByDatapoints``. One
process, one model, trained in place user after user (pfl's design); no DP, no secure
aggregation, no network.

What is timed: each central iteration, from the end of the previous one (or from
``on_train_begin``) to its ``after_central_iteration`` callback: sampling the cohort,
every user's local training, pfl's aggregation and the central update. Central
evaluation is not in the loop (no ``CentralEvaluationCallback``, no validation cohort);
the test accuracy is computed once after the last round. pfl evaluates each user's
local metrics in iteration 0 (its ``evaluation_frequency`` schedule always fires there),
which is one more reason to discard warm-up rounds.

Keras: pfl 0.6's ``TFModel`` keys the model's variables by ``variable.name``. Under
Keras 3 (TensorFlow 2.16+'s default ``tf.keras``) that name is the bare ``kernel`` or
``bias``, so the map keeps only the last layer's two variables: every other layer is then
never reset between users nor averaged, and the "FedAvg" run is really sequential SGD
through the whole cohort (it reaches 0.78 test accuracy in 4 rounds where FedAvg reaches
0.22). So the harness runs pfl on legacy Keras (``tf_keras``, installed with pfl's
``tf`` extra; ``TF_USE_LEGACY_KERAS=1``), whose names are unique (``conv2d/kernel:0``),
and refuses to run if ``TFModel.variable_map`` does not hold every trainable variable.
``--keras 3`` is kept only to show that refusal.

Prints one ``BENCH_RESULT {json}`` line (see ``sim_workload.emit``).
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import sim_workload as wl  # noqa: E402


def select_keras(which: str) -> None:
    """Pick Keras before TensorFlow is imported (``tf.keras`` is resolved at import)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1" if which == "legacy" else "0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--per-device", type=int, default=60)
    p.add_argument("--cohort", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(wl.FASHION_DIR))
    p.add_argument("--floor-reps", type=int, default=3, help="0 skips the compiled floor")
    p.add_argument("--keras", choices=("legacy", "3"), default="legacy",
                   help="legacy = tf_keras (default; see the module docstring)")
    args = p.parse_args(argv)
    if args.rounds <= args.warmup:
        p.error(f"--rounds {args.rounds} must exceed --warmup {args.warmup}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pfl
    import tensorflow as tf
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.tensorflow import TFModel

    np.random.seed(args.seed)  # pfl's user sampler and seeds draw from numpy's global rng
    tf.random.set_seed(args.seed)

    x_train, y_train, x_test, y_test = wl.load_fashion(args.data_dir)
    shards = wl.iid_shards(len(x_train), args.devices, args.per_device, args.seed)

    def make_dataset(user_id: int) -> Dataset:
        idx = shards[user_id]
        return Dataset(raw_data=[x_train[idx], y_train[idx]], user_id=user_id)

    federated = FederatedDataset(
        make_dataset, get_user_sampler("minimize_reuse", list(range(args.devices)))
    )

    keras_model = wl.build_fashion_cnn(args.seed)
    n_params = wl.check_params(keras_model)
    keras_model.compile(
        tf.keras.optimizers.SGD(args.lr),  # pfl resets it to local_learning_rate per user
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model = TFModel(
        model=keras_model,
        metrics={"accuracy": tf.keras.metrics.SparseCategoricalAccuracy()},
        central_optimizer=tf.keras.optimizers.SGD(1.0),
    )
    if len(model.variable_map) != len(keras_model.trainable_variables):
        raise RuntimeError(
            f"pfl's TFModel maps {len(model.variable_map)} of the model's "
            f"{len(keras_model.trainable_variables)} variables (names "
            f"{sorted(model.variable_map)}): it would not reset or average the rest; "
            "run with --keras legacy"
        )
    backend = SimulatedBackend(
        training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()]
    )

    class RoundTimer(TrainingProcessCallback):  # type: ignore[misc]
        """Wall time of each central iteration (callback to callback)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._last = 0.0

        def on_train_begin(self, *, model: Any) -> Metrics:
            self._last = time.perf_counter()
            return Metrics()

        def after_central_iteration(
            self, aggregate_metrics: Metrics, model: Any, *, central_iteration: int
        ) -> tuple[bool, Metrics]:
            now = time.perf_counter()
            self.times.append(now - self._last)
            self._last = now
            return False, Metrics()

    load_start = wl.machine_load()
    floor, floor_before = None, []
    if args.floor_reps > 0:  # measured before and after the rounds (see CompiledFloor)
        floor = wl.CompiledFloor(
            x_train, y_train, shards, cohort=args.cohort, epochs=args.epochs,
            batch=args.batch, lr=args.lr, seed=args.seed,
        )
        floor_before = floor.measure(args.floor_reps)
    timer = RoundTimer()
    t0 = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=args.rounds + 1,
            train_cohort_size=args.cohort,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.lr,
            local_num_epochs=args.epochs,
            local_batch_size=args.batch,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[timer],
    )
    total = time.perf_counter() - t0
    acc = wl.accuracy(keras_model, x_test, y_test)
    if len(timer.times) != args.rounds:
        raise RuntimeError(f"timed {len(timer.times)} rounds, asked for {args.rounds}")
    record: dict[str, Any] = {
        "ok": True,
        "framework": "pfl-research",
        "version": pfl.__version__ if hasattr(pfl, "__version__") else _dist_version("pfl"),
        "tensorflow": tf.__version__,
        "keras": _keras_version(args.keras),
        "params": n_params,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "round_times": timer.times,
        "seconds_per_round": wl.median_after_warmup(timer.times, args.warmup),
        "total_seconds": total,
        "accuracy": acc,
        "workload": {
            "devices": args.devices, "per_device": args.per_device, "cohort": args.cohort,
            "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        },
        "load_start": load_start,
        "load_after_rounds": wl.machine_load(),
    }
    if floor is not None:
        record.update(wl.floor_fields(floor_before, floor.measure(args.floor_reps)))
    record["load_end"] = wl.machine_load()
    return record


def _keras_version(which: str) -> str:
    return f"tf_keras {_dist_version('tf_keras')}" if which == "legacy" else (
        f"keras {_dist_version('keras')}")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    select_keras(args.keras)
    try:
        record = run(args)
    except Exception as err:  # noqa: BLE001 - reported to the driver as an error record
        traceback.print_exc()
        wl.emit({"ok": False, "framework": "pfl-research",
                 "error": f"{type(err).__name__}: {err}"})
        return 1
    wl.emit(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
