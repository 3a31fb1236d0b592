"""Ten devices send every stage concurrently (httpx ASGI transport, one event loop): the
per-round lock keeps the aggregate consistent and the round completes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg.auth import public_key_bytes, sign_request
from tests.server._helpers import settings


class AsyncDevice:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.key = Ed25519PrivateKey.generate()
        self.id = -1
        self.proto: Any = None

    async def register(self) -> None:
        pk = base64.b64encode(public_key_bytes(self.key)).decode()
        r = await self.http.post("/v1/devices", json={"public_key": pk})
        self.id = int(r.json()["device_id"])

    async def get(self, path: str) -> Any:
        h = sign_request(self.key, self.id, "GET", path, audience=str(self.http.base_url))
        r = await self.http.get(path, headers=h)
        assert r.status_code == 200, r.text
        return r.json()

    async def post(self, path: str, body: bytes, ctype: str) -> None:
        h = sign_request(self.key, self.id, "POST", path, body, audience=str(self.http.base_url))
        h["Content-Type"] = ctype
        r = await self.http.post(path, content=body, headers=h)
        assert r.status_code == 202, r.text


async def _wait(dev: AsyncDevice, stage: str, version: int) -> dict[str, Any]:
    while True:
        st = await dev.get(f"/v1/rounds/current?wait=10&after={version}")
        version = st["version"]
        if st["stage"] == stage:
            return st
        assert st["stage"] not in ("aborted", "finished"), st


def test_concurrent_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.driver
    from secagg import AdvertiseKeys, ClientProtocol, RoundParams, UnmaskRequest
    from server import create_app

    # exercise the worker-thread path of add_masked_input too
    monkeypatch.setattr(server.driver, "THREAD_MIN_BYTES", 0)
    sums: list[np.ndarray] = []
    import server.round

    real_decoder = server.round.Decoder

    class SpyDecoder(real_decoder):  # type: ignore[misc, valid-type]
        def decode(self, sum_mod: np.ndarray, n_survivors: int) -> Any:
            sums.append(np.array(sum_mod, copy=True))
            return super().decode(sum_mod, n_survivors)

    monkeypatch.setattr(server.round, "Decoder", SpyDecoder)
    app = create_app(settings(tmp_path, rounds=1, clients=10, per_round=10, stage_timeout=60.0))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                devs = [AsyncDevice(http) for _ in range(10)]
                await asyncio.gather(*(d.register() for d in devs))
                st = await _wait(devs[0], "advertise_keys", -1)
                params = RoundParams.from_dict(st["params"])
                rid = params.round_id
                gen = np.random.default_rng(1)
                xs = {
                    d.id: gen.integers(0, 2**params.bits, params.dim, dtype=np.uint64) for d in devs
                }
                for d in devs:
                    d.proto = ClientProtocol(params, d.id, signing_key=d.key)

                async def adv(d: AsyncDevice) -> None:
                    body = json.dumps(d.proto.advertise_keys().to_dict()).encode()
                    await d.post(f"/v1/rounds/{rid}/keys", body, "application/json")

                await asyncio.gather(*(adv(d) for d in devs))
                st = await _wait(devs[0], "share_keys", st["version"])

                async def share(d: AsyncDevice) -> None:
                    got = (await d.get(f"/v1/rounds/{rid}/keys"))["keys"]
                    keys = {int(k): AdvertiseKeys.from_dict(v) for k, v in got.items()}
                    body = json.dumps(d.proto.share_keys(keys).to_dict()).encode()
                    await d.post(f"/v1/rounds/{rid}/shares", body, "application/json")

                await asyncio.gather(*(share(d) for d in devs))
                st = await _wait(devs[0], "masked_input", st["version"])

                async def masked(d: AsyncDevice) -> None:
                    got = (await d.get(f"/v1/rounds/{rid}/shares"))["ciphertexts"]
                    cts = {int(k): base64.b64decode(v) for k, v in got.items()}
                    data = d.proto.masked_input(cts, xs[d.id]).data
                    await d.post(f"/v1/rounds/{rid}/masked-input", data, "application/octet-stream")

                await asyncio.gather(*(masked(d) for d in devs))
                st = await _wait(devs[0], "unmask", st["version"])

                async def unmask(d: AsyncDevice) -> None:
                    req = UnmaskRequest.from_dict(await d.get(f"/v1/rounds/{rid}/unmask"))
                    body = json.dumps(d.proto.unmask(req).to_dict()).encode()
                    await d.post(f"/v1/rounds/{rid}/unmask", body, "application/json")

                await asyncio.gather(*(unmask(d) for d in devs))
                await _wait(devs[0], "finished", st["version"])
                log = (await http.get("/v1/rounds")).json()
                assert log[0]["status"] == "done" and log[0]["survivors"] == 10
                # the aggregate the driver decoded is exactly the sum of the inputs mod 2^b
                total = sum(xs.values()) % (1 << params.bits)
                assert len(sums) == 1 and np.array_equal(sums[0].astype(np.uint64), total)

    asyncio.run(main())
