"""``TrainingConfig``: the local-training part of an experiment's configuration.

One frozen dataclass, validated at construction, shared by the server (which sends it
to devices as public config), the devices, the simulation and the benchmarks. TOML
section ``[training]``; keys are the field names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from clients.tasks.registry import TASKS

PARTITIONS = ("iid", "dirichlet")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainingConfig:
    """Local training hyper-parameters and the data partition.

    Fields:
        task: a task name (``clients.tasks.TASKS``: a built-in, an installed entry point)
            or a ``package.module:Class`` path, imported (:mod:`clients.tasks.registry`).
        local_epochs: passes over the device's shard per round (>= 1).
        batch_size: minibatch size of local SGD (>= 1).
        lr: local SGD learning rate (> 0, finite).
        partition: ``"iid"`` or ``"dirichlet"`` (label skew, see ``clients.data``).
        alpha: Dirichlet concentration (> 0); smaller is more skewed. Unused for iid.
        seed: seeds the partition, model init and local shuffling (>= 0).
        eval_fraction: the part of each device's shard held out for federated evaluation
            (the last ``round(eval_fraction * n)`` examples, never trained on; 0: none).
    """

    task: str = "fashion"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    eval_fraction: float = 0.0

    def __post_init__(self) -> None:
        try:
            TASKS.resolve(self.task)
        except ValueError as exc:
            raise ValueError(f"training.task: {exc}") from None
        if not _is_int(self.local_epochs) or self.local_epochs < 1:
            raise ValueError(
                f"training.local_epochs must be an int >= 1, got {self.local_epochs!r}"
            )
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"training.batch_size must be an int >= 1, got {self.batch_size!r}")
        if not _is_real(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"training.lr must be a finite number > 0, got {self.lr!r}")
        if self.partition not in PARTITIONS:
            raise ValueError(
                f"training.partition must be one of {PARTITIONS}, got {self.partition!r}"
            )
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"training.alpha must be a finite number > 0, got {self.alpha!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"training.seed must be an int >= 0, got {self.seed!r}")
        if (not _is_real(self.eval_fraction) or not math.isfinite(self.eval_fraction)
                or not 0.0 <= self.eval_fraction <= 0.9):
            raise ValueError(
                f"training.eval_fraction must be in [0, 0.9], got {self.eval_fraction!r}"
            )
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "eval_fraction", float(self.eval_fraction))

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-safe dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingConfig:
        """Build from a dict; unknown keys raise ValueError (typos must not pass silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"training config must be a table/dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**d)
