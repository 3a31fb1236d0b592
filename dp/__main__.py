"""`python -m dp epsilon|calibrate ...`: the accountant from the command line.

Every figure printed comes from `dp.accounting` (the same code the server charges
rounds with). Bad values give one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dp.accounting import ACCOUNTANTS, calibrate_noise, epsilon_report
from dp.config import MECHANISMS, DPConfigError
from dp.mechanisms import accounting_note

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ start-up noise

EXIT_USAGE = 2

_ASSUMPTIONS = {
    "epsilon": "no sampling amplification: valid even if the server knows who took part",
    "epsilon_amplified": (
        "Poisson sampling amplification: valid only if the adversary does not learn "
        "who took part in a round"
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=float, required=True, help="q, in (0, 1]")
    p.add_argument("--rounds", type=int, required=True, help="T, rounds >= 1")
    p.add_argument("--delta", type=float, required=True, help="delta, in (0, 1)")
    p.add_argument("--mechanism", choices=[m for m in MECHANISMS if m != "none"],
                   default="gaussian")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    p.add_argument("--clients-per-round", type=int, default=100,
                   help="K: devices per round; noise shares sized for all K (default 100)")
    p.add_argument("--min-contributors", type=int, default=None,
                   help="t: secure-aggregation threshold (default K)")
    p.add_argument("--bits", type=int, default=20, help="modulus exponent b (default 20)")
    p.add_argument("--dim", type=int, default=100_000, help="update dimension (default 1e5)")
    p.add_argument("--clip", type=float, default=1.0, help="L2 clip C (default 1)")
    p.add_argument("--adaptive-clip", action="store_true",
                   help="also charge the noised clipped count (Andrew et al. 2021)")
    p.add_argument("--clipped-count-stddev", type=float, default=None,
                   help="noise std on the clipped count (default K / 20)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


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


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        accountant=args.accountant,
        clients_per_round=args.clients_per_round,
        bits=args.bits,
        dim=args.dim,
        clip=args.clip,
        min_contributors=args.min_contributors,
        adaptive_clip=args.adaptive_clip,
        clipped_count_stddev=args.clipped_count_stddev,
    )


def _run(args: argparse.Namespace) -> None:
    if args.command == "epsilon":
        rep = epsilon_report(
            args.mechanism, args.noise_multiplier, args.sample_rate, args.rounds, args.delta,
            **_common_kwargs(args),
        )
        if args.json:
            out = rep.to_dict()
            out["noise_multiplier"] = args.noise_multiplier
            out["assumptions"] = _ASSUMPTIONS
            out["approximation"] = accounting_note(args.mechanism)
            print(json.dumps(out))
        else:
            print(f"mechanism {rep.mechanism}, accountant {rep.accountant}, "
                  f"z={args.noise_multiplier:g}, q={rep.sample_rate:g}, T={rep.rounds}, "
                  f"delta={rep.delta:g}")
            print(f"epsilon (no amplification)        = {rep.epsilon:.6g}   "
                  f"[{_ASSUMPTIONS['epsilon']}]")
            print(f"epsilon (amplified, Poisson q={rep.sample_rate:g}) = "
                  f"{rep.epsilon_amplified:.6g}   [{_ASSUMPTIONS['epsilon_amplified']}]")
            _print_note(args.mechanism)
        return
    amplified = not args.unamplified
    z = calibrate_noise(
        args.target_epsilon, args.sample_rate, args.rounds, args.delta,
        mechanism=args.mechanism, amplified=amplified, **_common_kwargs(args),
    )
    rep = epsilon_report(
        args.mechanism, z, args.sample_rate, args.rounds, args.delta, **_common_kwargs(args)
    )
    which = "epsilon_amplified" if amplified else "epsilon"
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
            "assumption": _ASSUMPTIONS[which],
            "approximation": accounting_note(args.mechanism),
        }))
    else:
        print(f"noise multiplier z = {z:.6g}  (summed noise std = z * C; {args.mechanism}, "
              f"{args.accountant})")
        print(f"gives {which} = {getattr(rep, which):.6g} <= {args.target_epsilon:g} "
              f"after {rep.rounds} rounds at delta={rep.delta:g}   [{_ASSUMPTIONS[which]}]")
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
