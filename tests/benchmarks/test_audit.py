"""`python -m benchmarks audit`: what it prints, its JSON, its results files, and one-line
usage errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import audit as bench_audit
from benchmarks.__main__ import main as bench_main

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--trials", "100", "--seed", "1", "--clients", "4", "--min-contributors", "2"]


@pytest.mark.parametrize(
    "args",
    [
        ["--bits", "99"],
        ["--trials", "0"],
        ["--mechanism", "laplace"],
        ["--clients", "5", "--min-contributors", "10"],
        ["--target-epsilon", "2"],
        ["--quick"],
        ["--one-run", "--full"],
        ["--one-run", "--noise-multiplier", "1", "--target-epsilon", "2"],
        ["--delta", "2"],
        ["--noise-multiplier", "-1"],
        ["--mechanism", "gaussian", "--bits", "8", "--clients", "1000", "--trials", "5"],
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["audit", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_cli_subprocess_bad_flag_has_no_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "audit", "--bits", "x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_one_round_prints_claim_bound_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["audit", "--mechanism", "ddgauss", "--bits", "16",
                       "--noise-multiplier", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    for needle in ("claimed ε", "lower bound: ε ≥", "exact Gaussian ε", "ratio",
                   "exact modular sum", "2 of 4 devices survive"):
        assert needle in out, out


def test_one_round_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["audit", "--json", "--mechanism", "skellam", *SMALL]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["mechanism"] == "skellam" and obj["trials"] == 100
    assert obj["survivors"] == 2 and obj["fault"] is None
    assert 0 <= obj["epsilon_lower"] < obj["epsilon_claim"]
    assert obj["ratio_to_claim"] == pytest.approx(obj["epsilon_lower"] / obj["epsilon_claim"])


def test_one_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["audit", "--one-run", "--json", "--target-epsilon", "2",
                       "--canaries", "20", "--rounds", "1", "--background", "2",
                       "--dim", "256", "--seed", "3"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["source"] == "pipeline" and obj["canaries"] == 20
    # calibrated for the expected survivors; the claim is for the actual ones
    assert 1.0 < obj["epsilon_claim"] < 4.0
    assert obj["epsilon_lower"] <= obj["epsilon_claim"]


def test_full_run_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = bench_audit.Grid((("ddgauss", 16, 2.0), ("gaussian", 8, 1.0)), 60, 64, 1000, 2,
                            ("pipeline",), 20, 1, 2, 256)
    monkeypatch.setattr(bench_audit.Grid, "for_mode", classmethod(lambda cls, quick: tiny))
    status = bench_audit.run_full(tmp_path, quick=True, seed=5, command="test")
    assert status == 0
    data = json.loads((tmp_path / "privacy_audit.json").read_text())
    assert len(data["round_audits"]) == 2 and len(data["one_run_audits"]) == 3
    assert data["round_audits"][1]["status"].startswith("not plannable")
    assert [r["target_epsilon"] for r in data["one_run_audits"]] == [2.0, 8.0, 16.0]
    md = (tmp_path / "privacy_audit.md").read_text()
    assert "Status: complete" in md and "QUICK" in md
    assert "lower bound ε" in md and "exact modular sum" in md and "Not plannable" in md
    assert (tmp_path / "privacy_audit.png").stat().st_size > 1000
    # a rerun takes every point from the cache and writes the same records
    assert bench_audit.run_full(tmp_path, quick=True, seed=5, command="test") == 0
    again = json.loads((tmp_path / "privacy_audit.json").read_text())
    assert again["from_cache"] == 5
    assert again["round_audits"] == data["round_audits"]


def test_one_run_on_the_training_engine() -> None:
    """The engine source: real training of the digits model for the background devices,
    the canary devices' vectors as their updates, the server's own accountant."""
    from dp import DPConfig

    res = bench_audit.run_one_run(DPConfig(mechanism="ddgauss", bits=16), target=2.0,
                                  canaries=20, rounds=1, background=4, dim=0,
                                  source="engine", seed=7)
    assert res.source == "engine" and res.dim > 1000  # the digits model's parameters
    assert res.audit.epsilon_claim == pytest.approx(2.0, rel=0.05)
    assert res.audit.epsilon_lower <= res.audit.epsilon_claim


def test_faults_are_not_reachable_from_the_cli() -> None:
    source = Path(bench_audit.__file__).read_text()
    assert "_fault" not in source and "_FAULT" not in source
