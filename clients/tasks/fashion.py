"""``fashion``: the clothes classifier of the original demo (Fashion-MNIST).

Xiao, Rasul, Vollgraf, *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms*, arXiv:1708.07747 (2017). 60,000 training and 10,000 test images,
28x28 grayscale, 10 classes, light garments on a dark background.

Data is never downloaded. Lookup order: the ``data_dir`` argument; Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); Keras' own cache
(``~/.keras/datasets/fashion-mnist``) if it is already there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clients.tasks.base import Dataset, ImageClassificationTask, compile_sgd, seeded_initializers
from clients.tasks.idx import read_idx

if TYPE_CHECKING:
    import tensorflow as tf

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path("~/.keras/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _has_all(directory: Path) -> bool:
    return all(_find_file(directory, stem) is not None for stem in FILES.values())


def find_data_dir(data_dir: Path | str | None = None) -> Path:
    """The directory holding the four Fashion-MNIST IDX files (``.gz`` or not).

    An explicit ``data_dir`` must contain them (no silent fallback). Otherwise the Debian
    path, then the Keras cache. Raises FileNotFoundError naming what to install.
    """
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not _has_all(d):
            missing = [s for s in FILES.values() if _find_file(d, s) is None]
            raise FileNotFoundError(f"Fashion-MNIST files missing in {d}: {missing}")
        return d
    for d in (DEBIAN_DIR, KERAS_CACHE_DIR.expanduser()):
        if _has_all(d):
            return d
    raise FileNotFoundError(
        "Fashion-MNIST not found: looked in "
        f"{DEBIAN_DIR} and {KERAS_CACHE_DIR}. Install the Debian package "
        f"'{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE}) or pass data_dir= a folder "
        "with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. Nothing is downloaded."
    )


@functools.lru_cache(maxsize=2)
def _load_cached(directory: Path) -> Dataset:
    arrays = {}
    for key, stem in FILES.items():
        path = _find_file(directory, stem)
        if path is None:  # pragma: no cover - checked by find_data_dir
            raise FileNotFoundError(f"{directory / stem}.gz")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{directory}: {split} images have shape {x.shape}, want (N,28,28)")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{directory}: {split} labels shape {y.shape} vs images {x.shape}")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{directory}: {split} labels outside 0..9")
    out = {}
    for split in ("train", "test"):
        x = (arrays[f"x_{split}"].astype(np.float32) / 255.0)[..., None]
        y = arrays[f"y_{split}"].astype(np.int64)
        x.setflags(write=False)  # shared by every caller through the cache
        y.setflags(write=False)
        out[split] = (x, y)
    return Dataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1])


class FashionTask(ImageClassificationTask):
    """Fashion-MNIST with a small CNN (56,714 parameters).

    Conv(16, 3x3) -> MaxPool -> Conv(32, 3x3) -> MaxPool -> Dense(64) -> Dense(10 logits).
    Small on purpose: the cost of secure aggregation grows linearly with the number of
    parameters, and it trains an epoch over 60k images in about 8 s on 2 CPU cores.
    """

    name = "fashion"
    input_shape = (28, 28, 1)
    num_classes = 10
    class_names = CLASS_NAMES
    metric_name = "accuracy"
    description = "Fashion-MNIST clothes classifier (28x28 grayscale, 10 classes), small CNN"

    def build_model(self, seed: int = 0) -> tf.keras.Model:
        import tensorflow as tf

        init = seeded_initializers(seed)
        layers = tf.keras.layers
        model = tf.keras.Sequential(
            [
                layers.Input(self.input_shape),
                layers.Conv2D(16, 3, activation="relu", kernel_initializer=init()),
                layers.MaxPooling2D(),
                layers.Conv2D(32, 3, activation="relu", kernel_initializer=init()),
                layers.MaxPooling2D(),
                layers.Flatten(),
                layers.Dense(64, activation="relu", kernel_initializer=init()),
                layers.Dense(self.num_classes, kernel_initializer=init()),
            ],
            name="fashion_cnn",
        )
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return compile_sgd(model, loss, metrics=["accuracy"])

    def load_data(self, data_dir: Path | str | None = None) -> Dataset:
        """Load Fashion-MNIST from local IDX files (see ``find_data_dir``); cached, read-only."""
        return _load_cached(find_data_dir(data_dir).resolve())
