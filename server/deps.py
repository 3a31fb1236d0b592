"""FastAPI dependencies, declared once (``StoreDep``, ``DriverDep``, ...).

The objects live on ``app.state`` (created in the app's lifespan, nothing at import time);
tests may swap them with ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.config import AppSettings
from server.driver import RoundDriver
from server.errors import ApiError
from server.limits import RequestLimits
from server.model import ModelService
from server.security import Authenticator
from server.store import Store

__all__ = ["StoreDep", "DriverDep", "ModelsDep", "AuthDep", "SettingsDep", "LimitsDep"]


def _state(request: Request, name: str) -> object:
    obj = getattr(request.app.state, name, None)
    if obj is None:
        raise ApiError(503, "server is starting; retry shortly")
    return obj


def get_store(request: Request) -> Store:
    return _state(request, "store")  # type: ignore[return-value]


def get_driver(request: Request) -> RoundDriver:
    return _state(request, "driver")  # type: ignore[return-value]


def get_models(request: Request) -> ModelService:
    return _state(request, "models")  # type: ignore[return-value]


def get_auth(request: Request) -> Authenticator:
    return _state(request, "auth")  # type: ignore[return-value]


def get_settings(request: Request) -> AppSettings:
    return _state(request, "settings")  # type: ignore[return-value]


def get_limits(request: Request) -> RequestLimits:
    return _state(request, "limits")  # type: ignore[return-value]


StoreDep = Annotated[Store, Depends(get_store)]
DriverDep = Annotated[RoundDriver, Depends(get_driver)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
AuthDep = Annotated[Authenticator, Depends(get_auth)]
SettingsDep = Annotated[AppSettings, Depends(get_settings)]
LimitsDep = Annotated[RequestLimits, Depends(get_limits)]
