"""``python -m benchmarks privacy``: a tiny quick grid on ``digits`` through the real
pipeline writes well-formed results, and a second run resumes from the cache.

No accuracy figure is asserted (two rounds of six devices learn nothing reliable); the
test checks the files' shape: the markdown table has the required columns and one row
per spec, each spec aggregates its two seeds (mean and std computed from the per-seed
runs in the JSON), the PNG is a PNG, and the rerun runs no simulation (cache files
untouched, the output says "cached"). The aggregation, the target checks and the time
estimate are checked on hand-made records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.privacy_grid import Point, Scale, Settings, build_grid, parse_epsilons
from benchmarks.privacy_report import aggregate, target_checks, time_estimate

REPO = Path(__file__).resolve().parents[2]

ARGS = [
    "privacy", "--quick", "--task", "digits", "--clients", "6", "--per-round", "3",
    "--rounds", "2", "--mechanisms", "ddgauss", "--bits", "16", "--epsilons", "inf,8",
    "--partitions", "iid", "--seeds", "2",
]
SPECS = 3  # central + non-private FedAvg + ddgauss 16 bits at ε 8
POINTS = 2 * SPECS
REQUIRED = ("mechanism", "bits", "target ε", "spent ε amplified", "spent ε", "δ", "clients",
            "per-round", "rounds", "seeds", "final accuracy", "± std", "per seed",
            "best accuracy", "wall time (s)")
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
    assert len(rows) == SPECS, rows
    mech = header.index("mechanism")
    assert {r[mech] for r in rows} == {"central (Keras, pooled)", "none (FedAvg)", "ddgauss"}
    assert {r[header.index("seeds")] for r in rows} == {"2/2"}
    assert "## Targets" in md and "Status: complete" in md and "## Time" in md

    data = json.loads((out / "privacy_accuracy.json").read_text(encoding="utf-8"))
    assert set(data) == {"meta", "points", "runs", "targets"}
    assert data["meta"]["complete"] is True
    assert data["meta"]["points_done"] == data["meta"]["points_total"] == POINTS
    assert data["meta"]["seeds"] == [0, 1]
    assert len(data["runs"]) == POINTS and len(data["points"]) == SPECS
    for rec in data["runs"]:
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        assert rec["status"] == "ok" or rec["status"].startswith("unreachable"), rec["status"]
    for agg in data["points"]:
        runs = [r for r in data["runs"] if r["mechanism"] == agg["mechanism"]
                and r["kind"] == agg["kind"]]
        assert sorted(r["seed"] for r in runs) == [0, 1]
        accs = [r["final_accuracy"] for r in runs if r["status"] == "ok"]
        if len(accs) == 2:
            assert agg["acc_mean"] == pytest.approx(sum(accs) / 2)
            assert agg["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    ddg_runs = [r for r in data["runs"] if r["mechanism"] == "ddgauss"]
    for ddg in ddg_runs:
        if ddg["status"] == "ok":
            # spent ε comes from the server's accountant: finite and positive
            assert ddg["epsilon_amplified"] > 0 and ddg["epsilon_spent"] > 0
            assert ddg["noise_multiplier"] > 0
            assert len(ddg["curve"]) == ddg["rounds_done"] == 2
    if all(r["status"] == "ok" for r in ddg_runs):
        # seeded: the two seeds are different runs (different cohorts and noise)
        assert ddg_runs[0]["curve"] != ddg_runs[1]["curve"]

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
    assert a.spec() == replace(a, seed=5).spec() != replace(a, bits=12).spec()
    b = Point("federated", "fashion", "iid", "ddgauss", 12, 8.0, 1000, 100, 10, 0, 1e-5)
    c = Point("federated", "fashion", "iid", "ddgauss", 16, 8.0, 1000, 100, 10, 1, 1e-5)
    keys = {p.key(s) for p in (a, b, c)}
    assert len(keys) == 3
    assert a.key(s) != a.key(Settings(lr=s.lr * 2))  # training settings are in the key
    assert a.key(s) != a.key(Settings(secure_sum="protocol"))
    # so is the noise sizing: shares sized for m = 0.9 n or for t are different experiments
    assert a.key(s) != a.key(Settings(min_survivors=0.0))
    assert Settings.for_mode(False, min_survivors=0.5).min_survivors == 0.5
    assert Settings.for_mode(False).min_survivors == Settings().min_survivors == 0.9
    assert all("/" not in k for k in keys)


def _runs(mech: str, bits: int, eps: float | None, accs: list[float | None],
          status: str = "ok", per_round: int = 100) -> list[dict[str, object]]:
    """Hand-made per-seed records of one spec (what the runs write)."""
    return [{"kind": "federated", "task": "fashion", "mechanism": mech, "bits": bits,
             "target_epsilon": eps, "partition": "iid", "clients": 1000,
             "per_round": per_round, "rounds": 10, "delta": 1e-5, "seed": seed,
             "final_accuracy": acc, "best_accuracy": acc, "status": status,
             "epsilon_amplified": eps, "epsilon_spent": None, "noise_multiplier": None,
             "curve": [], "wall_s": 10.0 * per_round / 100, "key": f"{mech}{bits}{eps}{seed}"}
            for seed, acc in enumerate(accs)]


def test_aggregate_mean_std_over_seeds() -> None:
    recs = _runs("gaussian", 16, 8.0, [0.80, 0.82, 0.84]) + _runs("none", 20, None, [0.9])
    aggs = aggregate(recs)
    assert len(aggs) == 2
    g = aggs[0]
    assert g["n"] == g["n_ok"] == 3 and g["seeds"] == [0, 1, 2]
    assert g["acc_mean"] == pytest.approx(0.82)
    assert g["acc_std"] == pytest.approx(0.02)  # sample std (n - 1)
    assert aggs[1]["acc_std"] is None  # one seed: no spread
    mixed = aggregate(_runs("ddgauss", 16, 8.0, [0.7, None], status="ok"))
    assert mixed[0]["n_ok"] == 1 and mixed[0]["status"].startswith("1 of 2 ok")


def test_target_checks_pass_and_miss() -> None:
    recs = (
        _runs("none", 20, None, [0.88, 0.90, 0.89])         # 89 %: PASS (>= 88)
        + _runs("gaussian", 16, 8.0, [0.87, 0.87, 0.87])    # -2 points: PASS (within 3)
        + _runs("ddgauss", 16, 8.0, [0.866, 0.866, 0.866])  # -0.4 vs gaussian: PASS (0.5)
        + _runs("skellam", 16, 8.0, [0.85, 0.85, 0.85])     # -2 vs gaussian: MISS (0.5)
        + _runs("gaussian", 16, 2.0, [0.79, 0.80, 0.81])    # -9 points at ε<=3: MISS (8)
        + _runs("ddgauss", 12, 8.0, [None] * 3, "unreachable: too few bits")
        # 12 vs 16 bits: -1.5 points, but the seeds spread by about 2.5: MISS
        + _runs("skellam", 12, 8.0, [0.80, 0.835, 0.87])
    )
    by = {c["target"]: c for c in target_checks(aggregate(recs))}
    pick = {k: v["verdict"] for k, v in by.items()}
    assert pick["non-private FedAvg (iid) ≥ 88 %"] == "PASS"
    assert pick["ε ≤ 8: gaussian 16 bits, target ε 8 (iid) within 3 points of non-private "
                "FedAvg"] == "PASS"
    assert pick["ε ≤ 3: gaussian 16 bits, target ε 2 (iid) within 8 points of non-private "
                "FedAvg"] == "MISS"
    assert pick["ddgauss 16 bits, target ε 8 (iid) within 0.5 points of gaussian 16 bits "
                "(mean over seeds)"] == "PASS"
    assert pick["skellam 16 bits, target ε 8 (iid) within 0.5 points of gaussian 16 bits "
                "(mean over seeds)"] == "MISS"
    assert pick["ddgauss 12 bits, target ε 8 (iid) worse than 16 bits by more than the seed "
                "spread"] == "PASS"  # unreachable at 12 bits
    skellam12 = by["skellam 12 bits, target ε 8 (iid) worse than 16 bits by more than the "
                   "seed spread"]
    assert skellam12["verdict"] == "MISS" and "-1.50 points" in skellam12["measured"]
    # the same mean gap with tight seeds is a PASS
    tight = recs[:-3] + _runs("skellam", 12, 8.0, [0.834, 0.835, 0.836])
    by2 = {c["target"]: c["verdict"] for c in target_checks(aggregate(tight))}
    assert by2["skellam 12 bits, target ε 8 (iid) worse than 16 bits by more than the seed "
               "spread"] == "PASS"
    # a cohort point is labelled with its cohort and compared with the baseline
    cohort = recs + _runs("ddgauss", 16, 8.0, [0.80, 0.80], per_round=50)
    names = [c["target"] for c in target_checks(aggregate(cohort))]
    assert any("50/round" in n for n in names)


def test_time_estimate_from_measured_points() -> None:
    scale = Scale("fashion", 1000, 100, 10)
    grid = build_grid(scale, Settings(), seeds=(0, 1), central=False)
    assert len(grid.points) == 2 * 36 and grid.n_specs == 36  # the 36 specs
    first = grid.points[0]  # non-private FedAvg, seed 0
    rec = {**first.to_dict(), "kind": "federated", "key": first.key(grid.settings),
           "wall_s": 100.0, "status": "ok"}
    est = time_estimate(grid, [rec])
    assert est["measured_s"] == 100.0 and est["unknown_points"] == 0
    # 71 pending points: each charged 100 s, the cohorts scaled (50: 50 s, 200: 200 s)
    assert est["remaining_s"] == pytest.approx(100.0 * 67 + 2 * 50.0 + 2 * 200.0)


def test_head_keeps_the_first_curated_specs() -> None:
    scale = Scale.for_mode(False, rounds=5)
    settings = Settings.for_mode(False)
    full = build_grid(scale, settings, seeds=(0, 1), central=False)
    head = build_grid(scale, settings, seeds=(0, 1), central=False, head=4)
    assert head.n_specs == 4 and full.n_specs > 4
    assert head.points == full.points[:8]  # each spec's seeds are together
    assert "first 4 of" in head.description
    with pytest.raises(ValueError, match="head"):
        build_grid(scale, settings, mechanisms=["ddgauss"], head=2)
    with pytest.raises(ValueError, match="head"):
        build_grid(scale, settings, head=0)


def test_shards_split_the_points_and_share_the_results(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shards run disjoint points into one cache; the second shard's results already
    hold every point, and a report-only run finds the grid complete."""
    import benchmarks.privacy as privacy

    ran: list[tuple[str, int]] = []

    def fake_run(point: Point, settings: Settings) -> dict:
        ran.append((point.mechanism, point.seed))
        rec = privacy._base_record(point, settings)
        rec.update(final_accuracy=0.5 + 0.01 * point.seed, best_accuracy=0.6, rounds_done=2,
                   wall_s=1.0, curve=[{"round": 1, "accuracy": 0.5}, {"round": 2,
                                                                      "accuracy": 0.5}])
        if point.mechanism != "none":
            rec.update(epsilon_spent=9.0, epsilon_amplified=7.5, noise_multiplier=1.0)
        return rec

    monkeypatch.setattr(privacy, "run_point", fake_run)
    scale = Scale.for_mode(True, rounds=2)
    grid = build_grid(scale, Settings.for_mode(True), seeds=(0, 1, 2),
                      mechanisms=["ddgauss"], bits=[16], epsilons=[8.0], central=False)
    total = len(grid.points)
    assert total == 6
    assert privacy.run_grid(grid, out_dir=tmp_path, fresh=False, command="t",
                            shard=(1, 2)) == 0
    first = list(ran)
    assert len(first) == 3
    assert privacy.run_grid(grid, out_dir=tmp_path, fresh=False, command="t",
                            shard=(2, 2)) == 0
    assert len(ran) == total and len(set(ran)) == total  # disjoint, and all of them
    data = json.loads((tmp_path / "privacy_accuracy.json").read_text(encoding="utf-8"))
    assert data["meta"]["points_done"] == total and data["meta"]["complete"] is True
    ran.clear()
    assert privacy.run_grid(grid, out_dir=tmp_path, fresh=False, command="t",
                            report_only=True) == 0
    assert ran == []


@pytest.mark.parametrize("flag", [["--shard", "3/2"], ["--shard", "0/2"], ["--shard", "a"],
                                  ["--head", "2", "--mechanisms", "ddgauss"]])
def test_bad_shard_and_head_flags(flag: list[str], tmp_path: Path) -> None:
    res = _run(["privacy", *flag, "--out-dir", str(tmp_path)], timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error"), res.stderr
