"""`python -m dp` through a subprocess: figures, --json keys, exit code 2 on bad values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dp import epsilon_for
from dp.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "dp", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )


COMMON = ["--sample-rate", "0.01", "--rounds", "1000", "--delta", "1e-5"]


def test_epsilon_json_matches_the_library() -> None:
    p = run("epsilon", "--mechanism", "gaussian", "--noise-multiplier", "1", *COMMON, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"epsilon", "epsilon_amplified", "delta", "rounds", "assumptions"} <= set(out)
    # the CLI's default corrupt fraction is the protocol's, 0.1; N = K / q = 10,000
    for amplified in (False, True):
        key = "epsilon_amplified" if amplified else "epsilon"
        assert out[key] == pytest.approx(epsilon_for(
            "gaussian", 1.0, 0.01, 1000, 1e-5, amplified=amplified, corrupt=0.1), rel=1e-12)
    assert out["population"] == 10_000 and out["cohort_per_round"] == 100
    assert "conditioned on each round's public cohort size" in out["assumptions"][
        "epsilon_amplified"]
    # REFERENCES.md's 2.101 is the add/remove approximation, named as such
    assert out["epsilon_amplified_approx"] == pytest.approx(2.101, abs=1e-3)
    assert out["epsilon_amplified_approx_note"].startswith(
        "add/remove (approximation, not a guarantee)")
    assert out["epsilon"] > out["epsilon_amplified"]


def test_epsilon_text_labels_both_figures() -> None:
    p = run("epsilon", "--mechanism", "ddgauss", "--noise-multiplier", "1", *COMMON,
            "--bits", "16", "--clients-per-round", "100", "--dim", "100000")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert "no amplification" in text and "amplified" in text
    assert "knows who took part" in text and "does not learn" in text


def test_calibrate_json_round_trips() -> None:
    p = run("calibrate", "--target-epsilon", "3", *COMMON, "--mechanism", "skellam", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    z = out["noise_multiplier"]
    assert epsilon_for("skellam", z, 0.01, 1000, 1e-5) == pytest.approx(3.0, rel=2e-3)
    assert out["epsilon_amplified"] <= 3.0


def test_json_keeps_its_keys_and_states_sampling_adjacency_corrupt() -> None:
    args = ["--mechanism", "ddgauss", "--bits", "16", "--dim", "10000", "--clients", "1000",
            "--rounds", "50", "--delta", "1e-5", "--json"]
    assert main(["calibrate", "--target-epsilon", "20", *args, "--corrupt", "0.2"]) == 0
    p = run("epsilon", "--noise-multiplier", "1.5", *args, "--sampling", "fixed")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"epsilon", "epsilon_amplified", "noise_multiplier", "sampling", "adjacency",
            "corrupt_fraction"} <= set(out)
    assert out["sampling"] == "fixed" and out["population"] == 1000
    assert out["corrupt_fraction"] == 0.1  # the protocol's default threat model
    assert out["adjacency"]["epsilon"].startswith("zero-out")
    assert out["adjacency"]["epsilon_amplified"].startswith("replace-one")
    assert out["epsilon_amplified"] == pytest.approx(epsilon_for(
        "ddgauss", 1.5, 0.1, 50, 1e-5, bits=16, dim=10_000, sampling="fixed",
        population=1000, corrupt=0.1), rel=1e-12)
    c = run("calibrate", "--target-epsilon", "20", *args, "--sampling", "fixed",
            "--corrupt", "0.2")
    assert c.returncode == 0, c.stderr
    cal = json.loads(c.stdout)
    assert {"epsilon", "epsilon_amplified", "noise_multiplier", "sampling", "adjacency",
            "corrupt_fraction"} <= set(cal)
    assert cal["corrupt_fraction"] == 0.2 and cal["sampling"] == "fixed"
    assert cal["epsilon_amplified"] <= 20.0
    assert epsilon_for("ddgauss", cal["noise_multiplier"], 0.1, 50, 1e-5, bits=16, dim=10_000,
                       sampling="fixed", population=1000, corrupt=0.2) <= 20.0


def test_old_figures_with_poisson_and_corrupt_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--sampling poisson --corrupt 0: the unamplified figure as before, bit for bit; the
    old Poisson add/remove figure (the gaussian reference 2.101) only under its
    approximation key; the amplified figure is replace-one, conditioned on the cohort."""
    assert main(["epsilon", "--noise-multiplier", "1", *COMMON, "--sampling", "poisson",
                 "--corrupt", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon_amplified_approx"] == pytest.approx(2.101, abs=1e-3)
    assert out["epsilon"] == epsilon_for("gaussian", 1.0, 0.01, 1000, 1e-5, amplified=False)
    assert out["corrupt_fraction"] == 0.0 and out["adjacency"]["epsilon_amplified"].startswith(
        "replace-one")
    # = 100 of 10,000 without replacement at 2C (dp-accounting's event at z / 2)
    assert out["epsilon_amplified"] == pytest.approx(20.99, abs=0.01)
    # text output never prints the approximation
    assert main(["epsilon", "--noise-multiplier", "1", *COMMON, "--corrupt", "0"]) == 0
    text = capsys.readouterr().out
    assert "2.10" not in text and "approx" not in text.replace("approximation, not a proof", "")


def test_text_output_names_the_adjacency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["epsilon", "--noise-multiplier", "1", "--clients", "500",
                 "--clients-per-round", "50", "--rounds", "10", "--delta", "1e-5",
                 "--sampling", "fixed"]) == 0
    text = capsys.readouterr().out
    assert "zero-out" in text and "replace-one" in text and "N=500" in text
    assert "corrupt fraction 0.1" in text


BAD_VALUES = [
    (["epsilon", "--noise-multiplier", "-1", *COMMON], "-1"),
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0", "--rounds", "5",
      "--delta", "1e-5"], "sample rate"),
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--rounds", "5",
      "--delta", "1e-5"], "1.5"),
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--rounds", "5",
      "--delta", "1"], "delta"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--bits", "8",
      "--clients-per-round", "5000"], "bits=8"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--accountant", "pld",
      "--mechanism", "ddgauss"], "pld"),
    (["calibrate", "--target-epsilon", "-2", *COMMON], "-2"),
    (["epsilon", "--noise-multiplier", "abc", *COMMON], "abc"),
    (["epsilon", *COMMON], "noise-multiplier"),
    (["epsilon", "--noise-multiplier", "nan", *COMMON], "nan"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--corrupt", "1.5"], "1.5"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--corrupt", "-0.1"], "corrupt"),
    (["calibrate", "--target-epsilon", "2", *COMMON, "--corrupt", "x"], "x"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--sampling", "bogus"], "bogus"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--sampling", "fixed"], "--clients"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--sampling", "fixed", "--clients",
      "5000"], "0.02"),
    # Poisson at q = 1 takes every one of N devices: K must be N (it was accepted, and the
    # header then read "q=1 (poisson sampling, N=10) ... K=5 a round")
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "1", "--clients", "10",
      "--clients-per-round", "5", "--rounds", "5", "--delta", "1e-5"], "qN = 10"),
    (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--clients", "1000",
      "--clients-per-round", "5", "--rounds", "5", "--delta", "1e-5"], "qN = 100"),
    (["epsilon", "--noise-multiplier", "1", "--clients", "0", "--rounds", "5",
      "--delta", "1e-5"], "--clients"),
    (["calibrate", "--target-epsilon", "2", "--rounds", "5", "--delta", "1e-5"],
     "--sample-rate"),
    (["epsilon", "--noise-multiplier", "1", *COMMON, "--min-contributors", "10",
      "--corrupt", "0.1"], "honest"),
]


