"""``python -m server --host H --port P --db PATH [--config FILE] [--log-file FILE]``.

Bad flags or configuration: one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

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
    p.add_argument("--config", help="ExperimentConfig TOML ([server] [protocol] [dp] [training])")
    p.add_argument("--log-file", help="also write the server log to this file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--static-dir", help="dashboard folder (default: server/static)")
    p.add_argument("--data-dir", help="task data folder (overrides [server] data_dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from server.config import AppSettings, ConfigError, ExperimentConfig

    try:
        experiment = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    except ConfigError as err:
        print(f"python -m server: error: {err}", file=sys.stderr)
        return 2
    if args.data_dir:
        import dataclasses

        experiment = dataclasses.replace(
            experiment, server=dataclasses.replace(experiment.server, data_dir=args.data_dir)
        )
    db = Path(args.db)
    if not db.parent.exists() and str(db.parent) not in ("", "."):
        print(
            f"python -m server: error: database folder does not exist: {str(db.parent)!r}",
            file=sys.stderr,
        )
        return 2
    if args.log_file:
        try:
            Path(args.log_file).touch()
        except OSError as err:
            print(
                f"python -m server: error: cannot write log file {args.log_file!r}: {err}",
                file=sys.stderr,
            )
            return 2
    mismatch = _check_db(db, experiment.training.task)
    if mismatch:
        print(f"python -m server: error: {mismatch}", file=sys.stderr)
        return 2
    problem = _check_task_data(experiment.training.task, experiment.server.data_dir)
    if problem:
        print(f"python -m server: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = AppSettings(
        experiment=experiment,
        db_path=db,
        static_dir=Path(args.static_dir) if args.static_dir else None,
        log_file=Path(args.log_file) if args.log_file else None,
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


def _check_db(db: Path, task: str) -> str | None:
    """Refuse a database that belongs to another task (before importing TensorFlow)."""
    if not db.exists():
        return None
    from server.store import Store, StoreError

    try:
        store = Store(db)
    except StoreError as err:
        return str(err)
    try:
        stored = store.get_meta("task")
    except Exception as err:  # a corrupt file: say so in one line
        return f"cannot read database {str(db)!r}: {err}"
    finally:
        store.close()
    if stored is not None and stored != task:
        return f"database {str(db)!r} belongs to task {stored!r}, not {task!r}"
    return None


if __name__ == "__main__":
    sys.exit(main())
