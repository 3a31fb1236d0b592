"""Planning for the survivors a run will have: ``survivors=`` / ``--survivors``.

A run sizes each noise share for t contributors and charges the shares that actually
survived (``server.round.ServerCore.release``: ``plan.privacy_event(n_survivors)``), so a
plan that assumes exactly t survivors overstates epsilon whenever more survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dp import (
    DPConfig,
    DPConfigError,
    EncodingPlan,
    PrivacyAccountant,
    calibrate_noise,
    corrupt_count,
    epsilon_for,
    epsilon_report,
)
from dp.__main__ import survivors_count

ROOT = Path(__file__).resolve().parents[2]
# a small fixed-size run: K = 20 of N = 200, shares sized for t = 8, 10 % colluding
RUN = dict(clients_per_round=20, sampling="fixed", population=200, corrupt=0.1,
           bits=20, dim=1000, min_contributors=8)
Q, T, DELTA = 0.1, 5, 1e-5


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam", "gaussian"])
def test_default_is_the_worst_case_t(mechanism: str) -> None:
    a = epsilon_report(mechanism, 1.0, Q, T, DELTA, **RUN)  # type: ignore[arg-type]
    b = epsilon_report(mechanism, 1.0, Q, T, DELTA, survivors=8, **RUN)  # type: ignore[arg-type]
    assert (a.epsilon, a.epsilon_amplified) == (b.epsilon, b.epsilon_amplified)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam", "gaussian"])
def test_survivors_charge_what_the_server_charges(mechanism: str) -> None:
    """The figure equals the server's own steps: plan for t, charge round by round the
    event of the survivors, cohort K (server/round.py plan + release)."""
    k, t, n = 20, 8, 17
    cfg = DPConfig(mechanism=mechanism, clip=1.0, noise_multiplier=1.0, bits=20, delta=DELTA)
    plan = EncodingPlan.create(cfg, 1000, n_clients=k, min_contributors=t,
                               corrupt=corrupt_count(0.1, k))
    acc = PrivacyAccountant(cfg, Q, "rdp", sampling="fixed", population=200,
                            corrupt_fraction=0.1)
    for _ in range(T):
        acc.compose(plan.privacy_event(n), cohort=k)
    want = acc.report()
    got = epsilon_report(mechanism, 1.0, Q, T, DELTA, survivors=n, **RUN)  # type: ignore[arg-type]
    assert got.epsilon == pytest.approx(want.epsilon, rel=1e-12)
    assert got.epsilon_amplified == pytest.approx(want.epsilon_amplified, rel=1e-12)


def test_more_survivors_cost_less() -> None:
    eps = [epsilon_for("ddgauss", 1.0, Q, T, DELTA, survivors=n, **RUN)  # type: ignore[arg-type]
           for n in (8, 12, 16, 20)]
    assert all(a > b for a, b in zip(eps, eps[1:], strict=False)), eps


@pytest.mark.parametrize("bad", [7, 21, 0, True, 12.0])
def test_survivors_outside_t_to_k_refused(bad: object) -> None:
    with pytest.raises(DPConfigError, match="survivors must be an integer in"):
        epsilon_for("ddgauss", 1.0, Q, T, DELTA, survivors=bad, **RUN)  # type: ignore[arg-type]


def test_calibrate_for_survivors_meets_the_target_there() -> None:
    z_worst = calibrate_noise(4.0, Q, T, DELTA, mechanism="ddgauss", **RUN)  # type: ignore[arg-type]
    z_all = calibrate_noise(4.0, Q, T, DELTA, mechanism="ddgauss", survivors=20, **RUN)  # type: ignore[arg-type]
    assert z_all < z_worst
    eps = epsilon_for("ddgauss", z_all, Q, T, DELTA, survivors=20, **RUN)  # type: ignore[arg-type]
    assert 4.0 * 0.99 < eps <= 4.0


def test_fraction_is_rounded_down() -> None:
    assert survivors_count(0.9, 50) == 45
    assert survivors_count(0.95, 50) == 47
    assert survivors_count(1.0, 37) == 37
    assert survivors_count(12, 50) == 12
    assert survivors_count(None, 50) is None


def _dp(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "dp", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120, check=False)


CLI = ["--mechanism", "ddgauss", "--noise-multiplier", "1", "--clients", "500",
       "--clients-per-round", "50", "--rounds", "10", "--delta", "1e-5", "--dim", "1000",
       "--json"]


def test_cli_thresholds_differ_once_survivors_are_given() -> None:
    """The issue's report: --min-contributors 2 and 9 printed the same figure (each share
    sized so that exactly t survivors reach the target); with every device surviving the
    smaller t adds far more noise, hence a smaller epsilon."""
    out = {}
    for t in ("2", "9"):
        common = [*CLI, "--corrupt", "0", "--min-contributors", t]
        worst = json.loads(_dp("epsilon", *common).stdout)
        full = json.loads(_dp("epsilon", *common, "--survivors", "1.0").stdout)
        assert full["survivors_per_round"] == 50 and worst["survivors_per_round"] == int(t)
        out[t] = (worst["epsilon"], full["epsilon"])
    assert out["2"][0] == pytest.approx(out["9"][0], rel=1e-2)
    assert out["2"][1] < 0.5 * out["9"][1]


def test_cli_fraction_and_count_agree_with_the_library() -> None:
    frac = json.loads(_dp("epsilon", *CLI, "--min-contributors", "30", "--survivors", "0.9")
                      .stdout)
    count = json.loads(_dp("epsilon", *CLI, "--min-contributors", "30", "--survivors", "45")
                       .stdout)
    assert frac["epsilon"] == count["epsilon"] and frac["survivors_per_round"] == 45
    lib = epsilon_report("ddgauss", 1.0, 0.1, 10, 1e-5, clients_per_round=50, population=500,
                         dim=1000, min_contributors=30, survivors=45, corrupt=0.1)
    assert frac["epsilon"] == pytest.approx(lib.epsilon, rel=1e-12)
    assert frac["epsilon_amplified"] == pytest.approx(lib.epsilon_amplified, rel=1e-12)


@pytest.mark.parametrize("value", ["1.5", "0", "abc", "51", "29"])
def test_cli_bad_survivors_one_line_exit_2(value: str) -> None:
    p = _dp("epsilon", *CLI, "--min-contributors", "30", "--survivors", value)
    assert p.returncode == 2, p.stdout
    assert "survivors" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
