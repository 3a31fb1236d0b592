"""Operator controls (server.control, /v1/control): the token, the checks, the change log,
pause between rounds, and the privacy accounting of cohort and device changes."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server._helpers import Device, experiment, run_round, settings, wait_stage

TOKEN = "test-operator-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRITES = [
    ("post", "/v1/control/start", None),
    ("post", "/v1/control/pause", None),
    ("post", "/v1/control/resume", None),
    ("post", "/v1/control/settings", {"rounds": 5}),
    ("post", "/v1/control/devices", {"device_ids": [0], "enabled": False}),
    ("get", "/v1/control/devices", None),
]


def _client(tmp: Path, token: str | None = TOKEN, **server: Any) -> Any:
    from fastapi.testclient import TestClient

    from server import create_app

    return TestClient(create_app(settings(tmp, **server), operator_token=token))


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """3 devices, 3 per round (fixed-size sampling), 6 rounds planned."""
    with _client(tmp_path_factory.mktemp("control"), rounds=6, clients=3, per_round=3) as c:
        devs = [Device(c) for _ in range(3)]
        for d in devs:
            d.register()
        c.devs = devs  # type: ignore[attr-defined]
        yield c


def test_every_control_refuses_requests_without_the_token(ctl: Any) -> None:
    bad_headers = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer"},
        {"Authorization": b"Bearer \xe9\xe9\xe9"},  # not ASCII (latin-1 on the wire)
    ]
    before = ctl.get("/v1/control").json()
    for method, path, body in WRITES:
        for headers in bad_headers:
            r = getattr(ctl, method)(path, headers=headers, **({"json": body} if body else {}))
            assert r.status_code == 401, (path, headers, r.text)
            assert "token" in r.json()["detail"] or "Bearer" in r.json()["detail"]
            assert r.headers["www-authenticate"].startswith("Bearer")
    # refused before the body is read: a malformed body still gets 401, not 400
    r = ctl.post("/v1/control/settings", content=b"{not json", headers={"Content-Type": "x"})
    assert r.status_code == 401
    # nothing changed, nothing logged
    assert ctl.get("/v1/control").json() == before
    assert ctl.get("/v1/control/log").json() == []
    # the read-only views stay public
    for path in ("/v1/control", "/v1/control/log", "/v1/status", "/v1/rounds"):
        assert ctl.get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"rounds": 0}, 422, "rounds"),
        ({"rounds": -3}, 422, "rounds"),
        ({"rounds": 2.5}, 422, "rounds"),
        ({"rounds": "7"}, 422, "rounds"),
        ({"rounds": True}, 422, "rounds"),
        ({"rounds": None}, 422, "rounds"),
        ({"per_round": 1}, 422, "per_round"),
        ({"epsilon_budget": 0}, 422, "epsilon_budget"),
        ({"epsilon_budget": -1.0}, 422, "epsilon_budget"),
        ({"epsilon_budget": "lots"}, 422, "epsilon_budget"),
        ({"epsilon_budget": 1e300}, 422, "epsilon_budget"),
        ({"budget": 3.0}, 422, "budget"),
        ({}, 422, "nothing to change"),
        ([1, 2], 400, "JSON object"),
        # fixed-size sampling: the accountant cannot follow a new k
        ({"per_round": 2}, 409, "fixed-size sampling"),
    ],
)
def test_bad_settings_get_a_clear_4xx(ctl: Any, body: Any, status: int, words: str) -> None:
    r = ctl.post("/v1/control/settings", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()


def test_bad_device_changes_get_a_clear_4xx(ctl: Any) -> None:
    cases = [
        ({"device_ids": [0, 99]}, 422, "enabled"),
        ({"device_ids": [], "enabled": False}, 422, "device_ids"),
        ({"device_ids": ["0"], "enabled": False}, 422, "device_ids"),
        ({"device_ids": [0], "enabled": "no"}, 422, "enabled"),
        ({"device_ids": [0, 99, 123], "enabled": False}, 404, "99, 123"),
        # fixed-size sampling of 3: every one of the 3 devices must stay enabled
        ({"device_ids": [0], "enabled": False}, 409, "at least 3 must stay enabled"),
    ]
    for body, status, words in cases:
        r = ctl.post("/v1/control/devices", json=body, headers=AUTH)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["detail"], (body, r.json())
    assert [d["enabled"] for d in ctl.get("/v1/control/devices", headers=AUTH).json()] == [
        True,
        True,
        True,
    ]
    # state conflicts: resume while running, start while running
    assert ctl.post("/v1/control/resume", headers=AUTH).status_code == 409


def test_pause_holds_the_next_round_and_resume_continues(ctl: Any) -> None:
    devs = ctl.devs
    said: list[Any] = []

    def pause_in_flight(stage: str, state: dict[str, Any], sampled: list[Device]) -> None:
        if stage == "unmask":  # the round in flight still finishes
            said.append(ctl.post("/v1/control/pause", headers=AUTH))

    assert run_round(devs, encode=False, hook=pause_in_flight)["stage"] == "done"
    assert said[0].status_code == 200, said[0].text
    assert said[0].json()["state"]["paused"] is True
    assert said[0].json()["state"]["pausing"] is True  # a round was in flight
    assert "round in flight finishes" in said[0].json()["message"]
    assert ctl.post("/v1/control/pause", headers=AUTH).status_code == 409  # already
    state = wait_stage(devs[0], {"paused"}, timeout=30)
    assert state["round"] is None and state["params"] is None
    rounds_before = len(ctl.get("/v1/rounds").json())
    # no round starts while paused: the long-poll sees no stage change in 1.5 s
    again = devs[0].current(after=state["version"], wait=1.5)
    assert again["stage"] == "paused" and again["version"] == state["version"]
    assert len(ctl.get("/v1/rounds").json()) == rounds_before
    st = ctl.get("/v1/status").json()
    assert st["stage"] == "paused" and st["operator"]["training"] == "paused"

    r = ctl.post("/v1/control/resume", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"]["paused"] is False
    assert run_round(devs, encode=False)["stage"] == "done"
    log = ctl.get("/v1/control/log").json()
    actions = [e["action"] for e in log]
    assert actions[-2:] == ["pause", "resume"]
    assert log[-1]["before_round"] == log[-2]["before_round"] == rounds_before
    assert all(e["at"] > 1e9 for e in log)
    assert ctl.get("/v1/status").json()["changes"][-2:] == log[-2:]


def test_rounds_and_budget_apply_from_the_next_round_and_are_logged(ctl: Any) -> None:
    st = ctl.get("/v1/status").json()
    done = st["rounds_done"]
    assert done >= 1 and st["epsilon"] > 0
    spent = st["epsilon"]
    r = ctl.post("/v1/control/settings", json={"rounds": done - 1}, headers=AUTH)
    assert r.status_code == 409 and "rounds must be at least" in r.json()["detail"]
    r = ctl.post("/v1/control/settings", json={"epsilon_budget": spent * 0.5}, headers=AUTH)
    assert r.status_code == 409 and "already spent" in r.json()["detail"]
    r = ctl.post(
        "/v1/control/settings",
        json={"rounds": done + 1, "epsilon_budget": spent * 50},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    entry = r.json()["entry"]
    assert entry["action"] == "settings"
    assert entry["detail"] == {"rounds": [6, done + 1], "epsilon_budget": [None, spent * 50]}
    st = ctl.get("/v1/status").json()
    assert st["rounds_planned"] == done + 1 and st["epsilon_budget"] == spent * 50
    assert st["operator"]["rounds_planned"] == done + 1
    # the last planned round runs, then training finishes
    assert run_round(ctl.devs, encode=False)["stage"] == "done"
    assert wait_stage(ctl.devs[0], {"finished"}, timeout=30)["stage"] == "finished"
    assert ctl.get("/v1/rounds").json()[-1]["epsilon_budget"] == spent * 50
    # starting again needs more rounds planned; with them the run continues
    r = ctl.post("/v1/control/start", headers=AUTH)
    assert r.status_code == 409 and "planned rounds are done" in r.json()["detail"]
    assert ctl.post("/v1/control/pause", headers=AUTH).status_code == 409  # finished
    r = ctl.post("/v1/control/settings", json={"rounds": done + 2}, headers=AUTH)
    assert r.status_code == 200 and "start it" in r.json()["message"]
    r = ctl.post("/v1/control/start", headers=AUTH)
    assert r.status_code == 200, r.text
    assert run_round(ctl.devs, encode=False)["stage"] == "done"
    assert ctl.get("/v1/status").json()["rounds_done"] == done + 2


def test_start_now_and_disabled_devices_sit_out(tmp_path: Path) -> None:
    """Start without waiting for the 10 expected devices; a disabled device is not
    sampled; the public log says how many devices changed, not which."""
    with _client(tmp_path, rounds=5, clients=10, per_round=3, sampling="poisson") as c:
        devs = [Device(c) for _ in range(4)]
        devs[0].register()
        r = c.post("/v1/control/start", headers=AUTH)
        assert r.status_code == 409 and "at least 2 enabled devices" in r.json()["detail"]
        for d in devs[1:]:
            d.register()
        r = c.post("/v1/control/devices", json={"device_ids": [3], "enabled": False}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["state"]["enabled"] == 3 and r.json()["state"]["disabled"] == 1
        assert c.get("/v1/status").json()["stage"] == "waiting"  # 4 of 10 registered
        r = c.post("/v1/control/start", headers=AUTH)
        assert r.status_code == 200, r.text
        state = wait_stage(devs[0], {"advertise_keys"}, timeout=30)
        # N = the 3 enabled devices, q = 3 / 3: exactly those are sampled
        assert state["params"]["participants"] == [0, 1, 2]
        assert devs[3].current()["sampled"] is False
        assert c.post("/v1/control/start", headers=AUTH).status_code == 409  # running
        assert run_round(devs[:3], encode=False)["stage"] == "done"
        rec = c.get("/v1/rounds").json()[0]
        assert rec["candidates"] == 3 and rec["sampled"] == 3 and rec["charged_cohort"] == 3
        r = c.post("/v1/control/devices", json={"device_ids": [3], "enabled": True}, headers=AUTH)
        assert r.status_code == 200 and r.json()["state"]["enabled"] == 4
        listed = c.get("/v1/control/devices", headers=AUTH).json()
        assert [d["enabled"] for d in listed] == [True] * 4
        log = c.get("/v1/control/log").json()
        devices = [e for e in log if e["action"] == "devices"]
        assert [e["detail"] for e in devices] == [
            {"enabled": False, "count": 1},
            {"enabled": True, "count": 1},
        ]
        assert [e["action"] for e in log] == ["devices", "start", "devices"]


# ------------------------------------------------------------------ token issuing


def test_token_is_printed_once_stored_hashed_and_renewed_at_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.store import Store

    tokens = []
    for _ in range(2):
        with _client(
            tmp_path, token=None, rounds=4, clients=3, per_round=3, sampling="poisson"
        ) as c:
            out = capsys.readouterr().out
            lines = [x for x in out.splitlines() if x.startswith("operator token: ")]
            assert len(lines) == 1, out
            token = lines[0].split(": ", 1)[1]
            assert len(token) >= 43
            tokens.append(token)
            h = {"Authorization": f"Bearer {token}"}
            if len(tokens) == 1:
                assert c.post("/v1/control/pause", headers=h).status_code == 200
                r = c.post("/v1/control/settings", json={"rounds": 9, "per_round": 2}, headers=h)
                assert r.status_code == 200, r.text
            else:  # the new server: the old token is dead, the operator's state survived
                old = {"Authorization": f"Bearer {tokens[0]}"}
                assert c.post("/v1/control/resume", headers=old).status_code == 401
                st = c.get("/v1/control").json()
                assert st["paused"] is True and st["rounds_planned"] == 9
                assert st["per_round"] == 2
                assert c.get("/v1/status").json()["rounds_planned"] == 9
                assert c.post("/v1/control/resume", headers=h).status_code == 200
    assert tokens[0] != tokens[1]
    store = Store(tmp_path / "server.sqlite3")
    try:
        assert (
            store.get_meta("operator_token_sha256")
            == hashlib.sha256(tokens[1].encode()).hexdigest()
        )
    finally:
        store.close()
    # the secret is in neither the database nor the log file
    files = [*tmp_path.glob("server.sqlite3*"), tmp_path / "server.log"]
    for path in files:
        data = path.read_bytes()
        for token in tokens:
            assert token.encode() not in data, path


def test_python_m_server_prints_the_token_and_clients_run_reads_it(tmp_path: Path) -> None:
    """The real ``python -m server`` process: one token line on its output, which is what
    ``python -m clients run --keep-serving`` shows with the URL; the log file has none."""
    import httpx

    from clients.engines.http import LocalServer
    from clients.run import operator_token

    config = tmp_path / "experiment.toml"
    config.write_text(experiment(rounds=2).to_toml(), encoding="utf-8")
    server = LocalServer(config, tmp_path / "run.sqlite3", tmp_path / "run.log")
    server.start()
    try:
        token = operator_token(server)
        assert token is not None and len(token) >= 43
        assert server.console_path.read_text().count("operator token: ") == 1
        url = server.url + "/v1/control/pause"
        assert httpx.post(url, timeout=10).status_code == 401
        r = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        server.stop()
    assert token not in (tmp_path / "run.log").read_text()


# ------------------------------------------------------------------ accounting


def _core(tmp: Path, n: int, per_round: int, seed: int = 3) -> Any:
    """A ServerCore over ``n`` registered devices, Poisson sampling, seeded (test only)."""
    from server.model import ModelService
    from server.round import ServerCore
    from server.store import Store

    cfg = experiment(sampling="poisson", clients=n, per_round=per_round, rounds=20, eval_every=0)
    store = Store(tmp / "core.sqlite3")
    store.register_devices([os.urandom(32) for _ in range(n)])
    models = ModelService("digits", seed=0)
    core = ServerCore(cfg, store, models, sampler_source=random.Random(seed))
    core.restore(models.load())
    return core


def _release(core: Any, candidates: dict[int, bytes]) -> Any:
    """Begin a round over ``candidates`` and release it with every sampled device as a
    survivor (a zero sum: the test is about the charge, not the model)."""
    for _ in range(50):
        rnd = core.begin_round(candidates)
        if not isinstance(rnd, str):
            break
        assert core.finished_reason is None, core.finished_reason
    else:  # pragma: no cover - 50 tiny Poisson cohorts in a row
        raise AssertionError("no round could start")
    dim = int(rnd.params.dim)
    core.release(
        rnd, lambda: np.zeros(dim, dtype=np.uint64), secure_sum="exact", survivors=rnd.participants
    )
    return rnd


def test_charged_cohort_never_undercharges() -> None:
    from server.round import charged_cohort

    assert charged_cohort(5, 20, 20) == 5
    assert charged_cohort(5, 20, 30) == 5  # more candidates than N: s / N is an upper bound
    assert charged_cohort(5, 20, 10) == 10
    assert charged_cohort(3, 8, 7) == 4  # ceil(24 / 7)
    assert charged_cohort(7, 8, 7) == 8
    for n in range(1, 30):
        for c in range(1, n + 1):
            for s in range(c + 1):
                k = charged_cohort(s, n, c)
                # k / n >= s / c (never less than what ran), and the smallest such k
                assert k <= n and k * c >= s * n, (s, n, c, k)
                assert k == s or (k - 1) * c < s * n, (s, n, c, k)


@pytest.mark.parametrize("mechanism", ["gaussian", "ddgauss", "skellam"])
def test_amplified_epsilon_grows_with_the_cohort(mechanism: str) -> None:
    """What charged_cohort relies on: at a fixed N, a larger cohort never costs less."""
    from dp import DPConfig, EncodingPlan, PrivacyAccountant

    cfg = DPConfig(mechanism=mechanism, clip=1.0, noise_multiplier=1.0, bits=20)
    plan = EncodingPlan.create(cfg, 100, n_clients=10, min_contributors=8)
    event = plan.privacy_event(8)
    last = 0.0
    for cohort in (8, 9, 10, 11, 13, 16, 19, 20):
        acc = PrivacyAccountant(cfg, sample_rate=0.5, population=20)
        acc.compose(event, 3, cohort=cohort)
        eps = acc.report().epsilon_amplified
        assert eps >= last * (1 - 1e-9), (cohort, eps, last)
        last = eps


def test_accountant_follows_disabled_devices_and_cohort_changes(tmp_path: Path) -> None:
    """Poisson, N = 8: a round drawn from 4 enabled devices is charged as a cohort of
    s * 8 / 4 of 8; a new per_round rebuilds the accountant for the new q; 4 more devices
    grow N to 12 and every earlier round is charged at ceil(c * 12 / 8) of 12; a restart
    gives the same ε. Each figure is checked against an accountant built here from the
    rounds' plans and what they were drawn from."""
    from dp import PrivacyAccountant
    from server.round import ServerCore

    core = _core(tmp_path, n=8, per_round=4)
    every = core.store.device_keys()
    r0 = _release(core, every)
    assert core.sample_rate == 0.5 and core.population == 8
    assert r0.candidates == 8 and r0.charged_cohort == len(r0.participants)

    half = {i: k for i, k in every.items() if i < 4}
    r1 = _release(core, half)  # q = 4 / 4: all four enabled devices are sampled
    assert sorted(r1.participants) == [0, 1, 2, 3] and r1.sample_rate == 1.0
    assert r1.candidates == 4 and r1.charged_cohort == 8  # gamma = 4 / 4 = 8 / 8

    def expected(q: float, rounds: list[Any], population: int = 8) -> Any:
        acc = PrivacyAccountant(
            core.config.dp,
            sample_rate=q,
            population=population,
            corrupt_fraction=core.config.protocol.corrupt,
        )
        for rnd, cohort in rounds:
            acc.compose(rnd.plan.privacy_event(len(rnd.participants)), cohort=cohort)
        return acc.report()

    want = expected(0.5, [(r0, len(r0.participants)), (r1, 8)])
    got = core.epsilon_report()
    assert got["epsilon"] == pytest.approx(want.epsilon, rel=1e-12)
    assert got["epsilon_amplified"] == pytest.approx(want.epsilon_amplified, rel=1e-12)
    # charging round 1 as 4 of 8 (ignoring the disabled devices) would claim less
    naive = expected(0.5, [(r0, len(r0.participants)), (r1, 4)])
    assert naive.epsilon_amplified < got["epsilon_amplified"] * (1 - 1e-6)

    core.sampler.per_round = 2  # what /v1/control/settings does (Poisson)
    r2 = _release(core, every)
    assert core.sample_rate == 0.25 and r2.sample_rate == 0.25 and r2.per_round == 2
    want = expected(0.25, [(r0, len(r0.participants)), (r1, 8), (r2, len(r2.participants))])
    got = core.epsilon_report()
    assert got["sample_rate"] == 0.25
    assert got["epsilon_amplified"] == pytest.approx(want.epsilon_amplified, rel=1e-12)
    log = [r for r in core.store.rounds() if r["status"] == "done"]
    assert [r["charged_cohort"] for r in log] == [len(r0.participants), 8, len(r2.participants)]
    assert [r["candidates"] for r in log] == [8, 4, 8]

    # more devices than N (e.g. registered after an early start): N grows to 12
    core.store.register_devices([os.urandom(32) for _ in range(4)])
    every = core.store.device_keys()
    r3 = _release(core, every)
    assert core.population == 12 and core.sample_rate == pytest.approx(2 / 12)
    assert r3.candidates == 12 and r3.charged_population == 12
    c0, c2 = len(r0.participants), len(r2.participants)
    scaled = [(r0, -(-c0 * 12 // 8)), (r1, 12), (r2, -(-c2 * 12 // 8)), (r3, len(r3.participants))]
    want = expected(2 / 12, scaled, population=12)
    got = core.epsilon_report()
    assert got["epsilon"] == pytest.approx(want.epsilon, rel=1e-12)
    assert got["epsilon_amplified"] == pytest.approx(want.epsilon_amplified, rel=1e-12)

    again = ServerCore(core.config, core.store, core.models)
    again.restore(core.weights)
    assert again.epsilon_report() == got
