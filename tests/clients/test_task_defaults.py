"""Every built-in task learns under DP with the defaults of ``python -m clients run``.

Issue 10: "a user who runs the defaults sees privacy that teaches nothing, or training
that protects nothing". Each task runs here with every ``SimOptions`` default that shapes
learning and privacy left as it is (1000 devices, 50 a round by Poisson sampling, the
local recipe, ddgauss at the default z with shares sized for ``--min-survivors``, 10 %
colluders) and must end clearly above chance (for ``linreg``: well below the initial
loss), with a finite ε from the server's accountant, and a whole default run must be
charged an amplified ε of at most 10 at δ = 1e-5. (The defaults before issue 10 failed
both: digits ended at 21 % after its 12 rounds with an amplified ε of 360.)

Two things differ from ``make run``, for speed only:

- the in-process engine (``--engine local``) instead of HTTP: the same server and device
  round logic without sockets;
- ``--secure-sum exact``: the server receives the exact modular sum of the same encoded,
  noised vectors instead of running key agreement, Shamir sharing and masking for 50
  devices a round. tests/clients/test_engines.py shows that the two give bit-identical
  round logs and models, and what this test checks (does the default noise let the model
  learn?) does not depend on the masks, which cancel exactly.

Fashion runs 3 of its rounds (about 2 s each); digits and linreg (tiny models) run all of
theirs. Runs are seeded, so each figure is reproducible; the margins below leave room
for the spread between seeds measured when the defaults were chosen (fashion after 3
rounds: 0.56-0.63 over seeds 0-2; digits after 12 rounds: 0.39-0.56).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.engines.local import InProcessEngine
from clients.options import SimOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHANCE = 0.10  # fashion and digits both have 10 balanced classes


def _run_defaults(tmp_path: Path, task: str, rounds: int | None = None) -> Any:
    kw: dict[str, Any] = {"task": task, "engine": "local", "secure_sum": "exact", "seed": 0}
    if rounds is not None:
        kw["rounds"] = rounds
    opts = SimOptions(**kw)
    result = InProcessEngine(opts, workdir=tmp_path / task).run()
    done = [r for r in result.rounds if r["status"] == "done"]
    assert len(done) == opts.rounds, [r.get("status") for r in result.rounds]
    # the run used the default noise, and the server charged a finite ε for it
    assert result.noise_multiplier == SimOptions.DEFAULT_NOISE_MULTIPLIER > 0
    eps, eps_amp = result.status.get("epsilon"), result.status.get("epsilon_amplified")
    assert eps is not None and math.isfinite(eps) and eps > 0, result.status
    assert eps_amp is not None and eps_amp > 0, result.status
    if rounds is None:
        # the whole default run: privacy that means something (the demo states ε ≤ 10)
        assert eps_amp <= 10.0 and result.status.get("delta") == 1e-5, result.status
    return done


@pytest.mark.timeout(300)
def test_fashion_defaults_learn_under_dp(tmp_path: Path) -> None:
    done = _run_defaults(tmp_path, "fashion", rounds=3)
    assert done[-1]["accuracy"] >= CHANCE + 0.25, [r["accuracy"] for r in done]


@pytest.mark.timeout(300)
def test_digits_defaults_learn_under_dp(tmp_path: Path) -> None:
    done = _run_defaults(tmp_path, "digits")
    assert done[-1]["accuracy"] >= CHANCE + 0.15, [r["accuracy"] for r in done]


@pytest.mark.timeout(300)
def test_linreg_defaults_reduce_the_loss_under_dp(tmp_path: Path) -> None:
    from clients.tasks import get_task

    task = get_task("linreg")
    data = task.load_data()
    initial = task.evaluate(task.build_model(SimOptions().seed), np.asarray(data.x_test),
                            np.asarray(data.y_test))["loss"]
    done = _run_defaults(tmp_path, "linreg")
    losses = [r["loss"] for r in done]
    assert losses[-1] < 0.5 * initial, (initial, losses)
    assert done[-1]["accuracy"] > 0.3, [r["accuracy"] for r in done]  # R², 0 = the mean
