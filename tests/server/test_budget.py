"""The driver stops ("finished") before a round whose worst case would exceed the budget."""

from __future__ import annotations

from pathlib import Path

from tests.server._helpers import Device, experiment, run_round, wait_stage
from tests.server.conftest import make_client


def _one_round_budget() -> tuple[float, float]:
    """ε after one round of 3 survivors, and after one more worst-case (t) round."""
    from dp import EncodingPlan, PrivacyAccountant
    from secagg import RoundParams

    cfg = experiment()
    p = cfg.protocol
    params = RoundParams.create(
        0, (0, 1, 2), 2410, cfg.dp.bits, graph=p.graph, dropout=p.dropout, corrupt=p.corrupt
    )
    plan = EncodingPlan.create(cfg.dp, 2410, n_clients=3, min_contributors=params.threshold)
    acc = PrivacyAccountant(cfg.dp, sample_rate=1.0, accountant="rdp")
    acc.compose(plan.privacy_event(3))
    e1 = acc.report().epsilon
    acc.compose(plan.privacy_event(params.threshold))
    return e1, acc.report().epsilon


def test_budget_allows_exactly_one_round(tmp_path: Path) -> None:
    e1, e2 = _one_round_budget()
    assert e2 > e1 > 0
    budget = (e1 + e2) / 2
    with make_client(tmp_path, rounds=5, epsilon_budget=budget) as client:
        devs = [Device(client) for _ in range(3)]
        for d in devs:
            d.register()
        end = run_round(devs, encode=False)
        assert end["stage"] == "done"
        state = wait_stage(devs[0], {"finished"}, timeout=30)
        assert state["stage"] == "finished" and state["params"] is None
        st = client.get("/v1/status").json()
        assert st["training_done"] is True and st["rounds_done"] == 1
        assert "budget" in st["finished_reason"]
        assert e1 * 0.999 <= st["epsilon"] <= budget
        assert [r["status"] for r in client.get("/v1/rounds").json()] == ["done"]


def test_tiny_budget_runs_no_round(tmp_path: Path) -> None:
    with make_client(tmp_path, rounds=5, epsilon_budget=1e-6) as client:
        devs = [Device(client) for _ in range(3)]
        for d in devs:
            d.register()
        state = wait_stage(devs[0], {"finished"}, timeout=30)
        assert state["stage"] == "finished"
        st = client.get("/v1/status").json()
        assert st["rounds_done"] == 0 and st["epsilon"] == 0.0 and "budget" in st["finished_reason"]
        assert client.get("/v1/rounds").json() == []
        # nothing to do any more: protocol routes answer 404, not 500
        assert devs[0].get("/v1/rounds/0/keys").status_code == 404
