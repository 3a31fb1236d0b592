"""``python -m benchmarks audit``: a measured lower bound on ε, held against the claim.

Three modes (see :mod:`dp.audit` for the method and what an audit does and does not
prove):

- default: one aggregation-level audit of one round through the real pipeline (every
  device's encoder, the exact modular sum, the decoder), with dropouts down to the sizing
  bound t. Prints the accountant's claim, the 95 % lower bound, the exact Gaussian ε at
  the same noise and the ratios. Exit status 1 when the lower bound exceeds the claim.
- ``--one-run``: the audit of Steinke, Nasr, Jagielski (NeurIPS 2023) in one run of T
  rounds with m canary devices, at ``--target-epsilon`` (or ``--noise-multiplier``).
- ``--full``: the grid (each mechanism and bit width, and the one-run audit at ε 2, 8
  and 16); writes ``privacy_audit.{md,json,png}`` to ``--out-dir``.

The secure sum of every audit is the exact modular sum of the encoded vectors (what the
masked protocol returns, bit for bit); every output says so.

The one-run audit's "sum of the model's updates" comes from :data:`UPDATE_SUM_SOURCES`
(``--source``): ``engine`` trains the digits model with the in-process engine (the
canary devices' vectors as their updates, w_T - w_0 of the global model, the server's
own accountant); ``pipeline`` adds up the decoded aggregates of T rounds (no model).
A new source (another task, the Ray engine) is one class with the
:class:`UpdateSumSource` methods, registered there.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks import cli
from benchmarks.machine import machine_facts
from benchmarks.report import RESULTS_DIR, fmt, markdown_table, write_atomic, write_json
from dp.audit import (
    SECURE_SUM,
    CanarySet,
    OneRunAudit,
    PipelineRun,
    RoundAudit,
    audit_round,
    claimed_epsilon,
    one_run_audit,
    pipeline_update_sum,
)
from dp.config import MECHANISMS, DPConfig, DPConfigError
from dp.encoding import EncodingPlan

__all__ = [
    "UPDATE_SUM_SOURCES",
    "UpdateSumSource",
    "add_arguments",
    "add_suite_arguments",
    "main",
    "run_full",
    "run_one_run",
    "run_suite",
]

RESULTS_STEM = "privacy_audit"
ONE_RUN_TARGETS = (2.0, 8.0, 16.0)

class UpdateSumSource(Protocol):
    """Where the one-run audit's "sum of the model's updates" comes from.

    ``canary_dim(requested)``: the dimension the canaries must have (the model's, for a
    training engine). ``calibrate(config, target, dim, canaries, rounds, background)``:
    the noise multiplier at which this source's accountant claims ``target``.
    ``run(canaries, config, rounds, background, seed)``: run the rounds with the m canary
    devices in every cohort (included ones send their vector, the others zero) and
    return the sum of the model's updates with the accountant's ε for the run.
    """

    name: str
    description: str

    def canary_dim(self, requested: int) -> int: ...

    def calibrate(self, config: DPConfig, target: float, dim: int, canaries: int,
                  rounds: int, background: int) -> float: ...

    def run(self, canaries: CanarySet, config: DPConfig, rounds: int, background: int,
            seed: int | None) -> PipelineRun: ...


class PipelineSource:
    """The aggregation pipeline alone (:func:`dp.audit.pipeline_update_sum`): the decoded
    sums of T rounds added up; no model, no training."""

    name = "pipeline"
    description = ("the decoded aggregates of the rounds summed (real encoder, exact "
                   "modular sum, real decoder; no model training)")

    def canary_dim(self, requested: int) -> int:
        return requested

    def calibrate(self, config: DPConfig, target: float, dim: int, canaries: int,
                  rounds: int, background: int) -> float:
        n = background + canaries
        return calibrate_for_claim(config, target, dim=dim, n_clients=n, min_contributors=n,
                                   survivors=n, rounds=rounds)

    def run(self, canaries: CanarySet, config: DPConfig, rounds: int, background: int,
            seed: int | None) -> PipelineRun:
        return pipeline_update_sum(canaries, config, rounds=rounds, background=background,
                                   seed=seed)


class EngineSource:
    """The in-process training engine (``python -m clients run --engine local``) on the
    ``digits`` task: ``background`` devices train for real, the m canary devices send
    their vector (or zero) as their model update, every device takes part in every round
    (q = 1), secure sum ``exact``; the score vector is w_T - w_0 of the global model and
    the claim the server's own accountant (unamplified, zero-out)."""

    name = "engine"
    description = ("the in-process engine training the digits model: w_T - w_0 of the "
                   "global model (background devices train, canary devices send their "
                   "vector or zero)")
    task = "digits"

    def canary_dim(self, requested: int) -> int:
        from clients.options import model_dim  # noqa: PLC0415
        from clients.tasks import get_task  # noqa: PLC0415

        return model_dim(get_task(self.task), 0)

    def _options(self, config: DPConfig, canaries: int, rounds: int, background: int,
                 seed: int | None, **extra: Any) -> Any:
        from clients.options import SimOptions  # noqa: PLC0415

        n = background + canaries
        return SimOptions(task=self.task, clients=n, per_round=n, rounds=rounds,
                          mechanism=config.mechanism, bits=config.bits, clip=config.clip,
                          delta=config.delta, engine="local", secure_sum="exact",
                          corrupt=0.0, min_survivors=1.0, seed=0 if seed is None else seed,
                          eval_every=rounds, federated_eval=False,
                          **extra)

    def calibrate(self, config: DPConfig, target: float, dim: int, canaries: int,
                  rounds: int, background: int) -> float:
        from clients.options import resolve_noise, round_probe  # noqa: PLC0415

        opts = self._options(config, canaries, rounds, background, 0, target_epsilon=target)
        return resolve_noise(opts, dim, int(round_probe(opts).min_survivors))

    def run(self, canaries: CanarySet, config: DPConfig, rounds: int, background: int,
            seed: int | None) -> PipelineRun:
        import tempfile  # noqa: PLC0415

        from clients.engines.local import InProcessEngine, LocalFleet  # noqa: PLC0415
        from server.model import ModelService  # noqa: PLC0415
        from server.store import Store  # noqa: PLC0415

        first = background  # devices background.. are the canaries (by shard index)
        vectors = (canaries.norm * canaries.directions
                   * canaries.included[:, None]).astype(np.float32)

        class CanaryFleet(LocalFleet):  # type: ignore[misc]
            def train(self, round_id: int, device_ids: Any, weights: np.ndarray
                      ) -> tuple[np.ndarray, list[int]]:
                background_ids = [c for c in device_ids if self.index_of[c] < first]
                trained: dict[int, np.ndarray] = {}
                if background_ids:
                    deltas, ok = super().train(round_id, background_ids, weights)
                    trained = dict(zip(ok, deltas, strict=True))
                ok_ids = [c for c in device_ids
                          if self.index_of[c] >= first or c in trained]
                out = np.zeros((len(ok_ids), self.trainer.dim), dtype=np.float32)
                for r, c in enumerate(ok_ids):
                    out[r] = (vectors[self.index_of[c] - first] if self.index_of[c] >= first
                              else trained[c])
                return out, ok_ids

        class CanaryEngine(InProcessEngine):  # type: ignore[misc]
            def make_fleet(self, task: Any, population: Any, settings: Any,
                           index_of: Any) -> Any:
                return CanaryFleet(task, population, settings, self.opts.seed, index_of,
                                   self.identity_master)

        opts = self._options(config, canaries.directions.shape[0], rounds, background, seed,
                             noise_multiplier=config.noise_multiplier)
        with tempfile.TemporaryDirectory(prefix="audit-engine-") as tmp:
            result = CanaryEngine(opts, workdir=Path(tmp)).run()
            store = Store(result.db_path)
            try:
                stored = store.latest_model()
            finally:
                store.close()
        if stored is None:
            raise RuntimeError("the engine stored no model")
        initial = ModelService(self.task, seed=opts.seed, data_dir=opts.data_dir).load()
        delta = np.asarray(stored.weights, dtype=np.float64) - np.asarray(initial, np.float64)
        done = int(result.status.get("rounds_done", 0))
        if done != rounds:
            raise RuntimeError(f"the engine ran {done} of {rounds} rounds: "
                               f"{result.status.get('finished_reason')}")
        return PipelineRun(update_sum=delta, epsilon_claim=float(result.status["epsilon"]),
                           rounds=rounds, survivors=background + canaries.directions.shape[0],
                           secure_sum=f"engine --secure-sum {result.secure_sum}: "
                                      f"{SECURE_SUM}")


