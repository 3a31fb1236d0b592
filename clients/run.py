"""``python -m clients run``: train with one of the engines and print what the server logged.

Engines (``--engine``): ``http`` (a real server on loopback, devices over signed HTTP; the
default and what ``make run`` shows), ``local`` (one process, no sockets) and ``ray``
(device work in Ray workers). All three run the same round logic and write the same
round log, so the table, the summary and ``--json-out`` read one format.

Privacy figures: ε is reported twice. ``ε`` assumes nothing about who took part (valid
against this server, which knows whom it sampled); ``ε amplified`` is proven for the
sampling the server actually does (Poisson by default; fixed-size sampling is accounted
without replacement) and holds only if the adversary does not learn who took part.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clients.engines.common import count, fmt
from clients.options import (
    SimOptions,
    UsageError,
    build_parser,
    options_from_namespace,
)

__all__ = ["count", "fmt", "main", "operator_token", "round_table", "summary_lines"]

#: the line ``python -m server`` prints once at start with the operator token
_TOKEN_LINE = re.compile(r"^operator token: (\S+)$", re.MULTILINE)


# --------------------------------------------------------------------------- output


def round_table(rounds: Sequence[Mapping[str, Any]]) -> Any:
    """A rich Table of the round log."""
    from rich.table import Table

    table = Table(title="rounds (from the server's log)")
    federated = any(r.get("federated_eval") for r in rounds)
    cols = ["round", "status", "survivors/sampled", "accuracy", "loss"]
    if federated:
        cols.append("fed. acc.")
    for col in (*cols, "ε", "ε amplified"):
        table.add_column(col, justify="right")
    for r in rounds:
        row = [
            str(r.get("round")),
            str(r.get("status", "")),
            f"{count(r.get('survivors'))}/{count(r.get('sampled'))}",
            fmt(r.get("accuracy")),
            fmt(r.get("loss")),
        ]
        if federated:
            row.append(federated_text(r.get("federated_eval"), version=False))
        table.add_row(*row, fmt(r.get("epsilon"), ".3g"), fmt(r.get("epsilon_amplified"), ".3g"))
    return table


def federated_text(fe: Mapping[str, Any] | None, *, version: bool = True) -> str:
    """A round's federated accuracy as "0.712±0.095 (v3)": the device-weighted mean of
    the devices' held-out accuracies, ± the std of its DP noise, for model version v."""
    if not fe:
        return "-"
    std = fe.get("accuracy_stddev") or 0.0
    spread = f"±{fmt(std, '.2f')}" if std > 0 else ""
    tail = f" (v{fe.get('model_version')})" if version else ""
    return f"{fmt(fe.get('accuracy'))}{spread}{tail}"


