"""Server optimizers applied to the decoded mean update Δ (post-processing: no privacy cost).

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, *Adaptive Federated
Optimization*, ICLR 2021, Algorithm 2 (no bias correction), and FedAvgM (Hsu, Qi, Brown
2019). The update Δ is the mean of the survivors' clipped, noised local updates
(w_local − w_global), so it already points downhill: every optimizer *adds* it.

- ``fedavg``:  w ← w + η·Δ
- ``fedavgm``: v ← μ·v + Δ;  w ← w + η·v
- ``fedadam``: m ← β1·m + (1−β1)·Δ;  v ← β2·v + (1−β2)·Δ²;  w ← w + η·m/(√v + τ)
- ``fedyogi``: m as Adam;  v ← v − (1−β2)·Δ²·sign(v − Δ²);  w ← w + η·m/(√v + τ)

Adam and Yogi start from m = 0 and v = τ² (the paper's v₋₁ ≥ τ²). The state is a list
of float32 buffers the store persists with each model version, so a restarted server
continues with the same moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ServerOptimizer", "OPTIMIZERS", "OptimizerError"]

OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")


class OptimizerError(ValueError):
    """Bad optimizer settings or state (the message quotes the bad value)."""


@dataclass(frozen=True)
class ServerOptimizer:
    """One of :data:`OPTIMIZERS` with its hyper-parameters (validated at construction)."""

    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise OptimizerError(f"server optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        for field_name, lo, hi, open_lo in (
            ("lr", 0.0, 1e6, True),
            ("momentum", 0.0, 0.999999, False),
            ("beta1", 0.0, 0.999999, False),
            ("beta2", 0.0, 0.999999, False),
            ("eps", 0.0, 1e3, True),
        ):
            v = getattr(self, field_name)
            ok = (
                not isinstance(v, bool)
                and isinstance(v, int | float)
                and math.isfinite(v)
                and (v > lo if open_lo else v >= lo)
                and v <= hi
            )
            if not ok:
                rng = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
                raise OptimizerError(f"server {field_name} must be in {rng}, got {v!r}")

    @property
    def n_buffers(self) -> int:
        """How many dim-sized state buffers the optimizer keeps."""
        if self.name == "fedavgm":
            return 1 if self.momentum > 0 else 0
        return 2 if self.name in ("fedadam", "fedyogi") else 0

    def initial_state(self, dim: int) -> list[np.ndarray]:
        if self.name in ("fedadam", "fedyogi"):
            return [np.zeros(dim, np.float32), np.full(dim, self.eps**2, np.float32)]
        return [np.zeros(dim, np.float32) for _ in range(self.n_buffers)]

    def pack_state(self, state: list[np.ndarray]) -> np.ndarray | None:
        """The state as one float32 vector (for the store), None when stateless."""
        if not state:
            return None
        return np.concatenate([np.asarray(s, np.float32) for s in state])

    def unpack_state(self, packed: np.ndarray | None, dim: int) -> list[np.ndarray]:
        """Inverse of :meth:`pack_state`; a missing or mismatched state starts afresh only
        when there is none, otherwise it is an error (the store belongs to another setup)."""
        if packed is None:
            return self.initial_state(dim)
        arr = np.asarray(packed, np.float32)
        if arr.size != self.n_buffers * dim:
            raise OptimizerError(
                f"stored optimizer state has {arr.size} values; {self.name} needs "
                f"{self.n_buffers} x {dim}"
            )
        return [arr[i * dim : (i + 1) * dim].copy() for i in range(self.n_buffers)]

    def step(
        self, weights: np.ndarray, mean_update: np.ndarray, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Return (new weights float32, new state); inputs are not modified."""
        w = np.asarray(weights, np.float64)
        d = np.asarray(mean_update, np.float64)
        if d.shape != w.shape:
            raise OptimizerError(f"update has shape {d.shape}, model has {w.shape}")
        if len(state) != self.n_buffers:
            raise OptimizerError(
                f"{self.name} needs {self.n_buffers} state buffers, got {len(state)}"
            )
        if self.name == "fedavg" or (self.name == "fedavgm" and self.momentum == 0):
            return (w + self.lr * d).astype(np.float32), []
        if self.name == "fedavgm":
            v = self.momentum * np.asarray(state[0], np.float64) + d
            return (w + self.lr * v).astype(np.float32), [v.astype(np.float32)]
        m = self.beta1 * np.asarray(state[0], np.float64) + (1 - self.beta1) * d
        v = np.asarray(state[1], np.float64)
        sq = d * d
        if self.name == "fedadam":
            v = self.beta2 * v + (1 - self.beta2) * sq
        else:  # fedyogi
            v = v - (1 - self.beta2) * sq * np.sign(v - sq)
        new = w + self.lr * m / (np.sqrt(v) + self.eps)
        return new.astype(np.float32), [m.astype(np.float32), v.astype(np.float32)]