#: The one-run audit's sources of "the sum of the model's updates" (``--source``).
UPDATE_SUM_SOURCES: dict[str, UpdateSumSource] = {
    "pipeline": PipelineSource(),
    "engine": EngineSource(),
}


# --------------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    return cli.checked(text, float, lambda v: v > 0 and math.isfinite(v), "a number > 0")


def _nonneg_float(text: str) -> float:
    return cli.checked(text, float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def _open_unit(text: str) -> float:
    return cli.checked(text, float, lambda v: 0 < v < 1, "a number in (0, 1)")


def _nonneg_int(text: str) -> int:
    return cli.checked(text, int, lambda v: v >= 0, "an integer >= 0")


def _seed(text: str) -> int:
    return cli.checked(text, int, lambda v: v >= 0, "an integer >= 0")


def _min2(text: str) -> int:
    return cli.checked(text, int, lambda v: v >= 2, "an integer >= 2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m benchmarks audit``."""
    parser.description = (__doc__ or "").splitlines()[0]
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--one-run", action="store_true",
                      help="the one-run audit (Steinke et al. 2023) instead of one round")
    mode.add_argument("--full", action="store_true",
                      help="the whole grid; writes privacy_audit.{md,json,png}")
    parser.add_argument("--mechanism", choices=MECHANISMS, default="ddgauss",
                        help="noise mechanism (default: ddgauss)")
    parser.add_argument("--bits", type=cli.bits, default=16, help="modulus bits (default 16)")
    parser.add_argument("--noise-multiplier", type=_nonneg_float, default=None,
                        help="z: summed noise std z·C for t devices (default 1; with "
                        "--one-run the default is --target-epsilon)")
    parser.add_argument("--target-epsilon", type=_positive_float, default=None,
                        help="--one-run: calibrate z so that the claim is this ε (default 8)")
    parser.add_argument("--trials", type=cli.positive_int, default=20_000,
                        help="trials per world to evaluate the test, and as many again "
                        "to choose its threshold (default 20000)")
    parser.add_argument("--dim", type=cli.positive_int, default=None,
                        help="update dimension (default 64; --one-run 16384)")
    parser.add_argument("--clients", type=cli.positive_int, default=10,
                        help="devices the round is planned for, n (default 10)")
    parser.add_argument("--min-contributors", type=cli.positive_int, default=5,
                        help="sizing bound t: noise sized so any t shares carry it; the "
                        "audit keeps only t survivors (default 5)")
    parser.add_argument("--corrupt", type=_nonneg_int, default=0,
                        help="survivors colluding with the attacker, who subtracts their "
                        "noise shares (the plan and the claim count them out) (default 0)")
    parser.add_argument("--clip", type=_positive_float, default=1.0, help="clip C (default 1)")
    parser.add_argument("--canary-norm", type=_positive_float, default=None,
                        help="norm of the canary update (default C; larger tests clipping)")
    parser.add_argument("--canaries", type=_min2, default=1000,
                        help="--one-run: canary devices m (default 1000)")
    parser.add_argument("--rounds", type=cli.positive_int, default=10,
                        help="--one-run: rounds T (default 10)")
    parser.add_argument("--background", type=cli.positive_int, default=20,
                        help="--one-run: the other devices of every round's cohort (zero "
                        "update with the pipeline source, real training with the engine) "
                        "(default 20)")
    parser.add_argument("--source", choices=tuple(UPDATE_SUM_SOURCES), default="pipeline",
                        help="--one-run: where the sum of model updates comes from: the "
                        "aggregation pipeline alone, or the training engine (digits)")
    parser.add_argument("--delta", type=_open_unit, default=1e-5, help="δ (default 1e-5)")
    parser.add_argument("--confidence", type=_open_unit, default=0.95,
                        help="confidence of the lower bound (default 0.95)")
    parser.add_argument("--seed", type=_seed, default=None,
                        help="seed for a reproducible run (SIMULATION: the noise is then "
                        "predictable; default: OS entropy)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--quick", action="store_true",
                        help="--full: a small grid with fewer trials (minutes)")
    parser.add_argument("--fresh", action="store_true",
                        help="--full: ignore the points cached by an earlier run")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"--full: where results go (default: {RESULTS_DIR})")


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """Extra flags of ``python -m benchmarks all`` for this suite."""
    parser.add_argument("--no-audit", action="store_true", help="skip the privacy audit")


