"""Active mode (consistency check with the devices' Ed25519 identity keys) on a Harary graph."""

from __future__ import annotations

from pathlib import Path

from tests.server._helpers import Device, run_round
from tests.server.conftest import make_client


def test_active_harary_round(tmp_path: Path) -> None:
    with make_client(
        tmp_path,
        protocol={"graph": "harary", "active": True},
        rounds=1,
        clients=5,
        per_round=5,
        stage_timeout=20.0,
    ) as client:
        devs = [Device(client) for _ in range(5)]
        for d in devs:
            d.register()
        end = run_round(devs, encode=False)
        assert end["stage"] == "done", end
        params = end["round_params"]
        assert params["active"] is True and params["graph"] == "harary"
        keys = params["identity_keys"]
        assert len(keys) == 5  # the registered identity keys, sent to every participant
        rec = client.get("/v1/rounds").json()[0]
        assert rec["status"] == "done" and rec["survivors"] == 5
        assert "consistency_check" in rec["dropouts"]
