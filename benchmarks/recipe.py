"""``python -m benchmarks recipe``: a non-private FedAvg recipe for Fashion-MNIST that
converges, tuned on a small documented grid, against the same CNN trained centrally.

Issue 10, item 2: at 1000 devices, 100 sampled per round (Poisson, q = 0.1), IID, no
noise, tune local epochs, batch size, client lr, server optimizer and server lr, and
rounds; target ≥ 88 % test accuracy; train the CNN centrally to convergence as the
reference. Every run and its figures go to ``recipe.md`` / ``recipe.json``; the DP points
of ``python -m benchmarks privacy`` reuse the recipe (only clip and server lr may be
re-tuned per ε).

How a federated run is made: the in-process engine
(:class:`clients.engines.local.InProcessEngine`, the server's and the devices' round
logic without sockets) with ``--secure-sum exact`` (bit-identical to the masked protocol,
tests/clients/test_engines.py) and mechanism ``none`` (no noise; updates are still
clipped, at C = 10, above every update norm measured for these recipes, and quantized at
20 bits). Accuracy is the server's evaluation of the global model on the 10,000 test
images every ``eval_every`` rounds and after the last. Runs are seeded (cohorts, model
initialisation, local shuffling), so a cached run is the run.

Phases, in order, each run cached in ``<out-dir>/.cache/recipe/<key>.json`` (a rerun
resumes; ``--fresh`` ignores the cache):

1. **screen**: every recipe of :data:`SCREEN` for ``--screen-rounds`` rounds;
2. **long**: the ``--long-top`` best screened recipes (by final accuracy) for
   ``--long-rounds`` rounds, skipped when the measured seconds per round say it would
   overrun ``--budget-min`` (the skip is written down); with ``--extend R``, the best
   long run's recipe once more for R rounds (same rule);
3. **central**: the same model on the pooled 60,000 training images (the last 5,000 held
   out for early stopping), Keras SGD at lr 0.05, batch 32, until validation accuracy has
   not improved for ``PATIENCE`` epochs (at most ``--central-epochs``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import cli
from benchmarks.report import RESULTS_DIR, markdown_table, write_atomic, write_json

MD_NAME = "recipe.md"
JSON_NAME = "recipe.json"
CACHE_SUBDIR = Path(".cache") / "recipe"
CACHE_VERSION = 1
TARGET = 0.88

TASK = "fashion"
CLIENTS = 1000
PER_ROUND = 100
CLIP = 10.0
"""Non-private runs still clip (the encoder always does); 10 is above every update norm
of these recipes (at most about 3 at the first round), so it never binds."""
BITS = 20

CENTRAL_LR = 0.05
CENTRAL_BATCH = 32
CENTRAL_VAL = 5000
PATIENCE = 4


@dataclass(frozen=True)
class Recipe:
    """One point of the grid: the devices' local SGD and the server's optimizer."""

    local_epochs: int
    batch_size: int
    lr: float
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.0

    def label(self) -> str:
        server = f"{self.server_opt} η {self.server_lr:g}"
        if self.server_opt == "fedavgm":
            server += f" μ {self.server_momentum:g}"
        return f"E {self.local_epochs}, B {self.batch_size}, lr {self.lr:g}; {server}"

    def steps(self, examples: int) -> int:
        """Local SGD steps per round of a device holding ``examples`` examples."""
        return self.local_epochs * math.ceil(examples / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCREEN: tuple[Recipe, ...] = (
    Recipe(1, 32, 0.05),  # the recipe of the first grid (28.6 % after 10 rounds)
    Recipe(3, 10, 0.15),  # the demo's local recipe (clients/options.py)
    Recipe(5, 10, 0.1),
    Recipe(5, 10, 0.05),
    Recipe(5, 20, 0.1),
    Recipe(10, 10, 0.05),
    Recipe(5, 10, 0.1, "fedavgm", 1.0, 0.5),
    Recipe(5, 10, 0.1, "fedavgm", 0.2, 0.9),
    Recipe(5, 10, 0.1, "fedadam", 0.01),
    Recipe(5, 10, 0.1, "fedyogi", 0.01),
)
"""The screened grid. Local work per round (epochs × steps), client lr around the value
that moves a 60-example shard without diverging, and the four server optimizers at one
server lr each (FedAvgM at two (η, μ) pairs of the same effective step η/(1−μ) = 2;
FedAdam/FedYogi at η = 0.01 with τ = 1e-3, the scale Reddi et al. found for CNNs)."""


# --------------------------------------------------------------------------- runs


def run_key(kind: str, recipe: Recipe | None, rounds: int, seed: int) -> str:
    blob = json.dumps({"kind": kind, "recipe": recipe.to_dict() if recipe else None,
                       "rounds": rounds, "seed": seed, "task": TASK, "clients": CLIENTS,
                       "per_round": PER_ROUND, "clip": CLIP, "bits": BITS,
                       "central": [CENTRAL_LR, CENTRAL_BATCH, CENTRAL_VAL, PATIENCE]
                       if kind == "central" else None}, sort_keys=True)
    return f"{kind}-r{rounds}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def _cached(cache: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads((cache / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("cache_version") != CACHE_VERSION:
        return None
    rec = data.get("record")
    return dict(rec, cached=True) if isinstance(rec, dict) and rec.get("key") == key else None


def _save(cache: Path, rec: dict[str, Any]) -> None:
    body = {"cache_version": CACHE_VERSION,
            "record": {k: v for k, v in rec.items() if k != "cached"}}
    write_atomic(cache / f"{rec['key']}.json", json.dumps(body, indent=1) + "\n")


def run_federated(recipe: Recipe, rounds: int, seed: int, eval_every: int,
                  phase: str) -> dict[str, Any]:
    """One non-private FedAvg run of ``recipe``; its record (curve from the round log)."""
    import tempfile  # noqa: PLC0415

    from clients.engines.local import InProcessEngine  # noqa: PLC0415
    from clients.options import SimOptions  # noqa: PLC0415

    opts = SimOptions(
        task=TASK, clients=CLIENTS, per_round=PER_ROUND, rounds=rounds,
        local_epochs=recipe.local_epochs, batch_size=recipe.batch_size, lr=recipe.lr,
        server_opt=recipe.server_opt, server_lr=recipe.server_lr,
        server_momentum=recipe.server_momentum, partition="iid", mechanism="none",
        clip=CLIP, bits=BITS, seed=seed, engine="local", secure_sum="exact",
        eval_every=eval_every, federated_eval=False,
    )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
        result = InProcessEngine(opts, workdir=Path(tmp)).run()
    done = [r for r in result.rounds if r.get("status") == "done"]
    curve = [{"round": int(r["round"]) + 1, "accuracy": float(r["accuracy"]),
              "loss": float(r["loss"])} for r in done if r.get("accuracy") is not None]
    accs = [c["accuracy"] for c in curve]
    reached = next((c["round"] for c in curve if c["accuracy"] >= TARGET), None)
    secs = [float(s) for s in result.round_seconds]
    return {
        "key": run_key("federated", recipe, rounds, seed), "kind": "federated",
        "phase": phase, "recipe": recipe.to_dict(), "label": recipe.label(),
        "rounds": rounds, "rounds_done": len(done), "seed": seed, "eval_every": eval_every,
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "round_reaching_target": reached, "curve": curve,
        "round_s_mean": sum(secs) / len(secs) if secs else None,
        "wall_s": time.monotonic() - t0,
        "status": "ok" if len(done) == rounds else f"incomplete: {len(done)} of {rounds}",
    }


def run_central(seed: int, max_epochs: int) -> dict[str, Any]:
    """The CNN on the pooled data until validation accuracy stops improving."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from clients.tasks import get_task  # noqa: PLC0415

    t0 = time.monotonic()
    task = get_task(TASK)
    data = task.load_data()
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)
    x_fit, y_fit, x_val, y_val = x[:-CENTRAL_VAL], y[:-CENTRAL_VAL], x[-CENTRAL_VAL:], \
        y[-CENTRAL_VAL:]
    x_test, y_test = np.asarray(data.x_test), np.asarray(data.y_test)
    tf.keras.utils.set_random_seed(seed)
    model = task.build_model(seed)
    model.optimizer.learning_rate.assign(CENTRAL_LR)
    curve: list[dict[str, Any]] = []
    best_val, best_epoch = -1.0, 0
    for epoch in range(1, max_epochs + 1):
        t_ep = time.monotonic()
        model.fit(x_fit, y_fit, batch_size=CENTRAL_BATCH, epochs=1, shuffle=True, verbose=0)
        val = task.evaluate(model, x_val, y_val)["accuracy"]
        test = task.evaluate(model, x_test, y_test)
        curve.append({"epoch": epoch, "val_accuracy": float(val),
                      "accuracy": float(test["accuracy"]), "loss": float(test["loss"]),
                      "epoch_s": time.monotonic() - t_ep})
        print(f"  central epoch {epoch}: val {val:.4f} test {test['accuracy']:.4f}",
              flush=True)
        if val > best_val + 1e-4:
            best_val, best_epoch = float(val), epoch
        elif epoch - best_epoch >= PATIENCE:
            break
    at_best = curve[best_epoch - 1]
    return {
        "key": run_key("central", None, max_epochs, seed), "kind": "central",
        "phase": "central", "label": f"central Keras SGD lr {CENTRAL_LR:g}, batch "
        f"{CENTRAL_BATCH}", "seed": seed, "epochs_run": len(curve),
        "best_val_epoch": best_epoch, "converged": len(curve) - best_epoch >= PATIENCE,
        "accuracy_at_best_val": at_best["accuracy"], "final_accuracy": curve[-1]["accuracy"],
        "best_accuracy": max(c["accuracy"] for c in curve), "curve": curve,
        "wall_s": time.monotonic() - t0, "status": "ok",
    }


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m benchmarks recipe``."""
    parser.description = (__doc__ or "").splitlines()[0]
    parser.add_argument("--screen-rounds", type=cli.positive_int, default=20,
                        help="rounds of each screened recipe (default: 20)")
    parser.add_argument("--long-rounds", type=cli.positive_int, default=120,
                        help="rounds of the long runs (default: 120)")
    parser.add_argument("--long-top", type=cli.positive_int, default=2,
                        help="how many of the best screened recipes get a long run (default: 2)")
    parser.add_argument("--extend", type=cli.positive_int, default=None,
                        help="then run the best long recipe again for this many rounds, if "
                        "the budget allows (default: none)")
    parser.add_argument("--eval-every", type=cli.positive_int, default=5,
                        help="evaluate the global model every N rounds (default: 5)")
    parser.add_argument("--central-epochs", type=cli.positive_int, default=40,
                        help="at most this many central epochs (default: 40)")
    parser.add_argument("--budget-min", type=float, default=60.0,
                        help="machine minutes for the whole benchmark; a long run that the "
                        "measured s/round says would overrun it is skipped (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--no-central", action="store_true", help="skip the central run")
    parser.add_argument("--fresh", action="store_true", help="ignore cached runs")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help=f"where results go (default: {RESULTS_DIR})")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not (args.budget_min > 0 and math.isfinite(args.budget_min)):
        cli.fail_usage(f"--budget-min must be a number > 0, got {args.budget_min}")
    if args.seed < 0:
        cli.fail_usage(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out_dir)
    cache = out / CACHE_SUBDIR
    t_start = time.monotonic()
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    spent = 0.0  # machine seconds of the runs (cached runs count what they cost then)
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])

    def get(key: str, run: Any, what: str) -> dict[str, Any]:
        nonlocal spent
        rec = None if args.fresh else _cached(cache, key)
        if rec is None:
            print(f"{what}: running ...", flush=True)
            rec = run()
            _save(cache, rec)
        print(f"{what}: final {rec['final_accuracy']:.4f}, best {rec['best_accuracy']:.4f}, "
              f"{rec['wall_s']:.0f} s" + (" (cached)" if rec.get("cached") else ""), flush=True)
        spent += float(rec["wall_s"])
        records.append(rec)
        write_results(out, records, skipped, args, command, spent)
        return rec

    screened = []
    for i, recipe in enumerate(SCREEN, 1):
        key = run_key("federated", recipe, args.screen_rounds, args.seed)
        screened.append(get(key, lambda r=recipe: run_federated(
            r, args.screen_rounds, args.seed, args.eval_every, "screen"),
            f"[screen {i}/{len(SCREEN)}] {recipe.label()}"))
    central_key = run_key("central", None, args.central_epochs, args.seed)
    central_guess = 0.0 if args.no_central or (
        not args.fresh and _cached(cache, central_key) is not None) else 8 * 60.0

    def fits(rec: dict[str, Any], rounds: int, label: str) -> bool:
        """Whether a run of ``rounds`` rounds of ``rec``'s recipe fits the budget (cached
        runs always do); a run that does not is written down as skipped."""
        recipe = Recipe(**rec["recipe"])
        key = run_key("federated", recipe, rounds, args.seed)
        estimate = float(rec["round_s_mean"] or 0) * rounds * 1.1 + 30.0
        if args.fresh or _cached(cache, key) is None:
            if spent + estimate + central_guess > args.budget_min * 60:
                skipped.append(f"{label} of {recipe.label()} ({rounds} rounds, about "
                               f"{estimate / 60:.0f} min from its measured s/round): over the "
                               f"{args.budget_min:g}-minute budget after {spent / 60:.0f} min")
                print("skipped: " + skipped[-1], flush=True)
                return False
        return True

    ranked = sorted((r for r in screened if r["final_accuracy"] is not None),
                    key=lambda r: -r["final_accuracy"])
    longs = []
    for rank, rec in enumerate(ranked[: args.long_top], 1):
        if not fits(rec, args.long_rounds, "long run"):
            continue
        recipe = Recipe(**rec["recipe"])
        longs.append(get(run_key("federated", recipe, args.long_rounds, args.seed),
                         lambda r=recipe: run_federated(
                             r, args.long_rounds, args.seed, args.eval_every, "long"),
                         f"[long {rank}] {recipe.label()}"))
    if args.extend and longs:
        top = max(longs, key=lambda r: r["final_accuracy"] or 0.0)
        if fits(top, args.extend, "extended run"):
            recipe = Recipe(**top["recipe"])
            get(run_key("federated", recipe, args.extend, args.seed),
                lambda: run_federated(recipe, args.extend, args.seed, args.eval_every,
                                      "extended"), f"[extended] {recipe.label()}")
    if not args.no_central:
        get(central_key, lambda: run_central(args.seed, args.central_epochs), "[central]")
    write_results(out, records, skipped, args, command, spent)
    print(f"done in {(time.monotonic() - t_start) / 60:.1f} min; results in {out}", flush=True)
    return 0


# --------------------------------------------------------------------------- results


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _at(curve: list[dict[str, Any]], rnd: int) -> float | None:
    pts = [c["accuracy"] for c in curve if c.get("round") == rnd]
    return pts[0] if pts else None


def best_federated(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The federated run with the highest final accuracy (long runs win ties)."""
    feds = [r for r in records if r["kind"] == "federated" and r.get("final_accuracy")]
    if not feds:
        return None
    return max(feds, key=lambda r: (r["final_accuracy"], r["rounds"]))