def summary_lines(result: Any, opts: SimOptions) -> list[str]:
    """The closing summary: accuracy, both ε with their assumptions, δ, DB, dashboard."""
    done = [r for r in result.rounds if r.get("status") == "done"]
    last = done[-1] if done else {}
    st = result.status
    eps = st.get("epsilon", last.get("epsilon"))
    eps_amp = st.get("epsilon_amplified", last.get("epsilon_amplified"))
    delta = st.get("delta", last.get("delta", opts.delta))
    metric = "R²" if opts.task == "linreg" else "accuracy"
    timing = f"{result.elapsed_s:.0f} s"
    if result.stage_timeout is not None:
        timing += f", stage timeout {result.stage_timeout:g} s"
    if opts.sampling == "poisson":
        sampling = (f"Poisson sampling at q = {opts.sample_rate:.3g}, each round charged as "
                    f"its cohort of s of {opts.clients} without replacement (replace-one "
                    "adjacency)")
    else:
        sampling = (f"fixed-size sampling of {opts.per_round} of {opts.clients} without "
                    "replacement (replace-one adjacency)")
    amp_text = (f"ε amplified = {fmt(eps_amp, '.4g')}" if eps_amp is not None
                else "ε amplified: not available for this mechanism and sampling "
                     "(no proven bound; see the note)")
    lines = [
        f"rounds completed: {len(done)}/{len(result.rounds)} ({timing}; engine "
        f"{result.engine}, secure sum {result.secure_sum})",
        f"final {metric}: {fmt(last.get('accuracy'))}   loss: {fmt(last.get('loss'))}",
        f"ε = {fmt(eps, '.4g')} at δ = {fmt(delta, '.1e')}  (no amplification: holds even "
        "against a server that knows who was sampled; a device's data zeroed, its noise "
        f"share kept; {fmt(opts.corrupt, '.2g')} of devices assumed colluding)",
        f"{amp_text} at δ = {fmt(delta, '.1e')}  ({sampling}: holds only if the adversary "
        "does not learn who took part)",
        f"mechanism {opts.mechanism}, z = {result.noise_multiplier:.4g}, clip {opts.clip:g}, "
        f"{opts.bits} bits, graph {opts.graph}",
        f"database: {result.db_path}" + (
            f"   server log: {result.log_path}" if result.log_path else ""),
        f"dashboard: python -m server --db {result.db_path} --port 8000   then open "
        "http://127.0.0.1:8000/",
    ]
    from dp import accounting_note

    note = accounting_note(opts.mechanism)
    if note is not None:
        lines.insert(4, f"note: {note}")
    if opts.mechanism == "none":
        lines[2:4] = ["ε = ∞: mechanism none adds no noise (secure aggregation only, "
                      "no differential privacy)"]
    evaluated = [r for r in done if r.get("federated_eval")]
    if evaluated:
        fe = evaluated[-1]["federated_eval"]
        server_acc = next((r.get("accuracy") for r in done
                           if r.get("model_version") == fe.get("model_version")), None)
        lines.insert(2, (
            f"federated evaluation of model v{fe.get('model_version')} on the devices' held-out "
            f"splits: device-weighted {metric} {federated_text(fe)} over {fe.get('devices')} "
            f"devices (server test set: {fmt(server_acc)}); DP-noised, std "
            f"{fmt(fe.get('count_stddev'), '.2g')} devices per histogram count, charged in "
            "the ε below"))
    reason = st.get("finished_reason")
    if reason:
        lines.append(f"server: training finished: {reason}")
    if result.device_errors:
        lines.append(f"device errors: {len(result.device_errors)} (first: "
                     f"{result.device_errors[0]})")
    return lines


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point of ``python -m clients run``; returns the exit status."""
    from rich.console import Console

    parser = parser or build_parser()
    ns = parser.parse_args(argv)  # argparse exits 2 on a bad flag
    console = Console(stderr=False)
    try:
        opts = options_from_namespace(ns)
    except (UsageError, TypeError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(opts, console)
    interrupted = False
    try:
        result = engine.run()
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping[/yellow]")
        engine.stop()
        return 130
    except UsageError as exc:
        engine.stop()
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError) as exc:
        # ServerStartError, DeviceError, httpx errors (RuntimeError / OSError subclasses)
        engine.stop()
        print(f"{parser.prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if not interrupted and not opts.keep_serving:
            engine.stop()
    console.print(round_table(result.rounds))
    for line in summary_lines(result, opts):
        console.print(line, highlight=False)
    if opts.json_out:
        console.print(f"round log written to {opts.json_out}", highlight=False)
    completed = sum(1 for r in result.rounds if r.get("status") == "done")
    status = 0
    if completed < opts.rounds:
        print(f"{parser.prog}: error: only {completed} of {opts.rounds} rounds completed "
              f"({result.status.get('finished_reason') or 'see the server log'})",
              file=sys.stderr)
        status = 1
    if opts.keep_serving:
        serve_until_interrupted(engine, result, console)
    return status


def make_engine(opts: SimOptions, console: Any = None) -> Any:
    """The engine ``opts.engine`` names (imports only what that engine needs)."""
    if opts.engine == "http":
        from clients.engines.http import HttpEngine

        return HttpEngine(opts, console=console)
    if opts.engine == "ray":
        from clients.engines.ray import RayEngine

        return RayEngine(opts, console=console)
    from clients.engines.local import InProcessEngine

    return InProcessEngine(opts, console=console)


def operator_token(server: Any) -> str | None:
    """The operator token a ``LocalServer`` printed at start (read from its console
    output; the last one, since that file is appended to across restarts), or None."""
    path = getattr(server, "console_path", None)
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _TOKEN_LINE.findall(text)
    return found[-1] if found else None


def serve_until_interrupted(engine: Any, result: Any, console: Any) -> None:
    """``--keep-serving``: leave the dashboard up until Ctrl-C (the http engine's own
    server; for the in-process engines a server started on the run's database)."""
    server = getattr(engine, "server", None)
    if server is None:
        from clients.engines.http import LocalServer

        server = LocalServer(None, result.db_path, result.workdir / "server.log",
                             port=engine.opts.port)
        server.start()
        engine.server = server
    console.print(f"serving the dashboard at {server.url}/  (Ctrl-C to stop)", highlight=False)
    token = operator_token(server)
    if token is not None:
        console.print(
            f"operator token (the dashboard's controls; Authorization: Bearer): {token}",
            highlight=False,
            soft_wrap=True,  # one line, so that the token copies whole
        )
    try:
        while server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
