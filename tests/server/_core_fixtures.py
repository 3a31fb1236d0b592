"""Builders for the in-process ServerCore tests (tests/server/test_mutation_gaps_core.py):
a small digits experiment with any [server], [protocol] and [dp] override, a restored
ServerCore on a SQLite file, encoded updates summed exactly, and a privacy accountant
composed by hand — the independent figure every recorded ε is compared with."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def config(
    protocol: dict[str, Any] | None = None,
    dp: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    **server: Any,
) -> Any:
    """The experiment of tests/server/_helpers.experiment (fixed sampling, 4 of 4 devices,
    no evaluation), with overrides."""
    from server.config import ExperimentConfig

    d: dict[str, Any] = {
        "server": {"rounds": 3, "clients": 4, "per_round": 4, "sampling": "fixed",
                   "eval_every": 0, "stage_timeout": 20.0, "registration_timeout": 60.0},
        "protocol": {"graph": "complete", "dropout": 0.1, "corrupt": 0.1},
        "dp": {"mechanism": "ddgauss", "clip": 1.0, "noise_multiplier": 1.0, "bits": 20},
        "training": {"task": "digits"},
    }
    d["server"].update(server)
    d["protocol"].update(protocol or {})
    d["dp"].update(dp or {})
    d["training"].update(training or {})
    return ExperimentConfig.from_dict(d)


def make_core(
    tmp: Path,
    models: Any,
    *,
    protocol: dict[str, Any] | None = None,
    dp: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    seed: int | None = None,
    restore: bool = True,
    **server: Any,
) -> Any:
    """A ServerCore on ``tmp/server.sqlite3``; ``seed`` gives the sampler a seeded
    ``random.Random`` (simulation only); graph and rotation seeds come from a seeded
    generator too, so that every figure of a test is reproducible (tests only: a server
    draws them from the OS CSPRNG). Restored from ``models.weights0`` unless told."""
    from server.round import ServerCore
    from server.store import Store

    cfg = config(protocol, dp, training, **server)
    source = None if seed is None else random.Random(seed)
    seeds = random.Random(-1 if seed is None else seed)
    core = ServerCore(cfg, Store(tmp / "server.sqlite3"), models, sampler_source=source,
                      random_bytes=seeds.randbytes)
    if restore:
        core.restore(models.weights0)
    return core


def registered(n: int) -> dict[int, bytes]:
    """``n`` enabled devices 0..n-1 with distinct 32-byte identity keys."""
    return {i: bytes([i + 1]) * 32 for i in range(n)}


class Draws:
    """The cohorts a sampler seeded with ``seed`` draws, round after round, by the
    definitions: Poisson (each device independently with probability q, one uniform per
    device in id order) and fixed size (k of the ids uniformly without replacement)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def poisson(self, ids: Sequence[int], q: float) -> list[int]:
        return [i for i in sorted(ids) if self.rng.random() < q]

    def fixed(self, ids: Sequence[int], k: int) -> list[int]:
        return sorted(self.rng.sample(sorted(ids), min(k, len(ids))))


def encoded_sum(
    rnd: Any,
    survivors: Sequence[int],
    seed: int = 0,
    scale: float = 0.01,
    evaluations: dict[int, Sequence[float]] | None = None,
) -> tuple[np.ndarray, Any]:
    """Each survivor's update (normal(0, scale) per weight) encoded with the round's plan,
    summed mod 2^b; returns the sum and its decoding (computed here, independently)."""
    from dp import Decoder, Encoder
    from dp.prng import SecureRng

    plan = rnd.plan
    gen = np.random.default_rng(seed)
    enc = Encoder(plan, rnd.rotation_seed)
    total = np.zeros(plan.encoded_dim, dtype=np.uint64)
    for i in survivors:
        ev = None if evaluations is None else evaluations[i]
        x, _ = enc.encode(gen.normal(0, scale, plan.dim), SecureRng.for_simulation(seed, i), ev)
        total = (total + x) % np.uint64(plan.modulus)
    return total, Decoder(plan, rnd.rotation_seed).decode(total, len(survivors))


def release(core: Any, rnd: Any, survivors: Sequence[int], seed: int = 0,
            **kw: Any) -> tuple[dict[str, Any], Any]:
    """Release the round with the exact sum of the survivors' encoded vectors."""
    total, decoded = encoded_sum(rnd, survivors, seed, **kw)
    rec = core.release(rnd, lambda: total, secure_sum="exact", survivors=list(survivors))
    return rec, decoded


def hand_accountant(cfg: Any, q: float, population: int | None,
                    charges: Sequence[tuple[Any, int, int]]) -> Any:
    """A PrivacyAccountant for the experiment's mechanism and sampling at rate q of N,
    composed by hand with (plan, survivors, cohort) per charged round."""
    from dp import PrivacyAccountant

    acc = PrivacyAccountant(cfg.dp, sample_rate=q, accountant=cfg.server.accountant,
                            sampling=cfg.server.sampling, population=population,
                            corrupt_fraction=cfg.protocol.corrupt)
    for plan, n, cohort in charges:
        acc.compose(plan.privacy_event(n), cohort=cohort)
    return acc


def ceil_frac(c: int, num: int, den: int) -> int:
    """ceil(c * num / den), written as the reference formula of the rescaled cohort."""
    return math.ceil(c * num / den)


class EvalSpy:
    """The model service as ServerCore sees it (its task, ``evaluate``), recording every
    evaluation and answering with ``metrics`` (or raising ``error``)."""

    def __init__(self, models: Any, metrics: dict[str, Any] | None = None,
                 error: Exception | None = None) -> None:
        self.task = models.task
        self.weights0 = models.weights0
        self.metrics = metrics if metrics is not None else {"loss": 0.5, "accuracy": 0.25}
        self.error = error
        self.calls: list[tuple[np.ndarray, int | None]] = []

    def evaluate(self, weights: np.ndarray, version: int | None = None) -> dict[str, Any]:
        self.calls.append((np.array(weights, copy=True), version))
        if self.error is not None:
            raise self.error
        return dict(self.metrics)
