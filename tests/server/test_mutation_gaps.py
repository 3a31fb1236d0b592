"""Tests that close the gaps mutation testing found in the server's round logic (issue 16).

- The ε recorded for a round with a dropout equals an accountant composed by hand with
  the survivors (not the sampled devices).
- The leak check, widened: no masked input that reached the server, nor any device's
  input vector, appears in the store or the log as raw bytes, base64, hex, Python repr,
  escaped text or as a list of numbers.
- A budget placed between the two candidate values (the worst case of the next round
  at the minimum survivor count, and at the full cohort) tells them apart.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server._helpers import Device, experiment, run_round, wait_stage
from tests.server.conftest import make_client

N_DEV = 4


@pytest.fixture(scope="module")
def dropout_round(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One round of 4 sampled devices, device 3 silent from the masked input on."""
    tmp = tmp_path_factory.mktemp("gaps")
    seen: dict[str, Any] = {}

    def hook(stage: str, state: dict[str, Any], sampled: list[Device]) -> None:
        if stage == "masked_input":
            seen["plan"] = sampled[0].current()["plan"]

    inputs: list[bytes] = []
    with make_client(
        tmp, rounds=1, clients=N_DEV, per_round=N_DEV, stage_timeout=3.0
    ) as client:
        devs = [Device(client) for _ in range(N_DEV)]
        for d in devs:
            d.register()
        end = run_round(devs, silent={3: "masked_input"}, hook=hook, keep_inputs=inputs)
        rounds = client.get("/v1/rounds").json()
        status = client.get("/v1/status").json()
    return {"tmp": tmp, "end": end, "rounds": rounds, "status": status,
            "plan": seen["plan"], "inputs": inputs}


def test_dropout_round_epsilon_equals_an_accountant_of_the_survivors(
    dropout_round: dict[str, Any],
) -> None:
    from dp import EncodingPlan, PrivacyAccountant

    end, rec = dropout_round["end"], dropout_round["rounds"][0]
    assert end["stage"] == "done" and rec["status"] == "done", rec
    assert rec["survivors"] == N_DEV - 1 and rec["dropouts"]["masked_input"] == 1, rec
    cfg = experiment(rounds=1, clients=N_DEV, per_round=N_DEV)
    plan = EncodingPlan.from_dict(dropout_round["plan"])

    def by_hand(n: int) -> float:
        acc = PrivacyAccountant(
            cfg.dp, sample_rate=1.0, accountant="rdp", sampling="fixed",
            population=N_DEV, corrupt_fraction=cfg.protocol.corrupt,
        )
        acc.compose(plan.privacy_event(n), cohort=N_DEV)
        return acc.report().epsilon

    survivors, sampled = by_hand(N_DEV - 1), by_hand(N_DEV)
    assert survivors > sampled  # the two candidates differ: the check can fail
    assert rec["epsilon"] == pytest.approx(survivors, rel=1e-9)
    assert rec["epsilon_amplified"] == pytest.approx(survivors, rel=1e-9)  # q = 1
    assert dropout_round["status"]["epsilon"] == pytest.approx(survivors, rel=1e-9)


def _encodings(blob: bytes) -> dict[str, bytes]:
    """The forms a logged or stored vector fragment could take."""
    return {
        "raw": blob,
        "base64": base64.b64encode(blob)[:40],
        "urlsafe-b64": base64.urlsafe_b64encode(blob)[:40],
        "hex": blob.hex().encode(),
        "HEX": blob.hex().upper().encode(),
        "repr": repr(blob)[2:-1].encode(),
        "escaped": blob.decode("latin-1").encode("unicode_escape"),
        "json": json.dumps(blob.decode("latin-1")).encode()[1:-1],
    }


def _numbers(x: np.ndarray) -> list[bytes]:
    """A vector as numbers in text: list / numpy repr / JSON, first 6 entries."""
    head = [int(v) for v in np.asarray(x)[:6]]
    return [
        ", ".join(map(str, head)).encode(),
        ",".join(map(str, head)).encode(),
        " ".join(map(str, head)).encode(),
    ]


