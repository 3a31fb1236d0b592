"""``python -m benchmarks <subcommand>``: the project's measurements.

Subcommands come from the table :data:`SUBCOMMANDS`; adding one (e.g. the privacy /
accuracy benchmark) is one line there. A subcommand's module provides

- ``add_arguments(parser)`` and ``main(args) -> int`` for ``python -m benchmarks NAME``;
- optionally ``add_suite_arguments(parser)`` and ``run_suite(args) -> int``: its part of
  ``python -m benchmarks all`` (what ``make bench`` runs), which writes
  ``benchmarks/results/``.

Modules are imported only when their subcommand runs (``all`` imports every module that
has a suite), so ``cost`` never pays for TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from benchmarks.cli import OneLineParser

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ start-up noise


@dataclass(frozen=True)
class Subcommand:
    """One ``python -m benchmarks NAME`` entry: its module and one-line help."""

    name: str
    module: str
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("cost", "benchmarks.cost", "one secure-aggregation round: time, bytes, exactness"),
    Subcommand("privacy", "benchmarks.privacy", "accuracy against ε through the real pipeline"),
    Subcommand("audit", "benchmarks.audit", "measured lower bound on ε against the claim"),
    Subcommand("sim", "benchmarks.sim", "seconds per round of the engines against the floor"),
    Subcommand("recipe", "benchmarks.recipe", "a FedAvg recipe for fashion that converges"),
    Subcommand("mutation", "benchmarks.mutation", "mutation testing report (make mutate)"),
)

ALL_HELP = "every benchmark's full suite (make bench): writes benchmarks/results/"


def build_parser(argv: Sequence[str]) -> OneLineParser:
    """The parser; only the chosen subcommand's module is imported."""
    parser = OneLineParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(
        [s.name for s in SUBCOMMANDS] + ["all"]) + "}")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for entry in SUBCOMMANDS:
        p = sub.add_parser(entry.name, help=entry.help, description=entry.help)
        if chosen == entry.name:
            entry.load().add_arguments(p)
    p_all = sub.add_parser("all", help=ALL_HELP, description=ALL_HELP)
    if chosen == "all":
        p_all.add_argument("--quick", action="store_true",
                           help="a small grid (minutes, not half an hour)")
        for module in _suite_modules():
            add = getattr(module, "add_suite_arguments", None)
            if add is not None:
                add(p_all)
    return parser


def _suite_modules() -> list[ModuleType]:
    modules = [entry.load() for entry in SUBCOMMANDS]
    return [m for m in modules if hasattr(m, "run_suite")]


def run_all(args: argparse.Namespace) -> int:
    """Run every registered suite in table order; the worst exit status wins."""
    status = 0
    for module in _suite_modules():
        status = max(status, int(module.run_suite(args)))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a subcommand is required: " + ", ".join(
            [s.name for s in SUBCOMMANDS] + ["all"]))
    if args.command == "all":
        return run_all(args)
    entry = next(s for s in SUBCOMMANDS if s.name == args.command)
    return int(entry.load().main(args))


if __name__ == "__main__":
    raise SystemExit(main())
