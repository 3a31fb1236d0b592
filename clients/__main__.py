"""``python -m clients``: ``run`` (train with the http, local or ray engine), ``plan``
(what such a run will use and charge, without training), ``device`` (one real device) or
``export`` (a task's model as trainable TensorFlow Lite, for an on-device app).

With no subcommand it prints help. Bad flags exit with status 2 and a one-line error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with its two subcommands."""
    from clients import export, options
    from clients.device import cli as device

    parser = options.OneLineParser(
        prog="python -m clients",
        description="secagg-dp devices: a simulation (a loopback server and N devices over "
        "HTTP, or the in-process / Ray research engines) or one real device process.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,plan,device,export}")
    run = sub.add_parser("run", help="train N simulated devices (engines http, local, ray)",
                         description="")
    options.build_parser(run)
    run.prog = "python -m clients run"
    from clients import plan

    pln = sub.add_parser("plan", help="print parameters, k and t, z and the expected ε of a "
                         "run with the same flags, without training")
    plan.build_plan_parser(pln)
    dev = sub.add_parser("device", help="run one device against a server")
    device.build_parser(dev)
    dev.prog = "python -m clients device"
    exp = sub.add_parser("export", help="write a task's model as trainable TensorFlow Lite")
    export.build_parser(exp)
    exp.prog = "python -m clients export"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args:
        parser.print_help()
        return 0
    if args[0] == "run":
        from clients import run as run_cmd

        return run_cmd.main(args[1:])
    if args[0] == "plan":
        from clients import plan

        return plan.main(args[1:])
    if args[0] == "device":
        from clients.device import cli as device_cli

        return device_cli.main(args[1:])
    if args[0] == "export":
        from clients import export

        return export.main(args[1:])
    parser.parse_args(args)  # prints usage and exits 2 on an unknown command
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
