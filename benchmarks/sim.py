"""``python -m benchmarks sim``: seconds per round of the three engines, against the floor.

Workload (issue 9): Fashion-MNIST CNN (56,714 parameters), 1000 devices, 100 per round
(fixed-size sampling, so every round has exactly 100 like the baselines), IID, 1 local
epoch at batch 32, lr 0.05, ddgauss at 16 bits, Harary graph, 10 % dropout, the real
secure-aggregation protocol. The global model is evaluated only after the last round
(``--eval-every`` large), in every engine and in every baseline alike, so that seconds
per round measure training, encoding and secure aggregation.

Measured in the same run:

- **the floor**: the same 100 × 60 examples through the same compiled local update
  (:class:`clients.training.LocalTrainer`) on one stream, plus one secure-aggregation
  round of the same size in process (``secagg.run_round``: n = 100, the round's
  parameters, 10 % dropping before their masked input), plus the DP encoding of the 100
  updates (``dp.Encoder.encode_batch``);
- **engines**: ``local``, ``ray`` (2 workers) and ``http``: median seconds per round
  after warm-up rounds;
- **baselines**: pfl-research and Flower's Ray simulation on the same model and workload,
  each in its own venv (``benchmarks.baselines``), without secure aggregation or DP;
- **scaling**: seconds per round against cohort size (10, 100, 1000) and Ray workers
  (1, 2); ``local`` against ``ray`` at 5 local epochs;
- **long run** (full mode): 200 rounds at 1000 / 100 with ``local``, wall time.

Results: ``benchmarks/results/simulation_speed.md`` and ``.json``. Each target is
reported PASS or MISS with its figure. Timings on a 2-core machine are noisy: ratios are
taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import cli

WORKLOAD = dict(
    task="fashion", clients=1000, per_round=100, local_epochs=1, batch_size=32, lr=0.05,
    mechanism="ddgauss", noise_multiplier=1.0, bits=16, graph="harary", dropout=0.1,
    sampling="fixed", seed=0,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=cli.positive_int, default=12,
                        help="rounds per local/ray measurement, incl. 2 warm-up (default 12)")
    parser.add_argument("--http-rounds", type=cli.positive_int, default=4,
                        help="rounds of the http engine, incl. 1 warm-up (default 4)")
    parser.add_argument("--quick", action="store_true",
                        help="a small run (minutes): fewer rounds, no baselines, no long run")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip pfl-research and Flower (their venvs take minutes to build)")
    parser.add_argument("--long-rounds", type=int, default=200,
                        help="rounds of the long local run (0: skip; default 200)")
    parser.add_argument("--out-dir", default=None,
                        help="where to write simulation_speed.md/.json (default "
                             "benchmarks/results)")


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m benchmarks all`` runs this suite too (``--quick`` applies)."""


def run_suite(args: argparse.Namespace) -> int:
    ns = argparse.Namespace(rounds=12, http_rounds=4, quick=bool(getattr(args, "quick", False)),
                            no_baselines=False, long_rounds=200, out_dir=None)
    return main(ns)


# --------------------------------------------------------------------------- pieces


def _opts(**kw: Any) -> Any:
    from clients.options import SimOptions

    return SimOptions(**{**WORKLOAD, "eval_every": 100_000, "federated_eval": False, **kw})


def _median(xs: list[float], warmup: int) -> float | None:
    rest = xs[warmup:] if len(xs) > warmup else xs
    return statistics.median(rest) if rest else None


