"""Run Flower 1.41's SecAgg+ round (``flower_harness.py``) in its own venv, from here.

Flower needs its own dependency set (numpy 2, grpc, ...), so it lives in
``benchmarks/.flower-venv`` (git-ignored) and runs as a subprocess. When that venv is
missing or broken, :func:`flower_available` says why in one sentence and the cost suite
marks the Flower columns "unavailable" instead of failing.

Create the venv with::

    python3.11 -m venv benchmarks/.flower-venv
    benchmarks/.flower-venv/bin/pip install 'flwr==1.41.*'
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
FLOWER_VENV = BENCH_DIR / ".flower-venv"
FLOWER_PYTHON = FLOWER_VENV / "bin" / "python"
HARNESS = BENCH_DIR / "flower_harness.py"
SETUP_HINT = (
    "create it with: python3.11 -m venv benchmarks/.flower-venv && "
    "benchmarks/.flower-venv/bin/pip install 'flwr==1.41.*'"
)


class FlowerUnavailable(RuntimeError):
    """The Flower venv is missing or cannot import flwr 1.41."""


@dataclass(frozen=True)
class FlowerRun:
    """Outcome of one Flower SecAgg+ round (or why there is none)."""

    status: str  # "ok" | "failed" | "timeout" | "skipped" | "unavailable"
    round_s: float | None = None
    detail: str = ""
    raw: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "round_s": self.round_s, "detail": self.detail,
                "raw": self.raw}


def flower_version(python: Path = FLOWER_PYTHON) -> str:
    """flwr's version in the venv, or raise :class:`FlowerUnavailable` saying why."""
    if not python.exists():
        raise FlowerUnavailable(f"Flower venv not found at {python.parent.parent}; {SETUP_HINT}")
    try:
        proc = subprocess.run(
            [str(python), "-c", "import flwr, sys; sys.stdout.write(flwr.__version__)"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FlowerUnavailable(f"cannot run {python}: {err}; {SETUP_HINT}") from err
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlowerUnavailable(f"flwr does not import in {python}: {last}; {SETUP_HINT}")
    version = proc.stdout.strip()
    if not version.startswith("1.41."):
        raise FlowerUnavailable(f"need flwr 1.41.*, the venv has {version}; {SETUP_HINT}")
    return version


def flower_available(python: Path = FLOWER_PYTHON) -> tuple[bool, str]:
    """``(True, version)`` or ``(False, reason)``."""
    try:
        return True, flower_version(python)
    except FlowerUnavailable as err:
        return False, str(err)


def run_flower(
    clients: int,
    dim: int,
    num_shares: int,
    threshold: int,
    dropped: int,
    *,
    timeout_s: float,
    seed: int = 0,
    python: Path = FLOWER_PYTHON,
) -> FlowerRun:
    """One Flower SecAgg+ round with the same n, d, k (num_shares), t and dropouts."""
    if not python.exists():
        return FlowerRun("unavailable", detail=f"Flower venv not found; {SETUP_HINT}")
    cmd = [
        str(python), str(HARNESS), "--clients", str(clients), "--dim", str(dim),
        "--num-shares", str(num_shares), "--threshold", str(threshold),
        "--dropped", str(dropped), "--seed", str(seed),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return FlowerRun("timeout", detail=f"did not finish within {timeout_s:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return FlowerRun("failed", detail=f"exit {proc.returncode}: {last}")
    raw = json.loads(lines[-1])
    if not raw.get("ok"):
        return FlowerRun("failed", raw.get("round_s"),
                         f"wrong aggregate (max abs err {raw.get('max_abs_err')})", raw)
    return FlowerRun("ok", float(raw["round_s"]), "", raw)


if __name__ == "__main__":  # pragma: no cover - manual check
    ok, info = flower_available()
    print(info)
    sys.exit(0 if ok else 1)
