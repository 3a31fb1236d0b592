"""DP encoding speed: the old encoder (numpy rounding + tensorflow-privacy's samplers)
against the new one (AES-256-CTR `dp.prng.SecureRng` + the vectorized `dp.noise`
samplers), per device and batched.

What each figure names, and nothing else:

- ``old ms/dev``: wall time of ONE device's encode with the encoder as it was before
  `dp.prng` (kept below, verbatim in substance, as `_legacy_encode`): clip, the old
  stack-based Hadamard rotation, randomized rounding with a numpy PCG64 generator, then
  tensorflow-privacy's discrete Gaussian / seeded `stateless_poisson` Skellam /
  GaussianSumQuery noise under a TF seed drawn from that generator, mod 2^b. Median
  over ``--repeats`` devices after one warm-up encode (TF's first call is slow).
- ``new ms/dev``: the same for `dp.Encoder.encode(update, SecureRng.from_os())`.
- ``batch s``: wall time of ONE `Encoder.encode_batch` call for ``--devices`` devices,
  each with its own `SecureRng.from_os()` (generator creation included), median over
  ``--repeats`` calls; ``batch ms/dev`` is that divided by the device count.
- In brackets: the same as process CPU time, which a busy machine inflates less.

Workload: updates of dimension ``--dim`` (default 56,714, the Fashion-MNIST CNN; padded
to 65,536 by the Hadamard rotation), ``--bits`` bits (default 16), noise multiplier 1,
clip 1, a plan for ``--devices`` devices of which 90% must survive; update entries are
N(0, 1e-4) (norm about 2.4: clipped). numpy's BLAS and TensorFlow are limited to one
thread so the figures are one core's.

Run: ``python -m benchmarks.encode_speed`` (``--no-old`` skips TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cli import OneLineParser, positive_int

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MECHANISMS = ("ddgauss", "skellam", "gaussian")


# ----------------------------------------------------------------- the old encoder
# The encoder of commit b887bce (before dp.prng), reduced to the hadamard path that is
# measured here: same operations, same libraries, same order.

_TF_SEED_LOCK = threading.Lock()
_INT32_LIMIT = 2**31 - 1


def _legacy_fwht(x: np.ndarray) -> np.ndarray:
    d = x.shape[-1]
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < d:
        y = y.reshape(-1, d // (2 * h), 2, h)
        a = y[:, :, 0, :]
        b = y[:, :, 1, :]
        y = np.stack((a + b, a - b), axis=2)
        h *= 2
    return y.reshape(x.shape) / np.sqrt(d)


@contextmanager
def _legacy_seeded_tf(rng: np.random.Generator) -> Iterator[None]:
    import tensorflow as tf

    with _TF_SEED_LOCK:
        tf.random.set_seed(int(rng.integers(0, 2**63 - 1)))
        yield


def _legacy_fits_int32(record: np.ndarray, scale: float) -> bool:
    peak = float(np.max(np.abs(record))) if record.size else 0.0
    return peak + 40.0 * scale + 1.0 < _INT32_LIMIT


def _legacy_noise(mechanism: str, record: np.ndarray, scale: float, l2_bound: float,
                  l1_bound: float, rng: np.random.Generator) -> np.ndarray:
    import tensorflow as tf

    if mechanism == "ddgauss":
        from tensorflow_privacy.privacy.dp_query import discrete_gaussian_utils
        from tensorflow_privacy.privacy.dp_query.distributed_discrete_gaussian_query import (
            DistributedDiscreteGaussianSumQuery,
        )

        if _legacy_fits_int32(record, scale):
            bound = float(l2_bound) * (1.0 + 1e-5) + 1.0
            query = DistributedDiscreteGaussianSumQuery(l2_norm_bound=bound, local_stddev=0)
            params = query.derive_sample_params(query.initial_global_state())
            query.preprocess_record(params, tf.constant(record.astype(np.int32)))
        sampler = discrete_gaussian_utils._sample_discrete_gaussian_helper.python_function
        with _legacy_seeded_tf(rng):
            noise = sampler(tf.constant(int(scale), tf.int64),
                            tf.constant(record.shape, tf.int32), tf.int64)
        return record + noise.numpy().astype(np.int64)
    if mechanism == "skellam":
        from tensorflow_privacy.privacy.dp_query.distributed_skellam_query import (
            DistributedSkellamSumQuery,
        )

        seed = (int(rng.integers(0, 2**63 - 1)), int(rng.integers(0, 2**63 - 1)))
        query = DistributedSkellamSumQuery(int(math.ceil(l1_bound)) + 1,
                                           float(l2_bound) * (1.0 + 1e-5) + 1.0, float(scale))
        lam = 0.5 * tf.cast(float(scale), tf.float64) ** 2

        def add(v: Any) -> Any:
            p = tf.random.stateless_poisson(shape=tf.concat([tf.shape(v), [2]], axis=0),
                                            seed=tf.constant(seed, tf.int64), lam=[lam, lam],
                                            dtype=tf.int64)
            return v + tf.cast(p[..., 0] - p[..., 1], v.dtype)

        query.add_noise_to_sample = lambda stddev, rec: tf.nest.map_structure(add, rec)
        params = query.derive_sample_params(query.initial_global_state())
        out = query.preprocess_record(params, tf.constant(record.astype(np.int32)))
        return out.numpy().astype(np.int64)
    if mechanism == "gaussian":
        from tensorflow_privacy.privacy.dp_query.gaussian_query import GaussianSumQuery

        query = GaussianSumQuery(l2_norm_clip=float(l2_bound) + 1.0, stddev=float(scale))
        zero = tf.zeros(record.shape, tf.float64)
        with _legacy_seeded_tf(rng):
            noise, _, _ = query.get_noised_result(zero, query.initial_global_state())
        return record + np.rint(noise.numpy()).astype(np.int64)
    raise ValueError(f"no legacy sampler for {mechanism!r}")


def _legacy_encode(plan: Any, signs: np.ndarray, update: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    cfg = plan.config
    x = np.asarray(update, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("update contains NaN or infinite values")
    norm = float(np.linalg.norm(x))
    if norm > cfg.clip:
        x = x * (cfg.clip / norm)
    v = np.zeros(signs.shape[-1], dtype=np.float64)
    v[: x.shape[-1]] = x
    y = _legacy_fwht(v * signs) / plan.gamma
    low = np.floor(y)
    frac = y - low
    for _ in range(1000):
        r = low + (rng.random(y.shape[0]) < frac)
        if float(np.dot(r, r)) <= plan.l2_sensitivity**2:
            break
    record = r.astype(np.int64)
    noised = _legacy_noise(cfg.mechanism, record, plan.local_stddev, plan.l2_sensitivity,
                           plan.l1_sensitivity, rng)
    return np.mod(noised, np.int64(plan.modulus)).astype(np.uint64)


# ----------------------------------------------------------------------- measuring


def _one_core(tensorflow: bool) -> Any:
    """Limit numpy's BLAS, and TensorFlow when it is used, to one thread (a context)."""
    from threadpoolctl import threadpool_limits

    if tensorflow:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already initialized in this process
            sys.stderr.write("note: TensorFlow was already initialized; its thread count "
                             "is unchanged\n")
    return threadpool_limits(limits=1)


