"""``python -m clients export``: the TFLite model trains, infers and moves weights like Keras.

Every check runs the exported file in the Python ``tf.lite.Interpreter`` through its
signatures, and compares it with the task's Keras model built from the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

tf = pytest.importorskip("tensorflow")

from clients.export import SIGNATURES, export_tflite  # noqa: E402
from clients.tasks import get_task  # noqa: E402
from clients.tasks.weights import get_flat_weights  # noqa: E402

# float32 kernels of TFLite and of TensorFlow differ in summation order only: after a few
# steps the weights agree to ~1e-7 (measured: max |diff| 6e-8 on linreg, 1.5e-8 on digits).
ATOL = 1e-6
RTOL = 1e-5

Runner = Callable[..., dict[str, np.ndarray]]


class Exported:
    """An exported model loaded into a fresh interpreter, one runner per signature."""

    def __init__(self, blob: bytes) -> None:
        self.interpreter = tf.lite.Interpreter(model_content=blob)

    def __getattr__(self, name: str) -> Runner:
        return self.interpreter.get_signature_runner(name)  # type: ignore[no-any-return]


def batches(task_name: str, n: int, size: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """Fixed, seeded inputs and labels of the task's shapes and dtypes."""
    task = get_task(task_name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.uniform(0.0, 1.0, size=(size, *task.input_shape)).astype(np.float32)
        if task.num_classes is None:
            y = rng.normal(0.0, 2.0, size=size).astype(np.float32)
        else:
            y = rng.integers(0, task.num_classes, size=size).astype(np.int64)
        out.append((x, y))
    return out


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """digits and linreg exported once for the module (seed 0, the task's own lr)."""
    return {name: export_tflite(name, seed=0) for name in ("digits", "linreg")}


def _keras_loss(out: Any) -> float:
    return float(out[0] if isinstance(out, list | tuple) else out)


def check_train_matches_keras(task_name: str, blob: bytes, steps: int = 3) -> None:
    model = Exported(blob)
    ref = get_task(task_name).build_model(seed=0)
    start = get_flat_weights(ref)
    for x, y in batches(task_name, steps, 16):
        loss = float(model.train(x=x, y=y)["loss"])
        ref_loss = _keras_loss(ref.train_on_batch(x, y))
        assert loss == pytest.approx(ref_loss, rel=RTOL, abs=ATOL)
    got = model.get_weights()["weights"]
    want = get_flat_weights(ref)
    assert not np.allclose(want, start)  # the steps moved the weights
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("task_name", ["digits", "linreg"])
def test_train_steps_equal_keras_steps(task_name: str, blobs: dict[str, bytes]) -> None:
    check_train_matches_keras(task_name, blobs[task_name])


def test_fashion_cnn_train_steps_equal_keras_steps() -> None:
    check_train_matches_keras("fashion", export_tflite("fashion", seed=0), steps=2)


@pytest.mark.parametrize("task_name", ["digits", "linreg"])
def test_infer_matches_keras(task_name: str, blobs: dict[str, bytes]) -> None:
    model = Exported(blobs[task_name])
    ref = get_task(task_name).build_model(seed=0)
    x, _ = batches(task_name, 1, 40, seed=5)[0]
    out = model.infer(x=x)["output"]
    want = ref(x, training=False).numpy()
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_signatures_and_their_tensors(blobs: dict[str, bytes]) -> None:
    sigs = Exported(blobs["digits"]).interpreter.get_signature_list()
    assert set(sigs) == set(SIGNATURES)
    assert sigs["train"] == {"inputs": ["x", "y"], "outputs": ["loss"]}
    assert sigs["infer"] == {"inputs": ["x"], "outputs": ["output"]}
    assert sigs["get_weights"] == {"inputs": [], "outputs": ["weights"]}
    assert sorted(sigs["set_weights"]["outputs"]) == ["accepted", "weights"]
    assert sigs["save"]["inputs"] == sigs["restore"]["inputs"] == ["path"]


def test_lr_flag_sets_the_step_size() -> None:
    blob = export_tflite("linreg", lr=0.3, seed=0)
    model = Exported(blob)
    ref = get_task("linreg").build_model(seed=0)
    ref.optimizer.learning_rate.assign(0.3)
    for x, y in batches("linreg", 2, 8, seed=2):
        model.train(x=x, y=y)
        ref.train_on_batch(x, y)
    np.testing.assert_allclose(
        model.get_weights()["weights"], get_flat_weights(ref), rtol=RTOL, atol=ATOL
    )


def test_set_weights_installs_and_refuses_non_finite(blobs: dict[str, bytes]) -> None:
    model = Exported(blobs["digits"])
    dim = get_flat_weights(get_task("digits").build_model(seed=0)).size
    new = np.linspace(-1.0, 1.0, dim, dtype=np.float32)
    out = model.set_weights(weights=new)
    assert int(out["accepted"]) == 1
    np.testing.assert_array_equal(model.get_weights()["weights"], new)
    bad = new.copy()
    bad[7] = np.nan
    out = model.set_weights(weights=bad)
    assert int(out["accepted"]) == 0
    np.testing.assert_array_equal(model.get_weights()["weights"], new)
    bad[7] = np.inf
    assert int(model.set_weights(weights=bad)["accepted"]) == 0
    np.testing.assert_array_equal(model.get_weights()["weights"], new)


def test_save_then_restore_brings_back_the_weights(
    blobs: dict[str, bytes], tmp_path: Path
) -> None:
    model = Exported(blobs["digits"])
    x, y = batches("digits", 1, 16)[0]
    model.train(x=x, y=y)
    saved = model.get_weights()["weights"].copy()
    ckpt = str(tmp_path / "digits.ckpt")
    model.save(path=np.array(ckpt, dtype=np.bytes_))
    model.train(x=x, y=y)
    assert not np.array_equal(model.get_weights()["weights"], saved)
    # a second interpreter (the app restarted) restores the same checkpoint
    fresh = Exported(blobs["digits"])
    restored = fresh.restore(path=np.array(ckpt, dtype=np.bytes_))["weights"]
    np.testing.assert_array_equal(restored, saved)
    np.testing.assert_array_equal(fresh.get_weights()["weights"], saved)


def test_get_weights_is_what_the_server_serves(blobs: dict[str, bytes], tmp_path: Path) -> None:
    """GET /v1/model of a digits server (seed 0, version 0) is get_weights() byte for byte;
    an export from another seed installs the served bytes with set_weights, and one train
    step then gives the Δ that Keras gives from the served model."""
    from fastapi.testclient import TestClient

    from server import create_app
    from tests.server._helpers import settings

    with TestClient(create_app(settings(tmp_path))) as client:
        r = client.get("/v1/model")
        meta = client.get("/v1/model/meta").json()
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "0"
    assert meta["task"] == "digits"
    served = np.frombuffer(r.content, dtype="<f4")
    exported = Exported(blobs["digits"]).get_weights()["weights"]
    assert exported.astype("<f4").tobytes() == r.content

    other = Exported(export_tflite("digits", seed=1))
    assert not np.array_equal(other.get_weights()["weights"], served)
    assert int(other.set_weights(weights=served.astype(np.float32))["accepted"]) == 1
    assert other.get_weights()["weights"].astype("<f4").tobytes() == r.content
    x, y = batches("digits", 1, 16, seed=3)[0]
    other.train(x=x, y=y)
    delta = other.get_weights()["weights"] - served
    ref = get_task("digits").build_model(seed=0)
    ref.train_on_batch(x, y)
    np.testing.assert_allclose(delta, get_flat_weights(ref) - served, rtol=RTOL, atol=ATOL)


def test_cli_writes_a_loadable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clients.__main__ import main

    out = tmp_path / "linreg.tflite"
    assert main(["export", "--task", "linreg", "--out", str(out), "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = Exported(out.read_bytes())
    assert set(model.interpreter.get_signature_list()) == set(SIGNATURES)
    want = get_flat_weights(get_task("linreg").build_model(seed=4))
    np.testing.assert_array_equal(model.get_weights()["weights"], want)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--task", "nope", "--out", "OUT"], "unknown task 'nope'"),
        (["--task", "linreg"], "--out"),
        (["--out", "OUT"], "--task"),
        (["--task", "linreg", "--out", "OUT", "--lr", "0"], "must be a finite number > 0"),
        (["--task", "linreg", "--out", "OUT", "--lr", "nan"], "must be a finite number > 0"),
        (["--task", "linreg", "--out", "OUT", "--seed", "-1"], "must be in 0..4294967295"),
        (["--task", "linreg", "--out", "/nonexistent/dir/m.tflite"], "does not exist"),
        (["--task", "linreg", "--out", "TMP"], "is a directory"),
        (["--task", "linreg", "--out", "OUT", "--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_bad_flags_one_line_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clients.__main__ import main

    subst = {"OUT": str(tmp_path / "m.tflite"), "TMP": str(tmp_path)}
    try:
        code = main(["export", *[subst.get(a, a) for a in args]])
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "m.tflite").exists()
