"""Results of the privacy benchmark: the markdown table and target checks, the raw JSON,
and the plots (matplotlib, Agg backend).

Everything here is computed from the records the runs produced; nothing is typed in.
The target checks follow the issue's wording:

- at target ε ≤ 8 (and > 3): final accuracy within 3 points of non-private FedAvg on the
  same partition; at target ε ≤ 3: within 8 points (the looser bound applies there);
  checked for ``gaussian`` and for the discrete mechanisms at 16 and 20 bits (12 bits has
  its own target below);
- ``ddgauss`` / ``skellam`` at 16 bits within 0.5 points of ``gaussian`` at the same target
  ε and partition (hence nearly the same z);
- 12 bits visibly worse: final accuracy at least 1 point below the same mechanism at
  16 bits and the same target ε, or the target unreachable at 12 bits.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.privacy_grid import Grid, eps_text
from benchmarks.report import fmt, markdown_table, write_atomic, write_json

MD_NAME = "privacy_accuracy.md"
JSON_NAME = "privacy_accuracy.json"
PNG_NAME = "privacy_accuracy.png"

TABLE_HEADERS: tuple[str, ...] = (
    "mechanism", "bits", "partition", "target ε", "spent ε amplified", "spent ε", "δ", "z",
    "clients", "per-round", "rounds", "final accuracy", "best accuracy", "wall time (s)",
    "s/round", "status",
)
"""Columns of the results table (the test checks them)."""

WITHIN_LOOSE = 3.0
WITHIN_TIGHT_EPS = 3.0
WITHIN_TIGHT = 8.0
SAME_NOISE = 0.5
VISIBLY_WORSE = 1.0


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def table_rows(records: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One table row per record."""
    rows = []
    for r in records:
        central = r.get("kind") == "central"
        mech = "central (Keras, pooled)" if central else (
            "none (FedAvg)" if r.get("mechanism") == "none" else r.get("mechanism"))
        rounds = r.get("rounds_done") if central else (
            f"{r.get('rounds_done')}/{r.get('rounds')}")
        if central:
            rounds = f"{r.get('epochs', r.get('rounds_done'))} epochs"
        rows.append([
            mech,
            "—" if central else r.get("bits"),
            r.get("partition"),
            "∞" if r.get("target_epsilon") is None or central
            else eps_text(r.get("target_epsilon")),
            _eps_cell(r.get("epsilon_amplified"), r),
            _eps_cell(r.get("epsilon_spent"), r),
            "—" if central else f"{r.get('delta'):g}",
            "—" if r.get("noise_multiplier") is None else f"{r['noise_multiplier']:.4g}",
            r.get("clients"),
            r.get("per_round"),
            rounds,
            "—" if r.get("final_accuracy") is None else f"{r['final_accuracy']:.4f}",
            "—" if r.get("best_accuracy") is None else f"{r['best_accuracy']:.4f}",
            "—" if r.get("wall_s") is None else f"{r['wall_s']:.0f}",
            "—" if r.get("round_s_mean") is None else f"{r['round_s_mean']:.1f}",
            r.get("status"),
        ])
    return rows


def _eps_cell(value: Any, r: dict[str, Any]) -> str:
    if r.get("kind") == "central" or r.get("mechanism") == "none":
        return "∞"
    if value is None:
        return "—"
    return f"{float(value):.3g}"


# --------------------------------------------------------------------------- targets


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and r.get("final_accuracy") is not None


