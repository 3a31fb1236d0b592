"""Server and experiment configuration: one source, validated at construction.

``ExperimentConfig`` bundles the four concerns (CONTRACT.md, "Configuration"):
``[server]`` (:class:`ServerConfig`, this module), ``[protocol]``
(``secagg.config.ProtocolConfig``), ``[dp]`` (``dp.DPConfig``) and ``[training]``
(``clients.tasks.config.TrainingConfig``). A TOML file has exactly those sections, and
the keys are the dataclass fields; anything unknown is an error that names it.

Errors are :class:`ConfigError` (a ``ValueError``) and quote the bad value, so the CLI can
print them as one line.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.tasks.config import TrainingConfig
from dp import DPConfig
from secagg.config import ProtocolConfig

__all__ = ["ConfigError", "ServerConfig", "ExperimentConfig", "AppSettings"]

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"server.{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"server.{name} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"server.{name} must be <= {hi}, got {value!r}")


def _check_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    open_lo: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"server.{name} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (open_lo and value == lo)):
        op = ">" if open_lo else ">="
        raise ConfigError(f"server.{name} must be {op} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"server.{name} must be <= {hi}, got {value!r}")


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs rounds and what it accepts.

    - ``rounds``: training rounds to complete (aborted rounds do not count).
    - ``clients``: devices expected to register; the first round starts when that many have
      registered, or after ``registration_timeout`` seconds with at least 2.
    - ``per_round``: devices sampled uniformly per round (fewer if fewer are registered).
    - ``server_opt`` (fedavg | fedavgm | fedadam | fedyogi), ``server_lr``, ``momentum``
      (FedAvgM), ``server_beta1``, ``server_beta2``, ``server_eps`` (Adam/Yogi's τ): the
      server optimizer on the decoded mean update (``server.optimizers``).
    - ``sampling``: "poisson" (each registered device joins a round independently with
      probability per_round / N: what the amplified ε assumes) or "fixed" (exactly
      per_round, accounted as sampling without replacement).
    - ``eval_every``: evaluate the global model every this many rounds (and after the
      last); 0 never.
    - ``epsilon_budget``: stop before a round whose worst case (t contributors) would exceed
      it; ``None`` = no budget.
    - ``stage_timeout``: seconds per protocol stage; silence past it is a dropout.
    - ``max_body_bytes`` (any request), ``max_json_bytes`` (control messages),
      ``max_upload_bytes`` (predict uploads): larger bodies are refused with 413 before
      they are read. Masked inputs must be exactly ``packed_size(dim, bits)`` bytes.
    - ``rate_limit_per_s``, ``rate_limit_burst``: token bucket per authenticated device.
    - ``auth_window_s``: accepted clock skew of signed requests (and nonce memory).
    - ``accountant``: "rdp" or "pld" (dp.PrivacyAccountant).
    - ``seed``: initialisation seed of the global model.
    - ``max_consecutive_aborts``: stop ("finished") after that many aborted rounds in a row.
    - ``data_dir``: where the task finds its data (None: the task's default).
    """

    rounds: int = 10
    clients: int = 10
    per_round: int = 10
    server_lr: float = 1.0
    momentum: float = 0.0
    server_opt: str = "fedavg"
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_eps: float = 1e-3
    sampling: str = "poisson"
    eval_every: int = 1
    epsilon_budget: float | None = None
    stage_timeout: float = 30.0
    registration_timeout: float = 120.0
    max_body_bytes: int = 32 * MiB
    max_json_bytes: int = 4 * MiB
    max_upload_bytes: int = 4 * MiB
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 100
    auth_window_s: float = 120.0
    accountant: str = "rdp"
    seed: int = 0
    max_consecutive_aborts: int = 5
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _check_int("rounds", self.rounds, 1, 1_000_000)
        _check_int("clients", self.clients, 2, 1_000_000)
        _check_int("per_round", self.per_round, 2, 1_000_000)
        if self.per_round > self.clients:
            raise ConfigError(
                f"server.per_round must be <= server.clients ({self.clients}), "
                f"got {self.per_round!r}"
            )
        _check_float("server_lr", self.server_lr, 0.0, 1e6, open_lo=True)
        _check_float("momentum", self.momentum, 0.0, 0.999999)
        from server.optimizers import OPTIMIZERS, OptimizerError, ServerOptimizer

        if self.server_opt == "fedavg" and self.momentum > 0:  # configs from before server_opt
            object.__setattr__(self, "server_opt", "fedavgm")

        if self.server_opt not in OPTIMIZERS:
            raise ConfigError(
                f"server.server_opt must be one of {OPTIMIZERS}, got {self.server_opt!r}"
            )
        try:
            ServerOptimizer(self.server_opt, self.server_lr, self.momentum, self.server_beta1,
                            self.server_beta2, self.server_eps)
        except OptimizerError as err:
            raise ConfigError(f"server.{err}") from None
        if self.server_opt == "fedavgm" and self.momentum == 0:
            raise ConfigError("server.server_opt 'fedavgm' needs server.momentum > 0")
        if self.sampling not in ("poisson", "fixed"):
            raise ConfigError(
                f"server.sampling must be 'poisson' or 'fixed', got {self.sampling!r}"
            )
        _check_int("eval_every", self.eval_every, 0, 1_000_000)
        if self.epsilon_budget is not None:
            _check_float("epsilon_budget", self.epsilon_budget, 0.0, 1e9, open_lo=True)
        _check_float("stage_timeout", self.stage_timeout, 0.0, 86_400.0, open_lo=True)
        _check_float("registration_timeout", self.registration_timeout, 0.0, 7 * 86_400.0)
        _check_int("max_body_bytes", self.max_body_bytes, 1024, 4096 * MiB)
        _check_int("max_json_bytes", self.max_json_bytes, 1024, self.max_body_bytes)
        _check_int("max_upload_bytes", self.max_upload_bytes, 1024, self.max_body_bytes)
        _check_float("rate_limit_per_s", self.rate_limit_per_s, 0.0, 1e6, open_lo=True)
        _check_int("rate_limit_burst", self.rate_limit_burst, 1, 1_000_000)
        _check_float("auth_window_s", self.auth_window_s, 1.0, 86_400.0)
        if self.accountant not in ("rdp", "pld"):
            raise ConfigError(f"server.accountant must be 'rdp' or 'pld', got {self.accountant!r}")
        _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_int("max_consecutive_aborts", self.max_consecutive_aborts, 1, 1_000_000)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"server.data_dir must be a string path, got {self.data_dir!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServerConfig:
        return _from_fields(cls, d, "server")