def write_results(out: Path, records: list[dict[str, Any]], skipped: list[str],
                  args: argparse.Namespace, command: str, spent: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    best = best_federated(records)
    central = next((r for r in records if r["kind"] == "central"), None)
    verdict = None
    if best is not None:
        verdict = "PASS" if best["final_accuracy"] >= TARGET else "MISS"
    meta = {
        "generated_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "task": TASK, "clients": CLIENTS, "per_round": PER_ROUND,
        "partition": "iid", "mechanism": "none", "clip": CLIP, "bits": BITS,
        "sampling": "poisson", "engine": "local", "secure_sum": "exact",
        "screen_rounds": args.screen_rounds, "long_rounds": args.long_rounds,
        "long_top": args.long_top, "extend": args.extend, "eval_every": args.eval_every,
        "seed": args.seed,
        "budget_min": args.budget_min, "machine_minutes": spent / 60, "target": TARGET,
        "grid": [r.to_dict() for r in SCREEN], "skipped": skipped,
    }
    chosen = None if best is None else {**best["recipe"], "rounds": best["rounds"],
                                         "final_accuracy": best["final_accuracy"],
                                         "verdict": verdict}
    write_json(out / JSON_NAME, {"meta": meta, "chosen": chosen, "runs": records})
    write_atomic(out / MD_NAME, render(records, skipped, meta, best, central, verdict))


def render(records: list[dict[str, Any]], skipped: list[str], meta: dict[str, Any],
           best: dict[str, Any] | None, central: dict[str, Any] | None,
           verdict: str | None) -> str:
    lines = [
        "# A FedAvg recipe that converges (`python -m benchmarks recipe`)", "",
        f"Generated {meta['generated_at']} by `{meta['command']}`; {meta['machine_minutes']:.0f} "
        "machine minutes of runs (2 shared cores).", "",
        "## Setup", "",
        f"- Fashion-MNIST CNN (56,714 parameters), {CLIENTS} devices × 60 examples (IID), "
        f"{PER_ROUND} sampled per round (Poisson, q = {PER_ROUND / CLIENTS:g}), non-private "
        f"(mechanism `none`; clip {CLIP:g}, never binding; {BITS} bits), seed {meta['seed']}.",
        "- Engine: in-process (`--engine local`), `--secure-sum exact` (bit-identical to the "
        "masked protocol). Accuracy: the server's evaluation on the 10,000 test images every "
        f"{meta['eval_every']} rounds and after the last.",
        f"- Grid ({len(SCREEN)} recipes, each screened for {meta['screen_rounds']} rounds; "
        f"the {meta['long_top']} best by final accuracy then run for {meta['long_rounds']} "
        "rounds" + (f", and the best of those for {meta['extend']} rounds"
                    if meta.get("extend") else "") + "): "
        + "; ".join(Recipe(**g).label() for g in meta["grid"]) + ".",
        f"- Target: ≥ {100 * TARGET:.0f} % test accuracy.", "",
        "## Runs", "",
    ]
    rows = []
    for r in records:
        if r["kind"] != "federated":
            continue
        c = r["curve"]
        rows.append([r["phase"], r["label"], r["rounds"], _pct(_at(c, 10)), _pct(_at(c, 20)),
                     _pct(r["final_accuracy"]), _pct(r["best_accuracy"]),
                     "—" if r["round_reaching_target"] is None else r["round_reaching_target"],
                     "—" if r["round_s_mean"] is None else f"{r['round_s_mean']:.2f}",
                     f"{r['wall_s']:.0f}"])
    lines.append(markdown_table(
        ["phase", "recipe", "rounds", "acc @10", "acc @20", "final acc", "best acc",
         f"first round ≥ {100 * TARGET:.0f} %", "s/round", "wall (s)"], rows))
    for s in skipped:
        lines.append(f"- skipped: {s}")
    if skipped:
        lines.append("")
    lines += ["## Central reference", ""]
    if central is None:
        lines += ["Not run.", ""]
    else:
        conv = (f"converged: no validation gain for {PATIENCE} epochs after epoch "
                f"{central['best_val_epoch']}" if central["converged"] else
                f"NOT converged: the epoch cap came first; best validation at epoch "
                f"{central['best_val_epoch']}")
        lines += [
            f"{central['label']} on 55,000 pooled images (5,000 held out for early stopping), "
            f"{central['epochs_run']} epochs ({conv}). Test accuracy at the best "
            f"validation epoch {_pct(central['accuracy_at_best_val'])}, final "
            f"{_pct(central['final_accuracy'])}, best {_pct(central['best_accuracy'])}; "
            f"{central['wall_s']:.0f} s.", "",
        ]
    lines += ["## Verdict", ""]
    if best is None:
        lines += ["No federated run finished yet.", ""]
    else:
        ref = "" if central is None else (
            f" (central reference {_pct(central['accuracy_at_best_val'])})")
        lines += [
            f"Best recipe: **{best['label']}, {best['rounds']} rounds**: final "
            f"{_pct(best['final_accuracy'])}{ref}. Target ≥ {100 * TARGET:.0f} %: "
            f"**{verdict}**.", "",
        ]
        if verdict == "MISS":
            lines += [
                f"88 % was not reached within this budget ({meta['budget_min']:g} machine "
                "minutes on 2 shared cores): the figures above are what it bought.", "",
            ]
    return "\n".join(lines)
