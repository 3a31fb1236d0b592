"""``create_app(settings)``: the FastAPI application of the secagg-dp server.

Threat model: the server is honest-but-curious. It coordinates secure aggregation and must
not learn any individual device's update: it only relays public keys and ciphertexts, adds
masked inputs into a running sum inside the request that carries them, and learns the
decoded (differentially private) sum. Devices are authenticated with Ed25519 signatures
(secagg.auth); every rejection of device input is a 4xx with a reason, never a 500.

Nothing is built at import time: the store, the model service, the authenticator and the
round driver are created in the lifespan and reached through dependencies (server.deps).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import PlainTextResponse, Response
from starlette.types import Scope

from server.config import AppSettings
from server.control import OperatorControl, new_operator_token, token_digest
from server.driver import RoundDriver
from server.errors import install_handlers
from server.limits import BodySizeLimit, RequestLimits
from server.model import ModelService
from server.round import ServerCore
from server.routes import control, dashboard, devices, model, predict, rounds
from server.security import Authenticator
from server.store import Store

__all__ = ["create_app"]

log = logging.getLogger("server")


def _add_file_log(path: str) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("server")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


class _OptionalStatic(StaticFiles):
    """StaticFiles that answers 404 (not 500) while the dashboard folder is missing."""

    async def check_config(self) -> None:
        if self.directory is not None and not os.path.isdir(self.directory):
            return
        await super().check_config()

    async def get_response(self, path: str, scope: Scope) -> Response:
        if self.directory is not None and not os.path.isdir(self.directory):
            return PlainTextResponse("Not Found", status_code=404)
        return await super().get_response(path, scope)


def create_app(
    settings: AppSettings | None = None, *, operator_token: str | None = None
) -> FastAPI:
    """Build the app for ``settings`` (defaults: the default experiment, ./secagg_dp.sqlite3).

    ``operator_token``: the bearer token of the operator controls (``server.control``).
    By default a new one is drawn from the OS CSPRNG at start-up and printed once on
    standard output (not to the log); only its SHA-256 is kept.
    """
    settings = settings if settings is not None else AppSettings()
    cfg = settings.experiment

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        handler = _add_file_log(str(settings.log_file)) if settings.log_file else None
        store = Store(settings.db_path)
        try:
            models = ModelService(cfg.training.task, cfg.server.seed, cfg.server.data_dir)
            initial = await asyncio.to_thread(models.load)
            driver = RoundDriver(ServerCore(cfg, store, models))
            token = operator_token if operator_token is not None else new_operator_token()
            app.state.control = OperatorControl(driver, token_digest(token))
            app.state.control.restore()
            driver.restore(initial)
            if operator_token is None:
                # stdout only, once: the log file must not hold the secret
                print(f"operator token: {token}", file=sys.stdout, flush=True)
            log.info("operator token issued (printed on stdout once, stored as its SHA-256)")
            del token
            app.state.settings = settings
            app.state.store = store
            app.state.models = models
            app.state.driver = driver
            app.state.auth = Authenticator(
                store,
                cfg.server.auth_window_s,
                cfg.server.rate_limit_per_s,
                cfg.server.rate_limit_burst,
            )
            app.state.limits = RequestLimits()
            log.info(
                "server ready: task %s, %d planned rounds, db %s",
                cfg.training.task,
                cfg.server.rounds,
                settings.db_path,
            )
            if settings.autostart:
                driver.start()
            yield
            await driver.stop()
        finally:
            for name in ("control", "driver", "auth", "limits", "models", "store"):
                setattr(app.state, name, None)
            store.close()
            if handler is not None:
                logging.getLogger("server").removeHandler(handler)
                handler.close()

    app = FastAPI(
        title="secagg-dp server",
        version="1.0",
        description=(
            "Secure aggregation with distributed DP for federated learning. The server is "
            "honest-but-curious and learns only the (noised) sum of the survivors' updates."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_handlers(app)
    s = cfg.server

    def limit_for(path: str) -> int:
        if path.endswith("/masked-input"):
            return s.max_body_bytes
        if path == "/v1/predict":
            return s.max_upload_bytes
        return s.max_json_bytes

    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    for router in (
        devices.router, rounds.router, model.router, predict.router, control.router,
        dashboard.router,
    ):
        app.include_router(router)
    static = dashboard.static_dir(settings.static_dir)
    app.mount("/static", _OptionalStatic(directory=static, check_dir=False), name="static")
    return app
