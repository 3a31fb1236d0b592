"""`python -m dp epsilon|calibrate ...`: the accountant from the command line.

Every figure printed comes from `dp.accounting` (the same code the server charges
rounds with), with the adjacency it holds under. `--sampling poisson|fixed` is the
sampling the amplified figure is proven for, as K of N devices sampled without
replacement under replace-one adjacency (`--clients N`, the population; for Poisson N
defaults to K / q). For Poisson sampling the run's figure is conditioned on each round's
actual cohort size; here every round is charged at the expected cohort K = qN.
`--corrupt F` is the colluding fraction of each cohort whose noise shares are not counted
(default 0.1, the protocol's default threat model).

Noise shares are sized for `--min-contributors t` (default K) and a run charges the
shares that actually survived, less the colluders. `--survivors S` (a count in [t, K],
or a fraction of K such as 0.9) charges every round for S survivors, which is what a run
in which S devices survive every round reports; the default is t, the worst case.

`epsilon --json` with Poisson sampling also carries `epsilon_amplified_approx`: the
add/remove Poisson figure printed before the amplified figure was conditioned on the
cohort size (REFERENCES.md's Poisson values, with `--corrupt 0`), an approximation that
is NOT a guarantee for distributed noise (see `dp.accounting`); the text output never
prints it. Bad values give one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dp.accounting import (
    ACCOUNTANTS,
    ADD_REMOVE,
    EpsilonReport,
    calibrate_noise,
    epsilon_amplified_approx,
    epsilon_report,
)
from dp.config import SAMPLINGS, DPConfigError
from dp.mechanisms import MECHANISM_REGISTRY, accounting_note

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ start-up noise

EXIT_USAGE = 2
#: The protocol's default corrupt fraction (secagg.ProtocolConfig.corrupt).
DEFAULT_CORRUPT = 0.1


def _assumptions(rep: EpsilonReport) -> dict[str, str]:
    """What each figure assumes, for the text output and the JSON."""
    if rep.sample_rate >= 1:
        amp = "no sampling (q = 1): the same figure as without amplification"
    elif rep.sampling == "poisson":
        amp = (
            f"Poisson sampling amplification at q={rep.sample_rate:g} of N={rep.population},"
            " conditioned on each round's public cohort size (charged here at the expected "
            f"cohort qN={round(rep.sample_rate * (rep.population or 0))} every round; a run "
            "charges each round's actual cohort): valid only if the adversary does not "
            "learn who took part in a round"
        )
    else:
        amp = (
            f"fixed-size sampling amplification, {round(rep.sample_rate * (rep.population or 0))}"
            f" of N={rep.population} without replacement: valid only if the adversary "
            "does not learn who took part in a round"
        )
    return {
        "epsilon": "no sampling amplification: valid even if the server knows who took part",
        "epsilon_amplified": amp,
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=float, default=None,
                   help="q, in (0, 1] (default K / N with --clients)")
    p.add_argument("--sampling", choices=SAMPLINGS, default="poisson",
                   help="how the cohort is drawn: poisson (each device with probability q; "
                        "default) or fixed (K of N without replacement; needs --clients)")
    p.add_argument("--clients", type=int, default=None,
                   help="N: the population the cohort is drawn from (fixed-size sampling "
                        "needs it; Poisson defaults to K / q)")
    p.add_argument("--corrupt", type=float, default=DEFAULT_CORRUPT,
                   help="fraction of each cohort colluding with the server, whose noise "
                        f"shares are not counted, in [0, 1) (default {DEFAULT_CORRUPT})")
    p.add_argument("--rounds", type=int, required=True, help="T, rounds >= 1")
    p.add_argument("--delta", type=float, required=True, help="delta, in (0, 1)")
    p.add_argument("--mechanism", type=_mechanism_arg, default="gaussian",
                   help="noise mechanism: one of "
                   f"{', '.join(m for m in MECHANISM_REGISTRY.names() if m != 'none')}, or "
                   "package.module:Class (default gaussian)")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    p.add_argument("--clients-per-round", type=int, default=100,
                   help="K: devices sampled per round, the cohort each round is charged as "
                   "(default 100)")
    p.add_argument("--min-contributors", type=int, default=None,
                   help="t: the fewest survivors an unmasked round can have (the secagg "
                   "threshold or the enforced minimum survivor count); noise shares are "
                   "sized so that any t of them, less the colluders, carry the target "
                   "noise (default K)")
    p.add_argument("--survivors", type=_survivors_arg, default=None,
                   help="devices whose shares survive each round, which a run charges: a "
                   "count in [t, K] such as 90, or a fraction of K such as 0.9 (rounded "
                   "down) (default t, the worst case of an unmasked round)")
    p.add_argument("--bits", type=int, default=20, help="modulus exponent b (default 20)")
    p.add_argument("--dim", type=int, default=100_000, help="update dimension (default 1e5)")
    p.add_argument("--clip", type=float, default=1.0, help="L2 clip C (default 1)")
    p.add_argument("--adaptive-clip", action="store_true",
                   help="also charge the noised clipped count (Andrew et al. 2021)")
    p.add_argument("--clipped-count-stddev", type=float, default=None,
                   help="noise std on the clipped count (default K / 20)")
    p.add_argument("--eval-buckets", type=int, default=0,
                   help="also charge private federated evaluation with this many histogram "
                   "buckets (0: off, the default; `python -m clients run` uses 10 for "
                   "classifiers)")
    p.add_argument("--eval-noise-ratio", type=float, default=2.0,
                   help="noise multiplier of the evaluation block / z (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _mechanism_arg(text: str) -> str:
    """``--mechanism``: a registered mechanism, an installed entry point or a
    ``package.module:Class`` path (secagg.plugins); "none" has no epsilon to compute."""
    if text == "none":
        raise argparse.ArgumentTypeError("mechanism 'none' adds no noise: no epsilon")
    try:
        MECHANISM_REGISTRY.resolve(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _survivors_arg(text: str) -> int | float:
    """``--survivors``: an integer is a count, a number with a point or exponent is a
    fraction of K in (0, 1]."""
    try:
        if text.strip().lstrip("+").isdigit():
            return int(text)
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a count such as 90 or a fraction of K such as 0.9, got {text!r}"
        ) from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"a fraction of K must be in (0, 1] (a count has no decimal point), got {text!r}"
        )
    return value


def survivors_count(survivors: int | float | None, k: int) -> int | None:
    """``--survivors`` as a count: a fraction f of K is floor(f K) (fewer survivors
    never understate epsilon), a count is itself."""
    if survivors is None or isinstance(survivors, int):
        return survivors
    return max(1, math.floor(survivors * k + 1e-9))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    e = sub.add_parser("epsilon", help="epsilon after T rounds (with and without amplification)")
    e.add_argument("--noise-multiplier", type=float, required=True,
                   help="z: summed noise std = z * C")
    _add_common(e)
    c = sub.add_parser("calibrate", help="noise multiplier z that meets a target epsilon")
    c.add_argument("--target-epsilon", type=float, required=True)
    c.add_argument("--unamplified", action="store_true",
                   help="calibrate the epsilon without sampling amplification")
    _add_common(c)
    return parser


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _sample_rate(args: argparse.Namespace) -> float:
    """--sample-rate, or K / N from --clients; for fixed-size sampling they must agree."""
    n, k = args.clients, args.clients_per_round
    if n is not None and (isinstance(n, bool) or n < 1):
        raise DPConfigError(f"--clients must be an integer >= 1, got {n!r}")
    if args.sampling == "fixed" and n is None:
        raise DPConfigError("--sampling fixed needs --clients N (the population)")
    if n is not None and k > n:
        raise DPConfigError(f"--clients-per-round {k} exceeds the population --clients {n}")
    if args.sample_rate is None:
        if n is None:
            raise DPConfigError("give --sample-rate q or --clients N (then q = K / N)")
        return k / n
    if n is None or abs(args.sample_rate * n - k) <= 1e-6:
        return float(args.sample_rate)
    if args.sampling == "fixed":
        raise DPConfigError(
            f"--sampling fixed draws K={k} of N={n}: --sample-rate must be {k / n:g}, "
            f"got {args.sample_rate!r}"
        )
    # Poisson: every round is charged at the expected cohort qN, which must be K (at q = 1
    # every one of the N devices takes part)
    raise DPConfigError(
        f"--sampling poisson at q = {args.sample_rate!r} of N={n} expects "
        f"qN = {args.sample_rate * n:g} devices a round, not K={k}: give --sample-rate "
        f"{k / n:g} or --clients-per-round {args.sample_rate * n:g}"
    )


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        accountant=args.accountant,
        sampling=args.sampling,
        population=args.clients,
        corrupt=args.corrupt,
        clients_per_round=args.clients_per_round,
        bits=args.bits,
        dim=args.dim,
        clip=args.clip,
        min_contributors=args.min_contributors,
        survivors=survivors_count(args.survivors, args.clients_per_round),
        adaptive_clip=args.adaptive_clip,
        clipped_count_stddev=args.clipped_count_stddev,
        eval_buckets=args.eval_buckets,
        eval_noise_ratio=args.eval_noise_ratio,
    )


def _survivors_charged(args: argparse.Namespace) -> int:
    """The survivors every round is charged for: --survivors, else t, else K."""
    n = survivors_count(args.survivors, args.clients_per_round)
    if n is not None:
        return n
    return int(args.min_contributors or args.clients_per_round)


def _header(rep: EpsilonReport, z: float, args: argparse.Namespace) -> str:
    pop = f", N={rep.population}" if rep.population is not None else ""
    t = args.min_contributors or args.clients_per_round
    return (f"mechanism {rep.mechanism}, accountant {rep.accountant}, z={z:g}, "
            f"q={rep.sample_rate:g} ({rep.sampling} sampling{pop}), T={rep.rounds}, "
            f"delta={rep.delta:g}, K={args.clients_per_round} a round, shares sized for "
            f"t={t}, {_survivors_charged(args)} survivors a round, corrupt fraction "
            f"{rep.corrupt_fraction:g} (their noise shares not counted)")


def _fmt(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else "none (no guarantee)"


def _run(args: argparse.Namespace) -> None:
    q = _sample_rate(args)
    if args.command == "epsilon":
        rep = epsilon_report(
            args.mechanism, args.noise_multiplier, q, args.rounds, args.delta,
            **_common_kwargs(args),
        )
        assumptions = _assumptions(rep)
        if args.json:
            out = rep.to_dict()
            out["noise_multiplier"] = args.noise_multiplier
            out["assumptions"] = assumptions
            out["cohort_per_round"] = (
                args.clients_per_round if rep.sample_rate < 1 else None
            )
            out["survivors_per_round"] = _survivors_charged(args)
            approx = None
            if args.sampling == "poisson":
                kw = _common_kwargs(args)
                del kw["sampling"]
                approx = _json_float(epsilon_amplified_approx(
                    args.mechanism, args.noise_multiplier, q, args.rounds, args.delta, **kw
                ))
            out["epsilon_amplified_approx"] = approx
            out["epsilon_amplified_approx_note"] = (
                ADD_REMOVE if approx is not None else None
            )
            out["approximation"] = accounting_note(args.mechanism)
            print(json.dumps(out))
        else:
            print(_header(rep, args.noise_multiplier, args))
            print(f"epsilon (no amplification) = {_fmt(rep.epsilon)}   "
                  f"[{assumptions['epsilon']}; adjacency {rep.adjacency}]")
            print(f"epsilon (amplified, {rep.sampling}) = {_fmt(rep.epsilon_amplified)}   "
                  f"[{assumptions['epsilon_amplified']}; adjacency {rep.adjacency_amplified}]")
            if rep.amplified_refused:
                print(f"no amplified figure: {rep.amplified_refused}")
            _print_note(args.mechanism)
        return
    amplified = not args.unamplified
    z = calibrate_noise(
        args.target_epsilon, q, args.rounds, args.delta,
        mechanism=args.mechanism, amplified=amplified, **_common_kwargs(args),
    )
    rep = epsilon_report(args.mechanism, z, q, args.rounds, args.delta, **_common_kwargs(args))
    which = "epsilon_amplified" if amplified else "epsilon"
    assumptions = _assumptions(rep)
    adjacency = rep.adjacency_amplified if amplified else rep.adjacency
    if args.json:
        print(json.dumps({
            "noise_multiplier": z,
            "target_epsilon": args.target_epsilon,
            "calibrated_on": which,
            "epsilon": _json_float(rep.epsilon),
            "epsilon_amplified": _json_float(rep.epsilon_amplified),
            "delta": rep.delta,
            "rounds": rep.rounds,
            "mechanism": rep.mechanism,
            "accountant": rep.accountant,
            "sample_rate": rep.sample_rate,
            "sampling": rep.sampling,
            "population": rep.population,
            "corrupt_fraction": rep.corrupt_fraction,
            "survivors_per_round": _survivors_charged(args),
            "adjacency": rep.to_dict()["adjacency"],
            "assumption": assumptions[which],
            "approximation": accounting_note(args.mechanism),
        }))
    else:
        print(f"noise multiplier z = {z:.6g}  (summed honest noise std = z * C; "
              f"{args.mechanism}, {args.accountant})")
        print(_header(rep, z, args))
        print(f"gives {which} = {_fmt(getattr(rep, which))} <= {args.target_epsilon:g} "
              f"after {rep.rounds} rounds at delta={rep.delta:g}   [{assumptions[which]}; "
              f"adjacency {adjacency}]")
        _print_note(args.mechanism)


def _print_note(mechanism: str) -> None:
    note = accounting_note(mechanism)
    if note is not None:
        print(f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except (DPConfigError, ValueError) as err:
        msg = " ".join(str(err).split())
        sys.stderr.write(f"python -m dp {args.command}: error: {msg}\n")
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        msg = " ".join(str(err).split())
        sys.stderr.write(f"python -m dp {args.command}: error: {type(err).__name__}: {msg}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
