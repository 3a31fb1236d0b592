"""Fast checks of the simulation's option handling and the device helpers (no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.device import TrainingSettings
from clients.device.cli import parse_shard
from clients.engines.common import DROPOUT_STAGES, DropoutSchedule
from clients.options import SimOptions, UsageError, load_options_file, merge_options


def test_cli_overrides_file_and_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text('task = "digits"\nclients = 12\nper-round = 6\nnoise_multiplier = 0.3\n')
    opts = merge_options(load_options_file(cfg), {"clients": 8, "target_epsilon": 5.0})
    assert opts.task == "digits" and opts.clients == 8 and opts.per_round == 6
    assert opts.target_epsilon == 5.0 and opts.noise_multiplier is None  # CLI noise wins
    assert opts.rounds == SimOptions().rounds


@pytest.mark.parametrize(
    "text",
    ['clientz = 3\n', 'clients = "many"\n', 'keep-serving = 1\n', 'lr = [1]\n', 'task = \n'],
)
def test_bad_config_file_is_a_usage_error(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError):
        merge_options(load_options_file(cfg), {})


@pytest.mark.parametrize(
    "kw",
    [{"clients": 1}, {"clients": 20, "per_round": 30}, {"dropout": 1.0}, {"rounds": 0},
     {"noise_multiplier": 1.0, "target_epsilon": 1.0}, {"stage_timeout": 0.0}],
)
def test_invalid_options(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        SimOptions(**kw)  # type: ignore[arg-type]


def test_dropout_schedule_rate_and_stages() -> None:
    sched = DropoutSchedule(0.25, seed=7)
    picks = [sched.stage_for(r, i) for r in range(100) for i in range(40)]
    n = len(picks)
    dropped = [p for p in picks if p is not None]
    # binomial(4000, 0.25): 5 standard deviations is about 137
    assert abs(len(dropped) - 0.25 * n) < 5 * np.sqrt(n * 0.25 * 0.75)
    counts = {s: dropped.count(s) for s in DROPOUT_STAGES.values()}
    expected = len(dropped) / 4
    for c in counts.values():
        assert abs(c - expected) < 5 * np.sqrt(len(dropped) * 0.25 * 0.75)
    # seeded: the same schedule again, a different one for another seed
    assert picks == [DropoutSchedule(0.25, seed=7).stage_for(r, i)
                     for r in range(100) for i in range(40)]
    assert picks != [DropoutSchedule(0.25, seed=8).stage_for(r, i)
                     for r in range(100) for i in range(40)]
    assert DropoutSchedule(0.0).stage_for(3, 3) is None


def test_parse_shard() -> None:
    assert parse_shard("0/10") == (0, 10)
    assert parse_shard("9/10") == (9, 10)
    for bad in ("10/10", "-1/3", "a/b", "3", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_training_settings_from_public_config() -> None:
    fallback = TrainingSettings()
    cfg = {"training": {"task": "digits", "local_epochs": 2, "lr": 0.3, "partition": "dirichlet",
                        "alpha": 0.2, "seed": 5, "batch_size": 8}}
    got = TrainingSettings.from_public_config(cfg, fallback)
    assert (got.local_epochs, got.lr, got.partition, got.alpha, got.seed, got.batch_size) == (
        2, 0.3, "dirichlet", 0.2, 5, 8)
    assert TrainingSettings.from_public_config(None, fallback) == fallback


@pytest.mark.parametrize("mechanism,caveat", [("gaussian", True), ("ddgauss", False)])
def test_summary_labels_an_unproven_epsilon(tmp_path: Path, mechanism: str, caveat: bool) -> None:
    """The closing summary prints both ε with their assumptions, and for `gaussian` the
    caveat that its accounting is an approximation."""
    from clients.engines.local import EngineResult
    from clients.run import summary_lines

    opts = SimOptions(task="digits", mechanism=mechanism)
    rounds = [{"round": 0, "status": "done", "accuracy": 0.5, "loss": 1.0,
               "epsilon": 3.0, "epsilon_amplified": 1.0, "delta": 1e-5}]
    result = EngineResult(
        rounds=rounds, status={"epsilon": 3.0, "epsilon_amplified": 1.0, "delta": 1e-5},
        db_path=tmp_path / "db", log_path=tmp_path / "log", workdir=tmp_path, url="",
        config=None, noise_multiplier=1.0, stage_timeout=10.0, elapsed_s=1.0,
        engine="http", secure_sum="protocol",
    )
    text = "\n".join(summary_lines(result, opts))
    assert "ε = 3" in text and "ε amplified = 1" in text
    assert ("approximation, not a proof" in text) is caveat


def test_summary_says_no_dp_for_mechanism_none(tmp_path: Path) -> None:
    from clients.engines.local import EngineResult
    from clients.run import summary_lines

    opts = SimOptions(task="digits", mechanism="none")
    result = EngineResult(
        rounds=[{"round": 0, "status": "done", "accuracy": 0.5, "loss": 1.0}],
        status={"epsilon": None, "epsilon_amplified": None, "delta": 1e-5},
        db_path=tmp_path / "db", log_path=tmp_path / "log", workdir=tmp_path, url="",
        config=None, noise_multiplier=0.0, stage_timeout=10.0, elapsed_s=1.0,
        engine="http", secure_sum="protocol",
    )
    text = "\n".join(summary_lines(result, opts))
    assert "ε = ∞" in text and "no differential privacy" in text
    assert "ε amplified" not in text


def test_min_survivors_reaches_the_protocol_and_the_noise_sizing() -> None:
    """--min-survivors goes into the server's protocol config, and the noise is
    calibrated for that many contributors (not for the smaller threshold t)."""
    from clients.engines.http import HttpEngine as Simulation
    from clients.options import build_experiment

    plain = Simulation(SimOptions(task="digits", clients=20, per_round=10, min_survivors=0.0))
    strict = Simulation(SimOptions(task="digits", clients=20, per_round=10, min_survivors=0.8))
    assert plain.min_contributors() == plain.threshold() < 8
    assert strict.min_contributors() == 8 and strict.threshold() == plain.threshold()
    exp = build_experiment(strict.opts, 1.0, 10.0)
    assert exp.protocol.min_survivors == 0.8
    with pytest.raises(UsageError, match="min_survivors"):
        SimOptions(min_survivors=1.5)


def test_monitor_get_retries_dropped_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulation's reads of the public round log survive a connection the server
    dropped (transport errors are retried), and give up after the last attempt."""
    import httpx

    import clients.engines.http as sim

    monkeypatch.setattr(sim.time, "sleep", lambda s: None)
    calls: list[str] = []

    def flaky(failures: int) -> httpx.Client:
        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            if len(calls) <= failures:
                raise httpx.RemoteProtocolError("Server disconnected", request=request)
            return httpx.Response(200, json=[{"round": 0}])

        return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t")

    assert sim._get_json(flaky(2), "/v1/rounds") == [{"round": 0}]
    assert calls == ["/v1/rounds"] * 3
    calls.clear()
    with pytest.raises(httpx.RemoteProtocolError):
        sim._get_json(flaky(10), "/v1/rounds", attempts=4)
    assert len(calls) == 4
