"""clients.training.train_local: loss goes down, deltas are reproducible, linreg fits."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from clients.tasks import get_task
from clients.tasks.weights import get_flat_weights, set_flat_weights
from clients.training import train_local


def test_train_local_digits_reduces_loss() -> None:
    task = get_task("digits")
    data = task.load_data()
    model = task.build_model(seed=0)
    w0 = get_flat_weights(model)
    before = task.evaluate(model, data.x_train, data.y_train)
    delta = train_local(task, model, w0, data.x_train, data.y_train, 5, 32, 0.1, seed=0)
    assert delta.dtype == np.float32 and delta.shape == w0.shape
    assert np.linalg.norm(delta) > 0
    # The model holds the local weights afterwards.
    np.testing.assert_allclose(get_flat_weights(model), w0 + delta, atol=1e-6)
    after = task.evaluate(model, data.x_train, data.y_train)
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert task.evaluate(model, data.x_test, data.y_test)["accuracy"] > 0.8


def test_train_local_reproducible_and_reuses_model() -> None:
    task = get_task("digits")
    data = task.load_data()
    model = task.build_model(seed=0)
    w0 = get_flat_weights(model)
    x, y = data.x_train[:300], data.y_train[:300]
    a = train_local(task, model, w0, x, y, 2, 16, 0.1, seed=3)
    # Something else in between (another device, another lr) must not leak into the next.
    train_local(task, model, w0 + 0.01, x[:50], y[:50], 1, 8, 0.5, seed=9)
    b = train_local(task, model, w0, x, y, 2, 16, 0.1, seed=3)
    c = train_local(task, model, w0, x, y, 2, 16, 0.1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_local_uses_lr() -> None:
    task = get_task("linreg")
    data = task.load_data()
    model = task.build_model(seed=0)
    w0 = get_flat_weights(model)
    x, y = data.x_train[:64], data.y_train[:64]
    small = train_local(task, model, w0, x, y, 1, 64, 0.001, seed=0)
    big = train_local(task, model, w0, x, y, 1, 64, 0.01, seed=0)
    # One full-batch step: the update is exactly proportional to the learning rate.
    np.testing.assert_allclose(big, 10 * small, rtol=1e-3)


@pytest.mark.parametrize("task_name", ["digits", "linreg"])
def test_compiled_update_equals_plain_sgd_steps(task_name: str) -> None:
    """The compiled local update is the same SGD as Keras' own optimizer, batch by batch."""
    import tensorflow as tf

    from clients.training import LocalTrainer, epoch_orders

    task = get_task(task_name)
    data = task.load_data()
    x, y = data.x_train[:70], data.y_train[:70]
    ref = task.build_model(seed=1)
    w0 = get_flat_weights(ref)
    trainer = LocalTrainer(task, task.build_model(seed=5))
    delta = trainer.update(w0, x, y, epochs=2, batch_size=16, lr=0.05, seed=7)
    opt = tf.keras.optimizers.SGD(learning_rate=0.05)
    yy = y.astype(np.int64) if task.num_classes is not None else y.astype(np.float32)
    for order in epoch_orders(len(x), 2, 7):
        for start in range(0, len(x), 16):
            idx = order[start : start + 16]
            with tf.GradientTape() as tape:
                loss = ref.loss(tf.constant(yy[idx]), ref(x[idx], training=True))
            opt.apply_gradients(zip(tape.gradient(loss, ref.weights), ref.weights, strict=True))
    np.testing.assert_allclose(w0 + delta, get_flat_weights(ref), atol=2e-5)


def test_linreg_r2_after_few_epochs() -> None:
    task = get_task("linreg")
    data = task.load_data()
    model = task.build_model(seed=0)
    w0 = get_flat_weights(model)
    assert task.evaluate(model, data.x_test, data.y_test)["accuracy"] < 0.5
    delta = train_local(task, model, w0, data.x_train, data.y_train, 3, 32, 0.1, seed=0)
    set_flat_weights(model, w0 + delta)
    metrics = task.evaluate(model, data.x_test, data.y_test)
    assert metrics["accuracy"] > 0.9, metrics
    assert metrics["loss"] < 0.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_train_local_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    task = get_task("linreg")
    model = task.build_model()
    data = task.load_data()
    args = {"epochs": 1, "batch_size": 8, "lr": 0.1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        train_local(
            task, model, get_flat_weights(model), data.x_train[:8], data.y_train[:8], **args
        )


def test_train_local_rejects_bad_data() -> None:
    task = get_task("linreg")
    model = task.build_model()
    w0 = get_flat_weights(model)
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="no training"):
        train_local(task, model, w0, x[:0], np.zeros(0), 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="rows"):
        train_local(task, model, w0, x, np.zeros(3), 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="shape"):
        train_local(task, model, w0, np.zeros((4, 5), np.float32), np.zeros(4), 1, 2, 0.1, 0)
    with pytest.raises(ValueError, match="length"):
        train_local(task, model, w0[:-1], x, np.zeros(4), 1, 2, 0.1, 0)
