"""The external baselines of ``python -m benchmarks sim``: pfl-research and Flower's
Ray simulation on the same workload, each in its own venv, each run as a subprocess.

Their pins clash with ours (pfl 0.6 needs TensorFlow >= 2.16 and numpy 2; we pin
TensorFlow 2.15), so each lives in a git-ignored venv beside this file, created on first
use (idempotent, like ``make bench``'s Flower venv; ``make`` has a target for each):

- ``benchmarks/.pfl-venv``: :data:`PFL_PINS`, harness ``pfl_harness.py``;
- ``benchmarks/.flwrsim-venv``: :data:`FLWRSIM_PINS`, harness ``flower_sim_harness.py``.

Both harnesses run the workload of ``sim_workload.py`` (Fashion-MNIST CNN of the
``fashion`` task, 56,714 parameters; 1000 devices x 60 IID examples; 100 per round;
1 local epoch at batch 32; SGD lr 0.05; FedAvg) on legacy Keras (``tf_keras`` 2.21,
Keras 2 like our stack; pfl 0.6 mis-handles Keras 3 models, see ``pfl_harness.py``),
and also time a compiled floor in the same process, one pass right after each round, so
a baseline measured on a busy machine can be read as the median of the paired ratios
round / floor (``ratio_to_floor``).

:func:`run_pfl` and :func:`run_flower_sim` return a plain dict: ``status`` ``"ok"`` with
``seconds_per_round`` (median after the warm-up rounds), ``accuracy`` (test set, after
the rounds run), ``version``, ``rounds``, ``notes`` and the raw figures; or ``status``
``"error"`` with ``error`` saying why, and ``None`` for every figure. Nothing here ever
makes up a number.

By hand::

    .venv/bin/python -m benchmarks.baselines setup pfl
    .venv/bin/python -m benchmarks.baselines run pfl --rounds 12
    .venv/bin/python -m benchmarks.baselines run flower-compiled --rounds 12
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cli import OneLineParser, positive_int

BENCH_DIR = Path(__file__).resolve().parent
RESULT_PREFIX = "BENCH_RESULT "  # the line sim_workload.emit prints
BASE_PYTHON = os.environ.get("PYTHON", "python3.11")
STAMP_NAME = ".installed"

TF_PINS = ("tensorflow==2.21.0", "tf_keras==2.21.0")
PFL_PINS = ("pfl[tf]==0.6.0", *TF_PINS)
FLWRSIM_PINS = ("flwr[simulation]==1.42.0", *TF_PINS)


class BaselineUnavailable(RuntimeError):
    """A baseline's venv is missing and could not be created (the message says why)."""


@dataclass(frozen=True)
class Venv:
    """One external baseline's venv: where it lives, what it pins, which harness it runs."""

    key: str
    path: Path
    pins: tuple[str, ...]
    harness: Path
    framework: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.path / STAMP_NAME

    def stamp_text(self) -> str:
        return "\n".join(self.pins) + "\n"

    def is_ready(self) -> bool:
        """Created by :func:`ensure_venv` with exactly today's pins."""
        try:
            return self.python.exists() and self.stamp.read_text() == self.stamp_text()
        except OSError:
            return False


VENVS: dict[str, Venv] = {
    "pfl": Venv("pfl", BENCH_DIR / ".pfl-venv", PFL_PINS, BENCH_DIR / "pfl_harness.py",
                "pfl-research"),
    "flwrsim": Venv("flwrsim", BENCH_DIR / ".flwrsim-venv", FLWRSIM_PINS,
                    BENCH_DIR / "flower_sim_harness.py", "flower-simulation"),
}


def ensure_venv(venv: Venv, *, base_python: str = BASE_PYTHON, timeout_s: float = 1800.0,
                quiet: bool = True) -> Path:
    """Create ``venv`` and install its pins unless its stamp says that is done already.

    Returns the venv's python. Raises :class:`BaselineUnavailable` (one sentence: which
    step failed and its last line of output) when the base python is missing or pip
    fails; the stamp is written only after a successful install, so a failed or
    interrupted install is retried next time.
    """
    if venv.is_ready():
        return venv.python
    if shutil.which(base_python) is None and not Path(base_python).exists():
        raise BaselineUnavailable(f"cannot create {venv.path}: {base_python} not found")
    steps: list[list[str]] = []
    if not venv.python.exists():
        steps.append([base_python, "-m", "venv", str(venv.path)])
    pip = [str(venv.python), "-m", "pip", "install", *(["-q"] if quiet else [])]
    steps.append([*pip, "--upgrade", "pip"])
    steps.append([*pip, *venv.pins])
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=quiet, text=True, timeout=timeout_s,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BaselineUnavailable(f"{' '.join(cmd[:4])} ...: {err}") from err
        if proc.returncode != 0:
            tail = _last_line(proc.stderr or "") if quiet else f"exit {proc.returncode}"
            raise BaselineUnavailable(f"{' '.join(cmd)} failed: {tail}")
    venv.stamp.write_text(venv.stamp_text())
    return venv.python