def run_suite(args: argparse.Namespace) -> int:
    """The audit part of ``python -m benchmarks all``."""
    if getattr(args, "no_audit", False):
        return 0
    out_dir = Path(getattr(args, "results", RESULTS_DIR))
    return run_full(out_dir, quick=bool(getattr(args, "quick", False)), seed=0,
                    command="python -m benchmarks all")


def _config(args: argparse.Namespace, z: float) -> DPConfig:
    return DPConfig(mechanism=args.mechanism, clip=args.clip, noise_multiplier=z,
                    bits=args.bits, delta=args.delta)


def main(args: argparse.Namespace) -> int:
    """Run the chosen mode; 0 when no claim was violated, 1 when one was."""
    if args.min_contributors > args.clients:
        cli.fail_usage(f"--min-contributors ({args.min_contributors}) must be <= --clients "
                       f"({args.clients})")
    if not args.one_run and args.target_epsilon is not None:
        cli.fail_usage("--target-epsilon needs --one-run")
    if (args.quick or args.fresh) and not args.full:
        cli.fail_usage("--quick and --fresh need --full")
    if args.full:
        command = " ".join(["python -m benchmarks", *sys.argv[1:]])
        return run_full(Path(args.out_dir), quick=bool(args.quick), seed=args.seed,
                        command=command, fresh=bool(args.fresh))
    try:
        if args.one_run:
            return _main_one_run(args)
        return _main_round(args)
    except DPConfigError as err:
        cli.fail_usage(str(err))


