"""Local training at the compute floor: one model per worker, one compiled local update.

The update Δ = w_local − w_global is what the DP encoder clips, noises and the secure
aggregation sums; the server averages it (FedAvg, McMahan et al. 2017).

Speed (issue 9). Keras ``fit`` costs about 70 ms per device for 60 examples, almost all
of it set-up (callbacks, data adapters, a fresh iterator). Here the whole local update —
load the global weights into the variables, every epoch, every minibatch, the SGD step,
the difference to the start — is ONE ``tf.function`` traced once per worker (shapes are
left unknown on the example axis, so devices of any shard size share the trace). The
model is built once per worker and its variables are assigned in place. Devices are
independent: plain SGD keeps no optimizer state, and the weights are overwritten at the
start of every call.

Reproducibility: epoch ``e`` visits the examples in the order
``numpy.random.default_rng((seed, e)).permutation(n)`` (shuffling is public, not a
secret), so for a fixed seed the result is bit-identical on the same machine.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.tasks.base import Task

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["LocalTrainer", "train_local", "check_hyperparameters", "evaluation_stats"]


def check_hyperparameters(epochs: Any, batch_size: Any, lr: Any, seed: Any) -> None:
    """Raise ValueError (quoting the bad value) unless the local-training knobs are sane."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def epoch_orders(n: int, epochs: int, seed: int) -> np.ndarray:
    """The example order of each epoch, shape (epochs, n), int32."""
    return np.stack(
        [np.random.default_rng((seed, e)).permutation(n) for e in range(epochs)]
    ).astype(np.int32)


