"""The privacy benchmark's points, settings, grids and result cache.

A :class:`Point` is one run: a federated point (task, partition, mechanism, bit width,
target ε, δ, clients, per round, rounds, seed) or the central baseline. Points that
differ only in their seed form one *spec*; the report gives each spec the mean ± std over
its seeds. :meth:`Point.key` encodes every setting, plus a digest of the fixed training
:class:`Settings`, so a cached record is reused only for exactly the same experiment. The
runs are seeded (cohorts, model initialisation, local shuffling, each device's noise:
``clients.engines.common``), so a cached record is what a rerun would produce.

Cache files are plain JSON (no pickle), written atomically, one per point.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.report import write_atomic

MECHANISMS: tuple[str, ...] = ("gaussian", "ddgauss", "skellam")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet")
BASELINE_BITS = 20
"""Bit width of the non-private FedAvg baseline (mechanism ``none``: no noise, the
update is still clipped, quantized and securely summed at this width)."""

CACHE_VERSION = 2
DEFAULT_SEEDS = 3


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Training and protocol settings held fixed over the grid (not tuned per point).

    The full grid's values are the recipe of ``benchmarks/results/recipe.md`` (non-private
    FedAvg at 1000 devices, 100 a round, tuned on a documented grid). The issue allows the
    clip and the server lr to be re-tuned per ε; this grid does not: one clip for every
    private point."""

    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.1
    server_opt: str = "fedavgm"
    server_lr: float = 1.0
    server_momentum: float = 0.5
    clip: float = 1.0
    """L2 clip of the private points (about the median update norm of the recipe at the
    first round, 1.35, so most updates are clipped a little and the noise z·C stays small)."""
    nonprivate_clip: float = 10.0
    """Clip of the non-private baseline: the recipe's, above every update norm (never binds)."""
    alpha: float = 0.5
    graph: str = "harary"
    min_survivors: float = 0.9
    """Fraction of the sampled devices that must survive for a round to be unmasked
    (``--min-survivors``): noise shares are sized for m = max(t, ceil(min_survivors · n))
    contributors, not for the secagg threshold t alone, so that the summed noise is close
    to what the calibration asked for."""
    secure_sum: str = "exact"
    """``exact``: the server gets the exact modular sum of the same encoded, noised vectors
    (bit-identical to the masked protocol: tests/clients/test_engines.py), which saves key
    agreement and masking for 100 devices a round; ``protocol``: the real masks."""
    eval_every: int = 5
    central_max_epochs: int = 15

    @classmethod
    def for_mode(cls, quick: bool, min_survivors: float | None = None) -> Settings:
        """The settings of a mode. The quick grid runs the real masked protocol on the
        small ``digits`` task with a recipe that moves its tiny shards (3 local epochs at
        lr 0.3) and evaluates every round."""
        out = cls(local_epochs=3, batch_size=10, lr=0.3, server_opt="fedavg",
                  server_momentum=0.0, secure_sum="protocol", eval_every=1,
                  central_max_epochs=10) if quick else cls()
        if min_survivors is not None:
            out = replace(out, min_survivors=float(min_survivors))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """Short digest of the settings (part of every cache key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


@dataclass(frozen=True)
class Scale:
    """Task and federation size of a run."""

    task: str
    clients: int
    per_round: int
    rounds: int

    QUICK = ("digits", 100, 20, 10)
    FULL = ("fashion", 1000, 100, 200)
    """The recipe's setting (recipe.md): non-private FedAvg first reaches 88 % at round
    170 of 200 (seed 0)."""

    @classmethod
    def for_mode(cls, quick: bool, *, task: str | None = None, clients: int | None = None,
                 per_round: int | None = None, rounds: int | None = None) -> Scale:
        """The mode's default scale, each part overridable by a flag."""
        d_task, d_clients, d_per, d_rounds = cls.QUICK if quick else cls.FULL
        return cls(task or d_task, clients or d_clients, per_round or d_per,
                   rounds or d_rounds)

    @property
    def sample_rate(self) -> float:
        return self.per_round / self.clients


