"""The ``python -m clients`` command line, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(170)

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ("round", "sampled", "survivors", "accuracy", "loss", "epsilon")
# A Poisson cohort of 6 devices at q = 4/6 is sometimes too small for a secure round; such a
# round is logged as aborted, with what it sampled and the privacy spent so far, but no model.
REQUIRED_ABORTED = ("round", "status", "sampled", "survivors", "abort_reason", "epsilon")


def _run(args: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "clients", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def test_tiny_run_writes_json_log(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    db = tmp_path / "run.sqlite3"
    proc = _run(
        ["run", "--task", "digits", "--clients", "6", "--per-round", "4", "--rounds", "2",
         "--local-epochs", "2", "--lr", "0.1", "--graph", "complete", "--noise-multiplier",
         "0.05", "--mechanism", "skellam", "--db", str(db),
         "--json-out", str(out)],
        timeout=150, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert isinstance(rows, list)
    done = [r for r in rows if r.get("status", "done") == "done"]
    assert len(done) == 2
    for row in rows:
        for key in REQUIRED if row in done else REQUIRED_ABORTED:
            assert key in row, (key, row)
    assert db.exists()
    assert "ε" in proc.stdout and str(db) in proc.stdout.replace("\n", "")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--clients", "abc"],
        ["run", "--no-such-flag"],
        ["run", "--mechanism", "laplace"],
        ["run", "--noise-multiplier", "1", "--target-epsilon", "2"],
        ["run", "--clients", "4", "--per-round", "9"],
        ["run", "--task", "digits", "--bits", "3", "--stage-timeout", "5"],
        ["run", "--task", "digits", "--clip", "-1", "--stage-timeout", "5"],
        ["device", "--server", "http://127.0.0.1:9", "--task", "digits", "--shard", "7/3"],
    ],
)
def test_bad_flag_is_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    proc = _run(args, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "tensorflow" not in ln
             and "cuda" not in ln.lower() and "oneDNN" not in ln]
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0]


def test_no_subcommand_prints_help(tmp_path: Path) -> None:
    proc = _run([], timeout=30, cwd=tmp_path)
    assert proc.returncode == 0
    assert "run" in proc.stdout and "device" in proc.stdout
