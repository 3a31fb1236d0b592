"""The ``Task`` interface: what a federated learning task must provide.

A task bundles a Keras model builder, a data loader, an evaluation and a parser for
uploads (the dashboard's "what does the global model say about this image?"). The server
uses a task to build and evaluate the global model and to answer predictions; devices use
it to build the same model and train on their own shard. Tasks hold no per-device state.

To add a task, subclass ``Task`` (or ``ImageClassificationTask``), set the class
attributes, implement ``build_model`` and ``load_data``, and register it::

    from clients.tasks import Task, register_task

    @register_task
    class MyTask(Task):
        name = "mytask"
        ...

Nothing else in the code base needs to change: the module can live in your own package
and be named by import path (``--task mypkg.tasks:MyTask``, no decorator needed) or by an
installed ``secagg_dp.tasks`` entry point (see :mod:`clients.tasks.registry`); the name
``mytask`` alone reaches it only in a process that has imported its module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from clients.tasks.upload import image_to_array, looks_like_image, parse_features

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass(frozen=True)
class Dataset:
    """A train/test split. Inputs float32 in [0, 1]; labels int64 (float32 for regression)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"x_train has {len(self.x_train)} rows but y_train has {len(self.y_train)}"
            )
        if len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"x_test has {len(self.x_test)} rows but y_test has {len(self.y_test)}"
            )


