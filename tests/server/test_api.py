"""Public endpoints: shapes of status/model/rounds, docs, dashboard, predict, limits."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server._helpers import Device
from tests.server.conftest import make_client


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two devices expected, one registers: the server stays in "waiting"."""
    tmp = tmp_path_factory.mktemp("api")
    with make_client(tmp, clients=2, per_round=2, registration_timeout=600.0) as c:
        yield c


@pytest.fixture(scope="module")
def device(app_client: Any) -> Device:
    d = Device(app_client)
    d.register()
    return d


def test_status_shape(app_client: Any, device: Device) -> None:
    st = app_client.get("/v1/status").json()
    for key in (
        "stage",
        "round",
        "version",
        "training_done",
        "rounds_done",
        "rounds_planned",
        "epsilon",
        "epsilon_amplified",
        "epsilon_budget",
        "delta",
        "registered",
        "config",
    ):
        assert key in st
    assert st["stage"] == "waiting" and st["round"] is None and st["registered"] == 1
    assert st["training_done"] is False and st["epsilon"] == 0.0
    assert set(st["config"]) == {"server", "protocol", "dp", "training"}


def test_model_and_meta(app_client: Any) -> None:
    meta = app_client.get("/v1/model/meta").json()
    assert meta["version"] == 0 and meta["task"] == "digits" and meta["dtype"] == "float32"
    assert meta["dim"] == 2410 and meta["input_shape"] == [8, 8, 1]
    r = app_client.get("/v1/model")
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["X-Model-Version"] == "0"
    w = np.frombuffer(r.content, dtype="<f4")
    assert w.size == meta["dim"] and np.isfinite(w).all() and np.abs(w).sum() > 0


def test_round_log_empty_and_docs(app_client: Any) -> None:
    assert app_client.get("/v1/rounds").json() == []
    assert app_client.get("/v1/rounds?limit=0").status_code == 422
    assert app_client.get("/docs").status_code == 200
    paths = app_client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/devices",
        "/v1/rounds/current",
        "/v1/rounds/{r}/keys",
        "/v1/rounds/{r}/shares",
        "/v1/rounds/{r}/masked-input",
        "/v1/rounds/{r}/unmask",
        "/v1/rounds/{r}/consistency",
        "/v1/model",
        "/v1/model/meta",
        "/v1/rounds",
        "/v1/status",
        "/v1/predict",
    ):
        assert p in paths, p


def test_long_poll_returns_current_state(app_client: Any, device: Device) -> None:
    now = device.current()
    assert now["stage"] == "waiting" and now["sampled"] is False and now["params"] is None
    later = device.current(after=now["version"], wait=0.3)  # nothing changes: times out
    assert later["version"] == now["version"]
    assert app_client.get("/v1/rounds/current?wait=61").status_code == 422
    assert app_client.get("/v1/rounds/current?after=x").status_code == 422
    anon = app_client.get("/v1/rounds/current").json()
    assert anon["sampled"] is False and anon["model_version"] == 0


def test_dashboard_placeholder_and_static(app_client: Any, tmp_path: Path) -> None:
    r = app_client.get("/")
    assert r.status_code == 200 and "not installed" in r.text
    assert app_client.get("/static/app.js").status_code == 404
    from server.deps import get_settings

    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<html>dashboard here</html>")
    base = app_client.app.state.settings
    import dataclasses

    app_client.app.dependency_overrides[get_settings] = lambda: dataclasses.replace(
        base, static_dir=static
    )
    try:
        r = app_client.get("/")
        assert r.status_code == 200 and "dashboard here" in r.text
    finally:
        app_client.app.dependency_overrides.clear()