def _last_line(text: str) -> str:
    """The last line of a subprocess's stderr that is not log noise."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    noise = ("WARNING: All log messages", "I0000 ", "W0000 ", "E0000 ")
    useful = [ln for ln in lines if not ln.startswith(noise)]
    return (useful or lines or ["no output"])[-1][:300]


def error_record(framework: str, reason: str, *, rounds: int | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The result of a baseline that produced no figure, and why."""
    return {
        "status": "error", "framework": framework, "error": " ".join(reason.split()),
        "seconds_per_round": None, "accuracy": None, "version": None, "rounds": rounds,
        "notes": f"no figure: {' '.join(reason.split())}", **extra,
    }


def _number(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} is {value!r}, not a number")
    return float(value)


def parse_harness_output(framework: str, stdout: str, stderr: str, returncode: int,
                         *, expected_rounds: int) -> dict[str, Any]:
    """Turn a harness's output into a result dict (see the module docstring).

    The harness's last ``BENCH_RESULT {json}`` line is the result; anything else on
    stdout or stderr is log. A missing or malformed line, an ``ok: false`` record, a
    round count other than the one asked for, or figures out of range give an error
    record that quotes the cause.
    """
    lines = [ln[len(RESULT_PREFIX):] for ln in stdout.splitlines()
             if ln.startswith(RESULT_PREFIX)]
    if not lines:
        return error_record(framework, f"harness exit {returncode} without a result line: "
                            f"{_last_line(stderr)}", rounds=expected_rounds)
    try:
        raw = json.loads(lines[-1])
    except json.JSONDecodeError as err:
        return error_record(framework, f"unreadable result line ({err})",
                            rounds=expected_rounds)
    if not isinstance(raw, dict):
        return error_record(framework, f"result line is a {type(raw).__name__}, not an object",
                            rounds=expected_rounds)
    if raw.get("ok") is not True:
        return error_record(framework, f"harness reported: {raw.get('error', 'no reason')}",
                            rounds=expected_rounds, raw=raw)
    try:
        spr = _number(raw, "seconds_per_round")
        acc = _number(raw, "accuracy")
        rounds = raw.get("rounds")
        if spr <= 0.0:
            raise ValueError(f"seconds_per_round is {spr}, not positive")
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"accuracy is {acc}, outside [0, 1]")
        if rounds != expected_rounds:
            raise ValueError(f"ran {rounds!r} rounds, asked for {expected_rounds}")
        floor = _number(raw, "floor_seconds") if "floor_seconds" in raw else None
        ratio = _number(raw, "ratio_to_floor") if "ratio_to_floor" in raw else None
        if (floor is None) != (ratio is None) or (ratio is not None and ratio <= 0.0):
            raise ValueError(f"floor_seconds {floor!r} with ratio_to_floor {ratio!r}")
    except ValueError as err:
        return error_record(framework, f"bad result: {err}", rounds=expected_rounds, raw=raw)
    if returncode != 0:
        return error_record(framework, f"harness exit {returncode} after a result line",
                            rounds=expected_rounds, raw=raw)
    record = {
        "status": "ok",
        "framework": framework,
        "seconds_per_round": spr,
        "accuracy": acc,
        "version": raw.get("version"),
        "rounds": rounds,
        "warmup": raw.get("warmup"),
        "round_times": raw.get("round_times"),
        "floor_seconds": floor,
        "ratio_to_floor": ratio,
        "load": raw.get("load_after_rounds"),
        "raw": raw,
    }
    record["notes"] = _notes(record)
    return record


def _notes(rec: dict[str, Any]) -> str:
    raw = rec["raw"]
    parts = [f"{rec['framework']} {rec['version']}"]
    if raw.get("train"):
        parts.append(f"train={raw['train']}, {raw.get('actors')} Ray actors")
    parts.append(f"TensorFlow {raw.get('tensorflow')}, {raw.get('keras')}")
    parts.append(f"median of rounds {int(rec['warmup'] or 0) + 1}..{rec['rounds']}")
    if rec["floor_seconds"] is not None:
        parts.append(f"compiled floor {rec['floor_seconds']:.2f} s in the same venv, one "
                     f"pass after each round (median paired ratio "
                     f"{rec['ratio_to_floor']:.2f})")
    if rec["load"]:
        parts.append(f"load average {rec['load'][0]:.2f}")
    return "; ".join(parts)


