"""``python -m benchmarks cost``: the cost of one in-process secure-aggregation round.

One point::

    python -m benchmarks cost --clients N --dim D --neighbors K|complete --dropout F \
        [--bits B] [--json]

runs ``secagg.run_round`` once (all clients and the server in this process, one core)
and reports the wall time of the whole round, the mean seconds a client spends in its
protocol code, the server's seconds, the mean upload per surviving client, and whether
the result equals the plain sum (mod 2^b) of the survivors' inputs.

Conventions (the same in the suite, ``python -m benchmarks all``):

- ``--neighbors K``: the Harary degree k (number of neighbours; even, as in H(n, k)),
  threshold ``t = k // 2 + 1``. ``--neighbors complete``: the complete graph with
  ``RoundParams.create``'s threshold. ``--neighbors auto``: ``RoundParams.create``'s
  Harary (k, t) for the dropout rate (10 % corrupt), the choice a training run makes.
  In Flower's terms k neighbours is ``num_shares = k + 1`` (the client keeps one share).
  ``--json`` reports the graph, k (``neighbors``) and t (``threshold``) that ran.
- ``--bits`` defaults to 32 here (whole 32-bit words, and the 2^32 modulus of Flower's
  SecAgg+ that the suite compares against), while ``python -m clients run`` defaults to
  20: the DP encoder needs only enough bits for a cohort's noised sum not to wrap, and
  fewer bits mean a smaller upload.
- ``--dropout F``: ``round(F * N)`` clients, drawn with a seeded RNG, vanish before
  sending their masked input (the case that makes the server rebuild pairwise masks).
- Inputs: random integers in [0, 2^b) as the protocol's word dtype. To keep memory
  flat at N = 1000, D = 10^6, clients share a pool of a few distinct vectors
  (client c sends pool[c % P]); the masks are per client, so the protocol's work is
  unchanged, and the exactness check uses the true sum of what each survivor sent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks import cli

POOL_SIZE = 4
DEFAULT_BITS = 32
CORRUPT = 0.1
JSON_KEYS = ("total_s", "client_s_mean", "server_s", "upload_bytes_per_client", "exact",
             "graph", "neighbors", "threshold", "bits", "survivors", "dropped")


# --------------------------------------------------------------------------- one point


@dataclass(frozen=True)
class CostPoint:
    """One benchmark point. ``neighbors``: an even degree, "complete" or "auto"."""

    clients: int
    dim: int
    neighbors: int | str
    dropout: float
    bits: int = DEFAULT_BITS
    seed: int = 0

    @property
    def dropped(self) -> int:
        return int(round(self.dropout * self.clients))

    def label(self) -> str:
        return f"n={self.clients} d={self.dim} k={self.neighbors} drop={self.dropout:g}"


def explicit_threshold(degree: int) -> int:
    """Threshold used with an explicit Harary degree k: a majority of the k + 1 share
    holders (the client keeps one share), ``k // 2 + 1``."""
    return degree // 2 + 1


def build_params(point: CostPoint, random_bytes: Any = os.urandom) -> Any:
    """The ``RoundParams`` of a point (raises ``ValueError`` on impossible ones)."""
    from secagg import RoundParams  # noqa: PLC0415

    participants = tuple(range(point.clients))
    if point.neighbors == "complete":
        return RoundParams.create(0, participants, point.dim, point.bits, graph="complete",
                                  dropout=point.dropout, corrupt=CORRUPT,
                                  random_bytes=random_bytes)
    if point.neighbors == "auto":
        return RoundParams.create(0, participants, point.dim, point.bits, graph="harary",
                                  dropout=point.dropout, corrupt=CORRUPT,
                                  random_bytes=random_bytes)
    degree = int(point.neighbors)
    if degree % 2 or not 2 <= degree <= point.clients - 1:
        raise ValueError(
            f"--neighbors must be an even Harary degree in [2, {point.clients - 1}] for "
            f"{point.clients} clients, got {degree}"
        )
    return RoundParams(
        round_id=0, participants=participants, dim=point.dim, bits=point.bits,
        threshold=explicit_threshold(degree), graph="harary", degree=degree,
        graph_seed=random_bytes(32),
    )


