"""Private federated evaluation end to end (issue 14, part 2): every sampled device
evaluates the model it received on its held-out split, and the secure sum carries the
histogram of device accuracy to the server, which decodes it into the round log.

With the noise off (mechanism ``none``) the decoded histogram must equal the one computed
here directly from the devices' held-out data and the same model, for the in-process
engine and over real HTTP; with noise it must stay within its stated std, and the ε of
the run must include the block.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.engines.local import InProcessEngine
from clients.options import SimOptions, UsageError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BASE: dict[str, Any] = dict(
    task="digits", clients=10, per_round=10, rounds=2, local_epochs=1, batch_size=16, lr=0.2,
    mechanism="none", bits=20, graph="complete", seed=5, engine="local", sampling="fixed",
    eval_every=1, federated_eval=True, eval_fraction=0.25, eval_buckets=10,
)


def expected_stats(opts: SimOptions) -> np.ndarray:
    """Each device's (accuracy, examples, loss sum) of the initial model on its held-out
    part, computed here from the task, the seeded partition and the split rule."""
    from clients.data import split_holdout
    from clients.engines.common import make_population
    from clients.tasks import get_task
    from clients.training import evaluation_stats
    from dp import DPConfig

    task = get_task(opts.task)
    data = task.load_data(None)
    pop = make_population(data.x_train, data.y_train, opts.clients, opts.partition,
                          opts.alpha, opts.seed)
    parts = [split_holdout(*pop.shard(i), opts.eval_fraction)[1] for i in range(len(pop))]
    cfg = DPConfig()
    return evaluation_stats(task, task.build_model(opts.seed), parts,
                            max_examples=cfg.eval_max_examples, max_loss=cfg.eval_max_loss)


def histogram(stats: np.ndarray, buckets: int = 10) -> list[float]:
    idx = np.minimum(np.floor(stats[:, 0] * buckets), buckets - 1).astype(int)
    return [float(v) for v in np.bincount(idx, minlength=buckets)]


def test_local_engine_decodes_the_true_histogram_with_the_noise_off(tmp_path: Path) -> None:
    opts = SimOptions(**BASE)
    res = InProcessEngine(opts, workdir=tmp_path / "run").run()
    done = [r for r in res.rounds if r["status"] == "done"]
    assert len(done) == 2
    first = done[0]["federated_eval"]
    assert first["model_version"] == 0 and done[1]["federated_eval"]["model_version"] == 1
    stats = expected_stats(opts)
    assert first["histogram"] == histogram(stats)
    assert first["accuracy"] == pytest.approx(stats[:, 0].mean(), abs=1e-3)
    assert first["examples"] == pytest.approx(stats[:, 1].sum(), abs=0.1)
    assert first["loss"] == pytest.approx(stats[:, 2].sum() / stats[:, 1].sum(), rel=1e-3)
    assert first["count_stddev"] == 0.0
    # the model moved between the two evaluations: the second histogram is another one
    assert done[1]["federated_eval"]["histogram"] != first["histogram"]


def test_http_engine_decodes_the_true_histogram_with_the_noise_off(tmp_path: Path) -> None:
    from clients.engines.http import HttpEngine

    opts = SimOptions(**{**BASE, "engine": "http", "clients": 6, "per_round": 6, "rounds": 1})
    engine = HttpEngine(opts, workdir=tmp_path / "http")
    try:
        res = engine.run()
    finally:
        engine.stop()
    done = [r for r in res.rounds if r["status"] == "done"]
    assert len(done) == 1 and done[0]["survivors"] == 6  # the public log gives a count
    fe = done[0]["federated_eval"]
    assert fe["model_version"] == 0
    assert fe["histogram"] == histogram(expected_stats(opts))


def test_noised_evaluation_is_charged_and_within_its_std(tmp_path: Path) -> None:
    """ddgauss: the same run with and without federated evaluation; the first spends more
    ε (the block is charged), and its histogram of 10 devices sums to about 10."""
    noisy = dict(BASE, mechanism="ddgauss", noise_multiplier=0.8, rounds=1, clients=20,
                 per_round=20)
    on = InProcessEngine(SimOptions(**noisy), workdir=tmp_path / "on").run()
    off = InProcessEngine(SimOptions(**{**noisy, "federated_eval": False}),
                          workdir=tmp_path / "off").run()
    rec_on, rec_off = on.rounds[-1], off.rounds[-1]
    assert "federated_eval" not in rec_off
    assert rec_on["epsilon"] > rec_off["epsilon"]
    assert rec_on["epsilon_amplified"] > rec_off["epsilon_amplified"]
    fe = rec_on["federated_eval"]
    assert fe["count_stddev"] > 0
    # 10 buckets of independent noise: the total is 20 devices +- sqrt(10) std; 5 is loose
    assert abs(sum(fe["histogram"]) - 20) < 5 * fe["count_stddev"] * 10**0.5


def test_federated_eval_needs_a_classification_task() -> None:
    with pytest.raises(UsageError, match="classification"):
        SimOptions(task="linreg", federated_eval=True)
    assert SimOptions(task="linreg").eval_on is False
    assert SimOptions(task="fashion").eval_on is True
    assert SimOptions(task="fashion", federated_eval=False).eval_on is False


@pytest.mark.parametrize("args", [
    ["--task", "linreg", "--federated-eval"],
    ["--eval-fraction", "0.95"],
    ["--eval-buckets", "1"],
    ["--eval-noise-ratio", "0"],
])
def test_cli_bad_federated_eval_flags_are_one_line(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "clients", "run", *args],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], out.stderr


def test_server_config_refuses_half_a_federated_evaluation() -> None:
    from clients.options import build_experiment
    from server.config import ConfigError, ExperimentConfig

    exp = build_experiment(SimOptions(**BASE), 0.0, 10.0)
    assert exp.dp.eval_buckets == 10 and exp.training.eval_fraction == 0.25
    d = exp.to_dict()
    d["training"]["eval_fraction"] = 0.0
    with pytest.raises(ConfigError, match="eval_fraction"):
        ExperimentConfig.from_dict(d)
