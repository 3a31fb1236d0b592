"""``digits``: scikit-learn's bundled 8x8 handwritten digits, for fast tests.

UCI optical recognition of handwritten digits (test part), 1,797 images of 8x8 pixels
with values 0..16 (ink high), 10 classes; shipped inside scikit-learn, so nothing is
downloaded. Split 75/25 stratified with a fixed seed, so every process sees the same split.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clients.tasks.base import Dataset, ImageClassificationTask, compile_sgd, seeded_initializers

if TYPE_CHECKING:
    import tensorflow as tf

SPLIT_SEED = 0
TEST_FRACTION = 0.25


@functools.lru_cache(maxsize=1)
def _load_cached() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    arrays = [np.ascontiguousarray(a) for a in (x_tr, y_tr, x_te, y_te)]
    for a in arrays:
        a.setflags(write=False)
    return Dataset(*arrays)


class DigitsTask(ImageClassificationTask):
    """8x8 digits with a tiny MLP: Flatten -> Dense(32, relu) -> Dense(10) (2,410 parameters)."""

    name = "digits"
    input_shape = (8, 8, 1)
    num_classes = 10
    class_names = tuple(str(i) for i in range(10))
    metric_name = "accuracy"
    description = "scikit-learn 8x8 digits (1797 images, 10 classes), tiny MLP"

    def build_model(self, seed: int = 0) -> tf.keras.Model:
        import tensorflow as tf

        init = seeded_initializers(seed)
        layers = tf.keras.layers
        model = tf.keras.Sequential(
            [
                layers.Input(self.input_shape),
                layers.Flatten(),
                layers.Dense(32, activation="relu", kernel_initializer=init()),
                layers.Dense(self.num_classes, kernel_initializer=init()),
            ],
            name="digits_mlp",
        )
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return compile_sgd(model, loss, metrics=["accuracy"])

    def load_data(self, data_dir: Path | str | None = None) -> Dataset:
        """The bundled data; ``data_dir`` is ignored (the data ships with scikit-learn)."""
        return _load_cached()
