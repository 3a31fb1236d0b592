"""Schema fuzzing (schemathesis) of every route, signed and not, during an honest round.

The short version of ``python -m benchmarks.fuzz`` (issue 11): about 500 generated
requests, sent between the stages of a round that three honest devices run. No response
may be a 5xx, and the round must lose nothing: all three devices survive and the sum the
server unmasks equals the sum of their inputs exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("schemathesis", reason="schemathesis (a dev extra) is not installed")

from benchmarks.fuzz import Fuzzer, Identity, generate_cases, interleave, record_sums  # noqa: E402
from tests.server._helpers import Device, run_round  # noqa: E402
from tests.server.conftest import make_client  # noqa: E402

PER_STAGE = 125  # four hooks per round: 500 requests


def test_fuzzed_routes_never_500_and_the_honest_round_loses_nothing(tmp_path: Path) -> None:
    with (
        make_client(
            tmp_path,
            rounds=1,
            clients=3,
            per_round=3,
            stage_timeout=30.0,
            rate_limit_per_s=1000.0,
            rate_limit_burst=1000,
        ) as client,
        record_sums() as sums,
    ):
        spec = client.get("/openapi.json").json()
        cases = generate_cases(spec, per_operation=40, seed=3)
        routes = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
        assert set(cases) == routes  # every operation of the schema is fuzzed
        honest = [Device(client) for _ in range(3)]
        for d in honest:
            d.register()  # three registered: the round starts with exactly these
        ids = [Identity.new() for _ in range(2)]
        for ident in ids:
            ident.register(client)  # registered after sampling: not in the round
        rid: list[int] = []
        fuzzer = Fuzzer(client, ids, lambda: rid[0] if rid else None, 3, "http://testserver")
        stream = interleave(cases, 4 * PER_STAGE, 3)

        def hook(stage: str, state: dict[str, Any], sampled: list[Device]) -> None:
            rid[:] = [int(state["round"])]
            for _ in range(PER_STAGE):
                fuzzer.send(next(stream))

        end = run_round(honest, hook=hook, encode=False)
        summary = fuzzer.summary()
        assert summary["server_errors"] == 0, summary["failures"]
        assert summary["requests_sent"] >= 4 * PER_STAGE - summary["unsendable"]
        assert set(summary["by_route"]) == routes
        assert set(summary["by_auth"]) == {"none", "signed", "forged", "unknown", "replay"}
        codes = {k for c in summary["by_route"].values() for k in c if k.isdigit()}
        assert {"401", "409", "422"} <= codes  # the fuzz reached auth, state and validation
        assert end["stage"] == "done", end
        survivors, total = sums[end["round"]]
        assert survivors == frozenset(d.device_id for d in honest)
        bits = int(end["round_params"]["bits"])
        want = np.zeros_like(total)
        for x in end["x"].values():
            want = (want + np.asarray(x, dtype=np.uint64)) % (np.uint64(1) << np.uint64(bits))
        assert np.array_equal(want, total)
