"""``clients.Experiment``: the Python API is the CLI's options, engines and accountant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clients import Experiment, RoundRecord
from clients.options import SimOptions, UsageError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[2]
TINY: dict[str, Any] = dict(clients=12, per_round=6, rounds=2, local_epochs=1, batch_size=16,
                            seed=2, graph="complete", sampling="fixed")


def test_importing_clients_starts_nothing_heavy() -> None:
    code = ("import sys, clients, server; heavy = [m for m in ('tensorflow', 'ray', "
            "'fastapi', 'clients.engines.local') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_options_are_validated_at_construction() -> None:
    with pytest.raises(UsageError, match="unknown option"):
        Experiment("digits", per_rnd=3)
    with pytest.raises(UsageError, match="per_round"):
        Experiment("digits", clients=4, per_round=9)
    with pytest.raises(UsageError, match="either noise_multiplier or target_epsilon"):
        Experiment("digits", noise_multiplier=1.0, target_epsilon=3.0)
    with pytest.raises(UsageError, match="keep_serving"):
        Experiment("digits", keep_serving=True)


def test_defaults_replace_and_toml(tmp_path: Path) -> None:
    exp = Experiment("digits", noise_multiplier=0.8, **TINY)
    assert exp.options.engine == "local" and exp.options.mechanism == "ddgauss"
    assert exp.options == SimOptions(task="digits", noise_multiplier=0.8, engine="local", **TINY)
    other = exp.replace(target_epsilon=5.0)  # a new noise choice replaces the old one
    assert other.options.noise_multiplier is None and other.options.target_epsilon == 5.0
    cfg = tmp_path / "exp.toml"
    cfg.write_text('task = "digits"\nclients = 12\nper-round = 6\nrounds = 3\n')
    from_file = Experiment.from_toml(cfg, rounds=1)
    assert (from_file.options.engine, from_file.options.rounds) == ("local", 1)
    assert "digits" in repr(from_file) and "rounds=1" in repr(from_file)


def test_round_record_from_a_logged_round() -> None:
    rec = RoundRecord.from_log({
        "round": 3, "status": "done", "sampled": [1, 2, 3], "survivors": [1, 3],
        "accuracy": 0.5, "loss": 1.5, "epsilon": 2.0, "epsilon_amplified": None,
        "federated_eval": {"accuracy": 0.4, "accuracy_stddev": 0.1},
    })
    assert (rec.round, rec.sampled, rec.survivors) == (3, 3, 2)
    assert rec.epsilon == 2.0 and rec.epsilon_amplified is None
    assert rec.federated_accuracy == 0.4 and rec.raw["loss"] == 1.5


def test_run_returns_the_servers_log_and_its_epsilon() -> None:
    seen: list[int] = []
    result = Experiment("digits", noise_multiplier=0.8, **TINY).run(
        after_round=lambda rec: seen.append(int(rec["round"])))
    assert seen == [r.round for r in result.rounds] and result.completed == 2
    assert [r.round for r in result.rounds] == [row["round"] for row in result.log]
    last = result.log[-1]
    assert result.epsilon == last["epsilon"] and result.epsilon_amplified == last[
        "epsilon_amplified"]
    assert result.noise_multiplier == 0.8 and result.db_path.is_file()
    assert any("ε =" in line for line in result.summary())
