"""HTTP error mapping: every rejection of device input is a clear 4xx with a reason.

The handlers registered by :func:`install_handlers` turn the narrow exceptions of
secagg/dp/auth into JSON ``{"detail": ...}`` answers, so nothing a device sends can make
the server answer 500. Details never echo request bodies (they may be masked vectors).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dp import DPConfigError
from secagg.auth import AuthError, ReplayError
from secagg.errors import (
    AbortError,
    DuplicateMessageError,
    MalformedMessageError,
    NotParticipantError,
    ProtocolError,
    RefusedError,
    RoundMismatchError,
    SecAggError,
    SignatureError,
    StageError,
)

__all__ = ["ApiError", "install_handlers"]

log = logging.getLogger("server.errors")


class ApiError(Exception):
    """A request the server refuses; ``status`` is the HTTP status (4xx)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _short(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _status_handler(status: int) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return _json(status, f"protocol message rejected: {_short(exc)}")

    return handler


def install_handlers(app: FastAPI) -> None:
    """Register the exception -> status mapping on ``app``."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        e = exc if isinstance(exc, ApiError) else ApiError(500, "internal error")
        return _json(e.status, e.detail, e.headers)

    async def replay_error(_: Request, exc: Exception) -> JSONResponse:
        return _json(409, f"replayed request: {_short(exc)}")

    async def auth_error(_: Request, exc: Exception) -> JSONResponse:
        return _json(401, f"authentication failed: {_short(exc)}")

    async def abort_error(_: Request, exc: Exception) -> JSONResponse:
        return _json(409, f"round aborted: {_short(exc)}")

    async def protocol_error(_: Request, exc: Exception) -> JSONResponse:
        return _json(400, f"protocol message rejected: {_short(exc)}")

    async def dp_error(_: Request, exc: Exception) -> JSONResponse:
        return _json(400, f"invalid DP parameters: {_short(exc)}")

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "internal error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        return _json(500, "internal server error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ReplayError, replay_error)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(AbortError, abort_error)
    app.add_exception_handler(ProtocolError, protocol_error)
    for cls, status in (
        (MalformedMessageError, 400),
        (SignatureError, 400),
        (NotParticipantError, 403),
        (RoundMismatchError, 409),
        (StageError, 409),
        (DuplicateMessageError, 409),
        (RefusedError, 409),
    ):
        app.add_exception_handler(cls, _status_handler(status))
    app.add_exception_handler(SecAggError, protocol_error)
    app.add_exception_handler(DPConfigError, dp_error)
    app.add_exception_handler(Exception, internal)
