"""server.optimizers: each server optimizer against a computation done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.optimizers import OptimizerError, ServerOptimizer


def test_fedavg_adds_the_scaled_mean_update() -> None:
    opt = ServerOptimizer("fedavg", lr=0.5)
    new, state = opt.step(np.zeros(3, np.float32), np.array([1.0, -2.0, 0.5]), [])
    assert new.tolist() == [0.5, -1.0, 0.25] and state == [] and new.dtype == np.float32


def test_fedavgm_two_steps_by_hand() -> None:
    opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.9)
    d = np.array([1.0, -2.0])
    w1, s1 = opt.step(np.zeros(2, np.float32), d, opt.initial_state(2))
    w2, s2 = opt.step(w1, d, s1)
    # v1 = d, w1 = d; v2 = 0.9 d + d = 1.9 d, w2 = w1 + v2 = 2.9 d
    np.testing.assert_allclose(s2[0], [1.9, -3.8], rtol=1e-6)
    np.testing.assert_allclose(w2, [2.9, -5.8], rtol=1e-6)


def test_fedadam_two_steps_by_hand() -> None:
    opt = ServerOptimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    d1, d2 = 2.0, -1.0
    w1, s1 = opt.step(np.zeros(1, np.float32), np.array([d1]), opt.initial_state(1))
    w2, s2 = opt.step(w1, np.array([d2]), s1)
    m1 = 0.1 * d1
    v1 = 0.99 * 1e-6 + 0.01 * d1**2
    x1 = 0.1 * m1 / (math.sqrt(v1) + 1e-3)
    m2 = 0.9 * m1 + 0.1 * d2
    v2 = 0.99 * v1 + 0.01 * d2**2
    x2 = x1 + 0.1 * m2 / (math.sqrt(v2) + 1e-3)
    assert w1[0] == pytest.approx(x1, rel=1e-6)
    assert w2[0] == pytest.approx(x2, rel=1e-6)
    assert s2[0][0] == pytest.approx(m2, rel=1e-6) and s2[1][0] == pytest.approx(v2, rel=1e-6)


def test_fedyogi_two_steps_by_hand() -> None:
    opt = ServerOptimizer("fedyogi", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    d1, d2 = 2.0, 0.001
    w1, s1 = opt.step(np.zeros(1, np.float32), np.array([d1]), opt.initial_state(1))
    w2, s2 = opt.step(w1, np.array([d2]), s1)
    m1 = 0.1 * d1
    v0 = 1e-6
    v1 = v0 - 0.01 * d1**2 * np.sign(v0 - d1**2)  # v grows: v0 < d1^2
    x1 = 0.1 * m1 / (math.sqrt(v1) + 1e-3)
    m2 = 0.9 * m1 + 0.1 * d2
    v2 = v1 - 0.01 * d2**2 * np.sign(v1 - d2**2)  # v shrinks additively: v1 > d2^2
    x2 = x1 + 0.1 * m2 / (math.sqrt(v2) + 1e-3)
    assert v2 < v1
    assert w1[0] == pytest.approx(x1, rel=1e-6) and w2[0] == pytest.approx(x2, rel=1e-6)


def test_state_round_trips_through_the_store_format() -> None:
    opt = ServerOptimizer("fedadam")
    state = [np.arange(4, dtype=np.float32), np.arange(4, 8, dtype=np.float32)]
    back = opt.unpack_state(opt.pack_state(state), 4)
    assert all(np.array_equal(a, b) for a, b in zip(state, back, strict=True))
    assert ServerOptimizer("fedavg").pack_state([]) is None
    with pytest.raises(OptimizerError, match="needs 2 x 4"):
        opt.unpack_state(np.zeros(5, np.float32), 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": "sgd"}, "one of"), ({"lr": 0.0}, "lr"), ({"beta2": 1.0}, "beta2"),
     ({"eps": -1.0}, "eps"), ({"momentum": float("nan")}, "momentum")],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(OptimizerError, match=match):
        ServerOptimizer(**kwargs)