def _from_fields(cls: Any, d: Mapping[str, Any], section: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(map(repr, unknown))}")
    try:
        return cls(**dict(d))
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[{section}]: {err}") from err


def _section_from_dict(cls: Any, d: Mapping[str, Any], section: str) -> Any:
    """Build a section's dataclass, preferring its own ``from_dict`` (it validates)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {d!r}")
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(map(repr, unknown))}")
    try:
        if hasattr(cls, "from_dict"):
            return cls.from_dict(dict(d))
        return cls(**dict(d))
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"[{section}]: {err}") from err


def _section_to_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    return dataclasses.asdict(obj)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to TOML")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: ``[server]``, ``[protocol]``, ``[dp]``, ``[training]``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    _SECTIONS = ("server", "protocol", "dp", "training")

    def __post_init__(self) -> None:
        for name, cls in (
            ("server", ServerConfig),
            ("protocol", ProtocolConfig),
            ("dp", DPConfig),
            ("training", TrainingConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        # Federated evaluation is two halves that must agree: the encoding block
        # (dp.eval_buckets) and the devices' held-out split (training.eval_fraction).
        if bool(self.dp.eval_buckets) != (self.training.eval_fraction > 0):
            raise ConfigError(
                "federated evaluation needs both dp.eval_buckets > 0 and "
                "training.eval_fraction > 0 (or neither); got eval_buckets="
                f"{self.dp.eval_buckets}, eval_fraction={self.training.eval_fraction}"
            )
        if self.dp.eval_buckets:
            from clients.tasks.registry import get_task

            if get_task(self.training.task).num_classes is None:
                raise ConfigError(
                    f"federated evaluation needs a classification task; "
                    f"{self.training.task!r} is a regression"
                )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            "server": self.server.to_dict(),
            "protocol": _section_to_dict(self.protocol),
            "dp": _section_to_dict(self.dp),
            "training": _section_to_dict(self.training),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"configuration must be a table, got {d!r}")
        unknown = sorted(set(d) - set(cls._SECTIONS))
        if unknown:
            raise ConfigError(
                f"unknown section(s) {', '.join(map(repr, unknown))}; "
                f"expected {', '.join(cls._SECTIONS)}"
            )
        return cls(
            server=ServerConfig.from_dict(d.get("server", {})),
            protocol=_section_from_dict(ProtocolConfig, d.get("protocol", {}), "protocol"),
            dp=_section_from_dict(DPConfig, d.get("dp", {}), "dp"),
            training=_section_from_dict(TrainingConfig, d.get("training", {}), "training"),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {str(p)!r}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {str(p)!r}: {err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {err}") from err
        return cls.from_dict(data)

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if value is None:
                    continue  # TOML has no null: an absent key means the default (None)
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as shown to anyone (GET /v1/status): it holds no secrets."""
        d = self.to_dict()
        d["server"].pop("data_dir", None)
        return d


