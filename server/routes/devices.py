"""``POST /v1/devices``: register a device's long-term Ed25519 public key."""

from __future__ import annotations

import base64
import binascii
import logging

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from server.deps import AuthDep, DriverDep, SettingsDep, StoreDep
from server.errors import ApiError
from server.limits import parse_json_object, read_body
from server.schemas import RegisterRequest, RegisterResponse

router = APIRouter(prefix="/v1", tags=["devices"])
log = logging.getLogger("server.devices")


@router.post(
    "/devices",
    response_model=RegisterResponse,
    status_code=201,
    responses={200: {"description": "key already registered: same id"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RegisterRequest.model_json_schema()}},
        }
    },
)
async def register(
    request: Request,
    response: Response,
    store: StoreDep,
    driver: DriverDep,
    auth: AuthDep,
    settings: SettingsDep,
) -> RegisterResponse:
    """Register a public key; the same key again returns the same id (200)."""
    auth.limit_anonymous(request)
    body = await read_body(request, settings.experiment.server.max_json_bytes)
    payload = parse_json_object(body)
    try:
        req = RegisterRequest.model_validate(payload)
    except ValidationError as err:
        raise ApiError(422, f"invalid registration: {_first_error(err)}") from None
    try:
        raw = base64.b64decode(req.public_key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ApiError(400, "public_key is not valid base64") from None
    if len(raw) != 32:
        raise ApiError(400, f"public_key must be 32 raw bytes, got {len(raw)}")
    device_id, created = store.register_device(raw)
    if created:
        log.info("device %d registered", device_id)
        driver.notify_registered()
    else:
        response.status_code = 200
    return RegisterResponse(device_id=device_id)


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"{loc}: {first.get('msg', 'invalid')}"