class InputPool(Mapping[int, np.ndarray]):
    """Client inputs without N full vectors in memory: client c holds pool[c % P].

    The vectors are benchmark data (numpy's generator is fine here: they are not keys,
    seeds or masks)."""

    def __init__(self, clients: int, dim: int, bits: int, dtype: Any, seed: int,
                 size: int = POOL_SIZE) -> None:
        rng = np.random.default_rng(seed)
        self._clients = clients
        self._pool = [
            rng.integers(0, 1 << bits, size=dim, dtype=np.uint64).astype(dtype)
            for _ in range(min(size, clients))
        ]
        self._bits = bits

    def __getitem__(self, cid: int) -> np.ndarray:
        if not 0 <= cid < self._clients:
            raise KeyError(cid)
        return self._pool[cid % len(self._pool)]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._clients))

    def __len__(self) -> int:
        return self._clients

    def plain_sum(self, cids: tuple[int, ...]) -> np.ndarray:
        """Sum mod 2^b of the inputs of ``cids`` (np.uint64; wrapping mod 2^64 is exact
        mod 2^b because 2^b divides 2^64)."""
        counts = [0] * len(self._pool)
        for c in cids:
            counts[c % len(self._pool)] += 1
        total = np.zeros(self._pool[0].shape[0], dtype=np.uint64)
        for vec, cnt in zip(self._pool, counts, strict=True):
            if cnt:
                total += vec.astype(np.uint64) * np.uint64(cnt)
        total &= np.uint64((1 << self._bits) - 1)
        return total


def choose_dropouts(params: Any, point: CostPoint) -> dict[int, Any]:
    """``round(F * N)`` clients (seeded) that vanish before their masked input."""
    from secagg import Stage  # noqa: PLC0415

    rng = random.Random(point.seed)
    dropped = rng.sample(list(params.participants), point.dropped)
    return {c: Stage.MASKED_INPUT for c in sorted(dropped)}


@dataclass
class RoundMeasurement:
    """What one ``run_round`` cost."""

    point: dict[str, Any]
    graph: str
    degree: int | None
    threshold: int
    survivors: int
    dropped: int
    total_s: float
    total_cpu_s: float
    client_s_mean: float
    server_s: float
    server_unmask_s: float
    client_masked_input_s_mean: float
    upload_bytes_per_client: float
    packed_bytes: int
    exact: bool
    timings: dict[str, float]

    def cli_json(self) -> dict[str, Any]:
        return {
            "total_s": self.total_s,
            "client_s_mean": self.client_s_mean,
            "server_s": self.server_s,
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "exact": self.exact,
            # the (k, t) actually run: what --neighbors auto chose, or the given degree
            "graph": self.graph,
            "neighbors": self.neighbors,
            "threshold": self.threshold,
            "bits": int(self.point["bits"]),
            "survivors": self.survivors,
            "dropped": self.dropped,
        }

    @property
    def neighbors(self) -> int:
        """k: the Harary degree, or n - 1 for the complete graph."""
        return int(self.degree) if self.degree is not None else int(self.point["clients"]) - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_round(point: CostPoint) -> RoundMeasurement:
    """Run one round for ``point``; raises ``secagg.AbortError`` if it aborts."""
    from secagg import packed_size, run_round  # noqa: PLC0415

    params = build_params(point)
    inputs = InputPool(point.clients, point.dim, point.bits, params.word_dtype, point.seed)
    dropouts = choose_dropouts(params, point)
    cpu0 = time.process_time()
    start = time.perf_counter()
    result = run_round(params, inputs, dropouts)
    total_s = time.perf_counter() - start
    total_cpu_s = time.process_time() - cpu0
    exact = bool(np.array_equal(np.asarray(result.sum, dtype=np.uint64),
                                inputs.plain_sum(tuple(result.survivors))))
    uploads = [result.upload_bytes[c] for c in result.survivors]
    t = result.timings
    return RoundMeasurement(
        point=asdict(point),
        graph=params.graph,
        degree=params.degree,
        threshold=params.threshold,
        survivors=len(result.survivors),
        dropped=len(result.dropped),
        total_s=total_s,
        total_cpu_s=total_cpu_s,
        client_s_mean=float(t["client_mean"]),
        server_s=float(t["server"]),
        server_unmask_s=float(t.get("server_unmask", float("nan"))),
        client_masked_input_s_mean=float(t.get("client_masked_input_mean", float("nan"))),
        upload_bytes_per_client=float(statistics.fmean(uploads)) if uploads else 0.0,
        packed_bytes=packed_size(point.dim, point.bits),
        exact=exact,
        timings={k: float(v) for k, v in t.items()},
    )


# --------------------------------------------------------------------------- mask generation


