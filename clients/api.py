"""The Python API of secagg-dp: build an experiment, plan it, run it, read its round log.

```python
from clients import Experiment

exp = Experiment("digits", mechanism="ddgauss", target_epsilon=8.0, engine="local",
                 clients=20, per_round=10, rounds=2, sampling="fixed", seed=1)
print(exp.plan().epsilon_amplified)       # the ε the run will charge if all survive
result = exp.run()                        # trains with the real protocol and noise
for r in result.rounds:                   # typed view of the server's round log
    print(r.round, r.status, r.survivors, r.accuracy, r.epsilon_amplified)
print(result.epsilon, result.epsilon_amplified, result.delta)
```

:class:`Experiment` is a thin, typed facade over what ``python -m clients run`` uses:
every keyword is a field of :class:`clients.options.SimOptions` (the same names as the
command-line flags, ``per_round`` for ``--per-round``), validated at construction, so
a bad value raises :class:`clients.options.UsageError` before anything starts.
:meth:`Experiment.plan` is ``python -m clients plan`` (:func:`clients.plan.plan_experiment`)
and :meth:`Experiment.run` runs the engine that ``python -m clients run`` would
(:func:`clients.run.make_engine`: ``local``, ``ray`` or ``http``) and wraps its
:class:`clients.engines.local.EngineResult` in a :class:`RunResult`.

Privacy: every ε here is the run's own accountant's (``server.round.ServerCore``),
charged for the honest survivors' noise of each round, with private federated
evaluation included when it is on; ``epsilon`` holds even against a server that knows
who took part, ``epsilon_amplified`` only if the adversary does not learn it (see the
README's "Privacy figures"). The simulation engines seed the cohorts and the noise from
``seed`` (reproducible research runs, never a deployment).

The lower-level pieces, for experiments this facade does not cover: one secure round
with :func:`secagg.run_round` and :meth:`secagg.RoundParams.create`; the DP encoding with
:class:`dp.EncodingPlan`, :class:`dp.Encoder` and :class:`dp.Decoder`; the accountant
:class:`dp.PrivacyAccountant`, :func:`dp.epsilon_report` and :func:`dp.calibrate_noise`
(see the module docs of :mod:`secagg` and :mod:`dp`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.options import (
    _FIELD_TYPES,
    SimOptions,
    UsageError,
    load_options_file,
    merge_options,
)
from clients.plan import ExperimentPlan, plan_experiment

__all__ = ["Experiment", "ExperimentPlan", "RoundRecord", "RunResult", "UsageError"]


def _count(value: Any) -> int:
    if isinstance(value, list | tuple | set | dict):
        return len(value)
    return int(value or 0)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class RoundRecord:
    """One round of the server's round log, typed. ``raw`` is the whole logged record
    (timings, dropouts by stage, the federated-evaluation block, the wrap report...).

    ``epsilon`` / ``epsilon_amplified`` are cumulative: the privacy spent after this
    round (None: no guarantee). An aborted round reveals nothing and charges nothing;
    its ``abort_reason`` says why."""

    round: int
    status: str
    sampled: int
    survivors: int
    accuracy: float | None
    loss: float | None
    epsilon: float | None
    epsilon_amplified: float | None
    federated_accuracy: float | None
    federated_accuracy_stddev: float | None
    abort_reason: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_log(cls, record: Mapping[str, Any]) -> RoundRecord:
        """From one record of the round log (``GET /v1/rounds``, ``--json-out``)."""
        fe = record.get("federated_eval") or {}
        return cls(
            round=int(record["round"]),
            status=str(record.get("status", "done")),
            sampled=_count(record.get("sampled")),
            survivors=_count(record.get("survivors")),
            accuracy=_float(record.get("accuracy")),
            loss=_float(record.get("loss")),
            epsilon=_float(record.get("epsilon")),
            epsilon_amplified=_float(record.get("epsilon_amplified")),
            federated_accuracy=_float(fe.get("accuracy")),
            federated_accuracy_stddev=_float(fe.get("accuracy_stddev")),
            abort_reason=record.get("abort_reason"),
            raw=record,
        )


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Experiment.run` produced.

    ``log`` is the round log exactly as the server stored it (a list of dicts, what
    ``--json-out`` writes); ``rounds`` is the same log typed. ``epsilon_report`` is the
    accountant's final report (both ε, δ, adjacency, sampling, collusion) and
    ``epsilon`` / ``epsilon_amplified`` / ``delta`` its headline figures. ``engine_result``
    is the engine's own :class:`clients.engines.local.EngineResult`."""

    rounds: tuple[RoundRecord, ...]
    log: list[dict[str, Any]]
    epsilon_report: dict[str, Any]
    noise_multiplier: float
    engine: str
    db_path: Path
    options: SimOptions
    engine_result: Any

    @property
    def epsilon(self) -> float | None:
        """ε after the run, no sampling amplification (None: no guarantee)."""
        return _float(self.epsilon_report.get("epsilon"))

    @property
    def epsilon_amplified(self) -> float | None:
        """ε after the run with the sampling's amplification (None: none proven)."""
        return _float(self.epsilon_report.get("epsilon_amplified"))

    @property
    def delta(self) -> float:
        """The δ both figures hold at."""
        return float(self.epsilon_report.get("delta", self.options.delta))

    @property
    def completed(self) -> int:
        """Rounds that were unmasked and applied."""
        return sum(1 for r in self.rounds if r.status == "done")

    def summary(self) -> list[str]:
        """The closing summary ``python -m clients run`` prints (both ε with their
        assumptions, the mechanism, z, the database)."""
        from clients.run import summary_lines

        return summary_lines(self.engine_result, self.options)


