"""Test helpers: signed HTTP devices driven by secagg.ClientProtocol, settings factories."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.auth import public_key_bytes, sign_request


def experiment(protocol: dict[str, Any] | None = None, **server: Any) -> Any:
    """A small digits experiment; keyword arguments override [server] fields."""
    from server.config import ExperimentConfig

    d: dict[str, Any] = {
        "server": {
            "rounds": 3,
            "clients": 3,
            "per_round": 3,
            "sampling": "fixed",  # these tests script exact cohorts
            "stage_timeout": 20.0,
            "registration_timeout": 60.0,
        },
        "protocol": {"graph": "complete", "dropout": 0.1, "corrupt": 0.1},
        "dp": {"mechanism": "ddgauss", "clip": 1.0, "noise_multiplier": 1.0, "bits": 20},
        "training": {"task": "digits"},
    }
    d["server"].update(server)
    d["protocol"].update(protocol or {})
    return ExperimentConfig.from_dict(d)


def settings(
    tmp: Path,
    static_dir: Path | None = None,
    protocol: dict[str, Any] | None = None,
    **server: Any,
) -> Any:
    from server.config import AppSettings

    return AppSettings(
        experiment=experiment(protocol, **server),
        db_path=tmp / "server.sqlite3",
        static_dir=static_dir if static_dir is not None else tmp / "no-static",
        log_file=tmp / "server.log",
    )


class Device:
    """One device: an Ed25519 identity and signed requests over any httpx client."""

    def __init__(self, http: httpx.Client, key: Ed25519PrivateKey | None = None) -> None:
        self.http = http
        self.key = key or Ed25519PrivateKey.generate()
        self.device_id: int | None = None
        self.proto: Any = None

    def register(self) -> int:
        pk = base64.b64encode(public_key_bytes(self.key)).decode()
        r = self.http.post("/v1/devices", json={"public_key": pk})
        assert r.status_code in (200, 201), r.text
        self.device_id = int(r.json()["device_id"])
        return self.device_id

    def headers(self, method: str, path: str, body: bytes = b"", **kw: Any) -> dict[str, str]:
        assert self.device_id is not None
        kw.setdefault("audience", str(self.http.base_url))
        return sign_request(self.key, self.device_id, method, path, body, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers=self.headers("GET", path, **kw))

    def post_json(self, path: str, obj: Any) -> httpx.Response:
        import json

        body = json.dumps(obj).encode()
        h = self.headers("POST", path, body)
        h["Content-Type"] = "application/json"
        return self.http.post(path, content=body, headers=h)

    def post_bytes(self, path: str, body: bytes) -> httpx.Response:
        h = self.headers("POST", path, body)
        h["Content-Type"] = "application/octet-stream"
        return self.http.post(path, content=body, headers=h)

    def current(self, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        path = f"/v1/rounds/current?wait={wait}&after={after}"
        r = self.get(path)
        assert r.status_code == 200, r.text
        return dict(r.json())


def wait_stage(
    dev: Device, stages: set[str], rid: int | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Long-poll until the server is in one of ``stages`` (of round ``rid`` if given).

    If round ``rid`` is over (the server moved to another round or finished), the state
    is returned with ``stage`` rewritten to "aborted" or "done" from the round log.
    """
    end = time.monotonic() + timeout
    state = dev.current(after=-1)
    while True:
        if state["stage"] in stages and (rid is None or state["round"] == rid):
            return state
        if rid is not None and (state["round"] != rid or state["stage"] == "finished"):
            log = dev.http.get("/v1/rounds").json()
            mine = [r for r in log if r["round"] == rid]
            if mine and mine[0]["status"] != "running":
                state = dict(state)
                state["stage"] = mine[0]["status"]
                state["round"] = rid
                return state
        if time.monotonic() > end:
            raise AssertionError(f"server stuck in {state['stage']}, wanted {stages}")
        state = dev.current(after=state["version"], wait=5.0)


def encode_update(state: dict[str, Any], seed: int) -> np.ndarray:
    """A small random update encoded with the round's DP plan (what a device would send)."""
    from dp import Encoder, EncodingPlan
    from dp.prng import SecureRng

    plan = EncodingPlan.from_dict(state["plan"])
    rng = np.random.default_rng(seed)
    update = rng.normal(0.0, 0.01, size=plan.dim).astype(np.float32)
    noise = SecureRng.for_simulation(seed, "tests/server encode_update")
    x, _ = Encoder(plan, base64.b64decode(state["rotation_seed"])).encode(update, noise)
    return np.asarray(x)


Hook = Callable[[str, dict[str, Any], list[Device]], None]


