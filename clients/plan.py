"""``python -m clients plan``: what a run with these flags will cost, without training.

Takes the same flags (and ``--config``) as ``python -m clients run`` and prints the
model's parameter count, the padded and encoded dimensions, the secure-aggregation
parameters of a full cohort (neighbours k, threshold t, the minimum survivor count the
noise shares are sized for), the noise multiplier the run will use, and the ε it will
charge after ``--rounds`` rounds, twice: when every sampled device survives, and in the
worst case an unmasked round allows (only the minimum survivor count).

Every step is the run's own: :func:`clients.options.round_probe` for (k, t),
:func:`clients.options.resolve_noise` for z (``--target-epsilon`` calibrated the same
way), ``EncodingPlan.create`` as ``server.round.ServerCore.plan`` calls it, and the
accountant ``server.round.ServerCore.release`` charges (``dp.epsilon_report`` with
``survivors``), private federated evaluation included when it is on. With
``--sampling fixed`` and no dropout the figure is exactly what the run then reports (a
test checks it); with Poisson sampling each round is charged here at the expected
cohort K, and the run charges each round's actual cohort.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clients.options import (
    SimOptions,
    UsageError,
    build_parser,
    model_dim,
    options_from_namespace,
    resolve_noise,
    round_probe,
)

__all__ = ["ExperimentPlan", "build_plan_parser", "main", "plan_experiment"]


@dataclass(frozen=True)
class ExperimentPlan:
    """The planned cost of a run (:func:`plan_experiment`). ε fields are None when the
    mechanism gives no guarantee (``none``) or the amplified figure is refused."""

    task: str
    parameters: int
    padded_dim: int
    encoded_dim: int
    cohort: int
    population: int
    sampling: str
    graph: str
    neighbors: int
    threshold: int
    min_survivors: int
    corrupt: int
    mechanism: str
    noise_multiplier: float
    noise_source: str
    bits: int
    clip: float
    rounds: int
    delta: float
    federated_eval: bool
    epsilon: float | None
    epsilon_amplified: float | None
    epsilon_worst: float | None
    epsilon_amplified_worst: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (every field; None for "no figure")."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The text ``python -m clients plan`` prints."""

        def e(x: float | None) -> str:
            return "none (no guarantee)" if x is None else f"{x:.6g}"

        fed = "on (charged in ε)" if self.federated_eval else "off"
        out = [
            f"task {self.task}: {self.parameters} model parameters, padded to "
            f"{self.padded_dim} for the rotation, {self.encoded_dim} entries of {self.bits} "
            f"bits on the wire (federated evaluation {fed})",
            f"cohort K = {self.cohort} of N = {self.population} ({self.sampling} sampling), "
            f"graph {self.graph}: k = {self.neighbors} neighbours, threshold t = "
            f"{self.threshold}; noise shares sized for {self.min_survivors} survivors less "
            f"{self.corrupt} colluding",
            f"mechanism {self.mechanism}, noise multiplier z = {self.noise_multiplier:.6g} "
            f"({self.noise_source}), clip {self.clip:g}",
            f"expected after {self.rounds} rounds at δ = {self.delta:.1e}, every device "
            f"surviving ({self.cohort} a round): ε = {e(self.epsilon)}, ε amplified = "
            f"{e(self.epsilon_amplified)}",
            f"worst case of an unmasked round ({self.min_survivors} survivors every round): "
            f"ε = {e(self.epsilon_worst)}, ε amplified = {e(self.epsilon_amplified_worst)}",
        ]
        if self.sampling == "poisson":
            out.append(f"Poisson sampling: every round charged here at the expected cohort "
                       f"{self.cohort}; a run charges each round's actual cohort (a larger "
                       "one costs more)")
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def plan_experiment(opts: SimOptions) -> ExperimentPlan:
    """Plan the run ``opts`` describes: builds the task's model (no data, no training).

    Raises :class:`clients.options.UsageError` for an unknown task or parameters no round
    can run with (the message the run would give)."""
    from clients.tasks import get_task
    from dp import DPConfig, DPConfigError, EncodingPlan, corrupt_count, epsilon_report

    try:
        task = get_task(opts.task)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    dim = model_dim(task, opts.seed)
    probe = round_probe(opts)
    m = int(probe.min_survivors)
    k_cohort = opts.per_round
    eval_buckets = opts.eval_buckets if opts.eval_on else 0
    try:
        z = resolve_noise(opts, dim, m)
        config = DPConfig(
            mechanism=opts.mechanism, clip=opts.clip, noise_multiplier=z, bits=opts.bits,
            delta=opts.delta, eval_buckets=eval_buckets, eval_noise_ratio=opts.eval_noise_ratio,
        )
        corrupt = corrupt_count(opts.corrupt, k_cohort)
        enc = EncodingPlan.create(config, dim, k_cohort, m, corrupt=corrupt)
        figures: dict[int, tuple[float | None, float | None]] = {}
        for survivors in (k_cohort, m):
            if opts.mechanism == "none":
                figures[survivors] = (None, None)
                continue
            rep = epsilon_report(
                opts.mechanism, z, opts.sample_rate, opts.rounds, opts.delta,
                clients_per_round=k_cohort, bits=opts.bits, dim=dim, clip=opts.clip,
                min_contributors=m, survivors=survivors, sampling=opts.sampling,
                population=opts.clients, corrupt=opts.corrupt, eval_buckets=eval_buckets,
                eval_noise_ratio=opts.eval_noise_ratio,
            )
            figures[survivors] = (_finite(rep.epsilon), _finite(rep.epsilon_amplified))
    except (DPConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if opts.mechanism == "none":
        source = "none: no noise"
    elif opts.noise_multiplier is not None:
        source = "given"
    elif opts.target_epsilon is not None:
        source = f"calibrated for amplified ε {opts.target_epsilon:g} at {m} survivors"
    else:
        source = "the default"
    neighbors = probe.degree if probe.degree is not None else k_cohort - 1
    return ExperimentPlan(
        task=opts.task, parameters=dim, padded_dim=int(enc.padded_dim),
        encoded_dim=int(enc.encoded_dim), cohort=k_cohort, population=opts.clients,
        sampling=opts.sampling, graph=opts.graph, neighbors=int(neighbors),
        threshold=int(probe.threshold), min_survivors=m, corrupt=corrupt,
        mechanism=opts.mechanism, noise_multiplier=float(z), noise_source=source,
        bits=opts.bits, clip=opts.clip, rounds=opts.rounds, delta=opts.delta,
        federated_eval=bool(eval_buckets), epsilon=figures[k_cohort][0],
        epsilon_amplified=figures[k_cohort][1], epsilon_worst=figures[m][0],
        epsilon_amplified_worst=figures[m][1],
    )


def build_plan_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The flags of ``run`` plus ``--json``."""
    p = build_parser(parser)
    p.prog = "python -m clients plan"
    p.description = ("Print what `python -m clients run` with the same flags will use and "
                     "charge (parameters, padded dimension, k and t, z, expected ε) without "
                     "training.")
    p.add_argument("--json", action="store_true", default=False,
                   help="print one JSON object instead of text (default: off)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clients plan``; returns the exit status."""
    parser = build_plan_parser()
    ns = parser.parse_args(argv)  # argparse exits 2 on a bad flag
    try:
        plan = plan_experiment(options_from_namespace(ns))
    except (UsageError, TypeError, ValueError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if ns.json:
        print(json.dumps(plan.to_dict()))
    else:
        for line in plan.lines():
            print(line)
    return 0
