"""The privacy benchmark's points, scales, grids and result cache.

A :class:`Point` is one run: a federated point (task, partition, mechanism, bit width,
target ε, δ, clients, per round, rounds, seed) or the central baseline. Its
:meth:`Point.key` encodes every setting, plus a digest of the fixed training
:class:`Settings`, so a cached record is reused only for exactly the same experiment.

Cache files are plain JSON (no pickle), written atomically, one per point.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import write_atomic

MECHANISMS: tuple[str, ...] = ("gaussian", "ddgauss", "skellam")
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet")
BITS_CHOICES: tuple[int, ...] = (12, 16, 20)
BASELINE_BITS = 20
"""Bit width of the non-private FedAvg baseline (mechanism ``none``: no noise, the
update is still quantized and securely summed at this width)."""

CACHE_VERSION = 1


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """Training and protocol settings held fixed over the grid (not tuned per point)."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    server_lr: float = 1.0
    clip: float = 1.0
    alpha: float = 0.5
    graph: str = "harary"
    stage_timeout: float | None = 75.0
    min_survivors: float = 0.9
    """Fraction of the sampled devices that must survive for a round to be unmasked
    (``--min-survivors`` of the simulation): the noise shares are sized for
    m = max(t, ceil(min_survivors · per_round)) contributors, not for the secagg threshold
    t alone, so that the summed noise is close to what the calibration asked for. 0.9
    matches the 10 % dropout the secagg parameters assume."""

    @classmethod
    def for_mode(cls, quick: bool, stage_timeout: float | None = None,
                 min_survivors: float | None = None) -> Settings:
        """The settings of a mode. A stage ends as soon as every message arrived, so the
        timeout matters only for slow or vanished devices. The simulation's own estimate
        (3x one measured local training per sampled device) turned slow devices into
        dropouts on a loaded 2-core machine (55 of 100 at 1000 clients); a very long one
        makes every vanished device cost that long (in the full grid about one sampled
        device per round never answered share keys, so the stage ran to its deadline).
        75 s (60 s quick) fits the share-keys stage, which absorbs the serialized training +
        encoding of 20 devices (8-11 s measured at load 6, 62 s once at load 12)."""
        default = 60.0 if quick else 75.0
        out = cls(stage_timeout=default if stage_timeout is None else stage_timeout)
        if min_survivors is not None:
            out = cls(**{**out.to_dict(), "min_survivors": float(min_survivors)})
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
    stage_timeout: float | None = None

    QUICK = ("digits", 20, 5, 8)
    FULL = ("fashion", 1000, 100, 10)

    @classmethod
    def for_mode(cls, quick: bool, *, task: str | None = None, clients: int | None = None,
                 per_round: int | None = None, rounds: int | None = None,
                 stage_timeout: float | None = None) -> Scale:
        """The mode's default scale, each part overridable by a flag."""
        d_task, d_clients, d_per, d_rounds = cls.QUICK if quick else cls.FULL
        return cls(task or d_task, clients or d_clients, per_round or d_per,
                   rounds or d_rounds, stage_timeout)

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

    def label(self) -> str:
        if self.kind == "central":
            return f"central baseline ({self.task}, pooled data)"
        if self.mechanism == "none":
            return f"FedAvg non-private ({self.partition})"
        return (f"{self.mechanism} {self.bits} bits ε={eps_text(self.epsilon)} "
                f"({self.partition})")

    def series(self) -> str:
        """The line this point belongs to in the accuracy-against-ε plot."""
        suffix = "" if self.partition == "iid" else f", {self.partition}"
        return f"{self.mechanism} {self.bits} bits{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """An ordered list of points (most informative first, so partial results are useful)
    with a description of what was chosen and why."""

    points: tuple[Point, ...]
    scale: Scale
    settings: Settings
    description: str
    description_short: str
    curated: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)


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


SCALE_NOTE = (
    "Scale. The default full grid runs the issue's setting: Fashion-MNIST, 1000 clients, "
    "100 sampled per round (q = 0.1), 10 rounds. Measured on this machine (2 cores, "
    "2026-11-23), ddgauss at 16 bits, one round through the real pipeline: 63 s before "
    "two fixes to the simulation (every device thread shared one httpx connection pool, "
    "which httpcore scans on each request under a lock; and each device's first "
    "TensorFlow call on its own thread paid a 0.2-0.3 s per-thread set-up, on nearly "
    "every encode), 22 s after them (advertise 3.9 s, share keys 15.7 s, which absorbs "
    "the 100 serialized trainings and encodings, masked input 1.2 s, unmask 0.6 s). A "
    "federated point then takes 3-4.5 min with start-up and registration of the 1000 "
    "devices, so the 29-point grid takes about 1.5-2 h on 2 cores, not the hour the issue "
    "asks for; it is ordered so that a partial run (it resumes from the cache) answers "
    "the targets first. Session 1 had run 200 clients / 20 per round instead (8-10 min "
    "per round at 1000 / 100 on a loaded machine before the fixes)."
)

FULL_EPSILONS: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0, 1.0)
QUICK_EPSILONS: tuple[float, ...] = (8.0, 2.0)


def build_grid(scale: Scale, settings: Settings, *, seed: int = 0, delta: float = 1e-5,
               mechanisms: Sequence[str] | None = None, bits: Sequence[int] | None = None,
               epsilons: Sequence[float | None] | None = None,
               partitions: Sequence[str] | None = None, central: bool = True,
               quick: bool | None = None) -> Grid:
    """The points to run.

    Without grid flags: the curated grid of the mode (see ``_curated``). With any of
    ``mechanisms`` / ``bits`` / ``epsilons`` / ``partitions``: their product (the others
    take the mode's values), plus the non-private baseline per partition (always, it is
    the reference of every target) and the central baseline unless ``central`` is False.
    """
    if scale.stage_timeout is not None:
        settings = Settings(**{**settings.to_dict(), "stage_timeout": scale.stage_timeout})
    is_quick = scale.task == "digits" if quick is None else quick

    def fed(partition: str, mechanism: str, b: int | None, eps: float | None) -> Point:
        return Point("federated", scale.task, partition, mechanism, b, eps, scale.clients,
                     scale.per_round, scale.rounds, seed, delta)

    central_pt = Point("central", scale.task, "pooled", "central", None, None, scale.clients,
                       scale.per_round, scale.rounds, seed, delta)
    custom = any(x is not None for x in (mechanisms, bits, epsilons, partitions))
    if not custom:
        points, why = _curated(fed, is_quick)
        if central:
            points.insert(0, central_pt)
        short = f"curated {'quick' if is_quick else 'full'} grid on {scale.task}"
        notes = () if is_quick else (SCALE_NOTE,)
        return Grid(tuple(points), scale, settings, why, short, curated=True, notes=notes)
    mechs = list(mechanisms or MECHANISMS)
    bit_list = list(bits or [16])
    eps_list = list(epsilons or (QUICK_EPSILONS if is_quick else FULL_EPSILONS))
    parts = list(partitions or ["iid"])
    points = [central_pt] if central else []
    for part in parts:
        points.append(fed(part, "none", BASELINE_BITS, None))
    for part in parts:
        for eps in eps_list:
            if eps is None:
                continue
            for b in bit_list:
                for m in mechs:
                    points.append(fed(part, m, b, eps))
    why = (f"Grid given on the command line: mechanisms {', '.join(mechs)}; bits "
           f"{', '.join(map(str, bit_list))}; target ε "
           f"{', '.join(eps_text(e) for e in eps_list)}; partitions {', '.join(parts)}; "
           "plus the non-private FedAvg baseline per partition"
           + (" and the central baseline." if central else "."))
    return Grid(tuple(points), scale, settings, why, f"{len(points)} points (custom grid)",
                curated=False)


def _curated(fed: Any, quick: bool) -> tuple[list[Point], str]:
    """The default grid, most informative points first."""
    if quick:
        pts = [fed("iid", "none", BASELINE_BITS, None)]
        for eps in QUICK_EPSILONS:
            pts += [fed("iid", m, 16, eps) for m in MECHANISMS]
        pts.append(fed("iid", "ddgauss", 12, 8.0))
        why = ("Quick grid: the non-private FedAvg baseline, the three mechanisms at 16 bits "
               "at target ε 8 and 2, ddgauss at 12 bits at ε 8, and the central baseline "
               "(IID only), on the small `digits` task; it checks the pipeline end to end "
               "in minutes, its accuracies say nothing about the Fashion-MNIST targets.")
        return pts, why
    pts = [fed("iid", "none", BASELINE_BITS, None)]
    # the points the targets need, first
    pts += [fed("iid", m, 16, 8.0) for m in MECHANISMS]
    pts.append(fed("iid", "ddgauss", 12, 8.0))
    pts += [fed("iid", m, 16, 2.0) for m in MECHANISMS]
    pts.append(fed("iid", "skellam", 12, 8.0))
    # label skew for a subset
    pts.append(fed("dirichlet", "none", BASELINE_BITS, None))
    pts += [fed("dirichlet", m, 16, 8.0) for m in MECHANISMS]
    # the rest of the 16-bit curve
    for eps in (16.0, 4.0, 1.0):
        pts += [fed("iid", m, 16, eps) for m in MECHANISMS]
    # other bit widths at two ε
    pts += [fed("iid", m, 20, eps) for eps in (8.0, 2.0) for m in ("ddgauss", "skellam")]
    pts += [fed("iid", m, 12, 2.0) for m in ("ddgauss", "skellam")]
    why = ("Full grid, in the order run (most informative first, so that a partial run "
           "still answers the targets): the central baseline; non-private FedAvg (IID); "
           "gaussian, ddgauss, skellam at 16 bits at target ε 8; ddgauss at 12 bits at ε 8; "
           "the three mechanisms at 16 bits at ε 2; skellam at 12 bits at ε 8; the "
           "Dirichlet(α = 0.5) partition for the baseline and the three mechanisms at 16 "
           "bits at ε 8; the rest of the 16-bit curve (ε 16, 4, 1); then ddgauss and "
           "skellam at 20 bits at ε 8 and 2 and at 12 bits at ε 2.")
    return pts, why


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