@dataclass(frozen=True)
class MaskMeasurement:
    """Client mask generation, measured inside the real ``ClientProtocol.masked_input``."""

    degree: int
    dim: int
    bits: int
    streams: int
    word_bytes: int
    median_s: float
    min_s: float
    masked_input_median_s: float
    payload_bytes: int
    repeats: int
    cpu_median_s: float | None = None
    floor_median_s: float | None = None
    floor_cpu_median_s: float | None = None
    ratio_median: float | None = None  # wall: median over repeats of mask_i / floor_i
    ratio_cpu_median: float | None = None  # thread CPU time: median of mask_i / floor_i
    ratio_min: float | None = None  # wall: min(mask) / min(floor), best case of each

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def instrument_client_keystream(records: list[tuple[float, float, int]]) -> Iterator[None]:
    """Time the lifetime of every ``Keystream`` the client code creates.

    ``secagg.client.ClientProtocol.masked_input`` generates its masks with one
    ``secagg.crypto.Keystream``: it constructs it, fills it once for the self seed and
    once per pairwise seed (deriving each pairwise seed with HKDF in between), adds or
    subtracts each fill into the accumulator, then calls ``release()``. A subclass swapped
    in for the name ``Keystream`` in ``secagg.client`` records (wall seconds and thread
    CPU seconds from construction to the end of ``release()``, number of fills): exactly
    that mask-generation code, nothing re-implemented. The clock reads cost < 1 µs.
    """
    import secagg.client as client_mod  # noqa: PLC0415

    base = client_mod.Keystream

    class TimedKeystream(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._bench_t0 = time.perf_counter()
            self._bench_c0 = time.thread_time()
            self._bench_fills = 0
            super().__init__(*args, **kwargs)

        def fill(self, *args: Any, **kwargs: Any) -> np.ndarray:
            self._bench_fills += 1
            return super().fill(*args, **kwargs)

        def release(self) -> None:
            super().release()
            records.append((time.perf_counter() - self._bench_t0,
                            time.thread_time() - self._bench_c0, self._bench_fills))

    client_mod.Keystream = TimedKeystream
    try:
        yield
    finally:
        client_mod.Keystream = base


def measure_mask_generation(degree: int, dim: int, bits: int = DEFAULT_BITS,
                            repeats: int = 5,
                            floor_fn: Callable[[], tuple[float, float]] | None = None,
                            ) -> MaskMeasurement:
    """Median time one client spends generating its masks with ``degree`` neighbours
    (``degree`` pairwise seeds + 1 self seed, ``dim`` words each).

    A round of ``degree + 1`` clients on the complete graph is set up with the real
    ``ClientProtocol`` / ``AggregatorProtocol`` (keys advertised and shares exchanged),
    then client 0's ``masked_input`` runs with the keystream instrumented. Repeated with
    fresh keys; the setup is not timed.

    ``floor_fn`` ((wall, CPU) seconds of the keystream floor for the same words) runs
    right before each timed ``masked_input``, so both see the same machine load; the
    ratios are medians of the per-repeat ratios. The CPU ratio (thread CPU time of the
    mask code over that of the floor) is the one-core cost and barely moves when other
    processes share the cores; the wall ratio is reported beside it."""
    from benchmarks.keystream import word_bytes_for_bits  # noqa: PLC0415
    from secagg import AggregatorProtocol, ClientProtocol, RoundParams  # noqa: PLC0415

    n = degree + 1
    params = RoundParams.create(0, tuple(range(n)), dim, bits, graph="complete",
                                dropout=0.0, corrupt=CORRUPT)
    x = InputPool(1, dim, bits, params.word_dtype, 0)[0]
    mask_s: list[float] = []
    call_s: list[float] = []
    floor_s: list[float] = []
    floor_cpu: list[float] = []
    mask_cpu: list[float] = []
    payload = 0
    for _ in range(repeats + 1):  # the first run warms up and is dropped
        clients = {c: ClientProtocol(params, c) for c in params.participants}
        agg = AggregatorProtocol(params)
        for c in params.participants:
            agg.add_advertise(clients[c].advertise_keys())
        for c, keys in agg.close_advertise().items():
            agg.add_share_keys(clients[c].share_keys(keys))
        cts = agg.close_share_keys()
        records: list[tuple[float, float, int]] = []
        if floor_fn is not None:
            f_wall, f_cpu = floor_fn()
            floor_s.append(f_wall)
            floor_cpu.append(f_cpu)
        with instrument_client_keystream(records):
            t0 = time.perf_counter()
            msg = clients[0].masked_input(cts[0], x)
            call = time.perf_counter() - t0
        if len(records) != 1 or records[0][2] != degree + 1:
            raise RuntimeError(
                "secagg.client no longer generates masks with one Keystream filled "
                f"degree + 1 = {degree + 1} times (saw {records}); update the benchmark"
            )
        mask_s.append(records[0][0])
        mask_cpu.append(records[0][1])
        call_s.append(call)
        payload = len(msg.data)
    mask_s, call_s, floor_s = mask_s[1:], call_s[1:], floor_s[1:]
    mask_cpu, floor_cpu = mask_cpu[1:], floor_cpu[1:]
    ratios = [m / f for m, f in zip(mask_s, floor_s, strict=True)] if floor_s else []
    cpu_ratios = [m / f for m, f in zip(mask_cpu, floor_cpu, strict=True) if f > 0]
    return MaskMeasurement(
        degree=degree, dim=dim, bits=bits, streams=degree + 1,
        word_bytes=word_bytes_for_bits(bits),
        median_s=statistics.median(mask_s), min_s=min(mask_s),
        masked_input_median_s=statistics.median(call_s), payload_bytes=payload,
        repeats=repeats,
        cpu_median_s=statistics.median(mask_cpu),
        floor_median_s=statistics.median(floor_s) if floor_s else None,
        floor_cpu_median_s=statistics.median(floor_cpu) if floor_cpu else None,
        ratio_median=statistics.median(ratios) if ratios else None,
        ratio_cpu_median=statistics.median(cpu_ratios) if cpu_ratios else None,
        ratio_min=min(mask_s) / min(floor_s) if floor_s else None,
    )


# --------------------------------------------------------------------------- CLI


def neighbors_arg(text: str) -> int | str:
    """``--neighbors``: an even Harary degree, ``complete`` or ``auto``."""
    low = text.strip().lower()
    if low in ("complete", "auto"):
        return low
    value = cli.neighbors(text)
    return "complete" if value is None else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=cli.positive_int, required=True, metavar="N")
    parser.add_argument("--dim", type=cli.positive_int, required=True, metavar="D")
    parser.add_argument("--neighbors", type=neighbors_arg, required=True, metavar="K|complete",
                        help="even Harary degree k, 'complete', or 'auto' (parameter finder)")
    parser.add_argument("--dropout", type=cli.fraction, required=True, metavar="F",
                        help="fraction of clients that vanish before their masked input")
    parser.add_argument("--bits", type=cli.bits, default=DEFAULT_BITS, metavar="B",
                        help=f"modulus exponent b (default {DEFAULT_BITS})")
    parser.add_argument("--seed", type=int, default=0, help="inputs and dropout choice")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: " + ", ".join(JSON_KEYS))


