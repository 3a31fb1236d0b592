"""The global model on the server: build, evaluation, prediction (the optimizer step is
``server.optimizers``).

TensorFlow work runs in worker threads (callers use ``asyncio.to_thread``) so the event
loop keeps answering long-polls; one ``threading.Lock`` serialises use of the Keras model.
The server only ever applies *aggregate* updates here: the decoded, noised sum of the
survivors' clipped updates divided by their number.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from clients.tasks import Dataset, Task, get_task
from clients.tasks.weights import get_flat_weights, set_flat_weights

__all__ = ["ModelService"]


class ModelService:
    """Holds the task, one Keras model object and the held-out test set."""

    def __init__(self, task_name: str, seed: int = 0, data_dir: str | Path | None = None) -> None:
        self.task: Task = get_task(task_name)
        self._seed = seed
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._model: Any = None
        self._data: Dataset | None = None
        self._loaded_version: int | None = None

    def load(self) -> np.ndarray:
        """Build the model and load the test data (blocking; call in a thread)."""
        with self._lock:
            self._model = self.task.build_model(seed=self._seed)
            self._data = self.task.load_data(self._data_dir)
            return np.asarray(get_flat_weights(self._model), dtype=np.float32)

    @property
    def dim(self) -> int:
        with self._lock:
            return int(np.asarray(get_flat_weights(self._model)).size)

    def _set(self, weights: np.ndarray, version: int | None) -> None:
        if version is None or version != self._loaded_version:
            set_flat_weights(self._model, np.asarray(weights, dtype=np.float32))
            self._loaded_version = version

    def evaluate(self, weights: np.ndarray, version: int | None = None) -> dict[str, float]:
        """Loss and accuracy (R^2 for linreg) of ``weights`` on the task's test set."""
        with self._lock:
            if self._data is None:
                raise RuntimeError("model service not loaded")
            self._set(weights, version)
            res = self.task.evaluate(self._model, self._data.x_test, self._data.y_test)
            return {"loss": float(res["loss"]), "accuracy": float(res["accuracy"])}

    def predict(
        self, data: bytes, content_type: str, weights: np.ndarray, version: int
    ) -> dict[str, Any]:
        """Preprocess an upload (raises ValueError if unusable) and predict with ``weights``."""
        x = self.task.preprocess_upload(data, content_type)
        with self._lock:
            self._set(weights, version)
            out = dict(self.task.predict(self._model, x))
        out.setdefault("label", None)
        out.setdefault("class_name", None)
        out.setdefault("scores", [])
        out.setdefault("value", None)
        return out