# --------------------------------------------------------------------------- points


def eps_text(epsilon: float | None) -> str:
    """``∞`` for None, else a compact number."""
    return "∞" if epsilon is None else f"{epsilon:g}"


@dataclass(frozen=True)
class Point:
    """One benchmark run. ``epsilon`` None = no privacy (ε = ∞). ``kind`` is
    ``"federated"`` (the real pipeline) or ``"central"`` (pooled Keras training)."""

    kind: str
    task: str
    partition: str
    mechanism: str
    bits: int | None
    epsilon: float | None
    clients: int
    per_round: int
    rounds: int
    seed: int
    delta: float

    def key(self, settings: Settings) -> str:
        """File-name-safe key that encodes every setting of the point."""
        eps = "inf" if self.epsilon is None else f"{self.epsilon:g}"
        if self.kind == "central":
            return (f"central-{self.task}-n{self.clients}-k{self.per_round}-r{self.rounds}"
                    f"-s{self.seed}-{settings.digest()}")
        return (f"{self.task}-{self.partition}-{self.mechanism}-b{self.bits}-eps{eps}"
                f"-d{self.delta:g}-n{self.clients}-k{self.per_round}-r{self.rounds}"
                f"-s{self.seed}-{settings.digest()}")

    def spec(self) -> tuple[Any, ...]:
        """Everything but the seed: the points of one spec are averaged."""
        return (self.kind, self.task, self.partition, self.mechanism, self.bits,
                self.epsilon, self.clients, self.per_round, self.rounds, self.delta)

    def label(self) -> str:
        if self.kind == "central":
            return f"central baseline ({self.task}, pooled data) seed {self.seed}"
        cohort = f", {self.per_round}/round" if self.per_round else ""
        if self.mechanism == "none":
            return f"FedAvg non-private ({self.partition}{cohort}) seed {self.seed}"
        return (f"{self.mechanism} {self.bits} bits ε={eps_text(self.epsilon)} "
                f"({self.partition}{cohort}) seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """An ordered list of points (most informative specs first, each spec's seeds
    together, so that partial results are whole specs) with a description."""

    points: tuple[Point, ...]
    scale: Scale
    settings: Settings
    seeds: tuple[int, ...]
    description: str
    description_short: str
    curated: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_specs(self) -> int:
        return len({p.spec() for p in self.points})


def parse_epsilons(text: str) -> list[float | None]:
    """``"inf,16,8"`` -> ``[None, 16.0, 8.0]`` (``inf`` / ``∞`` = non-private)."""
    out: list[float | None] = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            raise ValueError(f"empty entry in ε list {text!r}")
        if p in ("inf", "∞", "infinity", "none"):
            out.append(None)
            continue
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"expected numbers > 0 or 'inf', got {part.strip()!r}") from None
        if math.isinf(v) and v > 0:
            out.append(None)
            continue
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"expected ε > 0 or 'inf', got {part.strip()!r}")
        out.append(v)
    uniq: list[float | None] = []
    for e in out:
        if e not in uniq:
            uniq.append(e)
    return uniq


def parse_list(text: str, choices: Sequence[str]) -> list[str]:
    """A comma list whose entries must be in ``choices`` (order kept, duplicates dropped)."""
    out: list[str] = []
    for part in text.split(","):
        p = part.strip().lower()
        if p not in choices:
            raise ValueError(f"unknown entry {part.strip()!r}; choose from {', '.join(choices)}")
        if p not in out:
            out.append(p)
    return out


FULL_TIME_NOTE = (
    "Time of the full grid, measured on this machine (2 cores, 2026-12-01). One process "
    "with TensorFlow's default threads: 4.26-4.55 s a round at 100 devices a round (10 "
    "rounds of each mechanism, seed 0). Two single-threaded processes side by side "
    "(--shard 1/2 and 2/2, TF_NUM_INTRAOP_THREADS=1; the 27 points of --head 9 at 50 "
    "rounds, other work on the machine too): 2.6-4.2 s a round each, so the machine does "
    "a round every 1.3-2.1 s. A 200-round point then takes 9-14 min, and the 108 federated "
    "points (36 specs x 3 seeds; the 200-device points cost twice, the 50-device ones "
    "half) about 8-12 h on the two cores: more than the 5 h the issue aims for. Within "
    "5 h fit either the whole grid at 60-100 rounds or its 9 target-deciding specs "
    "(--head 9) at 200 rounds (2-3 h). The 200 rounds are what the recipe needs to "
    "reach 88 % (recipe.md). The grid resumes from its cache, so it can run in pieces, in "
    "shards, or on more machines sharing the cache."
)

FULL_EPSILONS: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0, 1.0)
QUICK_EPSILONS: tuple[float, ...] = (8.0, 2.0)
SWEEP_BITS: tuple[int, ...] = (10, 12, 14, 16, 18, 20)
COHORTS: tuple[int, ...] = (50, 200)

Spec = tuple[str, str, int | None, float | None, int | None]
"""(partition, mechanism, bits, ε, per_round or None for the scale's)."""


def full_specs() -> tuple[list[Spec], str]:
    """The issue's 36 federated specs, most informative first."""
    specs: list[Spec] = [("iid", "none", BASELINE_BITS, None, None)]
    specs += [("iid", m, 16, 8.0, None) for m in MECHANISMS]
    specs += [("iid", m, 12, 8.0, None) for m in ("ddgauss", "skellam")]
    specs += [("iid", m, 16, 2.0, None) for m in MECHANISMS]
    specs += [("iid", m, 16, e, None) for e in (16.0, 4.0, 1.0) for m in MECHANISMS]
    specs += [("iid", m, b, 8.0, None) for m in ("ddgauss", "skellam")
              for b in SWEEP_BITS if b not in (12, 16)]
    specs += [("iid", m, b, 2.0, None) for m in ("ddgauss", "skellam") for b in (12, 20)]
    specs.append(("dirichlet", "none", BASELINE_BITS, None, None))
    specs += [("dirichlet", m, 16, 8.0, None) for m in MECHANISMS]
    specs += [("iid", "ddgauss", 16, 8.0, k) for k in COHORTS]
    why = ("Full grid (issue 10), specs in the order run, each over its seeds: non-private "
           "FedAvg (IID); gaussian, ddgauss, skellam at 16 bits at target ε 8; ddgauss and "
           "skellam at 12 bits at ε 8; the three at 16 bits at ε 2, then 16, 4, 1; the "
           "bit-width sweep of ddgauss and skellam at ε 8 (10, 14, 18, 20 bits; 12 and 16 "
           "above) and at ε 2 (12 and 20 bits); Dirichlet(α = 0.5): non-private and the "
           "three at 16 bits at ε 8; ddgauss 16 bits at ε 8 with 50 and 200 devices a "
           "round. Plus the central baseline.")
    return specs, why


def quick_specs() -> tuple[list[Spec], str]:
    specs: list[Spec] = [("iid", "none", BASELINE_BITS, None, None)]
    for eps in QUICK_EPSILONS:
        specs += [("iid", m, 16, eps, None) for m in MECHANISMS]
    specs.append(("iid", "ddgauss", 12, 8.0, None))
    why = ("Quick grid: the non-private FedAvg baseline, the three mechanisms at 16 bits "
           "at target ε 8 and 2, ddgauss at 12 bits at ε 8, and the central baseline (IID "
           "only), on the small `digits` task with the real masked protocol; it checks the "
           "pipeline end to end in minutes, its accuracies say nothing about the "
           "Fashion-MNIST targets.")
    return specs, why


def build_grid(scale: Scale, settings: Settings, *, seeds: Sequence[int] = (0, 1, 2),
               delta: float = 1e-5, mechanisms: Sequence[str] | None = None,
               bits: Sequence[int] | None = None,
               epsilons: Sequence[float | None] | None = None,
               partitions: Sequence[str] | None = None, central: bool = True,
               quick: bool | None = None, head: int | None = None) -> Grid:
    """The points to run: each spec once per seed.

    Without grid flags: the curated grid of the mode; ``head`` keeps only its first
    ``head`` specs (they are ordered most informative first). With any of ``mechanisms``
    / ``bits`` / ``epsilons`` / ``partitions``: their product (the others take the mode's
    values), plus the non-private baseline per partition (always, it is the reference of
    every target) and the central baseline unless ``central`` is False.
    """
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("at least one seed is needed")
    is_quick = scale.task == "digits" if quick is None else quick
    custom = any(x is not None for x in (mechanisms, bits, epsilons, partitions))
    if head is not None and (custom or head < 1):
        raise ValueError("head (the first N curated specs) needs N >= 1 and no grid flags")
    if not custom:
        specs, why = quick_specs() if is_quick else full_specs()
        short = f"curated {'quick' if is_quick else 'full'} grid on {scale.task}"
        if head is not None and head < len(specs):
            why = (f"The first {head} of the {len(specs)} specs of this curated grid (--head "
                   f"{head}); the rest were not run. " + why)
            short = f"first {head} of {len(specs)} specs of the {short}"
            specs = specs[:head]
    else:
        mechs = list(mechanisms or MECHANISMS)
        bit_list = list(bits or [16])
        eps_list = [e for e in (epsilons or (QUICK_EPSILONS if is_quick else FULL_EPSILONS))
                    if e is not None]
        parts = list(partitions or ["iid"])
        specs = [(part, "none", BASELINE_BITS, None, None) for part in parts]
        specs += [(part, m, b, e, None) for part in parts for e in eps_list
                  for b in bit_list for m in mechs]
        why = (f"Grid given on the command line: mechanisms {', '.join(mechs)}; bits "
               f"{', '.join(map(str, bit_list))}; target ε "
               f"{', '.join(eps_text(e) for e in eps_list)}; partitions {', '.join(parts)}; "
               "plus the non-private FedAvg baseline per partition"
               + (" and the central baseline." if central else "."))
        short = f"{len(specs) + int(central)} specs (custom grid)"
    points: list[Point] = []
    if central:
        points += [Point("central", scale.task, "pooled", "central", None, None,
                         scale.clients, scale.per_round, scale.rounds, s, delta)
                   for s in seeds]
    for part, mech, b, eps, cohort in specs:
        if cohort is not None and not 2 <= cohort <= scale.clients:
            continue  # a cohort the population (--clients) cannot hold
        points += [Point("federated", scale.task, part, mech, b, eps, scale.clients,
                         cohort or scale.per_round, scale.rounds, s, delta) for s in seeds]
    notes = (FULL_TIME_NOTE,) if not custom and not is_quick else ()
    return Grid(tuple(points), scale, settings, seeds, why,
                f"{short}, {len(seeds)} seed(s)", curated=not custom, notes=notes)


# --------------------------------------------------------------------------- cache


def cache_path(cache_dir: Path, point: Point, settings: Settings) -> Path:
    return cache_dir / f"{point.key(settings)}.json"


def load_cached(cache_dir: Path, point: Point, settings: Settings) -> dict[str, Any] | None:
    """The cached record of ``point``, or None (missing, unreadable or another version)."""
    path = cache_path(cache_dir, point, settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("cache_version") != CACHE_VERSION:
        return None
    rec = data.get("record")
    if not isinstance(rec, dict) or rec.get("key") != point.key(settings):
        return None
    rec = dict(rec)
    rec["cached"] = True
    return rec


def save_cached(cache_dir: Path, point: Point, settings: Settings, rec: dict[str, Any]) -> Path:
    """Store a finished point's record (atomic write)."""
    path = cache_path(cache_dir, point, settings)
    body = {"cache_version": CACHE_VERSION, "record": {k: v for k, v in rec.items()
                                                        if k != "cached"}}
    write_atomic(path, json.dumps(body, indent=1, allow_nan=False) + "\n")
    return path