def run_engine(name: str, rounds: int, warmup: int, **kw: Any) -> dict[str, Any]:
    """Seconds per round of one engine on the workload (median after ``warmup``)."""
    import tempfile

    t0 = time.monotonic()
    rec: dict[str, Any] = {"engine": name, "rounds": rounds, "warmup": warmup, **kw}
    with tempfile.TemporaryDirectory(prefix=f"sim-{name}-") as tmp:
        opts = _opts(engine=name, rounds=rounds, **kw)
        if name == "ray":
            from clients.engines.ray import RayEngine

            engine: Any = RayEngine(opts, workdir=Path(tmp))
        elif name == "http":
            from clients.engines.http import HttpEngine

            engine = HttpEngine(opts, workdir=Path(tmp))
        else:
            from clients.engines.local import InProcessEngine

            engine = InProcessEngine(opts, workdir=Path(tmp))
        try:
            result = engine.run()
        finally:
            stop = getattr(engine, "stop", None)
            if stop is not None:
                stop()
    done = [r for r in result.rounds if r.get("status") == "done"]
    if name == "http":
        secs = [float(r["finished_at"]) - float(r["started_at"]) for r in result.rounds
                if r.get("finished_at") and r.get("started_at")]
    else:
        secs = list(result.round_seconds)
    rec.update(
        seconds_per_round=_median(secs, warmup), round_seconds=secs,
        rounds_done=len(done), accuracy=done[-1].get("accuracy") if done else None,
        epsilon=result.status.get("epsilon"), wall_s=time.monotonic() - t0,
        secure_sum=result.secure_sum, load_avg_1m=os.getloadavg()[0],
    )
    return rec


def measure_floor(reps: int = 3) -> dict[str, Any]:
    """Train (one stream, compiled), encode (batched) and secure-sum one round of 100."""
    import numpy as np

    from clients.engines.common import make_population, training_seed
    from clients.options import round_probe
    from clients.tasks import get_task
    from clients.training import LocalTrainer
    from dp import DPConfig, Encoder, EncodingPlan
    from dp.prng import SecureRng
    from secagg import RoundParams, Stage, run_round
    from server.round import corrupt_bound

    opts = _opts(engine="local")
    task = get_task("fashion")
    data = task.load_data()
    pop = make_population(data.x_train, data.y_train, 1000, "iid", 0.5, 0)
    trainer = LocalTrainer(task, seed=0)
    from clients.tasks.weights import get_flat_weights

    w = get_flat_weights(trainer.model)
    ids = list(range(100))

    def train() -> np.ndarray:
        out = np.empty((100, trainer.dim), np.float32)
        for i in ids:
            x, y = pop.shard(i)
            out[i] = trainer.update(w, x, y, epochs=1, batch_size=32, lr=0.05,
                                    seed=training_seed(0, 0, i))
        return out

    train()  # trace
    train_s = []
    for _ in range(reps):
        t = time.perf_counter()
        deltas = train()
        train_s.append(time.perf_counter() - t)
    probe = round_probe(opts)
    cfg = DPConfig(mechanism="ddgauss", clip=1.0, noise_multiplier=1.0, bits=16, delta=1e-5)
    plan = EncodingPlan.create(cfg, trainer.dim, 100, int(probe.min_survivors),
                               corrupt=corrupt_bound(0.1, 100))
    enc = Encoder(plan, os.urandom(32))
    enc.encode_batch(deltas[:2], [SecureRng.from_os() for _ in range(2)])  # warm
    encode_s = []
    for _ in range(reps):
        t = time.perf_counter()
        encoded, _ = enc.encode_batch(deltas, [SecureRng.from_os() for _ in ids])
        encode_s.append(time.perf_counter() - t)
    params = RoundParams.create(0, tuple(ids), int(plan.encoded_dim), 16, graph="harary",
                                dropout=0.1, corrupt=0.1, min_survivors=0.0)
    drop = {c: Stage.MASKED_INPUT for c in ids[::10]}
    inputs = {c: np.asarray(encoded[c], dtype=np.uint64) for c in ids}
    secagg_s = []
    for _ in range(reps):
        t = time.perf_counter()
        run_round(params, inputs, drop)
        secagg_s.append(time.perf_counter() - t)
    tr, en, sa = (statistics.median(v) for v in (train_s, encode_s, secagg_s))
    return {"train_s": tr, "encode_s": en, "secagg_s": sa, "floor_s": tr + en + sa,
            "degree": params.degree, "threshold": params.threshold,
            "encoded_dim": int(plan.encoded_dim)}


