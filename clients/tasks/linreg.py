"""``linreg``: y = W·x + b trained by gradient descent (the on-device demo's model).

Synthetic data from a seeded generator, so every process builds the same data without
downloading anything: x ~ Uniform[0, 1]^8, y = W_TRUE·x + B_TRUE + N(0, NOISE_STD^2).
With these constants the best possible test R^2 is about 0.98.

Metric: ``evaluate(...)["accuracy"]`` is the coefficient of determination
R^2 = 1 - SS_res / SS_tot on the given set (1 is perfect, 0 is "predict the mean",
negative is worse than the mean); ``loss`` is the mean squared error.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.tasks.base import Dataset, Task, _predict, compile_sgd, seeded_initializers

if TYPE_CHECKING:
    import tensorflow as tf

N_FEATURES = 8
W_TRUE = np.array([2.0, -1.5, 1.0, 0.5, -0.5, 3.0, -2.5, 1.5], dtype=np.float64)
B_TRUE = 0.5
NOISE_STD = 0.2
N_TRAIN = 5000
N_TEST = 1000
DATA_SEED = 20240601


@functools.lru_cache(maxsize=1)
def _generate() -> Dataset:
    rng = np.random.default_rng(DATA_SEED)
    n = N_TRAIN + N_TEST
    x = rng.uniform(0.0, 1.0, size=(n, N_FEATURES))
    y = x @ W_TRUE + B_TRUE + rng.normal(0.0, NOISE_STD, size=n)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    arrays = [x32[:N_TRAIN], y32[:N_TRAIN], x32[N_TRAIN:], y32[N_TRAIN:]]
    arrays = [np.ascontiguousarray(a) for a in arrays]
    for a in arrays:
        a.setflags(write=False)
    return Dataset(*arrays)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; 0.0 when y is constant and predicted exactly."""
    y = np.asarray(y, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


class LinRegTask(Task):
    """Linear regression, one Dense(1) layer (9 parameters), MSE loss, plain SGD."""

    name = "linreg"
    input_shape = (N_FEATURES,)
    num_classes = None
    class_names = ()
    metric_name = "r2"
    description = "y = W·x + b on seeded synthetic data (8 features); accuracy field = R^2"

    def build_model(self, seed: int = 0) -> tf.keras.Model:
        import tensorflow as tf

        init = seeded_initializers(seed)
        model = tf.keras.Sequential(
            [
                tf.keras.layers.Input(self.input_shape),
                tf.keras.layers.Dense(1, kernel_initializer=init()),
            ],
            name="linreg",
        )
        return compile_sgd(model, tf.keras.losses.MeanSquaredError())

    def load_data(self, data_dir: Path | str | None = None) -> Dataset:
        """Generated data (fixed seed); ``data_dir`` is ignored."""
        return _generate()

    def evaluate(self, model: tf.keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``{"loss": MSE, "accuracy": R^2}`` on ``(x, y)``."""
        if len(x) == 0:
            raise ValueError("cannot evaluate on an empty set")
        pred = _predict(model, np.asarray(x, dtype=np.float32)).ravel()
        y64 = np.asarray(y, dtype=np.float64).ravel()
        return {"loss": float(np.mean((y64 - pred) ** 2)), "accuracy": r2_score(y64, pred)}

    def predict(self, model: tf.keras.Model, x: np.ndarray) -> dict[str, Any]:
        """``{"label": None, "class_name": None, "scores": [], "value": y_hat}``."""
        x = self._check_one_input(x)
        value = float(_predict(model, x[None, ...]).ravel()[0])
        return {"label": None, "class_name": None, "scores": [], "value": value}