class Experiment:
    """A federated training experiment: a task, a mechanism, a privacy target or a noise
    multiplier, an engine, and any other option of ``python -m clients run``.

    ``Experiment("digits", target_epsilon=8, engine="local", clients=100, per_round=20)``;
    ``task`` is a registered task name (``clients.tasks.TASKS``). ``engine`` defaults to
    ``"local"`` here (one process, no sockets); ``"ray"`` spreads the devices over Ray
    workers and ``"http"`` starts a real server subprocess with devices over signed HTTP.
    Give ``target_epsilon`` (z calibrated for the amplified ε after ``rounds``) or
    ``noise_multiplier``, not both; neither means the default z. Raises
    :class:`clients.options.UsageError` for an unknown option or a bad value."""

    def __init__(
        self,
        task: str,
        *,
        mechanism: str = "ddgauss",
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        engine: str = "local",
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(_FIELD_TYPES))
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(_FIELD_TYPES))}")
        if options.get("keep_serving"):
            raise UsageError("keep_serving is for the command line; after a run, serve its "
                             "database with `python -m server --db RESULT.db_path`")
        self.options = SimOptions(
            task=task, mechanism=mechanism, target_epsilon=target_epsilon,
            noise_multiplier=noise_multiplier, engine=engine, **options,
        )

    @classmethod
    def from_options(cls, options: SimOptions) -> Experiment:
        """An experiment from an existing :class:`clients.options.SimOptions`."""
        fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        return cls(**fields)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Experiment:
        """From a ``--config`` TOML file (flat, the run's keys), ``overrides`` on top.
        The API's default engine is ``local``, unless the file or ``overrides`` name one."""
        values = {"engine": "local", **load_options_file(Path(path))}
        return cls.from_options(merge_options(values, overrides))

    def replace(self, **changes: Any) -> Experiment:
        """A copy with some options changed (validated again)."""
        if "noise_multiplier" in changes or "target_epsilon" in changes:
            changes = {"noise_multiplier": None, "target_epsilon": None, **changes}
        return Experiment.from_options(dataclasses.replace(self.options, **changes))

    def plan(self) -> ExperimentPlan:
        """Parameters, k and t, z and the expected ε, without training (builds the model
        only): :func:`clients.plan.plan_experiment`."""
        return plan_experiment(self.options)

    def run(
        self,
        *,
        after_round: Callable[[dict[str, Any]], None] | None = None,
        console: Any = None,
    ) -> RunResult:
        """Train for ``rounds`` rounds with the chosen engine and return the round log.

        ``after_round(record)`` is called with each round's record as it is logged
        (progress bars, early looks). ``console`` (a ``rich.console.Console``) receives
        the engine's progress lines; None keeps the run quiet. A server or Ray workers
        the engine started are stopped before this returns, whatever happens."""
        from clients.run import make_engine

        engine = make_engine(self.options, console)
        if after_round is not None:
            engine.after_round = after_round
        try:
            result = engine.run()
        finally:
            engine.stop()
        log = [dict(r) for r in result.rounds]
        return RunResult(
            rounds=tuple(RoundRecord.from_log(r) for r in log),
            log=log,
            epsilon_report=dict(result.status),
            noise_multiplier=float(result.noise_multiplier),
            engine=str(result.engine),
            db_path=Path(result.db_path),
            options=self.options,
            engine_result=result,
        )

    def __repr__(self) -> str:
        o, d = self.options, SimOptions()
        changed = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)
                   if getattr(o, f.name) != getattr(d, f.name) and f.name != "task"}
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"Experiment({o.task!r}{', ' if args else ''}{args})"
