"""The options of ``python -m clients run``: one frozen dataclass shared by every engine.

Defaults < ``--config FILE`` (flat TOML, same keys) < explicit command-line flags. Every
value is validated at construction; a bad one raises :class:`UsageError`, which the CLI
prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

ENGINES = ("http", "local", "ray")


class UsageError(ValueError):
    """A bad option or configuration value (printed as one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimOptions:
    """Every knob of ``python -m clients run`` (CLI flag ``--a-b`` = field ``a_b``).

    The defaults are the demo (``make run``): Fashion-MNIST, 1000 devices, 50 sampled per
    round (Poisson, q = 0.05), 14 rounds of 3 local epochs (batch 10, lr 0.15), FedAvg,
    ddgauss at z = 1.2 with noise shares sized for 75 % of the cohort, and private federated
    evaluation on 10 % of each shard (classification tasks). Measured on 2 cores under
    heavy other load (2026-12-01): 73.1 % test accuracy at an amplified ε of 8.55
    (unamplified 17.7, federated evaluation included) at δ = 1e-5, 114 s of rounds over
    HTTP; 12 rounds gave 71.3 % at 8.15 twice. Why these values: a device's update
    must be large next to the clip (one local epoch at lr 0.05 moves about 0.05 against a
    clip of 1, and the noise drowns it); and shares sized for the secagg threshold t (6 of
    50) add 7x the calibrated noise std, sized for 75 % of the cohort 1.23x, at the price
    that a round in which more than a quarter of its devices vanish is not unmasked.
    """

    task: str = "fashion"
    clients: int = 1000
    per_round: int = 50
    rounds: int = 14
    local_epochs: int = 3
    batch_size: int = 10
    lr: float = 0.15
    server_lr: float = 1.0
    partition: str = "iid"
    alpha: float = 0.5
    mechanism: str = "ddgauss"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    bits: int = 20
    graph: str = "harary"
    dropout: float = 0.0
    min_survivors: float = 0.75
    seed: int = 0
    json_out: str | None = None
    db: str | None = None
    stage_timeout: float | None = None
    data_dir: str | None = None
    active: bool = False
    keep_serving: bool = False
    port: int = 0
    engine: str = "http"
    ray_address: str | None = None
    workers: int | None = None
    secure_sum: str = "protocol"
    sampling: str = "poisson"
    corrupt: float = 0.1
    server_opt: str = "fedavg"
    server_momentum: float = 0.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_eps: float = 1e-3
    eval_every: int = 1
    federated_eval: bool | None = None
    eval_fraction: float = 0.1
    eval_buckets: int = 10
    eval_noise_ratio: float = 2.0

    DEFAULT_NOISE_MULTIPLIER = 1.2

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise UsageError("give either noise_multiplier or target_epsilon, not both")
        for name in ("clients", "per_round", "rounds", "local_epochs", "batch_size", "bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.clients < 2:
            raise UsageError(f"clients must be >= 2, got {self.clients}")
        if not 2 <= self.per_round <= self.clients:
            raise UsageError(
                f"per_round must be in [2, clients={self.clients}], got {self.per_round}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.min_survivors <= 1.0:
            raise UsageError(f"min_survivors must be in [0, 1], got {self.min_survivors}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise UsageError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.stage_timeout is not None and not self.stage_timeout > 0:
            raise UsageError(f"stage_timeout must be > 0, got {self.stage_timeout}")
        if not 0 <= self.port < 65536:
            raise UsageError(f"port must be in [0, 65535], got {self.port}")
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.secure_sum not in ("protocol", "exact"):
            raise UsageError(f"secure_sum must be 'protocol' or 'exact', got {self.secure_sum!r}")
        if self.secure_sum == "exact" and self.engine == "http":
            raise UsageError("secure_sum 'exact' is for the local and ray engines; the http "
                             "engine always runs the real protocol")
        if self.ray_address is not None and self.engine != "ray":
            raise UsageError("ray_address needs engine 'ray'")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise UsageError(f"workers must be a positive integer, got {self.workers!r}")
        if self.sampling not in ("poisson", "fixed"):
            raise UsageError(f"sampling must be 'poisson' or 'fixed', got {self.sampling!r}")
        if not 0.0 <= self.corrupt < 1.0:
            raise UsageError(f"corrupt must be in [0, 1), got {self.corrupt}")
        if isinstance(self.eval_every, bool) or self.eval_every < 0:
            raise UsageError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        if not 0.0 < self.eval_fraction <= 0.9:
            raise UsageError(f"eval_fraction must be in (0, 0.9], got {self.eval_fraction}")
        if isinstance(self.eval_buckets, bool) or not 2 <= self.eval_buckets <= 100:
            raise UsageError(f"eval_buckets must be an integer in [2, 100], got "
                             f"{self.eval_buckets!r}")
        if not self.eval_noise_ratio > 0:
            raise UsageError(f"eval_noise_ratio must be > 0, got {self.eval_noise_ratio}")
        for kind, name in (("task", self.task), ("mechanism", self.mechanism),
                           ("graph", self.graph)):
            try:
                _registry(kind).resolve(name)
            except ValueError as exc:  # secagg.plugins.PluginError
                raise UsageError(str(exc)) from None
        if self.federated_eval and not _is_classifier(self.task):
            raise UsageError(f"federated evaluation histograms device accuracy: it needs a "
                             f"classification task, and {self.task!r} is not one")

    @property
    def eval_on(self) -> bool:
        """Whether devices run private federated evaluation (None: on for classifiers)."""
        if self.federated_eval is None:
            return _is_classifier(self.task)
        return bool(self.federated_eval)

    @property
    def sample_rate(self) -> float:
        """q = per_round / clients (Poisson: each device's chance to join a round)."""
        return self.per_round / self.clients


def _is_classifier(task: str) -> bool:
    from clients.tasks.registry import TASKS

    try:
        known = TASKS.resolve(task)
    except ValueError:
        return False
    return known.num_classes is not None


def _registry(kind: str) -> Any:
    """The plug-in registry of ``kind`` ("task", "mechanism" or "graph"): built-ins,
    installed entry points and ``package.module:Class`` paths (:mod:`secagg.plugins`)."""
    if kind == "task":
        from clients.tasks.registry import TASKS

        return TASKS
    if kind == "mechanism":
        from dp.mechanisms import MECHANISM_REGISTRY

        return MECHANISM_REGISTRY
    from secagg.graph import GRAPH_REGISTRY

    return GRAPH_REGISTRY


def plugin_help(kind: str) -> str:
    """``one of a, b, c, or package.module:Class`` for a ``--task`` / ``--mechanism`` /
    ``--graph`` help line: what is registered now, installed entry points included."""
    return f"one of {', '.join(_registry(kind).names())}, or package.module:Class"


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "clients": (int,), "per_round": (int,), "rounds": (int,),
    "local_epochs": (int,), "batch_size": (int,), "lr": (float, int),
    "server_lr": (float, int), "partition": (str,), "alpha": (float, int),
    "mechanism": (str,), "noise_multiplier": (float, int), "target_epsilon": (float, int),
    "delta": (float, int), "clip": (float, int), "bits": (int,), "graph": (str,),
    "dropout": (float, int), "min_survivors": (float, int), "seed": (int,),
    "json_out": (str,), "db": (str,),
    "stage_timeout": (float, int), "data_dir": (str,), "active": (bool,),
    "keep_serving": (bool,), "port": (int,), "engine": (str,), "ray_address": (str,),
    "workers": (int,), "secure_sum": (str,), "sampling": (str,), "corrupt": (float, int),
    "server_opt": (str,), "server_momentum": (float, int), "server_beta1": (float, int),
    "server_beta2": (float, int), "server_eps": (float, int), "eval_every": (int,),
    "federated_eval": (bool,), "eval_fraction": (float, int), "eval_buckets": (int,),
    "eval_noise_ratio": (float, int),
}


def load_options_file(path: Path) -> dict[str, Any]:
    """Read a flat TOML file whose keys are the ``run`` flags (``per-round`` or ``per_round``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in _FIELD_TYPES:
            known = ", ".join(sorted(k.replace("_", "-") for k in _FIELD_TYPES))
            raise UsageError(f"unknown key {raw_key!r} in {str(path)!r}; known: {known}")
        types = _FIELD_TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise UsageError(
                f"{raw_key} in {str(path)!r} must be {types[0].__name__}, got {value!r}"
            )
        number: Any = value
        out[key] = float(number) if float in types and not isinstance(value, bool) else value
    return out


def merge_options(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> SimOptions:
    """Defaults < config file < explicit CLI flags (a CLI noise choice replaces the file's)."""
    merged = dict(file_values)
    if "noise_multiplier" in cli_values or "target_epsilon" in cli_values:
        merged.pop("noise_multiplier", None)
        merged.pop("target_epsilon", None)
    merged.update(cli_values)
    return SimOptions(**merged)


def options_from_namespace(ns: argparse.Namespace) -> SimOptions:
    """The options of a parsed ``run`` / ``plan`` command line: defaults < ``--config``
    file < the flags given (raises UsageError, TypeError or ValueError)."""
    cli = {k: v for k, v in vars(ns).items() if k != "config" and k in _FIELD_TYPES}
    file_values = load_options_file(ns.config) if getattr(ns, "config", None) else {}
    return merge_options(file_values, cli)


# --------------------------------------------------------------------------- CLI parser


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m clients run``; only flags given explicitly land in the namespace."""
    d = SimOptions()
    p = parser or OneLineParser(prog="python -m clients run")
    p.argument_default = argparse.SUPPRESS
    p.description = (
        "Start a secagg-dp server on loopback and N devices, and train for R rounds with "
        "secure aggregation and distributed DP. Every flag can also be set in --config."
    )

    def add(flag: str, help_text: str, **kw: Any) -> None:
        name = flag[2:].replace("-", "_")
        default = getattr(d, name)
        p.add_argument(flag, help=f"{help_text} (default: {default})", **kw)

    p.add_argument("--config", type=Path, help="TOML file with the same keys as these flags; "
                   "flags given on the command line override it (default: none)")
    add("--task", f"task to train: {plugin_help('task')}", type=str)
    add("--clients", "number of devices (and of data shards)", type=int)
    add("--per-round", "devices sampled per round", type=int)
    add("--rounds", "training rounds", type=int)
    add("--local-epochs", "local epochs per round", type=int)
    add("--batch-size", "local minibatch size", type=int)
    add("--lr", "local SGD learning rate", type=float)
    add("--server-lr", "server learning rate applied to the decoded mean update", type=float)
    add("--partition", "data partition across devices", choices=("iid", "dirichlet"))
    add("--alpha", "Dirichlet concentration for --partition dirichlet", type=float)
    add("--mechanism", f"DP noise mechanism: {plugin_help('mechanism')}", type=str)
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float,
                       help="z: std of the summed noise is z*clip "
                            f"(default: {SimOptions.DEFAULT_NOISE_MULTIPLIER})")
    noise.add_argument("--target-epsilon", type=float,
                       help="calibrate z (dp.calibrate_noise) so that after --rounds rounds the "
                            "amplified ε (sampling q = per-round/clients) is this, at --delta "
                            "(default: none)")
    add("--delta", "DP δ", type=float)
    add("--clip", "L2 clip norm of each device's update", type=float)
    add("--bits", "bits per entry of the secure sum (modulus 2^bits)", type=int)
    add("--graph", f"secagg neighbour graph: {plugin_help('graph')}", type=str)
    add("--dropout", "probability that a sampled device vanishes at a random stage", type=float)
    add("--min-survivors", "fraction of the sampled devices that must survive for a round "
        "to be unmasked (devices enforce it); noise shares are sized for that many "
        "(0: the secagg threshold t)", type=float)
    add("--seed", "seed of the partition, model init and dropout schedule", type=int)
    add("--json-out", "write the per-round log (from the server) as JSON here", type=str)
    add("--db", "SQLite file of the server (None: one in a temporary directory)", type=str)
    add("--stage-timeout", "seconds per protocol stage (None: measured from local "
        "training time)", type=float)
    add("--data-dir", "where the task's data lives (None: the task's default)", type=str)
    add("--active", "active-adversary mode: consistency check and signatures",
        action="store_true")
    add("--keep-serving", "keep the server up after training, for the dashboard",
        action="store_true")
    add("--port", "server port on 127.0.0.1 (0: a free one)", type=int)
    add("--engine", "http: a real server on loopback and devices over signed HTTP; local: "
        "one process, no sockets; ray: device training and encoding in Ray workers",
        choices=ENGINES)
    add("--ray-address", "join an existing Ray cluster at this address (engine ray; None: "
        "start a local Ray with this machine's cores)", type=str)
    add("--workers", "Ray workers (engine ray; None: one per core)", type=int)
    add("--secure-sum", "protocol: real keys, masks and shares; exact: the exact modular sum "
        "of the same encoded integers (local/ray only, for big sweeps)",
        choices=("protocol", "exact"))
    add("--sampling", "poisson: each device joins a round with probability per-round/clients "
        "(what the amplified ε assumes); fixed: exactly per-round devices (accounted as "
        "sampling without replacement)", choices=("poisson", "fixed"))
    add("--corrupt", "fraction of sampled devices assumed to collude with the server (their "
        "noise shares are not counted)", type=float)
    add("--server-opt", "server optimizer", choices=("fedavg", "fedavgm", "fedadam", "fedyogi"))
    add("--server-momentum", "FedAvgM momentum", type=float)
    add("--server-beta1", "FedAdam/FedYogi beta1", type=float)
    add("--server-beta2", "FedAdam/FedYogi beta2", type=float)
    add("--server-eps", "FedAdam/FedYogi tau (adaptivity)", type=float)
    add("--eval-every", "evaluate the global model every N rounds (and after the last)",
        type=int)
    p.add_argument("--federated-eval", action=argparse.BooleanOptionalAction,
                   help="private federated evaluation: every sampled device evaluates the "
                   "model it received on its held-out split and adds a noised histogram of "
                   "its accuracy, its example count and loss sum to the secure sum, charged "
                   "with the round (default: on for classification tasks)")
    add("--eval-fraction", "part of each device's shard held out for federated evaluation",
        type=float)
    add("--eval-buckets", "buckets of the federated histogram of device accuracy", type=int)
    add("--eval-noise-ratio", "noise multiplier of the federated-evaluation block / z (each "
        "decoded histogram count has noise std 2 * ratio * z devices)", type=float)
    return p


# --------------------------------------------------------------------------- server



def model_dim(task: Any, seed: int = 0) -> int:
    """Number of float parameters of the task's model (the DP/secagg dimension before padding)."""
    model = task.build_model(seed)
    return int(sum(int(w.size) for w in model.get_weights()))


def resolve_noise(opts: SimOptions, dim: int, threshold: int | None = None) -> float:
    """z from --noise-multiplier, from --target-epsilon (calibrated), or the default.

    The calibration targets the *amplified* ε after the planned rounds, with the same
    accountant as the run: the sampling it does (Poisson at q = per_round/clients, or
    fixed-size without replacement), noise shares sized for ``threshold`` contributors
    (t, or the enforced minimum survivor count) less the colluding devices.
    """
    if opts.mechanism == "none":
        return 0.0
    if opts.noise_multiplier is not None:
        return float(opts.noise_multiplier)
    if opts.target_epsilon is None:
        return SimOptions.DEFAULT_NOISE_MULTIPLIER
    from dp import calibrate_noise

    return float(
        calibrate_noise(
            opts.target_epsilon,
            mechanism=opts.mechanism,
            sample_rate=opts.sample_rate,
            rounds=opts.rounds,
            delta=opts.delta,
            accountant="rdp",
            clients_per_round=opts.per_round,
            bits=opts.bits,
            dim=dim,
            clip=opts.clip,
            min_contributors=threshold,
            sampling=opts.sampling,
            population=opts.clients,
            corrupt=opts.corrupt,
            eval_buckets=opts.eval_buckets if opts.eval_on else 0,
            eval_noise_ratio=opts.eval_noise_ratio,
        )
    )


def build_experiment(opts: SimOptions, noise_multiplier: float, stage_timeout: float) -> Any:
    """The :class:`server.config.ExperimentConfig` the server runs (raises ValueError)."""
    from clients.tasks.config import TrainingConfig
    from dp import DPConfig
    from secagg.config import ProtocolConfig
    from server.config import ExperimentConfig, ServerConfig

    return ExperimentConfig(
        server=ServerConfig(
            rounds=opts.rounds,
            clients=opts.clients,
            per_round=opts.per_round,
            server_lr=opts.server_lr,
            server_opt=opts.server_opt,
            momentum=opts.server_momentum,
            server_beta1=opts.server_beta1,
            server_beta2=opts.server_beta2,
            server_eps=opts.server_eps,
            sampling=opts.sampling,
            eval_every=opts.eval_every,
            stage_timeout=float(stage_timeout),
            registration_timeout=120.0,
            seed=opts.seed,
            data_dir=opts.data_dir,
        ),
        protocol=ProtocolConfig(
            graph=opts.graph, dropout=max(0.1, min(opts.dropout, 0.5)), active=opts.active,
            min_survivors=opts.min_survivors, corrupt=opts.corrupt,
        ),
        dp=DPConfig(
            mechanism=opts.mechanism,
            clip=opts.clip,
            noise_multiplier=noise_multiplier,
            bits=opts.bits,
            delta=opts.delta,
            eval_buckets=opts.eval_buckets if opts.eval_on else 0,
            eval_noise_ratio=opts.eval_noise_ratio,
        ),
        training=TrainingConfig(
            task=opts.task,
            local_epochs=opts.local_epochs,
            batch_size=opts.batch_size,
            lr=opts.lr,
            partition=opts.partition,
            alpha=opts.alpha,
            seed=opts.seed,
            eval_fraction=opts.eval_fraction if opts.eval_on else 0.0,
        ),
    )


def round_probe(opts: SimOptions) -> Any:
    """The secagg parameters of a full round of ``per_round`` devices (threshold t and
    the minimum survivor count the noise is sized for); raises UsageError."""
    from secagg import RoundParams

    try:
        return RoundParams.create(
            0, tuple(range(opts.per_round)), 1, opts.bits, graph=opts.graph,
            dropout=max(0.1, min(opts.dropout, 0.5)), corrupt=opts.corrupt, active=opts.active,
            min_survivors=opts.min_survivors,
            # placeholders: the probe only sizes t, no signature is ever checked with them
            identity_keys={i: bytes(32) for i in range(opts.per_round)} if opts.active else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
