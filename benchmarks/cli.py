"""Argument parsing shared by the benchmark subcommands.

Bad flags end the program with exit status 2 and ONE line on stderr
(``error: <what was wrong>``), so scripts and CI logs show the cause, not a usage dump.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

N = TypeVar("N", int, float)

USAGE_ERROR = 2


class UsageError(ValueError):
    """A flag value that parses but makes no sense (e.g. ``--dropout 1.5``)."""


class OneLineParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are a single line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        prog = self.prog.replace("__main__.py", "benchmarks")
        self.exit(USAGE_ERROR, f"error: {prog}: {message}\n")


def fail_usage(message: str) -> NoReturn:
    """Print one ``error:`` line and exit 2 (for checks done after parsing)."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise SystemExit(USAGE_ERROR)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1); ``10%`` is accepted as 0.10."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def neighbors(text: str) -> int | None:
    """argparse type for ``--neighbors``: ``complete`` (None) or a degree k >= 2."""
    if text.strip().lower() == "complete":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'complete' or an integer number of neighbours >= 2, got {text!r}"
        ) from None
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected 'complete' or an integer number of neighbours >= 2, got {text!r}"
        )
    return value


def checked(text: str, convert: Callable[[str], N], ok: Callable[[N], bool], what: str) -> N:
    """An argparse value: ``convert(text)`` if that works and passes ``ok``, else an
    ``ArgumentTypeError`` saying "expected <what>" (argparse prints it on one line)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def bits(text: str) -> int:
    """argparse type for ``--bits``: the modulus exponent b, 8..62 (CONTRACT.md)."""
    return checked(text, int, lambda v: 8 <= v <= 62, "an integer in 8..62")
