"""``python -m clients device``: one real device process against a server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clients.device.process import Device, TrainingSettings, warm_up_encoder
from clients.device.transport import (
    MAX_WAIT_S,
    DeviceError,
    ServerClient,
    ServerRejected,
    generate_identity,
    load_or_create_identity,
)

log = logging.getLogger("clients.device")
# --------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0-based shard I of N) and validate it."""
    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/10), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard needs 0 <= I < N, got {text!r}")
    return index, count


def shard_indices(
    labels: np.ndarray, index: int, count: int, settings: TrainingSettings
) -> np.ndarray:
    """Indices of shard ``index`` of the seeded partition shared by the whole experiment."""
    from clients.data import partition

    parts = partition(labels, count, scheme=settings.partition, alpha=settings.alpha,
                      seed=settings.seed)
    if len(parts) != count:
        raise DeviceError(f"partition returned {len(parts)} shards, expected {count}")
    return np.asarray(parts[index])


# --------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags of ``python -m clients device``."""
    if parser is None:
        from clients.options import OneLineParser

        parser = OneLineParser(prog="python -m clients device")
    p = parser
    p.description = (
        "Run one device: register, then take part in every round it is sampled in until the "
        "server says training is finished."
    )
    p.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    from clients.options import plugin_help

    p.add_argument("--task", required=True, help=f"task: {plugin_help('task')}")
    p.add_argument("--shard", required=True,
                   help="I/N: take shard I (0-based) of the experiment's N-way partition")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the task's data lives (default: the task's own default)")
    p.add_argument("--key-file", type=Path, default=None,
                   help="persist the Ed25519 identity here (created if missing; default: "
                        "a fresh key each run)")
    p.add_argument("--partition", choices=("iid", "dirichlet"), default="iid",
                   help="partition scheme if the server does not publish one (default: iid)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="Dirichlet alpha if the server does not publish one (default: 0.5)")
    p.add_argument("--seed", type=int, default=0,
                   help="partition seed if the server does not publish one (default: 0)")
    p.add_argument("--local-epochs", type=int, default=1,
                   help="local epochs if the server does not publish them (default: 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="batch size if the server does not publish it (default: 32)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="local learning rate if the server does not publish it (default: 0.05)")
    p.add_argument("--wait", type=float, default=30.0,
                   help="long-poll duration in seconds, at most 60 (default: 30)")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="how long to keep trying to reach the server at start (default: 60)")
    pol = p.add_argument_group(
        "local policy", "what this device accepts from the server (secagg.ClientPolicy); a "
        "round outside it is refused with a log line")
    pol.add_argument("--min-threshold-fraction", type=float, default=0.25,
                     help="smallest secagg threshold t as a fraction of a secret's share "
                          "holders (default: 0.25)")
    pol.add_argument("--corrupt", type=float, default=0.1,
                     help="fraction of devices this device assumes may collude with the "
                          "server; t must exceed their bound (default: 0.1)")
    pol.add_argument("--min-cohort", type=int, default=3,
                     help="smallest cohort to take part in (default: 3)")
    pol.add_argument("--max-cohort", type=int, default=1_000_000,
                     help="largest cohort to take part in (default: 1000000)")
    pol.add_argument("--graphs", default="complete,harary",
                     help="allowed neighbour graphs, comma-separated: "
                          f"{plugin_help('graph')} (default: complete,harary)")
    pol.add_argument("--require-active", action="store_true",
                     help="refuse rounds without the consistency check (active mode)")
    pol.add_argument("--roster", type=Path, default=None,
                     help="JSON file {device id: base64 Ed25519 public key} learned "
                          "independently of the server; active rounds must match it")
    p.add_argument("-v", "--verbose", action="store_true", help="log protocol progress")
    return p


def policy_from_args(args: argparse.Namespace) -> Any:
    """The device's ``secagg.ClientPolicy`` from its flags (ValueError on bad values)."""
    from secagg.policy import ClientPolicy

    graphs = tuple(g.strip() for g in str(args.graphs).split(",") if g.strip())
    return ClientPolicy(
        min_threshold_fraction=args.min_threshold_fraction, corrupt=args.corrupt,
        min_cohort=args.min_cohort, max_cohort=args.max_cohort, allowed_graphs=graphs,
        require_active=bool(args.require_active),
        require_pinned_keys=args.roster is not None,
    )