class LocalTrainer:
    """Compiled local SGD for one task, on one model object (one per worker).

    ``update(global_weights, x, y, epochs=, batch_size=, lr=, seed=)`` returns Δ as a
    float32 vector in the order of :func:`clients.tasks.weights.get_flat_weights`. Not
    thread-safe by itself: calls are serialised by an internal lock (TensorFlow gains
    nothing from two local updates at once on one model).
    """

    def __init__(self, task: Task, model: tf.keras.Model | None = None, seed: int = 0) -> None:
        import tensorflow as tf

        self.task = task
        self.model = model if model is not None else task.build_model(seed)
        if getattr(self.model, "loss", None) is None:
            raise ValueError("model must be compiled with a loss (use task.build_model())")
        trainable = {id(v) for v in self.model.trainable_variables}
        if any(id(v) not in trainable for v in self.model.weights):
            raise ValueError("LocalTrainer supports models whose weights are all trainable")
        self._vars = list(self.model.weights)
        self._shapes = [tuple(int(s) for s in v.shape) for v in self._vars]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self.dim = int(sum(self._sizes))
        self._loss = tf.keras.losses.get(self.model.loss)
        self._lock = threading.Lock()
        self._concrete: Any = None
        y_dtype = tf.int64 if task.num_classes is not None else tf.float32
        y_shape = [None] if task.num_classes is not None else None  # labels: any rank
        self._fn = tf.function(
            self._local_update,
            input_signature=[
                tf.TensorSpec([self.dim], tf.float32),
                tf.TensorSpec([None, *task.input_shape], tf.float32),
                tf.TensorSpec(y_shape, y_dtype),
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.float32),
            ],
            jit_compile=False,
        )

    def _local_update(
        self, flat: Any, x: Any, y: Any, orders: Any, batch_size: Any, lr: Any
    ) -> Any:
        import tensorflow as tf

        offset = 0
        for var, shape, size in zip(self._vars, self._shapes, self._sizes, strict=True):
            var.assign(tf.reshape(flat[offset : offset + size], shape))
            offset += size
        n = tf.shape(orders)[1]
        batches = (n + batch_size - 1) // batch_size
        for e in tf.range(tf.shape(orders)[0]):
            order = orders[e]
            for i in tf.range(batches):
                idx = order[i * batch_size : tf.minimum((i + 1) * batch_size, n)]
                xb = tf.gather(x, idx)
                yb = tf.gather(y, idx)
                with tf.GradientTape() as tape:
                    loss = self._loss(yb, self.model(xb, training=True))
                grads = tape.gradient(loss, self._vars)
                for var, grad in zip(self._vars, grads, strict=True):
                    var.assign_sub(lr * grad)
        new = tf.concat([tf.reshape(v, [-1]) for v in self._vars], axis=0)
        return new - flat

    def update(
        self,
        global_weights: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> np.ndarray:
        """Train from ``global_weights`` on ``(x, y)``; return Δ = new − global (float32).

        Raises ValueError on empty data, mismatched lengths, bad hyper-parameters or a
        weight vector of the wrong length; FloatingPointError if training diverged.
        """
        check_hyperparameters(epochs, batch_size, lr, seed)
        w = np.asarray(global_weights, dtype=np.float32).ravel()
        if w.shape[0] != self.dim:
            raise ValueError(f"global weights have length {w.shape[0]}, model needs {self.dim}")
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if len(x) == 0:
            raise ValueError("no training examples")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if x.shape[1:] != tuple(self.task.input_shape):
            raise ValueError(
                f"inputs have shape {x.shape[1:]}, task {self.task.name} needs "
                f"{self.task.input_shape}"
            )
        y = y.astype(np.int64) if self.task.num_classes is not None else y.astype(np.float32)
        orders = epoch_orders(len(x), epochs, seed)
        import tensorflow as tf

        with self._lock:
            if self._concrete is None:  # skips tf.function's per-call argument binding
                self._concrete = self._fn.get_concrete_function()
            delta = self._concrete(
                tf.constant(w), tf.constant(x), tf.constant(y), tf.constant(orders),
                tf.constant(batch_size, tf.int32), tf.constant(lr, tf.float32),
            ).numpy()
        if not np.all(np.isfinite(delta)):
            raise FloatingPointError(f"local training diverged (lr={lr}): update has NaN/inf")
        return delta.astype(np.float32, copy=False)


    def evaluate(
        self,
        global_weights: np.ndarray,
        parts: list[tuple[np.ndarray, np.ndarray]],
        *,
        max_examples: int,
        max_loss: float,
    ) -> np.ndarray:
        """Each device's (accuracy, examples, loss sum) of ``global_weights`` on its
        held-out part (:func:`evaluation_stats`), all devices in one forward pass."""
        w = np.asarray(global_weights, dtype=np.float32).ravel()
        if w.shape[0] != self.dim:
            raise ValueError(f"global weights have length {w.shape[0]}, model needs {self.dim}")
        with self._lock:
            offset = 0
            for var, shape, size in zip(self._vars, self._shapes, self._sizes, strict=True):
                var.assign(w[offset : offset + size].reshape(shape))
                offset += size
            return evaluation_stats(
                self.task, self.model, parts, max_examples=max_examples, max_loss=max_loss
            )


def evaluation_stats(
    task: Task,
    model: Any,
    parts: list[tuple[np.ndarray, np.ndarray]],
    *,
    max_examples: int,
    max_loss: float,
) -> np.ndarray:
    """Rows (accuracy, examples, loss sum), one per device's held-out ``(x, y)``: at most
    the first ``max_examples`` examples, each loss clipped at ``max_loss`` (the bounds the
    encoder's evaluation block assumes, ``dp.DPConfig``). A device without held-out
    examples gets (0, 0, 0), which the encoder sends as an all-zero block."""
    out = np.zeros((len(parts), 3), dtype=np.float64)
    xs, ys, sizes = [], [], []
    for x, y in parts:
        k = min(len(x), int(max_examples))
        sizes.append(k)
        if k:
            xs.append(np.asarray(x[:k], dtype=np.float32))
            ys.append(np.asarray(y[:k]))
    if not xs:
        return out
    correct, loss = task.per_example(model, np.concatenate(xs), np.concatenate(ys))
    loss = np.minimum(np.nan_to_num(loss, nan=max_loss, posinf=max_loss), max_loss)
    start = 0
    for row, k in enumerate(sizes):
        if k:
            out[row] = (correct[start:start + k].mean(), k, loss[start:start + k].sum())
            start += k
    return out


_TRAINERS: dict[int, LocalTrainer] = {}
_TRAINERS_LOCK = threading.Lock()


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
    """Train ``model`` from ``global_weights`` on ``(x, y)``; return Δ = new − global.

    The compiled :class:`LocalTrainer` of ``model`` (made on first use and kept for
    the model's lifetime) does the work; ``model`` is left holding the local weights.
    """
    with _TRAINERS_LOCK:
        trainer = _TRAINERS.get(id(model))
        if trainer is None or trainer.model is not model:
            trainer = LocalTrainer(task, model)
            _TRAINERS[id(model)] = trainer
    return trainer.update(
        global_weights, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )
