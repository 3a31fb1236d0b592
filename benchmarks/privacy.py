"""``python -m benchmarks privacy``: accuracy against ε through the real pipeline.

Every federated point runs the in-process research engine
(:class:`clients.engines.local.InProcessEngine`): the server's round logic
(:mod:`server.round`) and the simulated devices (:class:`clients.round.DeviceRound`), each
device's share of distributed noise (``gaussian``, ``ddgauss`` or ``skellam``) encoded at
the point's bit width, the server's decoder, optimizer and accountant — the code the HTTP
server and devices run, without sockets. The full grid hands the server the exact modular
sum of the encoded vectors (``--secure-sum exact``, bit-identical to unmasking the
protocol's masked sum, tests/clients/test_engines.py); the quick grid runs the real masks.
Every figure comes from the run's round log: accuracy from the server's evaluation of the
global model on the task's test set, spent ε from the server's accountant.

Seeds: every spec (a point but its seed) runs with ``--seeds`` seeds (default 3); a seed
fixes the cohorts, the model initialisation, local shuffling and each device's noise
(simulation only: ``clients.engines.common``), so a point is reproducible and its cached
record sound. The report gives mean ± std over the seeds.

Two ε per point, as the server reports them:

- **ε (unamplified)** holds against anyone, including this server, which knows whom it
  sampled;
- **ε amplified** is proven for the sampling the server did (Poisson at q = per_round /
  clients) and holds only if the adversary does not learn who took part.

The *target* ε is what the noise is calibrated for (``SimOptions(target_epsilon=...)``,
see ``clients.options.resolve_noise``): the amplified ε after the planned rounds when
only m of the sampled devices survive, m = max(t, ceil(min_survivors · per_round)) with t
the secure-aggregation threshold (``--min-survivors``, default 0.9; devices refuse to
unmask a round with fewer than m inputs). Shares are sized for m contributors (DESIGN.md:
"DP that survives dropouts"), so with more survivors the spent ε is below the target;
both are in the table.

Baselines: ε = ∞ is non-private FedAvg through the same pipeline (mechanism ``none``);
"central" is the same task model trained on the pooled training data with Keras for
``ceil(rounds * per_round / clients * local_epochs)`` epochs (the expected number of
passes FedAvg makes over the data), at most ``central_max_epochs``.

Resume: each finished point (one seed) is cached as JSON in
``<out-dir>/.cache/privacy/<key>.json`` (the key names task, partition, mechanism, bits,
ε, δ, clients, per round, rounds, seed and a digest of the settings); a rerun skips
cached points (``--fresh`` ignores the cache). Results are rewritten after every point,
marked "partial: N of M points" until the grid is done, with the remaining time estimated
from the measured per-point times.

Outputs: ``<out-dir>/privacy_accuracy.md`` (table, targets, grid), ``.json`` (raw runs and
per-spec aggregates) and ``.png`` (accuracy against ε with error bars, against bits, and
against round).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cli
from benchmarks.privacy_grid import (
    DEFAULT_SEEDS,
    MECHANISMS,
    PARTITIONS,
    Point,
    Scale,
    Settings,
    build_grid,
    parse_epsilons,
    parse_list,
)
from benchmarks.privacy_report import write_results
from benchmarks.report import RESULTS_DIR

CACHE_SUBDIR = Path(".cache") / "privacy"

__all__ = [
    "add_arguments",
    "add_suite_arguments",
    "main",
    "run_grid",
    "run_point",
    "run_suite",
]


# --------------------------------------------------------------------------- CLI


def _eps_list(text: str) -> list[float | None]:
    try:
        return parse_epsilons(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _list_of(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        try:
            return parse_list(text, choices)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _bits_list(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if not part.strip():
            raise argparse.ArgumentTypeError(f"empty entry in bit widths {text!r}")
        out.append(cli.bits(part.strip()))
    return sorted(set(out))


def _positive_float(text: str) -> float:
    return cli.checked(text, float, lambda v: v > 0 and math.isfinite(v), "a number > 0")


def _fraction(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    return cli.checked(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _delta(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected δ in (0, 1), got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 1 <= I <= N (argparse type)."""
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, got {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}")
    return index, count


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m benchmarks privacy``."""
    parser.description = (__doc__ or "").splitlines()[0]
    parser.add_argument("--quick", action="store_true",
                        help="the quick grid on digits (a few minutes)")
    parser.add_argument("--task", choices=("fashion", "digits"), default=None,
                        help="task (default: fashion; digits with --quick)")
    parser.add_argument("--clients", type=cli.positive_int, default=None,
                        help="devices (default: the mode's scale)")
    parser.add_argument("--per-round", type=cli.positive_int, default=None,
                        help="devices sampled per round")
    parser.add_argument("--rounds", type=cli.positive_int, default=None, help="rounds")
    parser.add_argument("--mechanisms", type=_list_of(MECHANISMS), default=None,
                        help="comma list of " + ",".join(MECHANISMS) +
                        " (giving any grid flag replaces the curated grid by the product)")
    parser.add_argument("--bits", type=_bits_list, default=None,
                        help="comma list of bit widths, e.g. 12,16,20")
    parser.add_argument("--epsilons", type=_eps_list, default=None,
                        help="comma list of target ε, 'inf' = non-private FedAvg baseline")
    parser.add_argument("--partitions", type=_list_of(PARTITIONS), default=None,
                        help="comma list of iid,dirichlet")
    parser.add_argument("--seeds", type=cli.positive_int, default=DEFAULT_SEEDS,
                        help=f"seeds per spec, 0..N-1 (default: {DEFAULT_SEEDS})")
    parser.add_argument("--first-seed", type=_seed, default=0,
                        help="first seed (default: 0)")
    parser.add_argument("--delta", type=_delta, default=1e-5, help="δ (default: 1e-5)")
    parser.add_argument("--min-survivors", type=_fraction, default=None,
                        help="fraction of the sampled devices that must survive a round; "
                        "noise shares are sized for that many (default: 0.9; 0 sizes "
                        "them for the secagg threshold t)")
    parser.add_argument("--no-central", action="store_true",
                        help="skip the centrally trained baseline")
    parser.add_argument("--fresh", action="store_true", help="ignore cached points")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the results from the cached points "
                        "(missing points make it 'partial')")
    parser.add_argument("--head", type=cli.positive_int, default=None,
                        help="run only the first N specs of the curated grid (they are "
                        "ordered most informative first)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="run only every N-th point, starting at the I-th (1-based), "
                        "so that N processes or machines sharing --out-dir share the grid; "
                        "the results include every point any shard has finished")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"where results go (default: {RESULTS_DIR})")


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """Extra flags of ``python -m benchmarks all`` for this suite (``--quick`` is shared)."""
    parser.add_argument("--privacy-fresh", action="store_true",
                        help="privacy suite: ignore cached points")
    parser.add_argument("--no-privacy", action="store_true", help="skip the privacy suite")


def run_suite(args: argparse.Namespace) -> int:
    """The privacy part of ``python -m benchmarks all`` (quick grid with ``--quick``)."""
    if getattr(args, "no_privacy", False):
        return 0
    out_dir = Path(getattr(args, "results", RESULTS_DIR))
    ns = argparse.Namespace(
        quick=bool(getattr(args, "quick", False)), task=None, clients=None, per_round=None,
        rounds=None, mechanisms=None, bits=None, epsilons=None, partitions=None,
        seeds=DEFAULT_SEEDS, first_seed=0, delta=1e-5, min_survivors=None, no_central=False,
        report_only=False, head=None, shard=None,
        fresh=bool(getattr(args, "privacy_fresh", False)), out_dir=out_dir,
    )
    return main(ns)


def main(args: argparse.Namespace) -> int:
    """Run the grid chosen by ``args``; returns 0 when every point ran (or is
    unreachable, which is a result), 1 when some point failed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    scale = Scale.for_mode(bool(args.quick), task=args.task, clients=args.clients,
                           per_round=args.per_round, rounds=args.rounds)
    if scale.per_round > scale.clients:
        cli.fail_usage(f"--per-round ({scale.per_round}) must be <= --clients "
                       f"({scale.clients})")
    if args.fresh and getattr(args, "report_only", False):
        cli.fail_usage("--fresh and --report-only exclude each other")
    if scale.per_round < 2:
        cli.fail_usage(f"--per-round must be >= 2 (secure aggregation), got {scale.per_round}")
    settings = Settings.for_mode(bool(args.quick),
                                 min_survivors=getattr(args, "min_survivors", None))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    head = getattr(args, "head", None)
    if head is not None and any(x is not None for x in (args.mechanisms, args.bits,
                                                        args.epsilons, args.partitions)):
        cli.fail_usage("--head picks from the curated grid: it excludes --mechanisms, "
                       "--bits, --epsilons and --partitions")
    grid = build_grid(scale, settings, seeds=seeds, delta=args.delta,
                      mechanisms=args.mechanisms, bits=args.bits, epsilons=args.epsilons,
                      partitions=args.partitions, central=not args.no_central,
                      quick=bool(args.quick), head=head)
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    return run_grid(grid, out_dir=Path(args.out_dir), fresh=bool(args.fresh), command=command,
                    report_only=bool(getattr(args, "report_only", False)),
                    shard=getattr(args, "shard", None))


# --------------------------------------------------------------------------- running


def _say(text: str) -> None:
    print(text, flush=True)


def run_grid(grid: Any, *, out_dir: Path, fresh: bool, command: str,
             report_only: bool = False, shard: tuple[int, int] | None = None) -> int:
    """Run (or load from the cache) every point of ``grid`` in order; rewrite the results
    after each point. Returns 0, or 1 when a point failed (not: was unreachable).
    ``report_only``: run nothing, write the results of the cached points. ``shard``
    (I, N): run only points I, I + N, ... (1-based); the results written also take every
    other point some other shard has cached by then."""
    from benchmarks.privacy_grid import load_cached, save_cached  # noqa: PLC0415

    cache_dir = out_dir / CACHE_SUBDIR
    mine: dict[int, dict[str, Any]] = {}
    n_cached = n_run = 0
    total = len(grid.points)
    status = 0

    def current() -> list[dict[str, Any]]:
        """This process's records, and (sharded) every point cached by another shard."""
        if shard is None:
            return [mine[k] for k in sorted(mine)]
        out = []
        for k, pt in enumerate(grid.points):
            rec = mine.get(k) or load_cached(cache_dir, pt, grid.settings)
            if rec is not None:
                out.append(rec)
        return out

    where = "" if shard is None else f", shard {shard[0]}/{shard[1]}"
    _say(f"privacy benchmark: {total} points, {grid.description_short}{where}; out: {out_dir}")
    for i, point in enumerate(grid.points, 1):
        if shard is not None and (i - 1) % shard[1] != shard[0] - 1:
            continue
        rec = None if fresh else load_cached(cache_dir, point, grid.settings)
        if rec is not None:
            n_cached += 1
            _say(f"[{i}/{total}] {point.label()}: cached ({_brief(rec)})")
        elif report_only:
            _say(f"[{i}/{total}] {point.label()}: not run (--report-only)")
            continue
        else:
            _say(f"[{i}/{total}] {point.label()}: running ...")
            rec = run_point(point, grid.settings)
            n_run += 1
            if not str(rec["status"]).startswith("failed"):
                save_cached(cache_dir, point, grid.settings, rec)
            _say(f"[{i}/{total}] {point.label()}: {_brief(rec)}")
        if str(rec["status"]).startswith("failed"):
            status = 1
        mine[i - 1] = rec
        if not report_only:
            write_results(out_dir, grid, current(), command=command,
                          counts={"run": n_run, "cached": n_cached})
    if report_only:
        write_results(out_dir, grid, current(), command=command,
                      counts={"run": n_run, "cached": n_cached})
    _say(f"done: {n_run} run, {n_cached} cached; results in {out_dir}")
    return status


def _brief(rec: dict[str, Any]) -> str:
    acc = rec.get("final_accuracy")
    if rec.get("status") != "ok":
        return str(rec.get("status"))
    eps = rec.get("epsilon_amplified")
    eps_text = "" if eps is None else f", ε amplified {eps:.3g}"
    return f"final accuracy {acc:.4f}{eps_text}, {rec.get('wall_s', 0):.0f} s"


def run_point(point: Point, settings: Settings) -> dict[str, Any]:
    """Run one point and return its record (never raises for a pipeline failure: the
    record's ``status`` says what happened)."""
    if point.kind == "central":
        return _run_central(point, settings)
    return _run_federated(point, settings)


def _base_record(point: Point, settings: Settings) -> dict[str, Any]:
    rec: dict[str, Any] = point.to_dict()
    rec["target_epsilon"] = rec.pop("epsilon")  # None: ε = ∞ (no privacy)
    rec.update(key=point.key(settings), settings=settings.to_dict(), status="ok",
               noise_multiplier=None, epsilon_spent=None, epsilon_amplified=None,
               final_accuracy=None, best_accuracy=None, final_loss=None, rounds_done=0,
               wall_s=None, round_s_mean=None, survivors_mean=None, curve=[],
               finished_reason=None, device_errors=0)
    return rec


def _run_federated(point: Point, settings: Settings) -> dict[str, Any]:
    import tempfile  # noqa: PLC0415

    from clients.engines.local import InProcessEngine  # noqa: PLC0415
    from clients.options import SimOptions, UsageError  # noqa: PLC0415
    from dp import DPConfigError  # noqa: PLC0415

    rec = _base_record(point, settings)
    private = point.mechanism != "none"
    opts = SimOptions(
        task=point.task, clients=point.clients, per_round=point.per_round,
        rounds=point.rounds, local_epochs=settings.local_epochs,
        batch_size=settings.batch_size, lr=settings.lr, server_opt=settings.server_opt,
        server_lr=settings.server_lr, server_momentum=settings.server_momentum,
        partition=point.partition, alpha=settings.alpha, mechanism=point.mechanism,
        target_epsilon=point.epsilon if private else None, delta=point.delta,
        clip=settings.clip if private else settings.nonprivate_clip,
        bits=int(point.bits or 20), graph=settings.graph, seed=point.seed,
        min_survivors=settings.min_survivors, engine="local",
        secure_sum=settings.secure_sum, eval_every=settings.eval_every,
        federated_eval=False,  # the grid measures training; evaluation would cost ε
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as tmp:
        sim = InProcessEngine(opts, workdir=Path(tmp), console=None)
        try:
            result = sim.run()
        except (DPConfigError, UsageError) as exc:
            # calibration or plan impossible at this setting: a result, not a crash
            rec["status"] = "unreachable: " + " ".join(str(exc).split())
            rec["wall_s"] = time.monotonic() - t0
            return rec
        except (OSError, ValueError, RuntimeError, ArithmeticError) as exc:
            rec["status"] = f"failed: {type(exc).__name__}: " + " ".join(str(exc).split())
            rec["wall_s"] = time.monotonic() - t0
            return rec
        finally:
            sim.stop()
    rec["wall_s"] = float(result.elapsed_s)
    rec["noise_multiplier"] = float(result.noise_multiplier)
    rec["engine"] = result.engine
    rec["secure_sum"] = result.secure_sum
    rec["device_errors"] = len(result.device_errors)
    rec["device_error_messages"] = [str(e)[:300] for e in result.device_errors[:5]]
    rec["finished_reason"] = result.status.get("finished_reason")
    rec.update(summarize_rounds(result.rounds, point.rounds, result.status))
    secs = [float(x) for x in result.round_seconds]
    rec["round_s_mean"] = sum(secs) / len(secs) if secs else rec.get("round_s_mean")
    return rec


def summarize_rounds(rounds: Sequence[dict[str, Any]], planned: int,
                     status: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, ε and timing from the server's round log (``GET /v1/rounds``)."""
    from clients.engines.common import count  # noqa: PLC0415

    done = [r for r in rounds if r.get("status") == "done"]
    curve = [{"round": int(r["round"]), "accuracy": _num(r.get("accuracy")),
              "loss": _num(r.get("loss")), "epsilon": _num(r.get("epsilon")),
              "epsilon_amplified": _num(r.get("epsilon_amplified")),
              "survivors": count(r.get("survivors")), "sampled": count(r.get("sampled"))}
             for r in done]
    accs = [c["accuracy"] for c in curve if c["accuracy"] is not None]
    times = []
    for r in done:
        a, b = _num(r.get("started_at")), _num(r.get("finished_at"))
        if a is not None and b is not None and b >= a:
            times.append(b - a)
    survivors = [c["survivors"] for c in curve if c["survivors"] is not None]
    last = done[-1] if done else {}
    eps = _num(status.get("epsilon", last.get("epsilon")))
    eps_amp = _num(status.get("epsilon_amplified", last.get("epsilon_amplified")))
    out: dict[str, Any] = {
        "rounds_done": len(done),
        "rounds_aborted": sum(1 for r in rounds if r.get("status") == "aborted"),
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "epsilon_spent": eps,
        "epsilon_amplified": eps_amp,
        "round_s_mean": sum(times) / len(times) if times else None,
        "survivors_mean": sum(survivors) / len(survivors) if survivors else None,
        "curve": curve,
    }
    if len(done) < planned:
        reason = status.get("finished_reason") or "see the server log"
        out["status"] = f"incomplete: {len(done)} of {planned} rounds ({reason})"
    return out


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def central_epochs(point: Point, settings: Settings) -> int:
    """Epochs of the central baseline: the expected passes FedAvg makes over the pooled
    data, ``ceil(rounds * per_round / clients * local_epochs)``, at least 1 and at most
    ``settings.central_max_epochs`` (recipe.md has the central run to convergence)."""
    passes = point.rounds * point.per_round / point.clients * settings.local_epochs
    return min(settings.central_max_epochs, max(1, math.ceil(passes - 1e-9)))


def _run_central(point: Point, settings: Settings) -> dict[str, Any]:
    """Train the task's model on the pooled training set (Keras ``fit``, the task's own
    compiled SGD at the devices' learning rate) and evaluate after every epoch."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from clients.tasks import get_task  # noqa: PLC0415

    rec = _base_record(point, settings)
    t0 = time.monotonic()
    task = get_task(point.task)
    data = task.load_data()
    tf.keras.utils.set_random_seed(point.seed)
    model = task.build_model(point.seed)
    model.optimizer.learning_rate.assign(settings.lr)
    epochs = central_epochs(point, settings)
    curve = []
    for epoch in range(1, epochs + 1):
        t_epoch = time.monotonic()
        model.fit(np.asarray(data.x_train), np.asarray(data.y_train),
                  batch_size=settings.batch_size, epochs=1, shuffle=True, verbose=0)
        metrics = task.evaluate(model, np.asarray(data.x_test), np.asarray(data.y_test))
        curve.append({"round": epoch, "accuracy": float(metrics["accuracy"]),
                      "loss": float(metrics["loss"]), "epoch_s": time.monotonic() - t_epoch})
    accs = [c["accuracy"] for c in curve]
    rec.update(curve=curve, final_accuracy=accs[-1], best_accuracy=max(accs),
               final_loss=curve[-1]["loss"], rounds_done=epochs, epochs=epochs,
               wall_s=time.monotonic() - t0)
    return rec