@dataclass(frozen=True)
class AppSettings:
    """What ``create_app`` needs: the experiment, where to keep state, what to serve.

    ``static_dir``: the dashboard folder (default: ``server/static``). ``log_file``: extra
    log destination (tests search it for leaked bytes). ``autostart``: start the round
    driver in the app's lifespan (tests may drive it by hand).
    """

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    db_path: Path = Path("secagg_dp.sqlite3")
    static_dir: Path | None = None
    log_file: Path | None = None
    autostart: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, ExperimentConfig):
            raise ConfigError(f"experiment must be an ExperimentConfig, got {self.experiment!r}")
        object.__setattr__(self, "db_path", Path(self.db_path))
        if self.static_dir is not None:
            object.__setattr__(self, "static_dir", Path(self.static_dir))
        if self.log_file is not None:
            object.__setattr__(self, "log_file", Path(self.log_file))


# -- the experiment a database belongs to ---------------------------------------------

EXPERIMENT_META_KEY = "experiment"
"""Key in the store's ``meta`` table under which a database records its experiment."""

OPERATIONAL_FIELDS: frozenset[str] = frozenset(
    f"server.{name}"
    for name in (
        "stage_timeout",
        "registration_timeout",
        "max_body_bytes",
        "max_json_bytes",
        "max_upload_bytes",
        "rate_limit_per_s",
        "rate_limit_burst",
        "auth_window_s",
        "max_consecutive_aborts",
        "data_dir",
    )
)
"""Fields that say how one server process serves, not what the experiment is.

They change neither the model nor the privacy accounting, so a later ``--config`` may set
them differently on the same database (its values are used; the record keeps the first).
Every other field, including any added later, defines the experiment: the model, the
sampling, the noise and the accountant that turned past rounds into ε.
"""


def experiment_differences(recorded: ExperimentConfig, given: ExperimentConfig) -> list[str]:
    """The experiment-defining fields on which ``given`` differs from ``recorded``.

    Each entry reads ``"dp.mechanism 'ddgauss' (database: 'none')"``; fields in
    :data:`OPERATIONAL_FIELDS` are ignored.
    """
    out: list[str] = []
    old, new = recorded.to_dict(), given.to_dict()
    for section in ExperimentConfig._SECTIONS:
        a, b = old.get(section, {}), new.get(section, {})
        for key in list(a) + [k for k in b if k not in a]:
            name = f"{section}.{key}"
            if name in OPERATIONAL_FIELDS or a.get(key) == b.get(key):
                continue
            out.append(f"{name} {b.get(key)!r} (database: {a.get(key)!r})")
    return out


def recorded_experiment(store: Any) -> ExperimentConfig | None:
    """The experiment recorded in ``store`` (a ``server.store.Store``), or None.

    Raises ConfigError if the record cannot be read as an experiment of this version.
    """
    raw = store.get_meta(EXPERIMENT_META_KEY)
    if raw is None:
        return None
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(
            f"database {str(store.path)!r} records an experiment this version cannot use: {err}"
        ) from None


def resolve_experiment(store: Any, given: ExperimentConfig | None) -> ExperimentConfig:
    """The experiment to serve ``store`` with; reads only (see :func:`record_experiment`).

    - The database records an experiment: without ``given`` that experiment is served; a
      ``given`` one must agree with it on every field outside :data:`OPERATIONAL_FIELDS`
      (then ``given`` is served, operational values included).
    - It records none but has served before (databases from before the record; the
      driver writes ``task`` into ``meta``): ``given`` is required and must have that task.
    - A new database: ``given``, or the default experiment.

    Why: a database's rounds were charged to an accountant for one mechanism, sampling
    and noise, and its models have one task's shape; serving it with another experiment
    would print ε for noise that was never added, or fail deep in start-up. Raises
    :class:`ConfigError` with a one-line message.
    """
    where = repr(str(store.path))
    recorded = recorded_experiment(store)
    if recorded is not None:
        if given is None:
            return recorded
        diffs = experiment_differences(recorded, given)
        if diffs:
            more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            raise ConfigError(
                f"--config contradicts the experiment recorded in database {where}: "
                f"{', '.join(diffs[:4])}{more}; serve the database without --config, "
                "or start a new experiment with a new --db"
            )
        return given
    task = store.get_meta("task")
    if task is None:
        return given if given is not None else ExperimentConfig()
    if given is None:
        raise ConfigError(
            f"database {where} (task {task!r}) was made before databases recorded their "
            "experiment: pass the --config it was run with"
        )
    if task != given.training.task:
        raise ConfigError(f"database {where} belongs to task {task!r}, not {given.training.task!r}")
    return given


def record_experiment(store: Any, experiment: ExperimentConfig) -> None:
    """Record ``experiment`` in ``store`` unless it already records one.

    Call it with what :func:`resolve_experiment` returned, once start-up checks passed: the
    first record is kept for the life of the database (a later run may differ only in
    :data:`OPERATIONAL_FIELDS`, and those are not written back).
    """
    if store.get_meta(EXPERIMENT_META_KEY) is None:
        store.set_meta(EXPERIMENT_META_KEY, experiment.to_dict())