def run_baselines(rounds: int) -> list[dict[str, Any]]:
    from benchmarks import baselines

    return [
        baselines.run_pfl(rounds=rounds),
        baselines.run_flower_sim(rounds=rounds, compiled=True),
        baselines.run_flower_sim(rounds=max(4, rounds // 3), compiled=False),
    ]


# --------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-9 target with its figure, PASS or MISS (None: not measured)."""
    eng = {e["engine"]: e for e in res["engines"]}
    local = eng.get("local", {}).get("seconds_per_round")
    ray = eng.get("ray", {}).get("seconds_per_round")
    http = eng.get("http", {}).get("seconds_per_round")
    floor = res["floor"]["floor_s"]
    best = min(x for x in (local, ray) if x is not None) if (local or ray) else None
    out = []

    def add(name: str, ok: bool | None, figure: str) -> None:
        out.append({"target": name, "result": None if ok is None else ("PASS" if ok else "MISS"),
                    "figure": figure})

    r = _ratio(local, floor)
    add("local ≤ 1.5 × the floor", None if r is None else r <= 1.5,
        f"{local:.2f} s / {floor:.2f} s = {r:.2f}×" if r is not None else "not measured")
    r = _ratio(http, local)
    add("≥ 10× faster than http", None if r is None else r >= 10,
        f"http {http:.2f} s / local {local:.2f} s = {r:.1f}×" if r is not None
        else "not measured")
    for b in res.get("baselines", []):
        s = b.get("seconds_per_round")
        label = b.get("framework", "baseline")
        if s is None:
            add(f"faster than {label}", None, f"baseline failed: {b.get('error')}")
            continue
        add(f"faster than {label}", best is not None and best < s,
            f"ours (best engine) {best:.2f} s vs {s:.2f} s" if best is not None else "—")
    long = res.get("long_run")
    if long:
        minutes = long["wall_s"] / 60
        add(f"{long['rounds']} rounds at 1000/100 in ≤ 10 minutes", minutes <= 10,
            f"{minutes:.1f} min ({long['rounds_done']} rounds done)")
    ep5 = res.get("epochs5", {})
    r = _ratio(ep5.get("local"), ep5.get("ray"))
    add("ray (2 workers) ≥ 1.6× local at 5 local epochs", None if r is None else r >= 1.6,
        f"local {ep5.get('local'):.2f} s / ray {ep5.get('ray'):.2f} s = {r:.2f}×"
        if r is not None else "not measured")
    return out


def write_results(res: dict[str, Any], out_dir: Path) -> None:
    from benchmarks.report import markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "simulation_speed.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    f = res["floor"]
    lines = [
        "# Simulation speed: seconds per round (issue 9)", "",
        "Workload: Fashion-MNIST CNN (56,714 parameters), 1000 devices × 60 examples, 100 per "
        "round (fixed-size sampling), IID, 1 local epoch at batch 32, lr 0.05; ddgauss at 16 "
        "bits, Harary graph, 10 % dropout, the real secure-aggregation protocol (keys, masks, "
        "Shamir shares) unless noted; the global model is evaluated after the last round only "
        "(all engines and baselines alike).", "",
        f"Machine: {res['machine'].get('cpu_model')}, {res['machine'].get('cores')} cores; "
        f"{res['machine'].get('date_utc')}; load average at start {res['load_start']:.2f}. "
        "One run; compare ratios, not absolute seconds.", "",
        "## Floor (measured in this run)", "",
        markdown_table(["part", "seconds"], [
            ["100 × 60 examples through the compiled local update, one stream", f["train_s"]],
            ["DP encoding of the 100 updates (batched)", f["encode_s"]],
            [f"secure aggregation, n = 100 (k = {f['degree']}, t = {f['threshold']}), 10 dropped",
             f["secagg_s"]],
            ["**floor** (sum)", f["floor_s"]],
        ]), "",
        "## Engines", "",
        markdown_table(
            ["engine", "seconds / round (median)", "× floor", "rounds", "final accuracy",
             "load avg"],
            [[e["engine"] + (f" ({e['workers']} workers)" if e.get("workers") else ""),
              e["seconds_per_round"], _ratio(e["seconds_per_round"], f["floor_s"]),
              f"{e['rounds_done']}/{e['rounds']}", e.get("accuracy"), e.get("load_avg_1m")]
             for e in res["engines"]]),
    ]
    if res.get("baselines"):
        lines += ["", "## Baselines (own venvs; no secure aggregation, no DP)", "",
                  markdown_table(["framework", "seconds / round", "accuracy", "notes"],
                                 [[b.get("framework"), b.get("seconds_per_round"),
                                   b.get("accuracy"), b.get("notes") or b.get("error")]
                                  for b in res["baselines"]])]
    if res.get("scaling"):
        lines += ["", "## Scaling", "", markdown_table(
            ["engine", "cohort", "workers", "local epochs", "seconds / round"],
            [[s["engine"], s["per_round"], s.get("workers"), s["local_epochs"],
              s["seconds_per_round"]] for s in res["scaling"]])]
    if res.get("long_run"):
        lr = res["long_run"]
        lines += ["", "## Long run", "",
                  f"{lr['rounds_done']} of {lr['rounds']} rounds with the local engine in "
                  f"{lr['wall_s'] / 60:.1f} minutes; final accuracy {lr.get('accuracy')}."]
    lines += ["", "## Targets", "", markdown_table(
        ["target", "result", "figure"],
        [[t["target"], t["result"] or "not measured", t["figure"]] for t in res["targets"]])]
    (out_dir / "simulation_speed.md").write_text("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> int:
    from benchmarks.machine import machine_facts
    from benchmarks.report import RESULTS_DIR

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quick = bool(args.quick)
    rounds = 4 if quick else int(args.rounds)
    res: dict[str, Any] = {"machine": machine_facts(), "load_start": os.getloadavg()[0],
                           "quick": quick}

    def say(text: str) -> None:
        print(text, flush=True)

    say("floor: compiled training, batched encoding, one secure round ...")
    res["floor"] = measure_floor(reps=2 if quick else 3)
    say(f"  floor {res['floor']['floor_s']:.2f} s")
    res["engines"] = []
    for name, kw in (("local", {}), ("ray", {"workers": 2})):
        say(f"engine {name} ...")
        res["engines"].append(run_engine(name, rounds, 2 if rounds > 3 else 1, **kw))
        say(f"  {res['engines'][-1]['seconds_per_round']:.2f} s / round")
    say("engine http ...")
    http_rounds = 2 if quick else int(args.http_rounds)
    res["engines"].append(run_engine("http", http_rounds, 1))
    say(f"  {res['engines'][-1]['seconds_per_round']:.2f} s / round")
    res["scaling"] = []
    cohorts = (10, 100) if quick else (10, 100, 1000)
    for k in cohorts:
        rec = run_engine("local", 3 if k == 1000 else 4, 1, per_round=k)
        res["scaling"].append({**rec, "per_round": k, "local_epochs": 1})
    if not quick:
        rec = run_engine("ray", 4, 1, workers=1)
        res["scaling"].append({**rec, "per_round": 100, "local_epochs": 1})
    ep_rounds = 2 if quick else 4
    loc5 = run_engine("local", ep_rounds, 1, local_epochs=5)
    ray5 = run_engine("ray", ep_rounds, 1, local_epochs=5, workers=2)
    res["scaling"] += [{**loc5, "per_round": 100}, {**ray5, "per_round": 100}]
    res["epochs5"] = {"local": loc5["seconds_per_round"], "ray": ray5["seconds_per_round"]}
    res["baselines"] = [] if (quick or args.no_baselines) else run_baselines(rounds)
    long_rounds = 0 if quick else int(args.long_rounds)
    if long_rounds > 0:
        say(f"long run: {long_rounds} rounds ...")
        t0 = time.monotonic()
        rec = run_engine("local", long_rounds, 0, eval_every=50)
        res["long_run"] = {"rounds": long_rounds, "rounds_done": rec["rounds_done"],
                           "wall_s": time.monotonic() - t0, "accuracy": rec["accuracy"]}
    res["targets"] = targets(res)
    out = Path(args.out_dir) if args.out_dir else RESULTS_DIR
    write_results(res, out)
    for t in res["targets"]:
        say(f"{t['result'] or '—':5} {t['target']}: {t['figure']}")
    say(f"wrote {out / 'simulation_speed.md'}")
    return 0
