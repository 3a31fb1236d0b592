"""Operator routes under ``/v1/control`` (see :mod:`server.control`).

Reads are public and name no device: ``GET /v1/control`` (the state) and
``GET /v1/control/log`` (the change log, device ids replaced by counts). Every other route
needs the operator token as ``Authorization: Bearer <token>`` and answers 401 without it,
before its body is read; bad values get a 4xx with a sentence saying why.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from server.control import OperatorControl
from server.deps import AuthDep, SettingsDep
from server.errors import ApiError
from server.limits import parse_json_object, read_body
from server.schemas import (
    ControlEntry,
    ControlResult,
    ControlSettings,
    DeviceInfo,
    DevicesRequest,
    OperatorState,
)

router = APIRouter(prefix="/v1/control", tags=["control"])

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or a wrong operator token (Authorization: Bearer <token>)"},
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    **_UNAUTHORIZED,
    409: {"description": "refused in the current state (the detail says why)"},
}
_REFUSED: dict[int | str, dict[str, Any]] = {
    **_CONFLICT,
    422: {"description": "a value out of range (the detail names it)"},
}
#: documents the scheme in OpenAPI ("Authorize" in /docs); the check is ``authorize``
_BEARER = HTTPBearer(auto_error=False, description="the operator token printed at start")


def get_control(request: Request) -> OperatorControl:
    control = getattr(request.app.state, "control", None)
    if control is None:
        raise ApiError(503, "server is starting; retry shortly")
    return control  # type: ignore[no-any-return]


ControlDep = Annotated[OperatorControl, Depends(get_control)]


def require_operator(
    request: Request,
    control: ControlDep,
    auth: AuthDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> OperatorControl:
    """The operator token check, per client address rate-limited like other public
    writes (a guess costs a request; the token has 256 bits)."""
    auth.limit_anonymous(request)
    control.authorize(request.headers.get("authorization"))
    return control


OperatorDep = Annotated[OperatorControl, Depends(require_operator)]


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def _parse(request: Request, settings: SettingsDep, model: type[BaseModel]) -> Any:
    body = await read_body(request, settings.experiment.server.max_json_bytes)
    payload = parse_json_object(body)
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        first = err.errors(include_input=False, include_url=False)[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise ApiError(422, f"invalid {loc}: {first.get('msg', 'invalid value')}") from None


def _result(control: OperatorControl, entry: dict[str, Any] | None, message: str) -> ControlResult:
    return ControlResult(
        state=OperatorState(**control.state()),
        entry=None if entry is None else ControlEntry(**entry),
        message=message,
    )


@router.get("", response_model=OperatorState)
async def get_state(control: ControlDep) -> OperatorState:
    """What the operator has set (public: counts, never device ids)."""
    return OperatorState(**control.state())


@router.get("/log", response_model=list[ControlEntry])
async def get_log(
    control: ControlDep, limit: int | None = Query(None, ge=1, le=100_000)
) -> list[ControlEntry]:
    """Every operator change, oldest first, with its time and the first round it affects
    (public: an enable/disable entry gives the number of devices, not their ids)."""
    return [ControlEntry(**e) for e in control.public_log(limit)]


@router.post("/start", response_model=ControlResult, responses=_CONFLICT)
async def start(control: OperatorDep) -> ControlResult:
    """Start training now: without waiting for every expected device (2 enabled suffice),
    after a pause (same as resume), or again after it finished once the reason is gone
    (e.g. the rounds planned were raised)."""
    entry, message = control.start()
    return _result(control, entry, message)


@router.post("/pause", response_model=ControlResult, responses=_CONFLICT)
async def pause(control: OperatorDep) -> ControlResult:
    """Pause between rounds: the round in flight finishes or aborts as usual, then no
    round starts until resumed."""
    entry, message = control.pause()
    return _result(control, entry, message)


@router.post("/resume", response_model=ControlResult, responses=_CONFLICT)
async def resume(control: OperatorDep) -> ControlResult:
    """Resume a paused training."""
    entry, message = control.resume()
    return _result(control, entry, message)


@router.post(
    "/settings",
    response_model=ControlResult,
    responses=_REFUSED,
    openapi_extra=_body(ControlSettings),
)
async def update_settings(
    request: Request, control: OperatorDep, settings: SettingsDep
) -> ControlResult:
    """Change the rounds planned, the per-round cohort (Poisson sampling only: the
    accountant follows the new rate) or the ε budget (``null``: none), from the next round.
    The fields given are checked together; nothing changes if one is refused."""
    req: ControlSettings = await _parse(request, settings, ControlSettings)
    values = {k: getattr(req, k) for k in req.model_fields_set}
    for key in ("rounds", "per_round"):
        if key in values and values[key] is None:
            raise ApiError(422, f"invalid {key}: must be an integer, got null")
    entry, message = control.update(values)
    return _result(control, entry, message)


@router.get("/devices", response_model=list[DeviceInfo], responses=_UNAUTHORIZED)
async def list_devices(control: OperatorDep) -> list[DeviceInfo]:
    """Registered devices and whether each may be sampled (operator only: names ids)."""
    return [DeviceInfo(**d) for d in control.devices()]


@router.post(
    "/devices",
    response_model=ControlResult,
    responses={**_REFUSED, 404: {"description": "a device id that is not registered"}},
    openapi_extra=_body(DevicesRequest),
)
async def set_devices(
    request: Request, control: OperatorDep, settings: SettingsDep
) -> ControlResult:
    """Enable or disable registered devices. Disabled devices are not sampled from the
    next round on; the accountant charges each round for the devices it was drawn from."""
    req: DevicesRequest = await _parse(request, settings, DevicesRequest)
    entry, message = control.set_devices(req.device_ids, req.enabled)
    return _result(control, entry, message)
