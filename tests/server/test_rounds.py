"""Honest rounds over HTTP with garbage injected: refusals are the right 4xx and the round
still completes; the store and the log never hold a device's vector."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server._helpers import Device, run_round, wait_stage


@pytest.fixture(scope="module")
def devices(client: Any) -> list[Device]:
    devs = [Device(client) for _ in range(3)]
    for d in devs:
        d.register()
    return devs


@pytest.fixture(scope="module")
def extra(client: Any) -> Device:
    """A device that registers once round 0 is under way: not a participant of it."""
    return Device(client)


def test_registration_is_idempotent_and_validated(client: Any, devices: list[Device]) -> None:
    d = devices[0]
    pk = base64.b64encode(d.key.public_key().public_bytes_raw()).decode()
    r = client.post("/v1/devices", json={"public_key": pk})
    assert r.status_code == 200 and r.json()["device_id"] == d.device_id
    assert client.post("/v1/devices", json={"public_key": "!!"}).status_code == 400
    short = base64.b64encode(b"x" * 31).decode()
    r = client.post("/v1/devices", json={"public_key": short})
    assert r.status_code == 400 and "32" in r.json()["detail"]
    assert client.post("/v1/devices", json={"key": pk}).status_code == 422
    assert client.post("/v1/devices", json={"public_key": 5}).status_code == 422
    r = client.post(
        "/v1/devices", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert sorted(x.device_id for x in devices) == [0, 1, 2]


def test_authentication_failures(client: Any, devices: list[Device]) -> None:
    d = devices[0]
    path = "/v1/rounds/current"
    h = d.headers("GET", path)
    assert client.get(path, headers=h).status_code == 200
    r = client.get(path, headers=h)  # same nonce again
    assert r.status_code == 409 and "replay" in r.json()["detail"]
    h = d.headers("GET", path)
    h["X-Signature"] = base64.b64encode(bytes(64)).decode()
    assert client.get(path, headers=h).status_code == 401
    h = d.headers("GET", path)
    h["X-Device-Id"] = "999"
    r = client.get(path, headers=h)
    assert r.status_code == 401 and "unknown device" in r.json()["detail"]
    h = d.headers("GET", path, now=1_000_000_000)
    r = client.get(path, headers=h)
    assert r.status_code == 401 and "window" in r.json()["detail"]
    h = d.headers("GET", "/v1/rounds/0/keys")  # signed for another path
    assert client.get(path, headers=h).status_code == 401
    h = d.headers("GET", "/v1/rounds/0/keys")
    del h["X-Signature"]
    assert client.get("/v1/rounds/0/keys", headers=h).status_code == 401
    assert client.get("/v1/rounds/0/keys").status_code == 401  # no headers at all


def _garbage(client: Any, extra: Device) -> Any:
    """A hook that sends wrong requests at each stage and checks each status code."""
    seen: list[str] = []

    def hook(stage: str, state: dict[str, Any], sampled: list[Device]) -> None:
        rid = state["round"]
        d = sampled[0]
        seen.append(stage)
        if stage == "advertise_keys":
            from secagg import ClientProtocol, RoundParams

            params = RoundParams.from_dict(state["params"])
            msg = ClientProtocol(params, d.device_id).advertise_keys().to_dict()
            # wrong round, unknown round, non-participant, spoofed sender, bad JSON, bad schema
            assert d.post_json(f"/v1/rounds/{rid + 7}/keys", msg).status_code == 404
            r = extra.post_json(f"/v1/rounds/{rid}/keys", dict(msg, sender=extra.device_id))
            assert r.status_code == 403, r.text
            assert (
                d.post_json(
                    f"/v1/rounds/{rid}/keys", dict(msg, sender=sampled[1].device_id)
                ).status_code
                == 403
            )
            assert (
                d.post_json(f"/v1/rounds/{rid}/keys", dict(msg, round_id=rid + 1)).status_code
                == 400
            )
            assert d.post_json(f"/v1/rounds/{rid}/keys", [1, 2]).status_code == 400
            bad = dict(msg)
            bad.pop("c_pk")
            r = d.post_json(f"/v1/rounds/{rid}/keys", bad)
            assert r.status_code == 400, r.text
            r = d.post_json(f"/v1/rounds/{rid}/keys", dict(msg, c_pk="AAAA"))
            assert r.status_code == 400, r.text
            path = f"/v1/rounds/{rid}/keys"
            body = b"{" + b" " * (100 * 1024) + b"}"
            h = d.headers("POST", path, body)
            h["Content-Type"] = "application/json"
            assert client.post(path, content=body, headers=h).status_code == 413
            # wrong stage: shares, masked input and unmask before their time; reads too early
            r = d.post_json(f"/v1/rounds/{rid}/shares", {"ciphertexts": {}})
            assert r.status_code == 409, r.text
            assert d.post_bytes(f"/v1/rounds/{rid}/masked-input", b"\0" * 16).status_code in (
                400,
                409,
            )
            assert d.get(f"/v1/rounds/{rid}/keys").status_code == 409
            assert d.get(f"/v1/rounds/{rid}/shares").status_code == 409
            assert d.get(f"/v1/rounds/{rid}/unmask").status_code == 409
            assert d.get(f"/v1/rounds/{rid}/consistency").status_code == 409
            assert extra.get(f"/v1/rounds/{rid}/unmask").status_code == 403
        elif stage == "masked_input":
            path = f"/v1/rounds/{rid}/masked-input"
            assert d.post_bytes(path, b"\x01" * 10).status_code == 400
            assert d.post_bytes(path, b"").status_code == 400  # empty body
            h = d.headers("POST", path, b"x" * 10)
            assert client.post(path, content=b"x" * 10, headers=h).status_code == 415
            huge = b"\0" * (8 * 1024 * 1024)
            r = d.post_bytes(path, huge)
            assert r.status_code == 413, r.text
            r = extra.post_bytes(path, b"\0")
            assert r.status_code in (403, 413), r.text
        elif stage == "unmask":
            r = d.post_json(f"/v1/rounds/{rid}/keys", {"c_pk": "", "s_pk": ""})
            assert r.status_code == 409, r.text
            r = d.post_json(f"/v1/rounds/{rid}/unmask", {"self_mask_shares": "x"})
            assert r.status_code == 400, r.text

    hook.seen = seen  # type: ignore[attr-defined]
    return hook


def test_honest_round_completes_despite_garbage(
    client: Any, devices: list[Device], extra: Device, module_tmp: Path
) -> None:
    state = wait_stage(devices[0], {"advertise_keys"})
    assert state["round"] == 0 and state["sampled"] is True
    extra.register()  # registered after sampling: not a participant of round 0
    hook = _garbage(client, extra)
    inputs: list[bytes] = []
    end = run_round(devices, hook=hook, keep_inputs=inputs, check_duplicates=True)
    assert hook.seen == ["advertise_keys", "share_keys", "masked_input", "unmask"]
    assert end["stage"] == "done", end
    log = client.get("/v1/rounds").json()
    r0 = log[0]
    assert r0["round"] == 0 and r0["status"] == "done"
    # the public log has counts, never ids (issue 11, finding 5)
    assert r0["sampled"] == 3 and r0["survivors"] == 3
    assert all(v == 0 for v in r0["dropouts"].values())
    assert 0.0 <= r0["accuracy"] <= 1.0 and r0["loss"] > 0
    assert r0["epsilon"] > 0 and r0["epsilon_amplified"] <= r0["epsilon"] + 1e-9
    assert r0["clip_rate"] is None
    for key in ("delta", "epsilon_budget", "started_at", "finished_at", "timings"):
        assert key in r0
    meta = client.get("/v1/model/meta").json()
    assert meta["version"] == 1 and meta["task"] == "digits" and meta["dtype"] == "float32"
    r = client.get("/v1/model")
    assert r.headers["X-Model-Version"] == "1"
    assert len(r.content) == 4 * meta["dim"]
    # the secret inputs never reach the disk or the log
    _assert_nowhere(module_tmp, inputs, end)
    # a message for the finished round is refused as closed
    r = devices[0].post_json("/v1/rounds/0/keys", {"c_pk": "", "s_pk": ""})
    assert r.status_code == 409 and "closed" in r.json()["detail"]


def _assert_nowhere(tmp: Path, masked: list[bytes], end: dict[str, Any]) -> None:
    from secagg import pack

    bits = int(end["round_params"]["bits"])
    needles: list[bytes] = []
    for body in masked:
        needles += [body[:48], body[len(body) // 2 : len(body) // 2 + 48]]
    for x in end["x"].values():
        packed = pack(np.asarray(x, dtype=np.uint64), bits)
        needles += [packed[:48], np.asarray(x, dtype="<u8").tobytes()[:48]]
        needles.append(np.asarray(x, dtype="<u4").tobytes()[:48])
    assert len(needles) >= 12
    with sqlite3.connect(tmp / "server.sqlite3") as conn:
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    files = [p for p in tmp.iterdir() if p.is_file()]
    assert any(p.name == "server.log" for p in files)
    for path in files:
        blob = path.read_bytes()
        text_b64 = blob  # base64 copies would be just as bad
        for n in needles:
            assert n not in blob, f"{path.name} holds a device vector"
            assert base64.b64encode(n)[:40] not in text_b64, f"{path.name} holds a vector (b64)"


def test_dropout_after_masked_input_is_a_survivor(
    client: Any, devices: list[Device], extra: Device
) -> None:
    """The device that goes silent in unmask still counts: its masks are rebuilt."""
    end = run_round([*devices, extra], silent={2: "unmask"})
    assert end["stage"] == "done", end
    rec = [r for r in client.get("/v1/rounds").json() if r["round"] == end["round"]][0]
    assert rec["status"] == "done", (rec, end["round"], end["version"])
    assert rec["dropouts"]["unmask"] == 1
    assert rec["survivors"] == 3, rec


def test_below_threshold_aborts_then_training_finishes(
    client: Any, devices: list[Device], extra: Device
) -> None:
    # The module's earlier tests register `extra` and run two honest rounds; run alone
    # (or reordered), this test does so itself, so that the round after the abort is the
    # last planned one.
    if extra.device_id is None:
        extra.register()
    st = client.get("/v1/status").json()
    while st["rounds_done"] < st["rounds_planned"] - 1:
        assert run_round(devices)["stage"] == "done"
        st = client.get("/v1/status").json()
    eps_before = st["epsilon"]
    end = run_round([*devices, extra], silent={0: "advertise_keys", 1: "advertise_keys"})
    assert end["stage"] == "aborted", end
    rec = [r for r in client.get("/v1/rounds").json() if r["round"] == end["round"]][0]
    assert rec["status"] == "aborted" and "threshold" in rec["abort_reason"]
    assert client.get("/v1/status").json()["epsilon"] == eps_before  # nothing charged
    end = run_round([*devices, extra])  # the third planned round
    assert end["stage"] == "done"
    status = wait_stage(devices[0], {"finished"})
    assert status["stage"] == "finished"
    st = client.get("/v1/status").json()
    assert st["training_done"] is True and st["rounds_done"] == st["rounds_planned"] == 3
    assert st["epsilon"] > eps_before and st["registered"] == 4
    assert st["config"]["training"]["task"] == "digits"
    assert "data_dir" not in st["config"]["server"]
