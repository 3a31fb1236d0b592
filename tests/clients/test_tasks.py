"""clients.tasks: registry, IDX reader, data loading, models, config, flat weights."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from clients.tasks import TASKS, Dataset, Task, TrainingConfig, get_task, register_task
from clients.tasks import fashion as fashion_mod
from clients.tasks.idx import parse_idx, read_idx
from clients.tasks.weights import get_flat_weights, set_flat_weights, weights_dim

# ---- registry ------------------------------------------------------------------------


def test_builtins_registered() -> None:
    assert {"fashion", "linreg", "digits"} <= set(TASKS)
    for name in ("fashion", "linreg", "digits"):
        task = get_task(name)
        assert isinstance(task, Task)
        assert task.name == name


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        get_task("mnist-but-typo")
    msg = str(info.value)
    assert "mnist-but-typo" in msg
    for name in ("digits", "fashion", "linreg"):
        assert name in msg


def test_register_custom_task_as_decorator() -> None:
    @register_task
    class Tiny(Task):
        name = "tiny_test_task"
        input_shape = (2,)
        num_classes = None

        def build_model(self, seed: int = 0):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def load_data(self, data_dir=None):  # type: ignore[no-untyped-def]
            z = np.zeros((1, 2), np.float32)
            return Dataset(z, z[:, 0], z, z[:, 0])

    try:
        assert isinstance(get_task("tiny_test_task"), Tiny)
        with pytest.raises(ValueError, match="already registered"):
            register_task(Tiny)
        # TrainingConfig accepts any registered task.
        assert TrainingConfig(task="tiny_test_task").task == "tiny_test_task"
    finally:
        TASKS.pop("tiny_test_task", None)


def test_register_rejects_non_tasks() -> None:
    with pytest.raises(TypeError):
        register_task(int)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        register_task("fashion")  # type: ignore[arg-type]


def test_importing_tasks_does_not_import_device_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys, clients.tasks; "
        "bad = [m for m in sys.modules if m.startswith(('clients.device', 'clients.engines',"
        " 'clients.run', 'server', 'secagg', 'dp'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- IDX -----------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]
    return header + arr.astype(dtype).tobytes()


def test_idx_roundtrip_gzip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "tiny-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_idx_bytes(arr)))
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_idx_big_endian_types() -> None:
    arr = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(arr, 0x0D)), arr)
    arr16 = np.array([-300, 2, 1000], dtype=np.int16)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(arr16, 0x0B)), arr16)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x00\x01", "payload"),
        (b"\x00\x00", "short"),
    ],
)
def test_idx_rejects_malformed(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_idx(data)


def _write_fake_fashion(d: Path, n_train: int = 5, n_test: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs)))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))


def test_fashion_loads_from_data_dir(tmp_path: Path) -> None:
    _write_fake_fashion(tmp_path)
    data = get_task("fashion").load_data(tmp_path)
    assert data.x_train.shape == (5, 28, 28, 1) and data.x_test.shape == (3, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    np.testing.assert_array_equal(data.y_test, [0, 1, 2])


def test_fashion_data_dir_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        get_task("fashion").load_data(tmp_path)


def test_fashion_absent_names_debian_package(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fashion_mod, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(fashion_mod, "KERAS_CACHE_DIR", tmp_path / "none2")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        get_task("fashion").load_data()


@pytest.mark.skipif(
    not (fashion_mod.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist)",
)
def test_fashion_from_debian_path() -> None:
    data = get_task("fashion").load_data()
    assert data.x_train.shape == (60000, 28, 28, 1)
    assert data.x_test.shape == (10000, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(data.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(data.y_test), np.full(10, 1000))
    # Light-on-dark: the border of a Fashion-MNIST image is dark.
    img = data.x_train[:1000, :, :, 0]
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    assert np.mean(border.mean(axis=1) < 0.5) > 0.99
    assert not data.x_train.flags.writeable  # the cached copy is shared, so read-only


# ---- data shapes and models -------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "linreg"])
def test_shapes_and_dtypes(name: str) -> None:
    task = get_task(name)
    data = task.load_data()
    assert data.x_train.shape[1:] == task.input_shape
    assert data.x_test.shape[1:] == task.input_shape
    assert data.x_train.dtype == np.float32
    if task.num_classes is None:
        assert data.y_train.dtype == np.float32
    else:
        assert data.y_train.dtype == np.int64
        assert set(np.unique(data.y_train)) == set(range(task.num_classes))
        assert len(task.class_names) == task.num_classes
        assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    # Same data on every call (seeded split / generator).
    again = task.load_data()
    np.testing.assert_array_equal(again.x_test, data.x_test)


def test_digits_split_sizes() -> None:
    data = get_task("digits").load_data()
    assert len(data.x_train) + len(data.x_test) == 1797
    assert len(data.x_test) == 450


@pytest.mark.parametrize(("name", "params"), [("digits", 2410), ("linreg", 9), ("fashion", 56714)])
def test_model_params_and_deterministic_init(name: str, params: int) -> None:
    task = get_task(name)
    m1, m2, m3 = task.build_model(seed=0), task.build_model(seed=0), task.build_model(seed=1)
    assert m1.count_params() == params == weights_dim(m1)
    assert m1.optimizer is not None and m1.loss is not None  # compiled
    np.testing.assert_array_equal(get_flat_weights(m1), get_flat_weights(m2))
    assert not np.array_equal(get_flat_weights(m1), get_flat_weights(m3))
    out = m1(np.zeros((2, *task.input_shape), np.float32))
    assert out.shape == (2, task.num_classes or 1)


def test_build_model_rejects_bad_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        get_task("digits").build_model(seed=-1)


def test_evaluate_matches_keras() -> None:
    task = get_task("digits")
    data = task.load_data()
    model = task.build_model(seed=0)
    ours = task.evaluate(model, data.x_test, data.y_test)
    keras = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    assert ours["loss"] == pytest.approx(keras["loss"], rel=1e-4)
    assert ours["accuracy"] == pytest.approx(keras["accuracy"], abs=1e-6)
    with pytest.raises(ValueError, match="empty"):
        task.evaluate(model, data.x_test[:0], data.y_test[:0])


def test_linreg_r2_definition() -> None:
    from clients.tasks.linreg import r2_score

    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    assert r2_score(y, y[::-1]) < 0


# ---- flat weights ----------------------------------------------------------------------


def test_weights_roundtrip() -> None:
    task = get_task("digits")
    model = task.build_model(seed=0)
    vec = get_flat_weights(model)
    assert vec.dtype == np.float32 and vec.shape == (2410,)
    new = np.random.default_rng(1).normal(size=vec.shape).astype(np.float32)
    set_flat_weights(model, new)
    np.testing.assert_array_equal(get_flat_weights(model), new)
    # The layer structure is respected: the last 10 entries are the output bias.
    np.testing.assert_array_equal(model.layers[-1].bias.numpy(), new[-10:])


def test_set_flat_weights_validates() -> None:
    model = get_task("linreg").build_model()
    with pytest.raises(ValueError, match="length 8"):
        set_flat_weights(model, np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        set_flat_weights(model, np.zeros((3, 3), np.float32))
    bad = np.zeros(9, np.float32)
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        set_flat_weights(model, bad)


# ---- TrainingConfig --------------------------------------------------------------------


def test_training_config_defaults_and_roundtrip() -> None:
    cfg = TrainingConfig()
    assert cfg.task == "fashion" and cfg.partition == "iid"
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "nope"}, "nope"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"local_epochs": True}, "local_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"partition": "shards"}, "shards"),
        ({"alpha": -1.0}, "alpha"),
        ({"seed": -3}, "seed"),
    ],
)
def test_training_config_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainingConfig(**kwargs)


def test_training_config_from_dict_unknown_key() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainingConfig.from_dict({"epochs": 3})