def _median_ms(fn: Callable[[int], object], repeats: int) -> tuple[float, float]:
    """Median wall and median process-CPU milliseconds of fn(i), i = 0..repeats-1, after
    one warm-up call (TensorFlow's first call, caches)."""
    fn(-1)
    walls, cpus = [], []
    for i in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def measure(mechanism: str, dim: int, bits: int, devices: int, repeats: int,
            old: bool) -> dict[str, Any]:
    """One table row (see the module docstring for what each number is)."""
    from dp import DPConfig, Encoder, EncodingPlan
    from dp.prng import SecureRng
    from dp.rotation import rotation_signs

    cfg = DPConfig(mechanism=mechanism, noise_multiplier=1.0, clip=1.0, bits=bits)
    plan = EncodingPlan.create(cfg, dim, devices, max(1, math.ceil(0.9 * devices)))
    rotation_seed = os.urandom(32)
    enc = Encoder(plan, rotation_seed)
    data = np.random.default_rng(0)  # benchmark data, not secret
    updates = data.normal(0.0, 1e-2, size=(devices, dim))
    row: dict[str, Any] = {"mechanism": mechanism, "dim": dim, "padded_dim": plan.padded_dim,
                           "bits": bits, "local_stddev": plan.local_stddev}
    if old:
        signs = rotation_signs(rotation_seed, plan.padded_dim)
        np_rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        row["old_ms"], row["old_cpu_ms"] = _median_ms(
            lambda i: _legacy_encode(plan, signs, updates[i % devices], np_rng), repeats)
    row["new_ms"], row["new_cpu_ms"] = _median_ms(
        lambda i: enc.encode(updates[i % devices], SecureRng.from_os()), repeats)
    walls, cpus = [], []
    enc.encode_batch(updates[:2], [SecureRng.from_os() for _ in range(2)])
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        enc.encode_batch(updates, [SecureRng.from_os() for _ in range(devices)])
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    row["batch_s"] = statistics.median(walls)
    row["batch_cpu_s"] = statistics.median(cpus)
    return row