def _main_round(args: argparse.Namespace) -> int:
    z = 1.0 if args.noise_multiplier is None else args.noise_multiplier
    started = time.perf_counter()
    res = audit_round(_config(args, z), dim=args.dim or 64, n_clients=args.clients,
                      min_contributors=args.min_contributors, corrupt=args.corrupt,
                      trials=args.trials,
                      canary_norm=args.canary_norm, confidence=args.confidence,
                      seed=args.seed)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({**res.to_dict(), "seconds": seconds}, default=_json_default))
    else:
        print(describe_round(res, seconds))
    return 1 if res.violation else 0


def describe_round(res: RoundAudit, seconds: float | None = None) -> str:
    """The console report of one aggregation-level audit."""
    pct = f"{res.confidence:.0%}"
    lines = [
        f"audit of one round: {res.mechanism}, {res.bits} bits, z = {fmt(res.noise_multiplier)}, "
        f"C = {fmt(res.clip)}, canary norm {fmt(res.canary_norm)}, d = {res.dim}; "
        f"{res.survivors} of {res.n_clients} devices survive (sizing bound t = "
        f"{res.min_contributors}, {res.corrupt} colluding); {res.trials} trials per world "
        f"(+{res.threshold_trials} "
        f"per world to choose the threshold)",
        f"secure sum: {res.secure_sum}",
        f"claimed ε (the accountant, one round, δ = {res.delta:g}): {fmt(res.epsilon_claim)}",
        f"lower bound: ε ≥ {fmt(res.epsilon_lower)} at {pct} confidence "
        f"(FPR ≤ {fmt(res.fpr_upper)}, FNR ≤ {fmt(res.fnr_upper)}; the most "
        f"{res.trials} trials can show is {fmt(res.ceiling)})",
        f"exact Gaussian ε at the same noise (z_eff = {fmt(res.effective_noise_multiplier)}): "
        f"{fmt(res.epsilon_gaussian)}",
        f"ratio: lower bound / exact Gaussian = {fmt(res.ratio_to_gaussian)}; "
        f"lower bound / claim = {fmt(res.ratio_to_claim)}",
    ]
    if res.violation:
        lines.append("VIOLATION: the measured lower bound exceeds the claimed ε")
    else:
        lines.append("no violation found (this does not prove the claim; see the README)")
    if seconds is not None:
        lines.append(f"time: {seconds:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class OneRunResult:
    """One one-run audit: its settings, the claim and the bound."""

    target_epsilon: float | None
    mechanism: str
    bits: int
    noise_multiplier: float
    canaries: int
    rounds: int
    background: int
    dim: int
    source: str
    audit: OneRunAudit
    seconds: float
    secure_sum: str = SECURE_SUM

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "audit"}
        d.update(self.audit.to_dict())
        return d


