"""Local training on one device: start from the global weights, run plain SGD, return Δ.

The update Δ = w_local - w_global is what the DP encoder clips, noises and the secure
aggregation sums; the server averages it (FedAvg, McMahan et al. 2017). Plain SGD (no
momentum, no optimizer state) keeps devices independent: the same model object can be
re-used for many devices in one process without anything carrying over but the weights,
which are overwritten with the global model at the start of each call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from clients.tasks.base import Task
from clients.tasks.weights import get_flat_weights, set_flat_weights

if TYPE_CHECKING:
    import tensorflow as tf


def _ensure_plain_sgd(model: tf.keras.Model, lr: float) -> None:
    """Set the optimizer's learning rate; (re)compile with plain SGD only if needed."""
    import tensorflow as tf

    opt = getattr(model, "optimizer", None)
    is_plain_sgd = (
        isinstance(opt, tf.keras.optimizers.SGD)
        and float(opt.momentum) == 0.0
        and not getattr(opt, "nesterov", False)
    )
    if opt is None or not is_plain_sgd:
        if getattr(model, "loss", None) is None:
            raise ValueError("model must be compiled with a loss (use task.build_model())")
        model.compile(
            optimizer=tf.keras.optimizers.SGD(learning_rate=lr),
            loss=model.loss,
            metrics=[],
        )
        return
    opt.learning_rate.assign(lr)


def train_local(
    task: Task,
    model: tf.keras.Model,
    global_weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> np.ndarray:
    """Train ``model`` from ``global_weights`` on ``(x, y)``; return Δ = new - global.

    Each epoch shuffles the examples with ``numpy.random.default_rng((seed, epoch))`` and
    runs minibatch SGD at learning rate ``lr``. For a fixed seed the result is
    reproducible on the same machine as far as TensorFlow's CPU kernels are (the built-in
    models use no dropout or other random layers). ``model`` is left holding the local
    weights. Returns a float32 vector of length ``len(global_weights)``.

    Raises ValueError on empty data, mismatched lengths or bad hyper-parameters.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if len(x) == 0:
        raise ValueError("no training examples")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if x.shape[1:] != tuple(task.input_shape):
        raise ValueError(
            f"inputs have shape {x.shape[1:]}, task {task.name} needs {task.input_shape}"
        )
    y = y.astype(np.int64) if task.num_classes is not None else y.astype(np.float32)

    start = np.asarray(global_weights, dtype=np.float32).copy()
    set_flat_weights(model, start)
    _ensure_plain_sgd(model, float(lr))
    for epoch in range(epochs):
        order = np.random.default_rng((seed, epoch)).permutation(len(x))
        model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    delta = get_flat_weights(model) - start
    if not np.all(np.isfinite(delta)):
        raise FloatingPointError(f"local training diverged (lr={lr}): update has NaN/inf")
    return delta.astype(np.float32, copy=False)