def main(args: argparse.Namespace) -> int:
    from secagg import SecAggError  # noqa: PLC0415

    if args.clients < 3:
        cli.fail_usage(f"--clients must be >= 3, got {args.clients}")
    point = CostPoint(args.clients, args.dim, args.neighbors, args.dropout, args.bits, args.seed)
    try:
        m = measure_round(point)
    except ValueError as err:
        cli.fail_usage(str(err))
    except SecAggError as err:
        sys.stderr.write(f"error: round aborted: {' '.join(str(err).split())}\n")
        return 1
    if args.json:
        print(json.dumps(m.cli_json()))
    else:
        from benchmarks.report import print_table  # noqa: PLC0415

        rows = [
            ["graph", f"{m.graph} (k={m.degree}, t={m.threshold})"],
            ["survivors / dropped", f"{m.survivors} / {m.dropped}"],
            ["total seconds", m.total_s],
            ["client seconds (mean)", m.client_s_mean],
            ["server seconds", m.server_s],
            ["server unmasking seconds", m.server_unmask_s],
            ["upload bytes per client", m.upload_bytes_per_client],
            ["packed input bytes ⌈d·b/8⌉", m.packed_bytes],
            ["exact", m.exact],
        ]
        print_table(f"secagg cost: {point.label()} b={point.bits}", ["metric", "value"], rows)
    return 0 if m.exact else 1


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks import cost_suite  # noqa: PLC0415

    cost_suite.add_suite_arguments(parser)


def run_suite(args: argparse.Namespace) -> int:
    from benchmarks import cost_suite  # noqa: PLC0415

    return cost_suite.run_suite(args)
