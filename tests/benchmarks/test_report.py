"""The cost suite's report writer: well-formed markdown tables from a tiny real run
(no timing is asserted), JSON raw results, and a graceful Flower-less run."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from benchmarks.cost import CostPoint
from benchmarks.cost_suite import SuiteConfig, run_suite
from benchmarks.flower import flower_available, run_flower
from benchmarks.report import markdown_table

TINY = SuiteConfig(
    name="test",
    clients=(8,),
    dims=(64,),
    dropouts=(0.0, 0.25),
    graphs=("complete", "auto"),
    flower_point=CostPoint(8, 64, 4, 0.25),
    server_point=CostPoint(8, 64, "auto", 0.25),
    mask_extra=((4, 64),),
    calib_points=(CostPoint(8, 16, "complete", 0.25), CostPoint(8, 16, 4, 0.25)),
    repeats=1,
    mask_degree_cap=6,
    mask_repeats=1,
    point_budget=60.0,
    flower_budget=1.0,
    flower_total=1.0,
)

_SPLIT = re.compile(r"(?<!\\)\|")


def tables(md: str) -> list[list[str]]:
    """Blocks of consecutive lines that start with '|'."""
    out: list[list[str]] = []
    cur: list[str] = []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in _SPLIT.split(line[1:-1])]


def assert_well_formed(block: list[str]) -> None:
    assert len(block) >= 2, block
    width = len(cells(block[0]))
    assert width >= 1
    sep = cells(block[1])
    assert len(sep) == width and all(re.fullmatch(r":?-{3,}:?", c) for c in sep), block[1]
    for line in block[2:]:
        assert len(cells(line)) == width, (line, width)


def test_markdown_table_shapes_and_escapes() -> None:
    md = markdown_table(["a", "b|c"], [[1, "x|y"], [None, 2.5]])
    block = md.strip().splitlines()
    assert_well_formed(block)
    assert cells(block[2]) == ["1", "x\\|y"]
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])


def test_suite_writes_well_formed_report(tmp_path: Path) -> None:
    args = argparse.Namespace(quick=True, point_budget=None, no_flower=True,
                              flower_budget=None, flower_total=None, results=tmp_path)
    assert run_suite(args, TINY) == 0
    md = (tmp_path / "secagg_cost.md").read_text()
    assert "PARTIAL" not in md
    blocks = tables(md)
    assert len(blocks) >= 6  # machine, 4 targets (+ breakdown), grid
    for block in blocks:
        assert_well_formed(block)
    for heading in ("## Machine", "### 1.", "### 2.", "### 3.", "### 4.", "## Grid"):
        assert heading in md
    assert "PASS" in md or "MISS" in md
    raw = json.loads((tmp_path / "secagg_cost.json").read_text())
    assert raw["partial"] is False
    assert len(raw["grid"]) == 4
    assert all(r["status"] == "ok" and r["exact"] is True for r in raw["grid"])
    assert raw["machine"]["cores"] >= 1


def test_flower_missing_venv_is_reported_not_raised(tmp_path: Path) -> None:
    python = tmp_path / "no-venv" / "bin" / "python"
    ok, why = flower_available(python)
    assert ok is False
    assert "not found" in why and "pip install 'flwr==1.41.*'" in why
    run = run_flower(10, 100, 5, 3, 1, timeout_s=5, python=python)
    assert run.status == "unavailable" and run.round_s is None
