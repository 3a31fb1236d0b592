"""Issue 11, findings 4, 5 and 11, written as the attacks they stop.

- 4: one device must not lock the others out: the nonce quota is per device, a request
  refused by the rate limit stores nothing, and a replay after a restart is refused.
- 5: public endpoints publish counts, never who took part; a round's parameters go only
  to devices sampled in it.
- 11: the token-bucket table is bounded by LRU eviction (it used to clear every bucket),
  and long-polls are bounded per device, per address and in total.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secagg.auth import public_key_bytes
from server.limits import ConcurrencyLimiter, TokenBuckets
from server.security import Authenticator, default_nonce_quota
from server.store import Store
from tests.server._helpers import Device, run_round, settings, wait_stage
from tests.server.conftest import make_client

CURRENT = "/v1/rounds/current"


def _idle_client(tmp: Path) -> Any:
    """An app that waits for more devices for ten minutes (no round runs)."""
    return make_client(tmp, clients=50, per_round=3, registration_timeout=600.0)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with _idle_client(tmp_path_factory.mktemp("idle")) as c:
        yield c


def _fixed_sampling() -> dict[str, Any]:
    """``sampling="fixed"`` where the server offers it: the test needs a known cohort."""
    import dataclasses

    from server.config import ServerConfig

    names = {f.name for f in dataclasses.fields(ServerConfig)}
    return {"sampling": "fixed"} if "sampling" in names else {}


def _swap_auth(client: Any, **kw: Any) -> Authenticator:
    old: Authenticator = client.app.state.auth
    auth = Authenticator(old.store, old.window, kw.pop("rate"), kw.pop("burst"), **kw)
    client.app.state.auth = auth
    return auth


# ---------------------------------------------------------------- finding 4
def test_flooding_device_fills_only_its_own_nonce_quota(idle: Any) -> None:
    """Attack: device A sends requests until the nonce store is full. Before the fix the
    cap was global and every device then got 401; now only A is refused (429)."""
    c = idle
    auth = _swap_auth(c, rate=1000.0, burst=1000, nonce_quota=20)
    a, b = Device(c), Device(c)
    a.register()
    b.register()
    codes = [a.get(CURRENT).status_code for _ in range(30)]
    assert codes == [200] * 20 + [429] * 10
    r = a.get(CURRENT)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "authentication window" in r.json()["detail"]
    assert b.get(CURRENT).status_code == 200  # the other device is not locked out
    assert auth.store.nonce_count(a.device_id) == 20


def test_rate_limited_requests_store_no_nonce(idle: Any) -> None:
    """Attack: a device far above its rate. Before the fix each 429 still stored a nonce
    (filling the shared cache); now the rate limit comes first and stores nothing."""
    c = idle
    auth = _swap_auth(c, rate=0.01, burst=3, nonce_quota=10)
    a, b = Device(c), Device(c)
    a.register()
    b.register()
    codes = [a.get(CURRENT).status_code for _ in range(25)]
    assert codes == [200] * 3 + [429] * 22
    assert auth.store.nonce_count(a.device_id) == 3
    assert b.get(CURRENT).status_code == 200


def test_replays_cost_the_device_no_token(idle: Any) -> None:
    """A captured request replayed by a third party is refused (409) before the device's
    token bucket is touched, so replays cannot starve the device of its rate."""
    c = idle
    _swap_auth(c, rate=0.01, burst=2)
    a = Device(c)
    a.register()
    h = a.headers("GET", CURRENT)
    assert c.get(CURRENT, headers=h).status_code == 200
    for _ in range(5):
        assert c.get(CURRENT, headers=h).status_code == 409
    assert a.get(CURRENT).status_code == 200  # its second token is still there


def test_replay_after_restart_is_refused(tmp_path: Path) -> None:
    """Attack: replay a captured request after the server restarted. The nonces used to
    live in memory only; they are now in SQLite with the rest of the state."""
    with _idle_client(tmp_path) as c:
        a = Device(c)
        a.register()
        h = a.headers("GET", CURRENT)
        assert c.get(CURRENT, headers=h).status_code == 200
    with _idle_client(tmp_path) as c:  # a new app on the same database
        r = c.get(CURRENT, headers=h)
        assert r.status_code == 409 and "replayed" in r.json()["detail"]
        a.http = c
        assert a.get(CURRENT).status_code == 200  # fresh requests still pass


def test_nonce_store_quota_and_expiry(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.sqlite3")
    try:
        now = 1000.0
        assert store.record_nonce(1, "a" * 32, now + 10, now, quota=2).outcome == "stored"
        assert store.record_nonce(1, "a" * 32, now + 10, now, quota=2).outcome == "replay"
        assert store.record_nonce(1, "b" * 32, now + 5, now, quota=2).outcome == "stored"
        full = store.record_nonce(1, "c" * 32, now + 10, now, quota=2)
        assert full.outcome == "quota" and full.retry_after == pytest.approx(5.0)
        assert store.record_nonce(2, "c" * 32, now + 10, now, quota=2).outcome == "stored"
        # once "b" expires its slot is free again, and the expired nonce is forgotten
        assert store.record_nonce(1, "c" * 32, now + 20, now + 6, quota=2).outcome == "stored"
        assert not store.nonce_seen(1, "b" * 32, now + 6)
        assert store.nonce_seen(1, "a" * 32, now + 6)
        assert store.prune_nonces(now + 7) == 1  # "b" of device 1
        assert store.nonce_count() == 3
    finally:
        store.close()


def test_default_quota_never_binds_below_the_rate_limit() -> None:
    # a nonce lives at most 2 * window; the bucket lets burst + rate * 2 * window through
    assert default_nonce_quota(20.0, 100, 120.0) == 100 + 4800
    with pytest.raises(ValueError, match="nonce_quota"):
        Authenticator(None, 10.0, 1.0, 1, nonce_quota=0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- finding 5
def _ids_in(obj: Any) -> bool:
    """Whether a JSON document has any list of ints or a participant/identity field."""
    text = json.dumps(obj)
    if "participants" in text or "identity_keys" in text:
        return True
    if isinstance(obj, dict):
        return any(_ids_in(v) for v in obj.values())
    if isinstance(obj, list):
        return bool(obj) and all(isinstance(v, int) for v in obj) or any(_ids_in(v) for v in obj)
    return False


def test_public_endpoints_publish_counts_not_participants(tmp_path: Path) -> None:
    """Attack: an anonymous observer reads who took part. ``/v1/rounds`` listed the
    sampled, survivor and dropout ids, and ``/v1/rounds/current`` the participant list."""
    cfg = dict(rounds=1, clients=4, per_round=3, stage_timeout=4.0, **_fixed_sampling())
    with make_client(tmp_path, **cfg) as c:
        devices = [Device(c) for _ in range(4)]
        for d in devices:
            d.register()
        wait_stage(devices[0], {"advertise_keys"})
        anon = c.get(CURRENT).json()
        assert anon["stage"] == "advertise_keys" and anon["sampled"] is False
        assert anon["params"] is None and anon["plan"] is None and anon["rotation_seed"] is None
        assert not _ids_in(anon)
        states = {d.device_id: d.current() for d in devices}
        sampled = [i for i, s in states.items() if s["sampled"]]
        assert sampled, states
        participants = states[sampled[0]]["params"]["participants"]
        assert sorted(participants) == sorted(sampled)
        for i, s in states.items():  # a signed but unsampled device learns no more
            if i not in sampled:
                assert s["params"] is None and s["plan"] is None and not _ids_in(s)
        rid = states[sampled[0]]["round"]
        end = run_round(devices, encode=False, silent={0: "masked_input"})
        assert end["stage"] in ("done", "aborted") and end["round"] == rid, end
        log = c.get("/v1/rounds").json()
        assert log and not _ids_in(log)
        rec = [r for r in log if r["round"] == rid][0]
        assert rec["sampled"] == len(participants)
        assert isinstance(rec["survivors"], int)
        assert all(isinstance(v, int) for v in rec["dropouts"].values())
        assert rec["dropouts"].get("masked_input") == 1
        # the store keeps the ids for the operator (and the accountant), not the public
        kept = [r for r in c.app.state.store.rounds() if r["round"] == rid][0]
        assert sorted(kept["sampled"]) == sorted(participants)


def test_public_round_scrubs_ids_and_drops_unknown_lists() -> None:
    from server.routes.model import public_round

    rec = {
        "round": 4,
        "status": "aborted",
        "sampled": [3, 5, 9],
        "survivors": [],
        "dropouts": {"share_keys": [5], "masked_input": []},
        "abort_reason": "round 4 aborted: b_u of client 9 has 1 surviving holders, threshold 2",
        "timings": {"share_keys": 0.5},
        "new_list_field": [3, 5],
        "epsilon": 1.5,
        "sampling": "poisson",
        "wrap": {"near_wrap": 0, "wrap_suspected": False},
        "charged": True,
    }
    out = public_round(rec)
    assert out["sampled"] == 3 and out["survivors"] == 0
    assert out["dropouts"] == {"share_keys": 1, "masked_input": 0}
    assert "client 9" not in out["abort_reason"] and "threshold 2" in out["abort_reason"]
    assert "new_list_field" not in out and out["timings"] == {"share_keys": 0.5}
    assert out["epsilon"] == 1.5 and out["round"] == 4 and out["charged"] is True
    assert out["sampling"] == "poisson" and out["wrap"] == rec["wrap"]


# ---------------------------------------------------------------- finding 11
def test_token_buckets_evict_lru_instead_of_clearing_all() -> None:
    """Attack: touch many keys until the table passes its size. It used to grow without
    bound while requests were allowed, then clear every bucket (a drained one included)
    on the next refusal. Now the least recently used bucket goes, one at a time."""
    now = [0.0]
    tb = TokenBuckets(1.0, 2, clock=lambda: now[0])
    for who in ("victim", "attacker"):
        assert tb.take(who) is None and tb.take(who) is None
    for i in range(150_000):
        tb.take(i)
        if i % 10_000 == 0:
            assert tb.take("victim") is not None  # still drained, and recently used
        if i % 1000 == 0:
            assert tb.take("attacker") is not None  # refusals do not reset anything
    assert len(tb) <= 100_000
    assert tb.take("victim") is not None
    assert tb.take(0) is None  # long evicted: a fresh burst, as after burst/rate idle s


def test_concurrency_limiter_counts_and_releases() -> None:
    from server.errors import ApiError

    lim = ConcurrencyLimiter(per_key=2, total=3)

    async def main() -> None:
        async with lim.slot("a"), lim.slot("a"):
            with pytest.raises(ApiError) as err:
                async with lim.slot("a"):
                    pass
            assert err.value.status == 429 and "from this client" in err.value.detail
            async with lim.slot("b"):
                with pytest.raises(ApiError, match="in total"):
                    async with lim.slot("c"):
                        pass
        assert lim.in_flight() == 0 and lim.in_flight("a") == 0

    asyncio.run(main())


def test_upload_gate_refuses_past_its_queue() -> None:
    """With a queue bound, masked inputs past ``slots + queue`` are refused before their
    body is read; by default (no bound) they wait their turn."""
    from server.errors import ApiError
    from server.limits import UploadGate

    gate = UploadGate(slots=1, queue=1)

    async def main() -> list[str]:
        release = asyncio.Event()
        log: list[str] = []

        async def upload(name: str) -> None:
            try:
                async with gate.slot():
                    log.append(f"{name} in")
                    await release.wait()
            except ApiError as err:
                log.append(f"{name} {err.status}")

        tasks = [asyncio.create_task(upload(n)) for n in "abc"]
        for _ in range(3):
            await asyncio.sleep(0)
        assert gate.admitted == 2
        release.set()
        await asyncio.gather(*tasks)
        assert gate.admitted == 0
        return log

    assert asyncio.run(main()) == ["a in", "c 429", "b in"]


def test_long_polls_are_bounded(tmp_path: Path) -> None:
    """Attack: one address opens many unauthenticated long-polls (each holds a connection
    and a coroutine for up to 60 s). Beyond its share it now gets 429 at once, and a
    device's own long-polls are bounded too; a signed device still gets through."""
    from server import create_app

    app = create_app(settings(tmp_path, clients=3, per_round=3, registration_timeout=600.0))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            limits = app.state.limits
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                dev = Device(httpx.Client(base_url="http://t"))  # for its key and signing
                pk = base64.b64encode(public_key_bytes(dev.key)).decode()
                r = await http.post("/v1/devices", json={"public_key": pk})
                dev.device_id = int(r.json()["device_id"])
                poll = f"{CURRENT}?wait=1&after=1000000"
                n_anon = limits.anon_polls.per_key + 8
                anon = [http.get(poll) for _ in range(n_anon)]
                signed = [
                    http.get(poll, headers=dev.headers("GET", poll))
                    for _ in range(limits.device_polls.per_key + 3)
                ]
                got = await asyncio.gather(*anon, *signed)
                a_codes = [r.status_code for r in got[:n_anon]]
                s_codes = [r.status_code for r in got[n_anon:]]
                assert a_codes.count(200) == limits.anon_polls.per_key, a_codes
                assert a_codes.count(429) == 8
                assert s_codes.count(200) == limits.device_polls.per_key, s_codes
                assert s_codes.count(429) == 3
                assert limits.anon_polls.in_flight() == 0
                assert limits.device_polls.in_flight() == 0

    asyncio.run(main())
