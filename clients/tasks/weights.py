"""A Keras model's weights as one flat float32 vector, and back.

Secure aggregation and the DP encoder work on one flat vector per device. The order is
``model.weights`` (layer by layer, kernel before bias), which is the same for every model
built by the same ``Task.build_model``, so flat vectors from different devices line up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf


def weights_dim(model: tf.keras.Model) -> int:
    """Total number of scalars in the model's weights (trainable and not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def get_flat_weights(model: tf.keras.Model) -> np.ndarray:
    """All weights concatenated into a new 1-D float32 array."""
    parts = [np.asarray(w, dtype=np.float32).ravel() for w in model.get_weights()]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def set_flat_weights(model: tf.keras.Model, vec: np.ndarray) -> None:
    """Load a flat vector (as made by ``get_flat_weights``) into ``model``.

    Raises ValueError if ``vec`` is not 1-D, has the wrong length, or holds NaN/inf
    (a corrupted global model must not be installed silently).
    """
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"flat weights must be 1-D, got shape {arr.shape}")
    dim = weights_dim(model)
    if arr.shape[0] != dim:
        raise ValueError(f"flat weights have length {arr.shape[0]}, model needs {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"flat weights must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("flat weights contain NaN or infinity")
    new, offset = [], 0
    for w in model.get_weights():
        n = w.size
        new.append(arr[offset : offset + n].reshape(w.shape))
        offset += n
    model.set_weights(new)
