"""``python -m server --host H --port P --db PATH [--config FILE] [--log-file FILE]``.

A database records the experiment it was first served with (``server.config``,
"the experiment a database belongs to"), so ``--db FILE`` alone serves a finished run and
its dashboard; a ``--config`` that contradicts the database is refused.

Bad flags or configuration: one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from server.config import AppSettings

T = TypeVar("T")

KEEP_ALIVE_S = 30
"""Seconds uvicorn keeps an idle keep-alive connection (see ``main``)."""

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m server", description="Run the secagg-dp FastAPI server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--db", default="secagg_dp.sqlite3", help="SQLite file (created if missing)")
    p.add_argument("--config", help="ExperimentConfig TOML ([server] [protocol] [dp] [training]); "
                   "training.task, dp.mechanism and protocol.graph also take a plug-in, "
                   "package.module:Class, imported from this process's PYTHONPATH")
    p.add_argument("--log-file", help="also write the server log to this file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--static-dir", help="dashboard folder (default: server/static)")
    p.add_argument("--data-dir", help="task data folder (overrides [server] data_dir)")
    return p


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """What ``main`` serves: the experiment resolved against the database, checked.

    The database carries its experiment (``server.config.resolve_experiment``): ``--db``
    alone serves the experiment it recorded, and a ``--config`` must agree with it. Every
    check runs before anything is written; the experiment is recorded in a new database
    only once they all passed. Raises ``ConfigError`` with a one-line message.
    """
    import dataclasses

    from server.config import (
        AppSettings,
        ConfigError,
        ExperimentConfig,
        record_experiment,
        resolve_experiment,
    )

    given = ExperimentConfig.from_toml(args.config) if args.config else None
    db = Path(args.db)
    if not db.parent.exists() and str(db.parent) not in ("", "."):
        raise ConfigError(f"database folder does not exist: {str(db.parent)!r}")
    if args.log_file:
        try:
            Path(args.log_file).touch()
        except OSError as err:
            raise ConfigError(f"cannot write log file {args.log_file!r}: {err}") from None
    if db.exists():
        experiment = _with_store(db, lambda store: resolve_experiment(store, given))
    else:
        experiment = given if given is not None else ExperimentConfig()
    if args.data_dir:
        experiment = dataclasses.replace(
            experiment, server=dataclasses.replace(experiment.server, data_dir=args.data_dir)
        )
    problem = _check_task_data(experiment.training.task, experiment.server.data_dir)
    if problem:
        raise ConfigError(problem)
    _with_store(db, lambda store: record_experiment(store, experiment))
    return AppSettings(
        experiment=experiment,
        db_path=db,
        static_dir=Path(args.static_dir) if args.static_dir else None,
        log_file=Path(args.log_file) if args.log_file else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from server.config import ConfigError

    try:
        settings = settings_from_args(args)
    except ConfigError as err:
        print(f"python -m server: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from server.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
        # Idle keep-alive connections stay open longer than any client keeps them (httpx:
        # 5 s by default, the simulation's devices 2 s), so the server never closes a
        # connection the client is reusing at that moment ("Server disconnected without
        # sending a response"). With a thousand devices the event loop can be busy for
        # seconds, so uvicorn's 5 s default left too small a margin.
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    return 0


def _check_task_data(task_name: str, data_dir: str | None) -> str | None:
    """Load the task's data once before serving: a missing dataset is a one-line error.

    The tasks cache what they load, so the app's startup does not read it twice.
    """
    try:
        from clients.tasks import get_task

        get_task(task_name).load_data(data_dir)
    except (OSError, ValueError) as err:
        return f"task {task_name!r} cannot load its data: {err}".replace("\n", " ")
    return None


def _with_store(db: Path, use: Callable[[Any], T]) -> T:
    """Open the database for ``use(store)`` and close it; failures become ``ConfigError``.

    Runs before TensorFlow is imported and before the app opens the store itself.
    """
    import sqlite3

    from server.config import ConfigError
    from server.store import Store, StoreError

    try:
        store = Store(db)
    except StoreError as err:
        raise ConfigError(str(err)) from None
    try:
        return use(store)
    except sqlite3.DatabaseError as err:  # a corrupt file: say so in one line
        raise ConfigError(f"cannot read database {str(db)!r}: {err}") from None
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