def _find(records: Sequence[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    for r in records:
        if r.get("kind") == "federated" and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def target_checks(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS / MISS / N/A for every target that the records allow to check, with the
    measured figures."""
    checks: list[dict[str, Any]] = []
    feds = [r for r in records if r.get("kind") == "federated"]
    # 1 + 2: distance to non-private FedAvg
    for r in feds:
        eps = r.get("target_epsilon")
        if r.get("mechanism") == "none" or eps is None or eps > 8:
            continue
        if r.get("mechanism") != "gaussian" and (r.get("bits") or 0) < 16:
            continue
        bound = WITHIN_TIGHT if eps <= WITHIN_TIGHT_EPS else WITHIN_LOOSE
        name = (f"ε ≤ {'3' if eps <= WITHIN_TIGHT_EPS else '8'}: {r['mechanism']} "
                f"{r['bits']} bits, target ε {eps_text(eps)} ({r['partition']}) within "
                f"{bound:g} points of non-private FedAvg")
        base = _find(records, mechanism="none", partition=r.get("partition"))
        checks.append(_compare(name, r, base, bound, mode="below"))
    # 3: discrete at 16 bits against gaussian at the same target ε
    for r in feds:
        if r.get("mechanism") not in ("ddgauss", "skellam") or r.get("bits") != 16:
            continue
        ref = _find(records, mechanism="gaussian", bits=16,
                    target_epsilon=r.get("target_epsilon"), partition=r.get("partition"))
        name = (f"{r['mechanism']} 16 bits within {SAME_NOISE:g} points of gaussian at "
                f"target ε {eps_text(r.get('target_epsilon'))} ({r['partition']})")
        checks.append(_compare(name, r, ref, SAME_NOISE, mode="abs"))
    # 4: 12 bits visibly worse than 16 bits
    for r in feds:
        if r.get("bits") != 12 or r.get("mechanism") not in ("ddgauss", "skellam"):
            continue
        ref = _find(records, mechanism=r.get("mechanism"), bits=16,
                    target_epsilon=r.get("target_epsilon"), partition=r.get("partition"))
        name = (f"{r['mechanism']} 12 bits visibly worse (≥ {VISIBLY_WORSE:g} point) than "
                f"16 bits at target ε {eps_text(r.get('target_epsilon'))} ({r['partition']})")
        if str(r.get("status", "")).startswith("unreachable"):
            checks.append({"target": name, "verdict": "PASS",
                           "measured": "12 bits cannot reach this ε: " + str(r["status"])})
            continue
        checks.append(_compare(name, r, ref, VISIBLY_WORSE, mode="worse"))
    return checks


def _compare(name: str, r: dict[str, Any], ref: dict[str, Any] | None, bound: float,
             mode: str) -> dict[str, Any]:
    if ref is None or not _ok(ref):
        why = "reference not run" if ref is None else f"reference: {ref.get('status')}"
        return {"target": name, "verdict": "N/A", "measured": why}
    if not _ok(r):
        return {"target": name, "verdict": "MISS" if str(r.get("status", "")).startswith(
            "unreachable") else "N/A", "measured": str(r.get("status"))}
    acc, ref_acc = float(r["final_accuracy"]), float(ref["final_accuracy"])
    diff = 100.0 * (acc - ref_acc)
    if mode == "below":
        ok = diff >= -bound
    elif mode == "abs":
        ok = abs(diff) <= bound
    else:  # "worse": at least `bound` points below the reference
        ok = diff <= -bound
    z_text = ""
    if r.get("noise_multiplier") and ref.get("noise_multiplier"):
        z_text = f"; z {r['noise_multiplier']:.3g} vs {ref['noise_multiplier']:.3g}"
    measured = (f"{100 * acc:.2f} % vs {100 * ref_acc:.2f} % ({diff:+.2f} points; "
                f"spent ε amplified {fmt(r.get('epsilon_amplified'))}, unamplified "
                f"{fmt(r.get('epsilon_spent'))}{z_text})")
    return {"target": name, "verdict": "PASS" if ok else "MISS", "measured": measured}


# --------------------------------------------------------------------------- writing


def write_results(out_dir: Path, grid: Grid, records: Sequence[dict[str, Any]], *,
                  command: str, counts: dict[str, int]) -> None:
    """Write the markdown, JSON and PNG files for the records so far."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(grid.points)
    done = len(records)
    complete = done >= total
    checks = target_checks(records)
    meta = {
        "generated_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "complete": complete,
        "points_done": done,
        "points_total": total,
        "counts": dict(counts),
        "task": grid.scale.task,
        "clients": grid.scale.clients,
        "per_round": grid.scale.per_round,
        "rounds": grid.scale.rounds,
        "sample_rate": grid.scale.sample_rate,
        "settings": grid.settings.to_dict(),
        "grid": grid.description,
        "grid_points": [p.label() for p in grid.points],
    }
    write_json(out_dir / JSON_NAME, {"meta": meta, "points": list(records), "targets": checks})
    write_atomic(out_dir / MD_NAME, render_markdown(grid, records, checks, meta))
    plot(out_dir / PNG_NAME, records, grid)


def render_markdown(grid: Grid, records: Sequence[dict[str, Any]],
                    checks: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results page."""
    s = grid.scale
    st = grid.settings
    status = "complete" if meta["complete"] else (
        f"**partial: {meta['points_done']} of {meta['points_total']} points**")
    feds = [r for r in records if r.get("kind") == "federated" and r.get("round_s_mean")]
    round_times = [float(r["round_s_mean"]) for r in feds]
    lines = [
        "# Privacy against accuracy (`python -m benchmarks privacy`)",
        "",
        f"Status: {status}. Generated {meta['generated_at']} by `{meta['command']}` "
        f"({meta['counts'].get('run', 0)} points run now, "
        f"{meta['counts'].get('cached', 0)} from the cache).",
        "",
        "Every federated point is the real pipeline (`clients.simulation.Simulation`): a "
        "server subprocess on loopback, the devices over signed HTTP, secure aggregation "
        f"({st.graph} graph, the server's threshold t), each device's share of distributed "
        "noise, the server's accountant. Accuracy is the server's evaluation of the global "
        "model on the test set; spent ε is the server's accountant after the last round.",
        "",
        "## Setup",
        "",
        f"- task `{s.task}`, {s.clients} clients, {s.per_round} sampled per round "
        f"(q = {s.sample_rate:.3g}), {s.rounds} rounds, δ as in the table, seed as in the "
        "JSON.",
        f"- devices: {st.local_epochs} local epoch(s) of SGD, batch {st.batch_size}, lr "
        f"{st.lr:g}; server lr {st.server_lr:g}; clip C = {st.clip:g}; Dirichlet α = "
        f"{st.alpha:g}; stage timeout {fmt(st.stage_timeout)} s. Fixed for every point, "
        "not tuned.",
        "- non-private FedAvg (ε = ∞): mechanism `none` through the same pipeline "
        "(quantized and securely summed at 20 bits, no noise).",
        "- central baseline: the same model trained on the pooled training data with Keras "
        "(SGD at the devices' lr and batch) for ceil(rounds × per_round / clients × local "
        "epochs) epochs, the expected number of passes FedAvg makes over the data; "
        "evaluated with `task.evaluate`.",
        "- **target ε**: what the noise is calibrated for (`SimOptions(target_epsilon=…)`): "
        "the *amplified* ε after the planned rounds if only m of the sampled devices "
        f"survive (shares are sized for m contributors; m = max(t, ⌈{st.min_survivors:g} × "
        "per_round⌉), the survivors a round needs to be unmasked, `--min-survivors`).",
        "- **spent ε amplified**: the server's accountant, Poisson subsampling at q; valid "
        "only if the adversary does not learn who took part in a round.",
        "- **spent ε**: the server's accountant without amplification; valid even against "
        "this server, which knows whom it sampled.",
        "- z: the noise multiplier chosen by the calibration (summed noise std z·C for m "
        "contributors).",
        "",
        "## Grid",
        "",
        grid.description,
        "",
    ]
    t = secagg_threshold(s.per_round, st.graph)
    if t is not None:
        m = max(t, math.ceil(st.min_survivors * s.per_round - 1e-9))
        lines += [
            f"- Secure aggregation threshold: t = {t} of the {s.per_round} sampled devices "
            f"({st.graph} graph, 10 % dropout / 10 % corrupt assumed); minimum survivors "
            f"m = {m} (`--min-survivors {st.min_survivors:g}`: devices refuse to unmask a "
            f"round with fewer inputs). Each device's noise share is sized so that any m "
            f"shares reach the calibrated noise; with all {s.per_round} surviving, the "
            f"summed noise std is √({s.per_round}/{m}) = "
            f"{math.sqrt(s.per_round / m):.2f}× z·C, which is why the spent ε is below "
            "the target (the price of surviving dropouts without trusting the server). "
            f"Sized for t alone it would be √({s.per_round}/{t}) = "
            f"{math.sqrt(s.per_round / t):.2f}×.",
        ]
    lines += [f"- {n}" for n in grid.notes]
    if t is not None and not grid.notes:
        lines.append("")
    if grid.notes:
        lines.append("")
    if round_times:
        lines += [
            f"Measured per-round wall time in this run (server log, started → finished): "
            f"mean {sum(round_times) / len(round_times):.1f} s, range "
            f"{min(round_times):.1f}–{max(round_times):.1f} s over {len(round_times)} "
            "federated points (2 shared cores, timings are noisy).",
            "",
        ]
    lines += [
        "## Results",
        "",
        markdown_table(list(TABLE_HEADERS), table_rows(records)),
        "## Targets",
        "",
        "Targets of the issue (stated for Fashion-MNIST, 1000 clients, 100 per round; "
        f"checked here on this run's settings: `{s.task}`, {s.clients} clients, "
        f"{s.per_round} per round, {s.rounds} rounds). Rows are compared at the same target "
        "ε and partition using final accuracy. Not tuned: a MISS is reported with its "
        "measured figure. Where both sides of a comparison are near chance (10 %), the "
        "difference is noise of the training run, not a property of the mechanism. Each "
        "point is one run: the server samples the devices of every round from the OS "
        "CSPRNG (not from the seed), so two runs of the same point train on different "
        "devices, and with few rounds that alone moves the final accuracy by several "
        "points. Rows whose order contradicts their noise (a smaller ε or fewer bits "
        "scoring higher) show the size of that spread; a PASS or MISS by a few points is "
        "within it.",
        "",
    ]
    lines += baseline_gap_note(records, s.rounds)
    if checks:
        lines.append(markdown_table(
            ["target", "verdict", "measured"],
            [[c["target"], c["verdict"], c["measured"]] for c in checks]))
    else:
        lines += ["No target can be checked from the points run so far.", ""]
    n_pass = sum(1 for c in checks if c["verdict"] == "PASS")
    n_miss = sum(1 for c in checks if c["verdict"] == "MISS")
    lines += [f"Summary: {n_pass} PASS, {n_miss} MISS, {len(checks) - n_pass - n_miss} N/A.",
              ""]
    lines += run_notes(records)
    lines += [
              "", f"Plot: `{PNG_NAME}` (left: final accuracy against target ε; right: "
              "accuracy against round for a few settings). Raw records: "
              f"`{JSON_NAME}`.", ""]
    return "\n".join(lines)


def baseline_gap_note(records: Sequence[dict[str, Any]], rounds: int) -> list[str]:
    """A warning when non-private FedAvg itself is far below the central baseline: the
    "within k points of FedAvg" targets then compare models that are both undertrained."""
    def acc(pred: Any) -> float | None:
        for r in records:
            if pred(r) and r.get("status") == "ok" and r.get("final_accuracy") is not None:
                return float(r["final_accuracy"])
        return None

    central = acc(lambda r: r.get("kind") == "central")
    fedavg = acc(lambda r: r.get("kind") == "federated" and r.get("mechanism") == "none"
                 and r.get("partition") == "iid")
    if central is None or fedavg is None or central - fedavg < 0.10:
        return []
    return [
        f"Read the targets with this in mind: after {rounds} rounds non-private FedAvg "
        f"reaches {100 * fedavg:.1f} % against {100 * central:.1f} % for the central "
        "baseline. FedAvg is far from converged at this many rounds (each device holds few "
        "examples and takes few local steps), so a private run close to it is close to an "
        "undertrained model, not to what the task allows.",
        "",
    ]


def secagg_threshold(per_round: int, graph: str) -> int | None:
    """The threshold t the server uses for a full round of ``per_round`` devices (the
    same call as ``Simulation.threshold``), or None if it cannot be computed."""
    try:
        from secagg import RoundParams  # noqa: PLC0415

        probe = RoundParams.create(0, tuple(range(per_round)), 1, 16, graph=graph,
                                   dropout=0.1, active=False)
    except (ImportError, ValueError):
        return None
    return int(probe.threshold)


def run_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """The "Run notes" section: device failures seen in the runs, and the workaround."""
    out = ["## Run notes", "",
           "- s/round: mean of (finished_at − started_at) over the done rounds in the "
           "server's log; wall time includes server start-up, registration and calibration.",
           "- Devices lost: a device whose request fails on the network leaves that "
           "round (a dropout of the round) and takes part again when sampled later; the "
           "server keeps idle connections 30 s, longer than the simulation's devices (2 s), "
           "so that a request never goes out on a connection the server is closing. Points "
           "where a device thread stopped altogether are listed here."]
    for r in records:
        n = int(r.get("device_errors") or 0)
        if n:
            msgs = "; ".join(r.get("device_error_messages") or [])
            label = (f"{r.get('mechanism')} {r.get('bits')} bits target ε "
                     f"{eps_text(r.get('target_epsilon'))} ({r.get('partition')})")
            out.append(f"  - {label}: {n} device(s) stopped"
                       + (f" ({msgs})" if msgs else "")
                       + (f"; mean survivors {r['survivors_mean']:.1f} of {r['per_round']}"
                          if r.get("survivors_mean") is not None else ""))
    out.append("")
    return out


# --------------------------------------------------------------------------- plot


def plot(path: Path, records: Sequence[dict[str, Any]], grid: Grid) -> None:
    """Accuracy against target ε (log x; one line per mechanism + bits (+ partition); the
    non-private FedAvg as a marker at "∞" and a dotted line, the central baseline as a
    dashed line) and accuracy against round for a few settings."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    feds = [r for r in records if r.get("kind") == "federated"]
    private = [r for r in feds if r.get("mechanism") != "none" and _ok(r)]
    finite = sorted({float(r["target_epsilon"]) for r in feds
                     if r.get("target_epsilon") is not None})
    x_inf = (max(finite) * 2.5) if finite else 32.0
    series: dict[str, list[tuple[float, float]]] = {}
    for r in private:
        key = _series(r)
        series.setdefault(key, []).append(
            (float(r["target_epsilon"]), 100 * r["final_accuracy"]))
    styles = _styles()
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        color, marker, ls = styles(name, i)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=ls, color=color,
                label=name)
    for r in feds:
        if r.get("mechanism") == "none" and _ok(r):
            y = 100 * r["final_accuracy"]
            color = "black" if r.get("partition") == "iid" else "dimgray"
            ax.axhline(y, color=color, ls=":", lw=1)
            ax.plot([x_inf], [y], marker="*", ms=12, color=color, ls="none",
                    label=f"non-private FedAvg ({r['partition']}) {y:.1f} %")
    for r in records:
        if r.get("kind") == "central" and _ok(r):
            y = 100 * r["final_accuracy"]
            ax.axhline(y, color="tab:gray", ls="--", lw=1.2,
                       label=f"central Keras ({r.get('epochs')} epochs) {y:.1f} %")
    for a in (ax, ax2):
        a.axhline(100 / CLASSES, color="tab:red", ls=":", lw=0.8, alpha=0.6)
    ax.text(ticks_min(finite), 100 / CLASSES + 0.5, "chance (10 classes)", fontsize=7,
            color="tab:red", alpha=0.8)
    ax.set_xscale("log")
    ticks = finite + [x_inf]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in finite] + ["∞"])
    ax.minorticks_off()
    ax.set_xlabel("target ε (amplified, δ = " + _deltas(feds) + ")")
    ax.set_ylabel("final test accuracy (%)")
    s = grid.scale
    ax.set_title(f"{s.task}: {s.clients} clients, {s.per_round}/round, {s.rounds} rounds")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    # accuracy against round, a few settings
    chosen = _few(feds)
    for i, r in enumerate(chosen):
        curve = [c for c in r.get("curve", []) if c.get("accuracy") is not None]
        if not curve:
            continue
        color, marker, ls = styles(_series(r), i)
        label = ("non-private FedAvg" if r.get("mechanism") == "none" else
                 f"{r['mechanism']} {r['bits']} bits ε={eps_text(r.get('target_epsilon'))}")
        if r.get("partition") != "iid":
            label += f" ({r['partition']})"
        if r.get("target_epsilon") is not None and float(r["target_epsilon"]) < 4:
            ls = "-."
        ax2.plot([c["round"] + 1 for c in curve], [100 * c["accuracy"] for c in curve],
                 marker=marker, ms=3, ls=ls, color=color if r.get("mechanism") != "none"
                 else "black", label=label)
    for r in records:
        if r.get("kind") == "central" and _ok(r):
            ax2.axhline(100 * r["final_accuracy"], color="tab:gray", ls="--", lw=1.2,
                        label="central Keras")
    ax2.set_xlabel("round")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title("accuracy against round")
    ax2.grid(True, alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7, loc="best")
    if not (len(records) >= len(grid.points)):
        fig.suptitle(f"partial: {len(records)} of {len(grid.points)} points", color="tab:red")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


CLASSES = 10
"""Both benchmark tasks (fashion, digits) have 10 classes: chance is 10 %."""


def ticks_min(finite: Sequence[float]) -> float:
    """Left end of the ε axis (for the chance label)."""
    return min(finite) if finite else 1.0


def _series(r: dict[str, Any]) -> str:
    suffix = "" if r.get("partition") == "iid" else f", {r.get('partition')}"
    return f"{r.get('mechanism')} {r.get('bits')} bits{suffix}"


def _deltas(records: Sequence[dict[str, Any]]) -> str:
    ds = sorted({float(r["delta"]) for r in records if r.get("delta") is not None})
    return ", ".join(f"{d:g}" for d in ds) or "—"


def _styles() -> Any:
    colors = {"gaussian": "tab:blue", "ddgauss": "tab:orange", "skellam": "tab:green",
              "none": "black"}
    markers = {12: "v", 16: "o", 20: "^"}

    def style(name: str, i: int) -> tuple[str, str, str]:
        parts = name.split()
        mech = parts[0]
        try:
            bits = int(parts[1])
        except (IndexError, ValueError):
            bits = 16
        ls = "--" if "dirichlet" in name else ("-" if bits == 16 else ":")
        return colors.get(mech, f"C{i % 10}"), markers.get(bits, "s"), ls

    return style


def _few(feds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-private FedAvg, the three mechanisms at 16 bits at the ε closest to 8, the
    12-bit ddgauss there, and the smallest-ε 16-bit ddgauss."""
    ok = [r for r in feds if _ok(r)]
    out: list[dict[str, Any]] = [r for r in ok if r.get("mechanism") == "none"
                                 and r.get("partition") == "iid"][:1]
    eps_vals = sorted({float(r["target_epsilon"]) for r in ok
                       if r.get("target_epsilon") is not None})
    if eps_vals:
        mid = min(eps_vals, key=lambda e: abs(math.log(e / 8.0)))
        for m in ("gaussian", "ddgauss", "skellam"):
            out += [r for r in ok if r.get("mechanism") == m and r.get("bits") == 16
                    and r.get("target_epsilon") == mid and r.get("partition") == "iid"][:1]
        out += [r for r in ok if r.get("mechanism") == "ddgauss" and r.get("bits") == 12
                and r.get("target_epsilon") == mid and r.get("partition") == "iid"][:1]
        low = eps_vals[0]
        if low != mid:
            out += [r for r in ok if r.get("mechanism") == "ddgauss" and r.get("bits") == 16
                    and r.get("target_epsilon") == low and r.get("partition") == "iid"][:1]
    return out
