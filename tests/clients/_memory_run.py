"""Run by tests/clients/test_engines_memory.py in a fresh process: 10,000 simulated devices
with 100 per round on a small registered task; prints peak RSS and the partition's size."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from clients.tasks import register_task  # noqa: E402
from clients.tasks.base import Dataset, Task, compile_sgd, seeded_initializers  # noqa: E402


class MemTask(Task):
    """A small regression task with 30,000 generated examples (3 per device)."""

    name = "memcheck"
    input_shape = (16,)
    num_classes = None
    class_names = ()
    metric_name = "accuracy"
    description = "memory check: generated regression data"

    def build_model(self, seed: int = 0):  # type: ignore[no-untyped-def]
        import tensorflow as tf

        init = seeded_initializers(seed)
        model = tf.keras.Sequential([tf.keras.layers.Input(self.input_shape),
                                     tf.keras.layers.Dense(8, kernel_initializer=init()),
                                     tf.keras.layers.Dense(1, kernel_initializer=init())])
        return compile_sgd(model, tf.keras.losses.MeanSquaredError())

    def load_data(self, data_dir=None) -> Dataset:  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(31_000, 16)).astype(np.float32)
        y = (x @ rng.normal(size=16)).astype(np.float32)
        return Dataset(x[:30_000], y[:30_000], x[30_000:], y[30_000:])

    def evaluate(self, model, x, y):  # type: ignore[no-untyped-def]
        pred = np.asarray(model(x, training=False)).ravel()
        mse = float(np.mean((pred - y) ** 2))
        return {"loss": mse, "accuracy": 1.0 - mse / float(np.var(y))}

    def predict(self, model, x):  # type: ignore[no-untyped-def]
        return {"value": float(np.asarray(model(x[None], training=False)).ravel()[0])}


def main() -> None:
    from clients.engines.local import InProcessEngine
    from clients.options import SimOptions

    register_task(MemTask)
    clients = int(sys.argv[1])
    workdir = Path(sys.argv[2])
    opts = SimOptions(task="memcheck", clients=clients, per_round=100, rounds=2,
                      mechanism="ddgauss", noise_multiplier=1.0, bits=20, engine="local",
                      sampling="fixed", lr=0.01, seed=1)
    t0 = time.monotonic()
    engine = InProcessEngine(opts, workdir=workdir)
    result = engine.run()
    print(json.dumps({
        "clients": clients,
        "rounds_done": sum(1 for r in result.rounds if r["status"] == "done"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "seconds": time.monotonic() - t0,
    }))


if __name__ == "__main__":
    main()