# Through a real subprocess for the four kinds of bad value the issue names ...
@pytest.mark.parametrize("args,needle", [BAD_VALUES[i] for i in (0, 2, 3, 4)])
def test_bad_values_exit_2_with_one_line(args: list[str], needle: str) -> None:
    p = run(*args)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert needle in lines[0]
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


# ... and in process (same entry point, much faster) for all of them.
@pytest.mark.parametrize("args,needle", BAD_VALUES)
def test_bad_values_in_process(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert out == ""


def test_gaussian_figure_is_labelled_an_approximation(capsys: pytest.CaptureFixture[str]) -> None:
    """Every printed epsilon of the unproven `gaussian` accounting carries the caveat;
    the proven mechanisms' do not."""
    small = ["--sample-rate", "0.01", "--rounds", "10", "--delta", "1e-5"]
    assert main(["epsilon", "--mechanism", "gaussian", "--noise-multiplier", "1", *small]) == 0
    assert "approximation, not a proof" in capsys.readouterr().out
    assert main(["calibrate", "--mechanism", "gaussian", "--target-epsilon", "2", *small]) == 0
    assert "approximation, not a proof" in capsys.readouterr().out
    args = ["epsilon", "--mechanism", "ddgauss", "--noise-multiplier", "1", *small, "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["approximation"] is None