def _png(digit_like: bool = True) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("L", (32, 32), 255)
    ImageDraw.Draw(img).line((16, 4, 16, 28), fill=0, width=4)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_predict_image_and_features(app_client: Any) -> None:
    r = app_client.post("/v1/predict", files={"file": ("one.png", _png(), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert 0 <= out["label"] <= 9 and out["class_name"] == str(out["label"])
    assert len(out["scores"]) == 10 and abs(sum(out["scores"]) - 1.0) < 1e-4
    assert out["value"] is None and out["model_version"] == 0
    r = app_client.post("/v1/predict", json={"features": [0.5] * 64})
    assert r.status_code == 200 and len(r.json()["scores"]) == 10
    feats = json.dumps({"features": [0.1] * 64}).encode()
    r = app_client.post("/v1/predict", files={"file": ("x.json", feats, "application/json")})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({"json": {"features": [0.5] * 3}}, 400),
        ({"json": {"features": "abc"}}, 422),
        ({"json": {"features": [1, 2], "extra": 1}}, 422),
        ({"json": [1, 2]}, 400),
        (
            {
                "content": b'{"features": [' + b"9" * 5000 + b"]}",
                "headers": {"content-type": "application/json"},
            },
            400,
        ),
        ({"content": b"[" * 100000, "headers": {"content-type": "application/json"}}, 400),
        ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")}}, 400),
        ({"files": {"other": ("x.png", b"abc", "image/png")}}, 400),
        ({"content": b"abc", "headers": {"content-type": "text/plain"}}, 415),
        ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400),
    ],
)
def test_predict_rejects_bad_input(app_client: Any, kwargs: dict[str, Any], status: int) -> None:
    r = app_client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_oversize_is_413_with_and_without_content_length(app_client: Any) -> None:
    big = b"\0" * (5 * 1024 * 1024)
    r = app_client.post("/v1/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(6):
            yield b"\0" * (1024 * 1024)

    r = app_client.post(
        "/v1/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    r = app_client.post(
        "/v1/devices", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text


def test_rate_limit_is_429_per_device(app_client: Any, device: Device) -> None:
    from server.limits import TokenBuckets

    auth = app_client.app.state.auth
    saved = auth.buckets
    auth.buckets = TokenBuckets(rate=0.5, burst=3)
    try:
        codes = [
            app_client.get(
                "/v1/rounds/current", headers=device.headers("GET", "/v1/rounds/current")
            ).status_code
            for _ in range(5)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = app_client.get(
            "/v1/rounds/current", headers=device.headers("GET", "/v1/rounds/current")
        )
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "rate" in r.json()["detail"]
    finally:
        auth.buckets = saved


def test_register_same_key_twice_keeps_id(app_client: Any, device: Device) -> None:
    pk = base64.b64encode(device.key.public_key().public_bytes_raw()).decode()
    r = app_client.post("/v1/devices", json={"public_key": pk})
    assert r.status_code == 200 and r.json() == {"device_id": device.device_id}


def test_long_poll_skip_round_ignores_that_rounds_stages(app_client: Any, device: Device) -> None:
    """A device not sampled in round r asks to sleep through r's stages (``skip_round``):
    the poll ignores stage changes of round r and returns once r is over; without
    ``skip_round`` the same change wakes it at once."""
    import asyncio
    import time
    from types import SimpleNamespace

    driver = app_client.app.state.driver

    async def scenario() -> list[tuple[str, float]]:
        base = driver.version
        saved = driver._round
        # stand-in for round 7 in flight (only what a snapshot reads)
        driver._round = SimpleNamespace(
            round_id=7, deadline=None, rotation_seed=None, participants=(),
            params=SimpleNamespace(to_dict=dict), plan=SimpleNamespace(to_dict=dict),
        )
        try:
            t0 = time.monotonic()
            plain = asyncio.create_task(driver.wait_for_change(base, 5.0))
            skipping = asyncio.create_task(driver.wait_for_change(base, 5.0, skip_round=7))
            other = asyncio.create_task(driver.wait_for_change(base, 5.0, skip_round=6))
            await asyncio.sleep(0.05)
            driver._publish("share_keys")  # a stage change inside round 7
            out = []
            for name, task in (("plain", plain), ("other", other)):
                snap = await asyncio.wait_for(task, 2.0)
                out.append((f"{name}:{snap.stage}", time.monotonic() - t0))
            await asyncio.sleep(0.3)
            assert not skipping.done(), "a stage change of the skipped round woke the poll"
            driver._round = None
            driver._publish("done")  # round 7 is over
            snap = await asyncio.wait_for(skipping, 2.0)
            out.append((f"skipping:{snap.stage}", time.monotonic() - t0))
            return out
        finally:
            driver._round = saved
            driver._publish("waiting")

    out = app_client.portal.call(scenario)
    assert [name for name, _ in out] == ["plain:share_keys", "other:share_keys", "skipping:done"]
    assert out[-1][1] >= 0.3  # slept through the stage change, well before the 5 s timeout
    assert out[-1][1] < 4.0
    # the query parameter is validated like ``after``
    assert app_client.get("/v1/rounds/current?skip_round=-1").status_code == 422
    assert device.current(after=-1)["stage"] == "waiting"
