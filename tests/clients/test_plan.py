"""``python -m clients plan``: the plan's expected ε is what a seeded run then charges.

A local run with fixed-size sampling and no dropout has every sampled device survive
every round, so the plan's "every device surviving" figures must equal the run's final ε
(both figures), with the same z, private federated evaluation charged in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clients.engines.local import InProcessEngine
from clients.options import SimOptions, UsageError
from clients.plan import plan_experiment

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[2]

RUN: dict[str, Any] = dict(
    task="digits", clients=16, per_round=8, rounds=3, local_epochs=1, batch_size=16,
    lr=0.2, mechanism="ddgauss", bits=20, graph="harary", dropout=0.0, seed=5,
    engine="local", sampling="fixed", min_survivors=0.75, target_epsilon=30.0,
)


def _flags(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "clients", "plan", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_plan_predicts_what_a_seeded_run_charges(tmp_path: Path) -> None:
    proc = _plan_cli(*_flags(RUN), "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    opts = SimOptions(**RUN)
    assert opts.eval_on and plan["federated_eval"]  # charged in both, or neither
    result = InProcessEngine(opts, workdir=tmp_path / "run").run()
    done = [r for r in result.rounds if r["status"] == "done"]
    assert len(done) == RUN["rounds"]
    assert all(len(r["survivors"]) == RUN["per_round"] for r in done)  # everyone survived
    assert plan["noise_multiplier"] == pytest.approx(result.noise_multiplier, rel=1e-12)
    assert plan["epsilon"] == pytest.approx(result.status["epsilon"], rel=1e-9)
    assert plan["epsilon_amplified"] == pytest.approx(result.status["epsilon_amplified"],
                                                      rel=1e-9)
    # the worst case (6 survivors of 8) is a different, larger figure: the comparison
    # above would catch a plan that charged t survivors, as `python -m dp` used to
    assert plan["min_survivors"] == 6 and plan["cohort"] == 8
    assert plan["epsilon_worst"] > 1.01 * plan["epsilon"]
    # the calibration targets the amplified figure at the worst case, like the run's
    assert plan["epsilon_amplified_worst"] == pytest.approx(30.0, rel=1e-3)
    assert plan["epsilon_amplified_worst"] <= 30.0


def test_plan_reports_the_model_and_the_protocol() -> None:
    plan = plan_experiment(SimOptions(task="digits", clients=40, per_round=20, rounds=2,
                                      graph="complete", noise_multiplier=1.0))
    from clients.options import model_dim
    from clients.tasks import get_task

    assert plan.parameters == model_dim(get_task("digits"))
    assert plan.padded_dim >= plan.parameters
    assert plan.padded_dim & (plan.padded_dim - 1) == 0  # a power of 2 for the rotation
    assert plan.encoded_dim == plan.padded_dim + plan_eval_dim(plan)
    assert plan.neighbors == 19 and 1 <= plan.threshold <= 20
    assert plan.noise_source == "given" and plan.noise_multiplier == 1.0
    text = "\n".join(plan.lines())
    for part in (f"{plan.parameters} model parameters", f"k = {plan.neighbors}",
                 f"t = {plan.threshold}", "z = 1"):
        assert part in text


def plan_eval_dim(plan: Any) -> int:
    from dp import DPConfig

    return DPConfig(eval_buckets=10 if plan.federated_eval else 0).eval_dim


def test_plan_without_noise_has_no_epsilon() -> None:
    plan = plan_experiment(SimOptions(task="linreg", clients=10, per_round=5, rounds=1,
                                      mechanism="none", graph="complete"))
    assert not plan.federated_eval
    assert plan.epsilon is None and plan.epsilon_amplified_worst is None
    assert "no guarantee" in "\n".join(plan.lines())


def test_unknown_task_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown task"):
        plan_experiment(SimOptions(task="nope", federated_eval=False))


@pytest.mark.parametrize("args", [["--task", "nope", "--no-federated-eval"],
                                  ["--clients", "4", "--per-round", "9"],
                                  ["--bits", "3", "--task", "digits"],
                                  ["--no-such-flag"]])
def test_bad_plan_flags_exit_2_with_one_line(args: list[str]) -> None:
    proc = _plan_cli(*args)
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
