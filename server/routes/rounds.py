"""Protocol routes: ``/v1/rounds/current`` (long-poll) and the per-stage messages.

Every route under ``/v1/rounds/{r}/`` is authenticated (secagg.auth). JSON control messages
are secagg ``to_dict()`` payloads; the masked input is a raw octet-stream body that is added
to the running sum inside the request and never stored, logged or kept.

Who took part is not public. Sampling amplification of ε assumes an observer does not
know which devices took part in a round, so ``GET /v1/rounds/current`` gives the round's
parameters (participant list, identity keys, graph seed), its encoding plan and rotation
seed only to a request signed by a device sampled in that round. Everybody else, signed or
not, gets the public state: round id, stage, version, deadline and model version.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Path, Query, Request

from secagg import Stage
from server.deps import AuthDep, DriverDep, LimitsDep, SettingsDep
from server.errors import ApiError
from server.limits import parse_json_object, read_body
from server.schemas import MESSAGE_SCHEMA, Accepted, CiphertextsResponse, CurrentRound, KeysResponse

router = APIRouter(prefix="/v1/rounds", tags=["rounds"])

RoundId = Path(..., ge=0, le=2**62, description="round id")
MAX_WAIT = 60.0

_JSON_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": MESSAGE_SCHEMA}}}
}


@router.get("/current", response_model=CurrentRound)
async def current(
    request: Request,
    driver: DriverDep,
    auth: AuthDep,
    limits: LimitsDep,
    wait: float = Query(0.0, ge=0.0, le=MAX_WAIT, description="long-poll seconds (max 60)"),
    after: int = Query(-1, ge=-1, le=2**62, description="return once version > after"),
    skip_round: int | None = Query(
        None,
        ge=0,
        le=2**62,
        description="a device not sampled in this round: ignore its stage changes and "
        "return once the round is over",
    ),
) -> CurrentRound:
    """The round in flight. With ``wait``, blocks until the state version exceeds ``after``.

    Authentication is optional. A request signed by a device sampled in the round gets
    ``sampled: true`` and the round's ``params`` (participants, threshold, graph, identity
    keys), ``plan`` and ``rotation_seed``; any other request gets those as null.

    Long-polls are bounded: a few in flight per device, and per client address (and in
    total) for unsigned ones, which also pass the per-address rate limit; past that, 429.
    """
    device_id = None
    key: tuple[str, int | str]
    if auth.has_credentials(request):
        device_id = auth.authenticate(request, b"")
        limiter, key = limits.device_polls, ("device", device_id)
    else:
        auth.limit_anonymous(request)
        limiter, key = limits.anon_polls, ("host", auth.client_host(request))
    if wait > 0:
        async with limiter.slot(key):
            snap = await driver.wait_for_change(after, wait, skip_round)
    else:
        snap = driver.snapshot()
    sampled = device_id is not None and device_id in snap.participants
    return CurrentRound(
        round=snap.round,
        stage=snap.stage,
        version=snap.version,
        deadline=snap.deadline,
        sampled=sampled,
        params=snap.params if sampled else None,
        plan=snap.plan if sampled else None,
        rotation_seed=None
        if snap.rotation_seed is None or not sampled
        else base64.b64encode(snap.rotation_seed).decode("ascii"),
        model_version=snap.model_version,
    )


async def _json_message(
    request: Request, r: int, auth: AuthDep, settings: SettingsDep
) -> tuple[int, dict[str, Any]]:
    body = await read_body(request, settings.experiment.server.max_json_bytes)
    device_id = auth.authenticate(request, body)
    return device_id, parse_json_object(body)


@router.post("/{r}/keys", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY)
async def post_keys(
    request: Request, driver: DriverDep, auth: AuthDep, settings: SettingsDep, r: int = RoundId
) -> Accepted:
    """AdvertiseKeys (stage advertise_keys)."""
    device_id, payload = await _json_message(request, r, auth, settings)
    await driver.submit(r, device_id, Stage.ADVERTISE_KEYS, payload)
    return Accepted(round=r, stage="advertise_keys")


@router.get("/{r}/keys", response_model=KeysResponse)
async def get_keys(
    request: Request, driver: DriverDep, auth: AuthDep, r: int = RoundId
) -> KeysResponse:
    """The caller's neighbours' AdvertiseKeys (stage >= share_keys)."""
    device_id = auth.authenticate(request, b"")
    keys = driver.keys_for(r, device_id)
    return KeysResponse(keys={str(k): v.to_dict() for k, v in sorted(keys.items())})


@router.post("/{r}/shares", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY)
async def post_shares(
    request: Request, driver: DriverDep, auth: AuthDep, settings: SettingsDep, r: int = RoundId
) -> Accepted:
    """ShareKeys: encrypted Shamir shares for each neighbour (opaque to the server)."""
    device_id, payload = await _json_message(request, r, auth, settings)
    await driver.submit(r, device_id, Stage.SHARE_KEYS, payload)
    return Accepted(round=r, stage="share_keys")


@router.get("/{r}/shares", response_model=CiphertextsResponse)
async def get_shares(
    request: Request, driver: DriverDep, auth: AuthDep, r: int = RoundId
) -> CiphertextsResponse:
    """Ciphertexts addressed to the caller (stage >= masked_input)."""
    device_id = auth.authenticate(request, b"")
    cts = driver.ciphertexts_for(r, device_id)
    return CiphertextsResponse(
        ciphertexts={str(k): base64.b64encode(v).decode("ascii") for k, v in sorted(cts.items())}
    )


@router.post(
    "/{r}/masked-input",
    status_code=202,
    response_model=Accepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                }
            },
            "description": "packed y_u: exactly packed_size(dim, bits) bytes",
        }
    },
)
async def post_masked_input(
    request: Request,
    driver: DriverDep,
    auth: AuthDep,
    settings: SettingsDep,
    limits: LimitsDep,
    r: int = RoundId,
) -> Accepted:
    """Masked input (octet-stream). Added to the running sum here; never stored or logged.

    Only a few bodies are read and added at a time (``RequestLimits.uploads``); the other
    uploads wait before the app reads their body (see ``server.limits.UploadGate`` for
    what the ASGI server buffers meanwhile).
    """
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/octet-stream":
        raise ApiError(415, "masked input must be sent as application/octet-stream")
    size = driver.masked_input_size(r)
    limit = size if size is not None else settings.experiment.server.max_json_bytes
    async with limits.uploads.slot():
        body = await read_body(request, limit)
        device_id = auth.authenticate(request, body)
        await driver.submit_masked_input(r, device_id, body)
        del body
    return Accepted(round=r, stage="masked_input")


@router.get("/{r}/consistency")
async def get_consistency(
    request: Request, driver: DriverDep, auth: AuthDep, r: int = RoundId
) -> dict[str, Any]:
    """Active mode: the UnmaskRequest the device signs (stage >= consistency_check)."""
    device_id = auth.authenticate(request, b"")
    return driver.consistency_request(r, device_id).to_dict()


@router.post("/{r}/consistency", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY)
async def post_consistency(
    request: Request, driver: DriverDep, auth: AuthDep, settings: SettingsDep, r: int = RoundId
) -> Accepted:
    """Active mode: ConsistencyCheck (the device's signature over the survivor set)."""
    device_id, payload = await _json_message(request, r, auth, settings)
    await driver.submit(r, device_id, Stage.CONSISTENCY_CHECK, payload)
    return Accepted(round=r, stage="consistency_check")


@router.get("/{r}/unmask")
async def get_unmask(
    request: Request, driver: DriverDep, auth: AuthDep, r: int = RoundId
) -> dict[str, Any]:
    """The UnmaskRequest: survivors and dropped sets (stage >= unmask)."""
    device_id = auth.authenticate(request, b"")
    return driver.unmask_request(r, device_id).to_dict()


@router.post("/{r}/unmask", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY)
async def post_unmask(
    request: Request, driver: DriverDep, auth: AuthDep, settings: SettingsDep, r: int = RoundId
) -> Accepted:
    """UnmaskShares: b_u shares of survivors, s_sk shares of dropped (never both)."""
    device_id, payload = await _json_message(request, r, auth, settings)
    await driver.submit(r, device_id, Stage.UNMASK, payload)
    return Accepted(round=r, stage="unmask")
