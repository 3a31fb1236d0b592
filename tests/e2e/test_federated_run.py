"""End to end over real HTTP on loopback: a server subprocess and in-process devices.

One simulation on ``digits`` with 10% dropout feeds three checks:
- learning works and privacy is charged: accuracy rises, ε grows with every completed round;
- the server's update is exactly the decoded secure sum of what the devices encoded
  (recomputed here from the devices' own encoded vectors with ``dp.Decoder``, never from
  the server's internals);
- nothing a single device sent or computed (packed masked input, encoded vector, float
  delta) appears in the SQLite file or the server's log.
"""

from __future__ import annotations

import base64
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clients.device import RoundTrace
from clients.engines.http import HttpEngine as Simulation
from clients.engines.local import EngineResult as SimulationResult
from clients.options import SimOptions

pytestmark = pytest.mark.timeout(170)

ROUNDS = 4
SERVER_LR = 1.0


class Recorder:
    """Collects the devices' test-hook output (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces: dict[int, list[RoundTrace]] = defaultdict(list)
        self.encoded: dict[int, list[np.ndarray]] = defaultdict(list)

    def on_trace(self, trace: RoundTrace) -> None:
        with self.lock:
            self.traces[trace.round_id].append(trace)

    def on_encoded(self, round_id: int, encoded: np.ndarray) -> None:
        with self.lock:
            self.encoded[round_id].append(encoded)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationResult, Recorder, Any]:
    workdir = tmp_path_factory.mktemp("e2e")
    rec = Recorder()
    opts = SimOptions(
        task="digits",
        # every device is sampled every round, so the seeded dropout schedule below is what
        # happens: round 1 loses one device before its masked input (its pairwise masks
        # are recomputed from its s_sk shares), round 2 one after it (a survivor whose
        # self mask is rebuilt), round 3 two before their masked inputs (t = 6 of 8)
        clients=8,
        per_round=8,
        rounds=ROUNDS,
        local_epochs=1,
        batch_size=16,
        lr=0.2,
        server_lr=SERVER_LR,
        mechanism="ddgauss",
        noise_multiplier=0.02,
        clip=1.0,
        bits=20,
        graph="complete",
        dropout=0.1,
        seed=0,
        stage_timeout=None,  # measured from local training + encoding time (load-proof)
    )
    sim = Simulation(opts, workdir=workdir, on_encoded=rec.on_encoded, on_trace=rec.on_trace)
    final_model: dict[str, Any] = {}
    try:
        result = sim.run()
        with httpx.Client(base_url=result.url, timeout=10.0) as http:
            resp = http.get("/v1/model")
            resp.raise_for_status()
            final_model["weights"] = np.frombuffer(resp.content, dtype="<f4")
            final_model["version"] = resp.headers.get("X-Model-Version")
    finally:
        sim.stop()
    return result, rec, final_model


def done_rounds(result: SimulationResult) -> list[dict[str, Any]]:
    return [r for r in result.rounds if r.get("status") == "done"]


def n(value: Any) -> int:
    return len(value) if isinstance(value, list | tuple) else int(value)


def test_round_log_has_required_fields(run: tuple[SimulationResult, Recorder, Any]) -> None:
    result, _, _ = run
    assert len(done_rounds(result)) == ROUNDS
    for row in result.rounds:
        for key in ("round", "status", "sampled", "survivors", "dropouts", "accuracy", "loss",
                    "epsilon", "epsilon_amplified", "delta"):
            assert key in row, key
    assert result.status.get("training_done") in (True, None)
    assert not result.device_errors
    # the dropout schedule really ran: some sampled devices are missing from the survivors
    lost = sum(n(r["sampled"]) - n(r["survivors"]) for r in done_rounds(result))
    assert lost >= 2, result.rounds


def test_accuracy_rises_and_epsilon_grows(run: tuple[SimulationResult, Recorder, Any]) -> None:
    result, _, _ = run
    rows = done_rounds(result)
    acc = [float(r["accuracy"]) for r in rows]
    eps = [float(r["epsilon"]) for r in rows]
    assert acc[-1] > acc[0] + 0.05, acc
    assert acc[-1] > 0.5, acc
    assert all(np.isfinite(eps)), eps
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False)), eps
    amp = [float(r["epsilon_amplified"]) for r in rows]
    assert all(x <= e + 1e-9 for x, e in zip(amp, eps, strict=True)), (amp, eps)


def _sum_mod(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    mod = np.uint64(1 << bits) if bits < 64 else None
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        total = (total + (v.astype(np.uint64) % mod)) % mod
    return total


def test_server_update_is_the_decoded_sum_of_device_encodings(
    run: tuple[SimulationResult, Recorder, Any],
) -> None:
    from dp import Decoder, EncodingPlan

    result, rec, final_model = run
    rows = {int(r["round"]): r for r in result.rounds}
    rounds_with_input = sorted(rec.traces)
    checked = 0
    for i, r in enumerate(rounds_with_input):
        row = rows[r]
        if row.get("status") != "done":
            continue
        traces = rec.traces[r]
        # the on_encoded hook and the richer trace hook saw the same vectors
        assert len(rec.encoded[r]) == len(traces)
        assert n(row["survivors"]) == len(traces), (row, len(traces))
        old = traces[0].global_weights
        for t in traces:
            np.testing.assert_array_equal(t.global_weights, old)
        # the next model the devices fetched, or the final model after the last round
        later = [q for q in rounds_with_input[i + 1:] if rec.traces[q]]
        new = rec.traces[later[0]][0].global_weights if later else final_model["weights"]
        plan = EncodingPlan.from_dict(traces[0].plan)
        bits = int(plan.config.bits)
        total = _sum_mod([t.encoded for t in traces], bits)
        decoded = Decoder(plan, traces[0].rotation_seed).decode(total, len(traces)).total
        expected = SERVER_LR * np.asarray(decoded, dtype=np.float64) / len(traces)
        got = new.astype(np.float64) - old.astype(np.float64)
        # float32 resolution of the weights is coarser than one quantization step of the
        # encoding (gamma / sqrt(d) / n), so this catches any missing, extra or wrong
        # survivor vector or survivor count, not a single unit of the integer sum.
        scale = max(1.0, float(np.abs(old).max()), float(np.abs(new).max()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=4 * np.finfo(np.float32).eps
                                   * scale)
        # and the update is not trivially zero
        assert np.abs(expected).max() > 1e-4
        checked += 1
    assert checked >= ROUNDS - 1


def _windows(data: bytes, size: int = 32, count: int = 6) -> list[bytes]:
    """Distinctive slices of ``data`` (skip low-entropy windows such as runs of zeros)."""
    out: list[bytes] = []
    if len(data) < size:
        return out
    step = max(1, (len(data) - size) // (count * 4))
    for start in range(0, len(data) - size + 1, step):
        w = data[start:start + size]
        if len(set(w)) >= 12:
            out.append(w)
        if len(out) >= count:
            break
    return out


def test_no_device_vector_in_database_or_log(run: tuple[SimulationResult, Recorder, Any]) -> None:
    from dp import EncodingPlan
    from secagg import pack

    result, rec, final_model = run
    files = [p for p in Path(result.db_path).parent.glob(Path(result.db_path).name + "*")]
    files += list(Path(result.workdir).glob("*.log"))
    assert any(p.suffix == ".log" for p in files)
    assert Path(result.db_path).exists()
    blob = b"".join(p.read_bytes() for p in files if p.is_file())
    assert len(blob) > 0
    needles: list[tuple[str, bytes]] = []
    for r, traces in rec.traces.items():
        for t in traces:
            plan_bits = int(EncodingPlan.from_dict(t.plan).config.bits)
            for w in _windows(t.masked):
                needles.append((f"masked r{r} d{t.device_id}", w))
            for w in _windows(t.encoded.astype("<u8").tobytes()):
                needles.append((f"encoded r{r} d{t.device_id}", w))
            for w in _windows(pack(t.encoded, plan_bits)):
                needles.append((f"packed encoded r{r} d{t.device_id}", w))
            for w in _windows(t.delta.astype("<f4").tobytes()):
                needles.append((f"delta r{r} d{t.device_id}", w))
            for src in (t.masked, t.delta.astype("<f4").tobytes()):
                b64 = base64.b64encode(src[:48])
                needles.append((f"base64 r{r} d{t.device_id}", b64))
    assert len(needles) > 50
    # positive control: the search does find what the store is meant to hold (the global
    # model, float32 little-endian), so a leak in the same form would be found too
    model_windows = _windows(final_model["weights"].astype("<f4").tobytes())
    assert model_windows and all(w in blob for w in model_windows)
    leaks = [name for name, w in needles if w in blob]
    assert not leaks, leaks[:10]
