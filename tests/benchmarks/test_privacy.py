"""``python -m benchmarks privacy``: a tiny quick grid on ``digits`` through the real
pipeline writes well-formed results, and a second run resumes from the cache.

No accuracy figure is asserted (two rounds of six devices learn nothing reliable); the
test checks the files' shape: the markdown table has the required columns and one row
per point, the JSON has the documented keys, the PNG is a PNG, and the rerun runs no
simulation (cache files untouched, the output says "cached").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.privacy_grid import Point, Settings, parse_epsilons
from benchmarks.privacy_report import baseline_gap_note, target_checks

REPO = Path(__file__).resolve().parents[2]

ARGS = [
    "privacy", "--quick", "--task", "digits", "--clients", "6", "--per-round", "3",
    "--rounds", "2", "--mechanisms", "ddgauss", "--bits", "16", "--epsilons", "inf,8",
    "--partitions", "iid",
]
POINTS = 3  # central + non-private FedAvg + ddgauss 16 bits at ε 8
REQUIRED = ("mechanism", "bits", "target ε", "spent ε amplified", "spent ε", "δ", "clients",
            "per-round", "rounds", "final accuracy", "best accuracy", "wall time (s)")
RECORD_KEYS = {"key", "kind", "task", "partition", "mechanism", "bits", "target_epsilon",
               "delta", "clients", "per_round", "rounds", "seed", "status",
               "noise_multiplier", "epsilon_spent", "epsilon_amplified", "final_accuracy",
               "best_accuracy", "wall_s", "curve"}


def _run(args: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table under '## Results': header cells and body rows."""
    section = md.split("## Results", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = []
    for ln in lines[2:]:
        if ln.startswith("| target"):
            break
        body.append([c.strip() for c in ln.strip("|").split("|")])
    # stop at the first table only
    first = []
    for row in body:
        if len(row) != len(header):
            break
        first.append(row)
    return header, first


@pytest.mark.timeout(600)
def test_quick_grid_writes_results_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    first = _run([*ARGS, "--out-dir", str(out)])
    assert first.returncode == 0, first.stderr[-2000:] + first.stdout[-2000:]

    md = (out / "privacy_accuracy.md").read_text(encoding="utf-8")
    header, rows = _table(md)
    for col in REQUIRED:
        assert col in header, (col, header)
    assert len(rows) == POINTS, rows
    mech = header.index("mechanism")
    assert {r[mech] for r in rows} == {"central (Keras, pooled)", "none (FedAvg)", "ddgauss"}
    assert "## Targets" in md and "Status: complete" in md

    data = json.loads((out / "privacy_accuracy.json").read_text(encoding="utf-8"))
    assert set(data) == {"meta", "points", "targets"}
    assert data["meta"]["complete"] is True
    assert data["meta"]["points_done"] == data["meta"]["points_total"] == POINTS
    assert len(data["points"]) == POINTS
    for rec in data["points"]:
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        assert rec["status"] == "ok" or rec["status"].startswith("unreachable"), rec["status"]
    ddg = next(r for r in data["points"] if r["mechanism"] == "ddgauss")
    if ddg["status"] == "ok":
        # spent ε comes from the server's accountant: finite and positive
        assert ddg["epsilon_amplified"] > 0 and ddg["epsilon_spent"] > 0
        assert ddg["noise_multiplier"] > 0
        assert len(ddg["curve"]) == ddg["rounds_done"] == 2

    png = (out / "privacy_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    cache = sorted((out / ".cache" / "privacy").glob("*.json"))
    assert len(cache) == POINTS
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache}

    second = _run([*ARGS, "--out-dir", str(out)])
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count(": cached") == POINTS, second.stdout
    assert f"0 run, {POINTS} cached" in second.stdout
    assert {p.name: p.stat().st_mtime_ns
            for p in (out / ".cache" / "privacy").glob("*.json")} == mtimes


@pytest.mark.parametrize("flag", [
    ["--epsilons", "8,banana"], ["--mechanisms", "laplace"], ["--bits", "7"],
    ["--partitions", "shards"], ["--clients", "0"], ["--delta", "2"],
    ["--clients", "4", "--per-round", "5"], ["--min-survivors", "1.5"],
    ["--min-survivors", "most"],
])
def test_bad_flags_one_line_exit_2(flag: list[str], tmp_path: Path) -> None:
    res = _run(["privacy", "--quick", *flag, "--out-dir", str(tmp_path)], timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error"), res.stderr
    assert not (tmp_path / "privacy_accuracy.md").exists()


def test_parse_epsilons_and_keys() -> None:
    assert parse_epsilons("inf, 16,8,∞,2") == [None, 16.0, 8.0, 2.0]
    with pytest.raises(ValueError, match="-1"):
        parse_epsilons("8,-1")
    s = Settings()
    a = Point("federated", "fashion", "iid", "ddgauss", 16, 8.0, 1000, 100, 10, 0, 1e-5)
    b = Point("federated", "fashion", "iid", "ddgauss", 12, 8.0, 1000, 100, 10, 0, 1e-5)
    c = Point("federated", "fashion", "iid", "ddgauss", 16, 8.0, 1000, 100, 10, 1, 1e-5)
    keys = {p.key(s) for p in (a, b, c)}
    assert len(keys) == 3
    assert a.key(s) != a.key(Settings(lr=0.1))  # training settings are part of the key
    # so is the noise sizing: shares sized for m = 0.9 n or for t are different experiments
    assert a.key(s) != a.key(Settings(min_survivors=0.0))
    assert Settings.for_mode(False, min_survivors=0.5).min_survivors == 0.5
    assert Settings.for_mode(False).min_survivors == Settings().min_survivors == 0.9
    assert all("/" not in k for k in keys)


def _rec(mech: str, bits: int, eps: float | None, acc: float | None,
         status: str = "ok") -> dict[str, object]:
    return {"kind": "federated", "mechanism": mech, "bits": bits, "target_epsilon": eps,
            "partition": "iid", "final_accuracy": acc, "status": status,
            "epsilon_amplified": eps, "epsilon_spent": None}


def test_target_checks_pass_and_miss() -> None:
    recs = [
        _rec("none", 20, None, 0.80),
        _rec("gaussian", 16, 8.0, 0.78),    # -2 points: PASS (within 3)
        _rec("ddgauss", 16, 8.0, 0.776),    # -0.4 vs gaussian: PASS (0.5)
        _rec("skellam", 16, 8.0, 0.76),     # -2 vs gaussian: MISS (0.5)
        _rec("gaussian", 16, 2.0, 0.70),    # -10 points at ε<=3: MISS (8)
        _rec("ddgauss", 12, 8.0, None, "unreachable: too few bits"),
        _rec("skellam", 12, 8.0, 0.755),    # -0.5 vs skellam 16: MISS (not visibly worse)
    ]
    by = {c["target"]: c for c in target_checks(recs)}
    pick = {k.rsplit(" (", 1)[0]: v["verdict"] for k, v in by.items()}
    assert pick["ε ≤ 8: gaussian 16 bits, target ε 8"] == "PASS"
    assert pick["ε ≤ 3: gaussian 16 bits, target ε 2"] == "MISS"
    assert pick["ddgauss 16 bits within 0.5 points of gaussian at target ε 8"] == "PASS"
    assert pick["skellam 16 bits within 0.5 points of gaussian at target ε 8"] == "MISS"
    assert pick["ddgauss 12 bits visibly worse (≥ 1 point) than 16 bits at target ε 8"] \
        == "PASS"
    assert pick["skellam 12 bits visibly worse (≥ 1 point) than 16 bits at target ε 8"] \
        == "MISS"
    skellam = next(v for k, v in by.items() if k.startswith("skellam 16 bits"))
    assert "-2.00 points" in skellam["measured"]


def test_baseline_gap_note_only_when_fedavg_is_far_below_central() -> None:
    central = {"kind": "central", "status": "ok", "final_accuracy": 0.83}
    weak = {"kind": "federated", "mechanism": "none", "partition": "iid", "status": "ok",
            "final_accuracy": 0.29}
    note = " ".join(baseline_gap_note([central, weak], 10))
    assert "29.0 %" in note and "83.0 %" in note and "10 rounds" in note
    close = dict(weak, final_accuracy=0.79)
    assert baseline_gap_note([central, close], 10) == []
    assert baseline_gap_note([weak], 10) == []  # no central point: nothing to compare
    assert baseline_gap_note([central, dict(weak, status="failed: x")], 10) == []