def format_table(rows: list[dict[str, Any]], devices: int) -> str:
    """Markdown table: wall (and, in brackets, CPU) milliseconds."""
    head = (f"| mechanism | local std | old ms/dev | new ms/dev | speed-up (cpu) "
            f"| batch of {devices}: s | batch ms/dev |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        old = f"{r['old_ms']:.1f} ({r['old_cpu_ms']:.1f})" if "old_ms" in r else "-"
        up = f"{r['old_cpu_ms'] / r['new_cpu_ms']:.0f}x" if "old_ms" in r else "-"
        lines.append(
            f"| {r['mechanism']} | {r['local_stddev']:.4g} | {old} "
            f"| {r['new_ms']:.2f} ({r['new_cpu_ms']:.2f}) | {up} "
            f"| {r['batch_s']:.3f} ({r['batch_cpu_s']:.3f}) "
            f"| {r['batch_s'] * 1e3 / devices:.2f} ({r['batch_cpu_s'] * 1e3 / devices:.2f}) |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=positive_int, default=56_714,
                        help="update dimension (default 56714, padded to 65536)")
    parser.add_argument("--bits", type=positive_int, default=16, help="bits per entry")
    parser.add_argument("--devices", type=positive_int, default=100,
                        help="devices in one encode_batch call (default 100)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed repeats (median reported; default 5)")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS),
                        help="comma-separated, from " + ", ".join(MECHANISMS))
    parser.add_argument("--no-old", action="store_true",
                        help="skip the old TensorFlow encoder (no TF import)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write rows as JSON")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Measure and print the table; returns the exit status."""
    if not isinstance(args, argparse.Namespace):
        parser = OneLineParser(prog="python -m benchmarks.encode_speed",
                               description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args(args)
    mechs = [m.strip() for m in args.mechanisms.split(",") if m.strip()]
    unknown = [m for m in mechs if m not in MECHANISMS]
    if unknown or not mechs:
        sys.stderr.write(f"error: --mechanisms: expected some of {', '.join(MECHANISMS)}, "
                         f"got {args.mechanisms!r}\n")
        return 2
    rows = []
    with _one_core(tensorflow=not args.no_old):
        for mech in mechs:
            rows.append(measure(mech, args.dim, args.bits, args.devices, args.repeats,
                                old=not args.no_old))
    print(format_table(rows, args.devices))
    print(f"wall (process CPU) times, one thread; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores at the end (wall times grow with the load)")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