class Task(ABC):
    """Abstract base class of every task (see module docstring).

    Class attributes:
        name: registry key, e.g. ``"fashion"``.
        input_shape: shape of ONE model input (no batch axis).
        num_classes: number of classes, ``None`` for regression.
        class_names: human-readable class names (empty for regression).
        metric_name: what ``evaluate(...)["accuracy"]`` means for this task
            (``"accuracy"`` for classifiers, ``"r2"`` for regression).
    """

    name: ClassVar[str]
    input_shape: ClassVar[tuple[int, ...]]
    num_classes: ClassVar[int | None]
    class_names: ClassVar[tuple[str, ...]] = ()
    metric_name: ClassVar[str] = "accuracy"
    description: ClassVar[str] = ""

    @abstractmethod
    def build_model(self, seed: int = 0) -> tf.keras.Model:
        """A compiled Keras model (plain SGD) whose initial weights depend only on ``seed``."""

    @abstractmethod
    def load_data(self, data_dir: Path | str | None = None) -> Dataset:
        """Load (or generate) the task's data. Never downloads."""

    # ---- defaults shared by the built-ins -------------------------------------------

    def evaluate(self, model: tf.keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and accuracy of ``model`` on ``(x, y)``: ``{"loss": .., "accuracy": ..}``.

        For classifiers ``accuracy`` is the fraction of correct top-1 predictions and
        ``loss`` the mean cross-entropy. Regression tasks override this.
        """
        if len(x) == 0:
            raise ValueError("cannot evaluate on an empty set")
        logits = _predict(model, x)
        y = np.asarray(y).astype(np.int64).ravel()
        logp = logits - _logsumexp(logits)
        loss = float(-np.mean(logp[np.arange(len(y)), y]))
        acc = float(np.mean(np.argmax(logits, axis=1) == y))
        return {"loss": loss, "accuracy": acc}

    def per_example(
        self, model: tf.keras.Model, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(correct, loss) per example: 1.0 / 0.0 for a correct top-1 prediction, and the
        cross-entropy (federated evaluation). Regression tasks have no accuracy to
        histogram and raise ValueError."""
        if self.num_classes is None:
            raise ValueError(
                f"federated evaluation needs a classification task; {self.name!r} is a "
                "regression"
            )
        logits = _predict(model, x)
        y = np.asarray(y).astype(np.int64).ravel()
        logp = logits - _logsumexp(logits)
        correct = (np.argmax(logits, axis=1) == y).astype(np.float64)
        return correct, -logp[np.arange(len(y)), y]

    def predict(self, model: tf.keras.Model, x: np.ndarray) -> dict[str, Any]:
        """Prediction for ONE input (shape ``input_shape``), shaped like the API's answer.

        Returns ``{"label": int, "class_name": str, "scores": [softmax probabilities],
        "value": None}`` for classifiers.
        """
        x = self._check_one_input(x)
        logits = _predict(model, x[None, ...])[0]
        probs = np.exp(logits - _logsumexp(logits[None, :])[0])
        label = int(np.argmax(probs))
        name = self.class_names[label] if label < len(self.class_names) else str(label)
        return {
            "label": label,
            "class_name": name,
            "scores": [float(p) for p in probs],
            "value": None,
        }

    def preprocess_upload(self, data: bytes, content_type: str) -> np.ndarray:
        """Turn an uploaded file into one model input of shape ``input_shape`` (float32).

        Accepts a JSON (``{"features": [...]}`` or a list) or CSV feature vector with
        ``prod(input_shape)`` numbers. Image tasks also accept images (see
        ``ImageClassificationTask``). Raises ValueError with a readable message otherwise.
        """
        if not data:
            raise ValueError("upload is empty")
        if looks_like_image(data, content_type):
            raise ValueError(
                f"task {self.name!r} takes a feature vector of {self.n_features} numbers "
                "(JSON or CSV), not an image"
            )
        vec = parse_features(data, content_type, self.n_features)
        return vec.reshape(self.input_shape)

    @property
    def n_features(self) -> int:
        """Number of scalars in one input."""
        return int(np.prod(self.input_shape))

    def _check_one_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape != tuple(self.input_shape):
            raise ValueError(f"expected one input of shape {self.input_shape}, got {x.shape}")
        return x

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class ImageClassificationTask(Task):
    """A grayscale image classifier; uploads may be images (PNG, JPEG, GIF, BMP, WebP).

    ``input_shape`` is ``(height, width, 1)``; the dataset convention is light ink on a
    dark background (as in (Fashion-)MNIST and scikit-learn's digits), so photos on a
    light background are inverted before they reach the model.
    """

    def preprocess_upload(self, data: bytes, content_type: str) -> np.ndarray:
        """Image -> grayscale, inverted if light background, resized; or a feature vector."""
        if not data:
            raise ValueError("upload is empty")
        if looks_like_image(data, content_type):
            h, w = self.input_shape[0], self.input_shape[1]
            return image_to_array(data, (h, w)).reshape(self.input_shape)
        try:
            vec = parse_features(data, content_type, self.n_features)
        except ValueError as exc:
            raise ValueError(
                f"task {self.name!r} takes an image (PNG/JPEG) or {self.n_features} pixel "
                f"values in [0, 1] as JSON/CSV; {exc}"
            ) from exc
        return vec.reshape(self.input_shape)


def _predict(model: tf.keras.Model, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Forward pass in inference mode, in batches, as float64 numpy.

    The forward pass is one ``tf.function`` per model (traced once, any batch size):
    evaluating the global model every round must not cost an eager pass per layer."""
    fn = getattr(model, "_secagg_predict", None)
    if fn is None:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        fn = tf.function(lambda t: model(t, training=False), input_signature=[spec])
        model._secagg_predict = fn
    x = np.asarray(x, dtype=np.float32)
    outs = [np.asarray(fn(x[start : start + batch_size])) for start in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0).astype(np.float64)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = np.max(z, axis=1, keepdims=True)
    return m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))


def seeded_initializers(seed: int) -> Any:
    """A factory of Glorot-uniform initializers with distinct seeds derived from ``seed``.

    Each call returns a fresh initializer, so the layers of one model get different but
    reproducible weights without touching TensorFlow's global random state.
    """
    import tensorflow as tf

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    counter = iter(range(10_000))

    def make() -> tf.keras.initializers.Initializer:
        return tf.keras.initializers.GlorotUniform(seed=seed * 10_000 + next(counter))

    return make


def compile_sgd(
    model: tf.keras.Model, loss: Any, metrics: list[Any] | None = None, lr: float = 0.05
) -> tf.keras.Model:
    """Compile with plain SGD (no momentum): local training is the SGD that FedAvg assumes.

    Plain SGD has no optimizer state, so one model object can be re-used for many
    devices' local training without state leaking from one device to the next.
    """
    import tensorflow as tf

    model.compile(
        optimizer=tf.keras.optimizers.SGD(learning_rate=lr), loss=loss, metrics=metrics or []
    )
    return model
