"""`python -m benchmarks cost`: JSON shape, exactness, and one-line usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.cost import JSON_KEYS

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("neighbors", ["4", "complete"])
def test_cost_json_tiny_point_is_exact(neighbors: str) -> None:
    proc = run_cli("cost", "--clients", "10", "--dim", "1000", "--neighbors", neighbors,
                   "--dropout", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    assert set(obj) == set(JSON_KEYS)
    assert obj["exact"] is True
    assert obj["total_s"] > 0 and obj["client_s_mean"] > 0 and obj["server_s"] > 0
    # 1000 entries at 32 bits = 4000 payload bytes plus key messages
    assert obj["upload_bytes_per_client"] > 4000


def test_cost_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_main(["cost", "--clients", "6", "--dim", "100", "--neighbors", "complete",
                         "--dropout", "0", "--bits", "20"])
    assert status == 0
    out = capsys.readouterr()
    assert "exact" in out.err + out.out


@pytest.mark.parametrize(
    "args",
    [
        ["cost", "--clients", "10", "--dim", "x", "--neighbors", "4", "--dropout", "0.1"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "4", "--dropout", "1.5"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "4"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "one", "--dropout", "0"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "5", "--dropout", "0"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "4", "--dropout", "0",
         "--bits", "99"],
        ["cost", "--clients", "0", "--dim", "100", "--neighbors", "4", "--dropout", "0"],
        ["cost", "--clients", "10", "--dim", "100", "--neighbors", "4", "--dropout", "0",
         "--bogus"],
        ["nope"],
        [],
    ],
)
def test_bad_flags_exit_2_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(args)
    assert exc.value.code == 2
    out = capsys.readouterr()
    err_lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(err_lines) == 1, out.err
    assert err_lines[0].startswith("error:")
    assert out.out == ""


def test_bad_flag_from_the_shell_is_one_line() -> None:
    proc = run_cli("cost", "--clients", "10", "--dim", "100", "--neighbors", "4",
                   "--dropout", "2")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error:")