def calibrate_for_claim(config: DPConfig, target: float, *, dim: int, n_clients: int,
                        min_contributors: int, survivors: int, rounds: int) -> float:
    """Smallest z (to 1e-3 relative) whose plan makes `claimed_epsilon` for `survivors`
    shares over `rounds` rounds at most `target`: what the one-run audit is run at."""

    def claim(z: float) -> float:
        cfg = DPConfig(**{**config.to_dict(), "noise_multiplier": z})
        plan = EncodingPlan.create(cfg, dim, n_clients, min_contributors)
        return claimed_epsilon(plan, survivors, rounds)

    lo, hi = 0.0, 1.0
    while claim(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e4:
            raise DPConfigError(f"target ε {target} not reachable with {config.mechanism!r} "
                                f"at {config.bits} bits")
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if claim(mid) > target else (lo, mid)
    return hi


def run_one_run(config: DPConfig, *, target: float | None, canaries: int, rounds: int,
                background: int, dim: int, source: str = "pipeline", confidence: float = 0.95,
                seed: int | None = None) -> OneRunResult:
    """Draw the canaries, calibrate z for `target` (if given), run the source, audit."""
    started = time.perf_counter()
    src = UPDATE_SUM_SOURCES[source]
    dim = src.canary_dim(dim)
    if target is not None:
        z = src.calibrate(config, target, dim, canaries, rounds, background)
        config = DPConfig(**{**config.to_dict(), "noise_multiplier": z})
    rng = np.random.default_rng(None if seed is None else np.random.SeedSequence([seed, 77]))
    canary_set = CanarySet.draw(canaries, dim, config.clip, rng)
    run = src.run(canary_set, config, rounds, background, seed)
    audit = one_run_audit(canary_set.scores(run.update_sum), canary_set.included,
                          config.delta, confidence, epsilon_claim=run.epsilon_claim)
    return OneRunResult(target_epsilon=target, mechanism=config.mechanism, bits=config.bits,
                        noise_multiplier=config.noise_multiplier, canaries=canaries,
                        rounds=rounds, background=background, dim=dim, source=source,
                        audit=audit, seconds=time.perf_counter() - started,
                        secure_sum=run.secure_sum)


def _main_one_run(args: argparse.Namespace) -> int:
    if args.noise_multiplier is not None and args.target_epsilon is not None:
        cli.fail_usage("give --noise-multiplier or --target-epsilon, not both")
    target = args.target_epsilon
    z = args.noise_multiplier
    if z is None and target is None:
        target = 8.0
    res = run_one_run(_config(args, 1.0 if z is None else z), target=target,
                      canaries=args.canaries, rounds=args.rounds, background=args.background,
                      dim=args.dim or 16384, source=args.source, confidence=args.confidence,
                      seed=args.seed)
    if args.json:
        print(json.dumps(res.to_dict(), default=_json_default))
    else:
        print(describe_one_run(res))
    return 1 if res.audit.violation else 0


def describe_one_run(res: OneRunResult) -> str:
    a = res.audit
    return "\n".join([
        f"one-run audit (Steinke, Nasr, Jagielski 2023): {res.mechanism}, {res.bits} bits, "
        f"z = {fmt(res.noise_multiplier)}, {res.canaries} canaries ({a.included} included), "
        f"{res.rounds} rounds, {res.background} background devices, d = {res.dim}, "
        f"source: {res.source}",
        f"secure sum: {res.secure_sum}",
        f"claimed ε (the accountant, {res.rounds} rounds, δ = {a.delta:g}): "
        f"{fmt(a.epsilon_claim)}",
        f"lower bound: ε ≥ {fmt(a.epsilon_lower)} at {a.confidence:.0%} confidence "
        f"({a.correct} of {a.guesses} guesses right; the most {res.canaries} canaries "
        f"can show is {fmt(a.ceiling)})",
        "VIOLATION: the measured lower bound exceeds the claimed ε" if a.violation else
        "no violation found (this does not prove the claim; see the README)",
        f"time: {res.seconds:.1f} s",
    ])


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --------------------------------------------------------------------------- full grid


@dataclass(frozen=True)
class Grid:
    """What ``--full`` runs (``quick`` shrinks it for ``make bench --quick``):
    `points` are (mechanism, bits, z) of the one-round audits; the one-run audits run at
    each of :data:`ONE_RUN_TARGETS` for each source in `one_run_sources`."""

    points: tuple[tuple[str, int, float], ...]
    trials: int
    dim: int
    n_clients: int
    min_contributors: int
    one_run_sources: tuple[str, ...]
    one_run_canaries: int
    one_run_rounds: int
    one_run_background: int
    one_run_dim: int

    @classmethod
    def for_mode(cls, quick: bool) -> Grid:
        if quick:
            return cls((("ddgauss", 16, 1.0),), 2000, 64, 10, 5, ("pipeline",), 200, 3, 10,
                       4096)
        points = tuple((mech, bits, 1.0) for mech in ("ddgauss", "skellam", "gaussian")
                       for bits in (8, 12, 16, 20))
        points += (("ddgauss", 16, 0.5), ("ddgauss", 16, 2.0))
        return cls(points, 20_000, 64, 10, 5, ("engine", "pipeline"), 1000, 10, 20, 16384)


CACHE_SUBDIR = Path(".cache") / "audit"


def _cached(cache: Path, key: dict[str, Any], fresh: bool,
            compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The record for `key` from `cache` (unless `fresh`), else `compute()` it and store
    it. Returns (record, whether it came from the cache)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache / f"{digest}.json"
    if not fresh and path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["record"], True
    record = json.loads(json.dumps(compute(), default=_json_default))
    write_json(path, {"key": key, "record": record})
    return record, False


def run_full(out_dir: Path, *, quick: bool, seed: int | None, command: str,
             fresh: bool = False) -> int:
    """Run the grid and write ``privacy_audit.{md,json,png}`` (rewritten after every
    point, "partial" until the grid is done); 1 if any claim failed. Each finished point
    is cached under ``<out_dir>/.cache/audit/`` (``fresh`` ignores the cache)."""
    grid = Grid.for_mode(quick)
    base_seed = 0 if seed is None else seed
    cache = out_dir / CACHE_SUBDIR
    started = time.perf_counter()
    total = len(grid.points) + len(grid.one_run_sources) * len(ONE_RUN_TARGETS)
    data: dict[str, Any] = {
        "command": command, "quick": quick, "seed": base_seed, "secure_sum": SECURE_SUM,
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in grid.__dict__.items()},
        "machine": machine_facts(), "round_audits": [], "one_run_audits": [],
        "points_total": total, "from_cache": 0,
    }

    def save() -> None:
        data["seconds"] = time.perf_counter() - started
        data["points_done"] = len(data["round_audits"]) + len(data["one_run_audits"])
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / f"{RESULTS_STEM}.json", data)
        write_atomic(out_dir / f"{RESULTS_STEM}.md", render_markdown(data))
        plot(data, out_dir / f"{RESULTS_STEM}.png")

    def step(bucket: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]],
             label: str) -> None:
        rec, hit = _cached(cache, key, fresh, compute)
        data[bucket].append(rec)
        data["from_cache"] += int(hit)
        print(f"[audit] {label}: claim {fmt(rec.get('epsilon_claim'))}, lower "
              f"{fmt(rec.get('epsilon_lower'))}{' (cached)' if hit else ''}", flush=True)
        save()

    def one_round(mech: str, bits: int, z: float, seed_k: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            res = audit_round(DPConfig(mechanism=mech, bits=bits, noise_multiplier=z),
                              dim=grid.dim, n_clients=grid.n_clients,
                              min_contributors=grid.min_contributors, trials=grid.trials,
                              seed=seed_k)
        except DPConfigError as err:
            return {"mechanism": mech, "bits": bits, "noise_multiplier": z,
                    "status": f"not plannable: {err}"}
        return {**res.to_dict(), "seconds": time.perf_counter() - t0, "status": "ok"}

    def one_run(source: str, target: float, seed_k: int) -> dict[str, Any]:
        return run_one_run(DPConfig(mechanism="ddgauss", bits=16), target=target,
                           canaries=grid.one_run_canaries, rounds=grid.one_run_rounds,
                           background=grid.one_run_background, dim=grid.one_run_dim,
                           source=source, seed=seed_k).to_dict()

    k = 0
    for mech, bits, z in grid.points:
        k += 1
        key = {"kind": "round", "mechanism": mech, "bits": bits, "z": z, "trials": grid.trials,
               "dim": grid.dim, "n": grid.n_clients, "t": grid.min_contributors,
               "seed": base_seed + k}
        step("round_audits", key, functools.partial(one_round, mech, bits, z, base_seed + k),
             f"{mech} {bits} bits z={z}")
    for source in grid.one_run_sources:
        for target in ONE_RUN_TARGETS:
            k += 1
            key = {"kind": "one-run", "source": source, "target": target,
                   "m": grid.one_run_canaries, "rounds": grid.one_run_rounds,
                   "background": grid.one_run_background, "dim": grid.one_run_dim,
                   "seed": base_seed + k}
            step("one_run_audits", key,
                 functools.partial(one_run, source, target, base_seed + k),
                 f"one-run {source} target ε {target}")
    bad = [r for r in data["round_audits"] if r.get("violation")]
    bad += [r for r in data["one_run_audits"] if r.get("violation")]
    return 1 if bad else 0


def render_markdown(data: dict[str, Any]) -> str:
    """``privacy_audit.md`` from the JSON record of a full run."""
    g = data["grid"]
    m = data["machine"]
    ok = [r for r in data["round_audits"] if r.get("status") == "ok"]
    skipped = [r for r in data["round_audits"] if r.get("status") != "ok"]
    done, total = data.get("points_done", 0), data.get("points_total", 0)
    status = "complete" if done >= total else f"partial: {done} of {total} points"
    rows = [[r["mechanism"], r["bits"], r["noise_multiplier"], r["epsilon_claim"],
             r["epsilon_lower"], r["epsilon_gaussian"], r["ratio_to_gaussian"],
             r["ratio_to_claim"], r["ceiling"], r["false_positives"], r["false_negatives"],
             "VIOLATION" if r["violation"] else "no", round(r["seconds"], 1)] for r in ok]
    one = [[r["source"], r["target_epsilon"], r["noise_multiplier"], r["dim"],
            r["epsilon_claim"], r["epsilon_lower"], r["ceiling"],
            f"{r['correct']}/{r['guesses']}", r["included"],
            "VIOLATION" if r["violation"] else "no", round(r["seconds"], 1)]
           for r in data["one_run_audits"]]
    conf = f"{ok[0]['confidence']:.0%}" if ok else "95%"
    compute_min = sum(r.get("seconds", 0.0) for r in ok + data["one_run_audits"]) / 60
    sources = "\n".join(f"  - `{name}`: {UPDATE_SUM_SOURCES[name].description}."
                         for name in g["one_run_sources"] if name in UPDATE_SUM_SOURCES)
    parts = [
        "# Privacy audit (`python -m benchmarks audit --full`)\n",
        f"Status: {status}. Generated {m['date_utc']} by `{data['command']}` on "
        f"{m['cpu_model']} ({m['cores']} cores, shared with other jobs): "
        f"{compute_min:.0f} min of compute over all points ({data.get('from_cache', 0)} of "
        f"them from the cache of an earlier run). Seed {data['seed']}."
        + (" QUICK grid." if data["quick"] else "") + "\n",
        "Every ε the project prints is an upper bound from its accountant. This audit runs "
        "the real pipeline on neighbouring inputs and turns an attacker's success into a "
        f"lower bound on ε that holds with {conf} confidence. A lower bound above the claim "
        "would prove the claim wrong; a lower bound below it proves nothing about the claim "
        "being right (see `dp/audit.py` and the README).\n",
        "## One round: lower bound against the claim\n",
        "- Pipeline: every device's `dp.Encoder` (clip, rotation, scaling, randomized "
        "rounding, its noise share from `dp.prng.SecureRng`, mod 2^b), the secure sum as "
        f"the {SECURE_SUM}, the `dp.Decoder`. d = {g['dim']}, C = 1, "
        f"n = {g['n_clients']} devices planned, noise sized for t = {g['min_contributors']}, "
        "and only t survive (dropouts down to the sizing bound), one of them the canary "
        "device; the others send zero.",
        "- World 1: the canary device's update has norm C in a random direction; world 0: "
        "zero, its noise share kept (the zero-out adjacency of the unamplified claim). "
        f"{g['trials']} trials per world choose the threshold of the test (the decoded sum "
        "projected on the canary direction), as many fresh trials per world evaluate it; "
        "FPR and FNR get one-sided Clopper–Pearson bounds at 97.5 % each.",
        "- claimed ε: the project's accountant, one round, t shares, no amplification. "
        "Exact Gaussian ε: a Gaussian mechanism with the noise really added (summed std / "
        "C), the most any attacker on that noise can show. Ceiling: the bound if the test "
        "made no error at all, the most these trials can certify.\n",
        markdown_table(["mechanism", "bits", "z", "claimed ε", "lower bound ε",
                        "exact Gaussian ε", "lower / Gaussian", "lower / claim", "ceiling",
                        "FP", "FN", "violation", "s"], rows),
    ]
    if ok:
        ratios = [r["ratio_to_gaussian"] for r in ok if r["noise_multiplier"] == 1.0]
        if ratios:
            parts.append(f"At z = 1 the bound reaches {min(ratios):.2f}–{max(ratios):.2f} of "
                         "the exact Gaussian ε: that is the resolution of a single-canary "
                         f"test with {g['trials']} trials per world, not slack in the "
                         "accountant; no point exceeds its claim.\n"
                         if not any(r["violation"] for r in ok) else
                         "At least one point EXCEEDS its claim: see the table.\n")
    if skipped:
        parts.append("Not plannable: " + "; ".join(
            f"{r['mechanism']} {r['bits']} bits z={r['noise_multiplier']} ({r['status']})"
            for r in skipped) + "\n")
    parts += [
        "## One training run (Steinke, Nasr, Jagielski, NeurIPS 2023)\n",
        f"- {g['one_run_canaries']} canary devices, each included independently with "
        "probability 1/2, in every round's cohort with "
        f"{g['one_run_background']} other devices; an included canary sends a random-sign "
        "vector of norm C as its update, an excluded one sends zero (zero-out adjacency). "
        f"{g['one_run_rounds']} rounds, ddgauss at 16 bits, every device survives, no "
        "sampling (q = 1); z is calibrated so that the accountant's ε for the run is the "
        "target, and the claim is that accountant's ε.",
        "- Score: inner product of each canary's direction with the sum of the model's "
        "updates; guess in/out for the top/bottom r/2, r from a small grid paid for by "
        "Bonferroni; bound from Thm. 5.2 with its δ term, at 95 %. Sources of the sum:",
        sources,
        "- A one-run audit certifies at most its ceiling (every guess right), so at ε 8 "
        "and 16 a bound far below the claim is expected of any correct pipeline.\n",
        markdown_table(["source", "target ε", "z", "d", "claimed ε", "lower bound ε",
                        "ceiling", "right/guesses", "included", "violation", "s"], one),
        "## What was not audited\n",
        "- Positive controls (noise scaled down 10×, noise sized by n instead of t, "
        "clipping disabled, colluders' noise counted) run in `tests/dp/test_audit.py` "
        "through test-only hooks, with fixed seeds; each must exceed its claim. They are "
        "not reachable from this command.",
        "- The masked protocol itself (the audits use the exact modular sum it equals bit "
        "for bit), sampling amplification (only the unamplified figure is audited), "
        "adaptive clipping's count slot, and the unpredictability of the noise generator "
        "(the audit's attacker does not know the devices' keys; a guessable key is a bug "
        "no statistical audit sees).\n",
    ]
    return "\n".join(p for p in parts if p)


def plot(data: dict[str, Any], path: Path) -> None:
    """Lower bound against claim (and exact Gaussian) per point; one-run beside it."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ok = [r for r in data["round_audits"] if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8),
                             gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    x = np.arange(len(ok))
    ax.bar(x - 0.27, [r["epsilon_claim"] for r in ok], 0.27, label="claimed ε (accountant)")
    ax.bar(x, [r["epsilon_gaussian"] for r in ok], 0.27, label="exact Gaussian ε, same noise")
    ax.bar(x + 0.27, [r["epsilon_lower"] for r in ok], 0.27, label="audit lower bound (95 %)")
    ax.set_xticks(x, [f"{r['mechanism']}\n{r['bits']}b z={r['noise_multiplier']:g}"
                      for r in ok], fontsize=7)
    if ok:
        ax.axhline(ok[0]["ceiling"], ls="--", color="grey", lw=1,
                   label=f"ceiling of {ok[0]['trials']} trials (no error at all)")
    ax.set_ylabel("ε (δ = 1e-5)")
    ax.set_title("one round, real encoder / exact modular sum / decoder")
    ax.legend(fontsize=8)
    ax = axes[1]
    one = data["one_run_audits"]
    x1 = np.arange(len(one))
    ax.bar(x1 - 0.2, [r["epsilon_claim"] for r in one], 0.4, label="claimed ε")
    ax.bar(x1 + 0.2, [r["epsilon_lower"] for r in one], 0.4, label="one-run lower bound")
    if one:
        ax.axhline(one[0]["ceiling"], ls="--", color="grey", lw=1,
                   label=f"ceiling of {one[0]['canaries']} canaries")
    ax.set_xticks(x1, [f"{r['source']}\nε {r['target_epsilon']:g}" for r in one], fontsize=7)
    ax.set_title("one run (Steinke et al. 2023)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