def load_roster(path: Path) -> dict[int, bytes]:
    """Read ``{id: base64 key}``; ValueError naming the problem."""
    import base64
    import binascii
    import json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read roster {str(path)!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"roster {str(path)!r} must be a JSON object of id -> base64 key")
    out: dict[int, bytes] = {}
    for k, v in raw.items():
        try:
            key = base64.b64decode(str(v), validate=True)
            out[int(k)] = key
        except (ValueError, binascii.Error):
            raise ValueError(f"roster entry {k!r} is not id -> base64 key") from None
        if len(key) != 32:
            raise ValueError(f"roster key of device {k} has {len(key)} bytes, expected 32")
    return out


def _wait_for_server(client: ServerClient, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return client.status()
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise DeviceError(f"server {client.base_url} unreachable: {exc}") from exc
            time.sleep(delay)  # bounded connect backoff before the first request
            delay = min(delay * 2, 2.0)


def warm_up(device: Device, public_config: Mapping[str, Any] | None) -> None:
    """Pay TensorFlow's one-off costs (model tracing, the DP sampler's first call) before
    registering, so the first round's stage deadlines are not spent on them."""
    import dataclasses

    from clients.tasks.weights import get_flat_weights

    weights = get_flat_weights(device.task.build_model(device.settings.seed))
    n = min(len(device.x), device.settings.batch_size)
    quick = dataclasses.replace(device.settings, local_epochs=1)
    device.trainer.train(weights, device.x[:n], device.y[:n], quick, seed=0)
    dp_section = (public_config or {}).get("dp")
    server_section = (public_config or {}).get("server") or {}
    if not isinstance(dp_section, Mapping):
        return
    try:
        from dp import DPConfig

        per_round = int(server_section.get("per_round", 10))
        device.trainer.call(warm_up_encoder, DPConfig.from_dict(dict(dp_section)),
                            int(weights.size), per_round, max(2, (2 * per_round) // 3))
    except (ValueError, TypeError, KeyError) as exc:
        log.info("encoder warm-up skipped: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clients device``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        index, count = parse_shard(args.shard)
        if not 0 < args.wait <= MAX_WAIT_S:
            raise ValueError(f"--wait must be in (0, {MAX_WAIT_S:g}], got {args.wait}")
        fallback = TrainingSettings(args.local_epochs, args.batch_size, args.lr, args.partition,
                                    args.alpha, args.seed)
        from clients.tasks import get_task

        task = get_task(args.task)
        policy = policy_from_args(args)
        roster = load_roster(args.roster) if args.roster is not None else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The device's own plug-ins are loaded: from here on names come from the server,
    # which must not make this process import modules (secagg.plugins).
    from secagg.plugins import allow_imports

    allow_imports(False)
    key = load_or_create_identity(args.key_file) if args.key_file else generate_identity()
    client = ServerClient(args.server, key)
    try:
        status = _wait_for_server(client, args.connect_timeout)
        settings = TrainingSettings.from_public_config(status.get("config"), fallback)
        server_task = (status.get("config") or {}).get("training", {}).get("task")
        if server_task is not None and server_task not in (task.name, args.task):
            raise DeviceError(f"server trains task {server_task!r}, device has {task.name!r}")
        data = task.load_data(args.data_dir)
        idx = shard_indices(np.asarray(data.y_train), index, count, settings)
        device = Device(client, task, np.asarray(data.x_train)[idx], np.asarray(data.y_train)[idx],
                        settings, index=index, poll_wait=args.wait, policy=policy,
                        pinned_identity_keys=roster)
        warm_up(device, status.get("config"))
        device_id = device.register()
        log.info("registered as device %d with %d examples", device_id, len(idx))
        device.run()
    except KeyboardInterrupt:
        return 130
    except (DeviceError, ServerRejected, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"device {client.device_id}: finished; took part in "
          f"{len(device.rounds_completed)} round(s)")
    return 0

