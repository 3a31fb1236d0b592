"""The server checks the audience a device signs (issue 11, finding 9): a request signed
for another origin is refused with 401 before anything else happens."""

from __future__ import annotations

from pathlib import Path

from tests.server._helpers import Device
from tests.server.conftest import make_client

KEYS = "/v1/rounds/1/keys"
CASES = [
    ("http://testserver", True),  # the origin the request is addressed to
    ("http://TESTSERVER:80/", True),  # the same origin, spelled otherwise
    ("https://testserver", False),  # signed for another scheme
    ("http://other.example", False),  # signed for another server
]


def test_audience_must_name_this_server(tmp_path: Path) -> None:
    with make_client(tmp_path, rounds=1, clients=3, per_round=3) as client:
        dev = Device(client)
        dev.register()
        for audience, accepted in CASES:
            r = client.get(KEYS, headers=dev.headers("GET", KEYS, audience=audience))
            # accepted: past authentication (the round itself may not exist yet: 404 / 409)
            assert (r.status_code != 401) == accepted, (audience, r.status_code, r.text)
            if not accepted:
                assert "does not verify" in r.text