def run_round(
    devices: list[Device],
    silent: dict[int, str] | None = None,
    hook: Hook | None = None,
    keep_inputs: list[bytes] | None = None,
    check_duplicates: bool = False,
    encode: bool = True,
) -> dict[str, Any]:
    """Drive one round with secagg.ClientProtocol over HTTP; return the final state.

    ``silent[i] = stage`` makes the i-th sampled device stop sending from that stage on.
    ``check_duplicates``: re-send the first advertise message and expect 409.
    ``encode=False``: send random integers instead of DP-encoded updates (faster).
    ``hook(stage, state, sampled)`` runs once per stage before honest devices send (tests
    inject garbage there). ``keep_inputs`` collects the masked bodies sent (to search for
    them in the store and the log afterwards).
    """
    from secagg import ClientProtocol, RoundParams, UnmaskRequest

    silent = silent or {}
    lead = devices[0]
    state = wait_stage(lead, {"advertise_keys"})
    # only a device sampled in the round is shown its parameters
    for d in devices:
        mine = d.current()
        if mine["sampled"] and mine["round"] == state["round"]:
            state = mine
            break
    params = RoundParams.from_dict(state["params"])
    rid = params.round_id
    by_id = {d.device_id: d for d in devices}
    sampled = [by_id[c] for c in params.participants if c in by_id]
    for d in sampled:
        d.proto = ClientProtocol(params, d.device_id, signing_key=d.key)
    x: dict[Any, np.ndarray] = {}
    if not encode:  # any integers mod 2^b will do when the test is not about the model
        gen = np.random.default_rng(7)
        x = {
            d.device_id: gen.integers(0, 2**params.bits, size=params.dim, dtype=np.uint64)
            for d in sampled
        }
    order = ["advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask"]

    def live(stage: str) -> list[Device]:
        out = []
        for i, d in enumerate(sampled):
            cut = silent.get(i)
            if cut is None or order.index(cut) > order.index(stage):
                out.append(d)
        return out

    if hook:
        hook("advertise_keys", state, sampled)
    for i, d in enumerate(live("advertise_keys")):
        msg = d.proto.advertise_keys().to_dict()
        r = d.post_json(f"/v1/rounds/{rid}/keys", msg)
        assert r.status_code == 202, r.text
        if check_duplicates and i == 0:
            r = d.post_json(f"/v1/rounds/{rid}/keys", msg)
            assert r.status_code == 409 and "already" in r.json()["detail"], r.text
    state = wait_stage(lead, {"share_keys", "aborted"}, rid)
    if state["stage"] == "aborted":
        return state
    if hook:
        hook("share_keys", state, sampled)
    from secagg import AdvertiseKeys

    for d in live("share_keys"):
        got = d.get(f"/v1/rounds/{rid}/keys").json()["keys"]
        keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in got.items()}
        r = d.post_json(f"/v1/rounds/{rid}/shares", d.proto.share_keys(keys).to_dict())
        assert r.status_code == 202, r.text
    state = wait_stage(lead, {"masked_input", "aborted"}, rid)
    if state["stage"] == "aborted":
        return state
    if encode:
        # the rotation seed is published to the sampled devices from this stage on
        seen = sampled[0].current()
        assert seen["rotation_seed"] is not None, seen
        x = {d.device_id: encode_update(seen, 100 + int(d.device_id or 0)) for d in sampled}
    if hook:
        hook("masked_input", state, sampled)
    for d in live("masked_input"):
        got = d.get(f"/v1/rounds/{rid}/shares").json()["ciphertexts"]
        cts = {int(k): base64.b64decode(v) for k, v in got.items()}
        msg = d.proto.masked_input(cts, x[d.device_id])
        if keep_inputs is not None:
            keep_inputs.append(bytes(msg.data))
        r = d.post_bytes(f"/v1/rounds/{rid}/masked-input", msg.data)
        assert r.status_code == 202, r.text
    state = wait_stage(lead, {"unmask", "consistency_check", "aborted"}, rid)
    if state["stage"] == "aborted":
        return state
    if state["stage"] == "consistency_check":
        for d in live("consistency_check"):
            req = UnmaskRequest.from_dict(d.get(f"/v1/rounds/{rid}/consistency").json())
            r = d.post_json(
                f"/v1/rounds/{rid}/consistency", d.proto.consistency_check(req).to_dict()
            )
            assert r.status_code == 202, r.text
        state = wait_stage(lead, {"unmask", "aborted"}, rid)
        if state["stage"] == "aborted":
            return state
    if hook:
        hook("unmask", state, sampled)
    for d in live("unmask"):
        req = UnmaskRequest.from_dict(d.get(f"/v1/rounds/{rid}/unmask").json())
        r = d.post_json(f"/v1/rounds/{rid}/unmask", d.proto.unmask(req).to_dict())
        assert r.status_code == 202, r.text
    state = wait_stage(lead, {"done", "aborted"}, rid)
    state["x"] = x
    state["sampled_ids"] = [d.device_id for d in sampled]
    state["round_params"] = params.to_dict()
    return state
