"""The simulation-speed workload, shared by the external baselines' harnesses.

``python -m benchmarks sim`` compares our engines with pfl-research and with Flower's
Ray simulation. Those two run in their own venvs (``benchmarks/.pfl-venv``,
``benchmarks/.flwrsim-venv``) because their pins clash with ours, so their harnesses
(``pfl_harness.py``, ``flower_sim_harness.py``) cannot import this repository's packages.
This module is what they share instead: it imports only the standard library and numpy
at import time, and TensorFlow only inside the functions that build or run a model, so
each harness gets the one workload definition from one place:

- data: the Debian Fashion-MNIST IDX files, read with the project's own IDX parser
  (``clients/tasks/idx.py``, loaded by file path: it imports gzip and numpy only), scaled
  to [0, 1] exactly as ``clients.tasks.fashion`` does;
- partition: IID shards, ``devices`` x ``per_device`` distinct training examples from a
  seeded permutation (benchmark data split, not a secret: numpy is fine here);
- model: the same Keras architecture as ``FashionTask.build_model`` (56,714 parameters;
  ``tests/benchmarks/test_baselines.py`` checks the two agree layer by layer);
- the compiled floor: the cohort's examples through one compiled local update per
  device (``CompiledFloor``), on one stream, in the harness's own TensorFlow, one pass
  right after each round, so each round's time can be read against the same machine's
  floor at the same moment (this machine may be shared: the ratio is the steadier
  figure);
- the harness scaffolding: the workload's flags, the Keras choice, the floor passes
  between rounds, the common fields of the result and the one ``BENCH_RESULT {json}``
  line on stdout that ``benchmarks/baselines.py`` parses (:func:`harness_main`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
IDX_MODULE_PATH = REPO_ROOT / "clients" / "tasks" / "idx.py"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_PARAMS = 56_714
RESULT_PREFIX = "BENCH_RESULT "


def _idx_module() -> ModuleType:
    """The project's IDX reader, loaded from its file (no package import, no TF)."""
    spec = importlib.util.spec_from_file_location("_secagg_dp_idx", IDX_MODULE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the IDX reader from {IDX_MODULE_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_fashion(
    data_dir: Path | str = FASHION_DIR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: float32 images in [0, 1] of shape
    (N, 28, 28, 1) and int64 labels, as ``clients.tasks.fashion`` loads them."""
    directory = Path(data_dir)
    missing = [name for name in FASHION_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing in {directory}: {missing} "
            "(apt-get install dataset-fashion-mnist; nothing is downloaded)"
        )
    read_idx = _idx_module().read_idx
    raw = {key: read_idx(directory / name) for key, name in FASHION_FILES.items()}
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        out.append((raw[f"x_{split}"].astype(np.float32) / 255.0)[..., None])
        out.append(raw[f"y_{split}"].astype(np.int64))
    return out[0], out[1], out[2], out[3]


def iid_shards(n_examples: int, devices: int, per_device: int, seed: int) -> np.ndarray:
    """``(devices, per_device)`` indices of distinct examples from a seeded permutation."""
    if devices < 1 or per_device < 1:
        raise ValueError(f"need devices >= 1 and per_device >= 1, got {devices}, {per_device}")
    if devices * per_device > n_examples:
        raise ValueError(
            f"{devices} devices x {per_device} examples exceed the {n_examples} available"
        )
    perm = np.random.default_rng(seed).permutation(n_examples)
    return perm[: devices * per_device].reshape(devices, per_device)


def build_fashion_cnn(seed: int = 0) -> Any:
    """The ``fashion`` task's CNN (uncompiled), rebuilt with this venv's Keras.

    Conv(16, 3x3) -> MaxPool -> Conv(32, 3x3) -> MaxPool -> Dense(64) -> Dense(10 logits),
    Glorot-uniform kernels seeded like ``clients.tasks.base.seeded_initializers``.
    """
    import tensorflow as tf

    counter = iter(range(10_000))

    def init() -> Any:
        return tf.keras.initializers.GlorotUniform(seed=seed * 10_000 + next(counter))

    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input((28, 28, 1)),
            layers.Conv2D(16, 3, activation="relu", kernel_initializer=init()),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu", kernel_initializer=init()),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(64, activation="relu", kernel_initializer=init()),
            layers.Dense(10, kernel_initializer=init()),
        ],
        name="fashion_cnn",
    )


def count_params(model: Any) -> int:
    """Number of trainable scalars."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


def check_params(model: Any) -> int:
    """Raise if the rebuilt model is not the 56,714-parameter ``fashion`` CNN."""
    n = count_params(model)
    if n != FASHION_PARAMS:
        raise RuntimeError(
            f"rebuilt model has {n} parameters, the fashion CNN has {FASHION_PARAMS}"
        )
    return n


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of a logits model on ``(x, y)``, in batches, inference mode."""
    correct = 0
    for start in range(0, len(x), batch):
        logits = np.asarray(model(x[start : start + batch], training=False))
        correct += int(np.sum(np.argmax(logits, axis=1) == y[start : start + batch]))
    return correct / len(x)


def make_sgd_step(model: Any, lr: float) -> Any:
    """One compiled SGD step on ``model``'s variables, in place (mean softmax CE)."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = list(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads, strict=True):
            v.assign_sub(lr * g)
        return loss

    return step


class CompiledFloor:
    """Seconds for one cohort's local training through a compiled update, on one stream.

    One model, built once. Per device, ONE ``tf.function`` call does the whole local
    update: assign the global weights in place, run ``epochs`` x ceil(per_device /
    batch) SGD steps (unrolled at trace time: shard sizes are fixed), add the delta to
    a running sum. No framework, no sampling machinery, no transport: the cost that any
    simulator of this workload must pay, measured by this venv's TensorFlow. The
    constructor runs one untimed pass (tracing); each :meth:`one_pass` is one timed
    cohort with freshly sampled devices.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, shards: np.ndarray, *, cohort: int,
                 epochs: int, batch: int, lr: float, seed: int) -> None:
        import tensorflow as tf

        self._tf = tf
        self.x, self.y, self.shards, self.cohort = x, y, shards, cohort
        self.model = build_fashion_cnn(seed)
        check_params(self.model)
        variables = list(self.model.trainable_variables)
        self._global = [tf.Variable(v) for v in variables]
        self._sums = [tf.Variable(tf.zeros_like(v)) for v in variables]
        loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        per_device = shards.shape[1]
        model, glob, sums = self.model, self._global, self._sums

        @tf.function
        def local_update(xd: Any, yd: Any) -> None:
            for v, w in zip(variables, glob, strict=True):
                v.assign(w)
            for _ in range(epochs):
                for b in range(0, per_device, batch):
                    with tf.GradientTape() as tape:
                        loss = loss_fn(yd[b : b + batch], model(xd[b : b + batch], training=True))
                    grads = tape.gradient(loss, variables)
                    for v, g in zip(variables, grads, strict=True):
                        v.assign_sub(lr * g)
            for s, v, w in zip(sums, variables, glob, strict=True):
                s.assign_add(v - w)

        self._local_update = local_update
        self._rng = np.random.default_rng(seed + 1)
        self.one_pass()  # trace

    def one_pass(self) -> float:
        """Seconds for one cohort's local updates (sampled anew)."""
        tf = self._tf
        chosen = self._rng.choice(len(self.shards), size=self.cohort, replace=False)
        t0 = time.perf_counter()
        for s in self._sums:
            s.assign(tf.zeros_like(s))
        for dev in chosen:
            idx = self.shards[dev]
            self._local_update(self.x[idx], self.y[idx])
        float(tf.reduce_sum(self._sums[0]))  # wait for the last device's work
        return time.perf_counter() - t0

    def measure(self, reps: int) -> list[float]:
        """``reps`` timed passes of a whole cohort."""
        return [self.one_pass() for _ in range(max(1, reps))]


def floor_fields(round_times: list[float], floor_times: list[float], warmup: int
                 ) -> dict[str, Any]:
    """The floor's fields of a result record, from one floor pass after each round:
    the median floor over the timed rounds, and the median of the paired ratios
    round_i / floor_i (a load that changes during the run affects both of a pair)."""
    if len(floor_times) != len(round_times):
        raise ValueError(f"{len(floor_times)} floor passes for {len(round_times)} rounds")
    pairs = list(zip(round_times[warmup:], floor_times[warmup:], strict=True))
    if not pairs:
        raise ValueError(f"{len(round_times)} rounds and {warmup} warm-up rounds: no pair")
    return {"floor_seconds": statistics.median(f for _, f in pairs),
            "ratio_to_floor": statistics.median(r / f for r, f in pairs),
            "floor_times": floor_times}


def median_after_warmup(times: list[float], warmup: int) -> float:
    """Median of the round times after the first ``warmup`` rounds."""
    timed = times[warmup:]
    if not timed:
        raise ValueError(f"{len(times)} round times and {warmup} warm-up rounds: nothing timed")
    return statistics.median(timed)


def emit(record: dict[str, Any]) -> None:
    """Print the one result line that ``benchmarks/baselines.py`` parses."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def machine_load() -> list[float]:
    """1, 5 and 15-minute load averages (other work may share this machine)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except OSError:
        return []


def dist_version(name: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def workload_parser(description: str) -> argparse.ArgumentParser:
    """A harness's parser with the workload's flags (defaults: the issue's workload)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--per-device", type=int, default=60)
    p.add_argument("--cohort", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(FASHION_DIR))
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="time one compiled-floor pass after each round (default: on)")
    p.add_argument("--keras", choices=("legacy", "3"), default="legacy",
                   help="legacy = tf_keras (Keras 2, like the project's stack)")
    return p


def parse_workload(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.rounds <= args.warmup:
        parser.error(f"--rounds {args.rounds} must exceed --warmup {args.warmup}")
    return args


class Measurement:
    """What every harness measures around its framework's rounds: the machine's load,
    a compiled-floor pass after each round (see :class:`CompiledFloor`), and the fields of
    the result record that do not depend on the framework."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.load_start = machine_load()
        self.x_train, self.y_train, self.x_test, self.y_test = load_fashion(args.data_dir)
        self.shards = iid_shards(len(self.x_train), args.devices, args.per_device, args.seed)
        self.floor: CompiledFloor | None = None
        self.floor_times: list[float] = []
        if args.floor:
            self.floor = CompiledFloor(
                self.x_train, self.y_train, self.shards, cohort=args.cohort,
                epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
            )

    def between_rounds(self) -> None:
        """One timed floor pass; a harness calls this right after timing each round and
        restarts its round clock afterwards, so the pass is in no round's time."""
        if self.floor is not None:
            self.floor_times.append(self.floor.one_pass())

    def record(self, framework: str, version_: str, round_times: list[float],
               total_seconds: float, trained_model: Any, **extra: Any) -> dict[str, Any]:
        """The result record: test accuracy of ``trained_model``, the median round time,
        the paired floor figures, the load; ``extra`` holds the framework's own fields."""
        import tensorflow as tf

        a = self.args
        if len(round_times) != a.rounds:
            raise RuntimeError(f"timed {len(round_times)} rounds, asked for {a.rounds}")
        rec: dict[str, Any] = {
            "ok": True,
            "framework": framework,
            "version": version_,
            "tensorflow": tf.__version__,
            "keras": (f"tf_keras {dist_version('tf_keras')}" if a.keras == "legacy"
                      else f"keras {dist_version('keras')}"),
            "params": check_params(trained_model),
            "rounds": a.rounds,
            "warmup": a.warmup,
            "round_times": round_times,
            "seconds_per_round": median_after_warmup(round_times, a.warmup),
            "total_seconds": total_seconds,
            "accuracy": accuracy(trained_model, self.x_test, self.y_test),
            "workload": {
                "devices": a.devices, "per_device": a.per_device, "cohort": a.cohort,
                "epochs": a.epochs, "batch": a.batch, "lr": a.lr, "seed": a.seed,
            },
            "load_start": self.load_start,
            "load_after_rounds": machine_load(),
            **extra,
        }
        if self.floor is not None:
            rec.update(floor_fields(round_times, self.floor_times, a.warmup))
        rec["load_end"] = machine_load()
        return rec


def harness_main(framework: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                 run: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    """Parse, pick Keras (before TensorFlow is imported here or in any child process,
    which inherit the environment), run, and print the one result line; a failure
    becomes an ``ok: false`` record with the exception (and a traceback on stderr)."""
    args = parse_workload(parser, argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1" if args.keras == "legacy" else "0"
    try:
        record = run(args)
    except Exception as err:  # noqa: BLE001 - reported to the driver as an error record
        traceback.print_exc()
        emit({"ok": False, "framework": framework, "error": f"{type(err).__name__}: {err}"})
        return 1
    emit(record)
    return 0