def run_harness(venv: Venv, args: Sequence[str], *, rounds: int, timeout_s: float,
                create_venv: bool = True, label: str | None = None) -> dict[str, Any]:
    """Run ``venv``'s harness with ``args`` and parse its result (never raises)."""
    framework = label or venv.framework
    try:
        python = ensure_venv(venv) if create_venv else venv.python
    except BaselineUnavailable as err:
        return error_record(framework, f"venv unavailable: {err}", rounds=rounds)
    if not python.exists():
        return error_record(framework, f"venv not found at {venv.path}", rounds=rounds)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)  # the harness must not see our venv's packages
    cmd = [str(python), str(venv.harness), "--rounds", str(rounds), *args]
    load_start = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=BENCH_DIR, env=env, check=False)
    except subprocess.TimeoutExpired:
        return error_record(framework, f"did not finish within {timeout_s:.0f} s",
                            rounds=rounds)
    except OSError as err:
        return error_record(framework, f"cannot run {python}: {err}", rounds=rounds)
    record = parse_harness_output(framework, proc.stdout, proc.stderr, proc.returncode,
                                  expected_rounds=rounds)
    record["load_avg_1m"] = [load_start, os.getloadavg()[0]]
    record["command"] = " ".join(cmd[1:])
    return record


def _workload_args(warmup: int, floor: bool, seed: int, devices: int, cohort: int,
                   epochs: int) -> list[str]:
    return ["--warmup", str(warmup), "--floor" if floor else "--no-floor", "--seed", str(seed),
            "--devices", str(devices), "--cohort", str(cohort), "--epochs", str(epochs)]


def run_pfl(rounds: int = 12, *, warmup: int = 2, floor: bool = True, seed: int = 0,
            devices: int = 1000, cohort: int = 100, epochs: int = 1,
            timeout_s: float | None = None, create_venv: bool = True) -> dict[str, Any]:
    """pfl-research's ``SimulatedBackend`` on the workload (one process, one model)."""
    if rounds <= warmup:
        return error_record("pfl-research", f"rounds {rounds} must exceed warmup {warmup}",
                            rounds=rounds)
    timeout = timeout_s if timeout_s is not None else 300.0 + 30.0 * rounds * epochs
    return run_harness(VENVS["pfl"], _workload_args(warmup, floor, seed, devices, cohort,
                                                    epochs),
                       rounds=rounds, timeout_s=timeout, create_venv=create_venv)


def run_flower_sim(rounds: int = 12, compiled: bool = True, *, warmup: int = 2,
                   client_cpus: float = 1.0, floor: bool = True, seed: int = 0,
                   devices: int = 1000, cohort: int = 100, epochs: int = 1,
                   timeout_s: float | None = None, create_venv: bool = True
                   ) -> dict[str, Any]:
    """Flower's Ray simulation on the workload: ``compiled`` tf.function step per client,
    or Keras ``fit`` per client; ``client_cpus`` Ray CPUs per ClientApp."""
    train = "compiled" if compiled else "fit"
    label = f"flower-simulation ({train})"
    if rounds <= warmup:
        return error_record(label, f"rounds {rounds} must exceed warmup {warmup}",
                            rounds=rounds)
    if not client_cpus > 0:
        return error_record(label, f"client_cpus must be > 0, got {client_cpus}",
                            rounds=rounds)
    per_round = 60.0 if compiled else 150.0  # Keras fit took 42 s a round at load 8-11
    timeout = timeout_s if timeout_s is not None else 300.0 + per_round * rounds * epochs
    args = [*_workload_args(warmup, floor, seed, devices, cohort, epochs),
            "--train", train, "--client-cpus", str(client_cpus)]
    return run_harness(VENVS["flwrsim"], args, rounds=rounds, timeout_s=timeout,
                       create_venv=create_venv, label=label)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m benchmarks.baselines",
                           description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create a baseline's venv (idempotent)")
    setup.add_argument("which", choices=sorted(VENVS))
    run = sub.add_parser("run", help="run one baseline and print its result as JSON")
    run.add_argument("which", choices=("pfl", "flower-compiled", "flower-fit"))
    run.add_argument("--rounds", type=positive_int, default=12)
    run.add_argument("--warmup", type=int, default=2)
    run.add_argument("--client-cpus", type=float, default=1.0)
    run.add_argument("--no-floor", action="store_true", help="skip the compiled floor")
    run.add_argument("--no-create", action="store_true", help="fail instead of creating a venv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "setup":
        try:
            print(ensure_venv(VENVS[args.which], quiet=False))
        except BaselineUnavailable as err:
            sys.stderr.write(f"error: {err}\n")
            return 1
        return 0
    common = {"warmup": args.warmup, "floor": not args.no_floor,
              "create_venv": not args.no_create}
    if args.which == "pfl":
        result = run_pfl(args.rounds, **common)
    else:
        result = run_flower_sim(args.rounds, args.which == "flower-compiled",
                                client_cpus=args.client_cpus, **common)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
