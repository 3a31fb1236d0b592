"""Memory of the in-process engine does not grow with the number of devices (issue 9):
10,000 simulated devices, 100 per round, run in well under 4 GB RSS, because shards are
index views into one array and only the round's cohort gets device objects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.timeout(400)
def test_ten_thousand_devices_fit_in_4_gb(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "_memory_run.py"), "10000", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=380,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["clients"] == 10_000 and report["rounds_done"] == 2
    assert report["peak_rss_mib"] < 4096, report
