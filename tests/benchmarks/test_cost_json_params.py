"""``benchmarks cost --json`` names the (k, t) that ran, also when ``--neighbors auto``
let the parameter finder choose them (issue 15)."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as bench_main
from secagg import RoundParams


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert bench_main(["cost", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_auto_reports_the_finders_k_and_t(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _json(capsys, "--clients", "40", "--dim", "200", "--neighbors", "auto",
                "--dropout", "0.1", "--bits", "20")
    want = RoundParams.create(0, range(40), 200, 20, graph="harary", dropout=0.1, corrupt=0.1)
    assert (obj["graph"], obj["neighbors"], obj["threshold"]) == (
        want.graph, want.degree if want.degree is not None else 39, want.threshold)
    assert obj["bits"] == 20 and obj["survivors"] == 36 and obj["dropped"] == 4


def test_given_degree_and_complete(capsys: pytest.CaptureFixture[str]) -> None:
    obj = _json(capsys, "--clients", "10", "--dim", "100", "--neighbors", "4", "--dropout", "0")
    assert (obj["graph"], obj["neighbors"], obj["threshold"], obj["bits"]) == (
        "harary", 4, 3, 32)
    obj = _json(capsys, "--clients", "10", "--dim", "100", "--neighbors", "complete",
                "--dropout", "0")
    assert obj["graph"] == "complete" and obj["neighbors"] == 9