def test_no_vector_reaches_the_log_or_store_in_any_encoding(
    dropout_round: dict[str, Any],
) -> None:
    from secagg import pack

    tmp: Path = dropout_round["tmp"]
    end = dropout_round["end"]
    bits = int(end["round_params"]["bits"])
    fragments: list[bytes] = []
    for body in dropout_round["inputs"]:  # every masked input the server received
        assert len(body) >= 64
        fragments += [body[:24], body[len(body) // 2 : len(body) // 2 + 24], body[-24:]]
    texts: list[bytes] = []
    for x in end["x"].values():  # and every device's own (pre-mask) vector
        arr = np.asarray(x, dtype=np.uint64)
        fragments += [pack(arr, bits)[:24], arr.astype("<u8").tobytes()[:24]]
        texts += _numbers(arr[np.flatnonzero(arr > 1000)[:6]] if (arr > 1000).sum() >= 6 else arr)
    assert len(dropout_round["inputs"]) == N_DEV - 1 and len(fragments) >= 17
    with sqlite3.connect(tmp / "server.sqlite3") as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    files = [p for p in tmp.iterdir() if p.is_file()]
    assert any(p.name == "server.log" for p in files)
    for path in files:
        blob = path.read_bytes()
        for frag in fragments:
            for form, needle in _encodings(frag).items():
                assert needle not in blob, f"{path.name} holds a vector ({form})"
        for needle in texts:
            assert needle not in blob, f"{path.name} holds a vector (as numbers)"


def test_the_encodings_find_a_planted_fragment() -> None:
    """The widened check is not vacuous: each form is found in a log line that has it."""
    frag = bytes(range(250, 256)) + b"\x00\x01'\"\\\n" + bytes(range(10, 22))
    lines = {
        "raw": frag,
        "base64": b"x " + base64.b64encode(frag),
        "urlsafe-b64": b"x " + base64.urlsafe_b64encode(frag),
        "hex": f"masked {frag.hex()}".encode(),
        "HEX": f"masked {frag.hex().upper()}".encode(),
        "repr": f"masked {frag!r}".encode(),
        "escaped": b"masked " + frag.decode("latin-1").encode("unicode_escape"),
        "json": json.dumps({"m": frag.decode("latin-1")}).encode(),
    }
    for form, needle in _encodings(frag).items():
        assert needle in lines[form], form
        assert needle not in b"unrelated log line", form


def _worst_case_candidates() -> tuple[float, float, float]:
    """ε after one full round of 3, and after one more round charged at the minimum
    survivor count (what the server must check) or at the full cohort (the bug)."""
    from dp import EncodingPlan, PrivacyAccountant
    from secagg import RoundParams
    from server.round import corrupt_bound

    cfg = experiment(rounds=5)
    p = cfg.protocol
    params = RoundParams.create(
        0, (0, 1, 2), 2410, cfg.dp.bits, graph=p.graph, dropout=p.dropout, corrupt=p.corrupt,
        min_survivors=p.min_survivors,
    )
    plan = EncodingPlan.create(
        cfg.dp, 2410, n_clients=3, min_contributors=params.min_survivors,
        corrupt=corrupt_bound(p.corrupt, 3),
    )

    def eps(*survivors: int) -> float:
        acc = PrivacyAccountant(cfg.dp, sample_rate=1.0, accountant="rdp", sampling="fixed",
                                population=3, corrupt_fraction=p.corrupt)
        for n in survivors:
            acc.compose(plan.privacy_event(n), cohort=3)
        return acc.report().epsilon

    return eps(3), eps(3, params.min_survivors), eps(3, 3)


def test_budget_between_the_two_candidate_values(tmp_path: Path) -> None:
    e1, worst, full = _worst_case_candidates()
    assert e1 < full < worst  # min_survivors < 3: the candidates differ
    budget = (full + worst) / 2  # the cohort count would allow a second round
    with make_client(tmp_path, rounds=5, epsilon_budget=budget) as client:
        devs = [Device(client) for _ in range(3)]
        for d in devs:
            d.register()
        end = run_round(devs, encode=False)
        assert end["stage"] == "done"
        state = wait_stage(devs[0], {"finished"}, timeout=30)
        assert state["stage"] == "finished"
        st = client.get("/v1/status").json()
        assert st["rounds_done"] == 1 and "budget" in st["finished_reason"], st
        assert "worst case 2 contributors" in st["finished_reason"]
        assert st["epsilon"] == pytest.approx(e1, rel=1e-9)
        assert [r["status"] for r in client.get("/v1/rounds").json()] == ["done"]
