"""Public read routes: the global model, its metadata, the round log and the status.

Nothing here names a device. The round log the store keeps has the sampled, survivor and
dropout ids of every round (the server knows them), but the public log replaces each of
those lists by its length: sampling amplification of ε assumes an observer does not know
who took part, and these routes are open to anyone (:func:`public_round`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from server.deps import DriverDep, ModelsDep, SettingsDep, StoreDep
from server.schemas import ModelMeta, Status

router = APIRouter(prefix="/v1", tags=["model"])

#: operator changes shown in the status (all of them: GET /v1/control/log)
STATUS_CHANGES = 50

#: bytes per chunk of a streamed model download
MODEL_CHUNK = 1 << 16


@router.get(
    "/model",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "float32 little-endian flat weights; header X-Model-Version",
        }
    },
)
async def get_model(driver: DriverDep) -> Response:
    """The current global model as float32 little-endian bytes.

    Streamed in chunks of :data:`MODEL_CHUNK` bytes from the one shared copy: the ASGI
    server then holds at most about a chunk per connection in its write buffers (it waits
    for a slow reader before taking the next chunk), where one ``Response(content=...)``
    would copy the rest of the model into the buffer of every connection that cannot take
    it at once. With n devices downloading together that is O(n) small chunks, not n * d.
    """
    data, version = driver.model_bytes, driver.model_version
    view = memoryview(data)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(view), MODEL_CHUNK):
            yield bytes(view[start : start + MODEL_CHUNK])

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "X-Model-Version": str(version),
            "Cache-Control": "no-store",
            "Content-Length": str(len(data)),
        },
    )


@router.get("/model/meta", response_model=ModelMeta)
async def get_model_meta(driver: DriverDep, models: ModelsDep) -> ModelMeta:
    task = models.task
    return ModelMeta(
        version=driver.model_version,
        task=task.name,
        dim=int(driver.weights.size),
        input_shape=[int(x) for x in task.input_shape],
        num_classes=task.num_classes,
        class_names=[str(c) for c in getattr(task, "class_names", ())],
        metric=getattr(task, "metric_name", "accuracy"),
    )


#: round-log fields that hold device ids: published as counts
_ID_LISTS = ("sampled", "survivors", "participants", "contributed")
#: round-log fields that hold a mapping of stage -> device ids: published as stage -> count
_ID_MAPS = ("dropouts",)
#: free-text fields that are published (with any device id scrubbed)
_TEXT = (
    "status",
    "graph",
    "metric",
    "abort_reason",
    "mechanism",
    "accountant",
    "sampling",
    "secure_sum",
    "note",
)
_IDS_IN_TEXT = re.compile(r"\b(clients?|devices?|senders?|ids?)\s*\[?[\d,\s]*\d\]?", re.I)
_LIST_IN_TEXT = re.compile(r"\[[\d,\s]+\]")


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset | dict):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _scrub(text: str) -> str:
    text = _IDS_IN_TEXT.sub(lambda m: f"{m.group(1)} (id withheld)", text)
    return _LIST_IN_TEXT.sub("[ids withheld]", text)


def _numeric_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(v, int | float | bool | type(None)) for v in value.values()
    )


def public_round(record: Mapping[str, Any]) -> dict[str, Any]:
    """The public form of one round-log record: counts instead of device ids.

    An allow-list, not a deny-list: numbers, booleans and null pass; the id lists become
    counts (``sampled``, ``survivors``: ints; ``dropouts``: stage -> int); free text passes
    only for known fields, with ids scrubbed (abort reasons may name a client); a mapping
    passes only if all its values are numbers or booleans (``timings``, ``wrap``), and
    ``federated_eval`` with its list of noised bucket counts; any other list or mapping,
    present or added later, is left out until someone decides it is public.
    """
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in _ID_LISTS:
            out[key] = _count(value)
        elif key in _ID_MAPS:
            out[key] = (
                {str(k): _count(v) for k, v in value.items()}
                if isinstance(value, Mapping)
                else _count(value)
            )
        elif isinstance(value, str):
            if key in _TEXT:
                out[key] = _scrub(value)
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
        elif _numeric_map(value):
            out[key] = dict(value)
        elif key == "federated_eval" and isinstance(value, Mapping):
            out[key] = _federated_eval(value)
    return out


def _federated_eval(value: Mapping[str, Any]) -> dict[str, Any]:
    """The federated-evaluation block of a round: the DP-noised histogram of device
    accuracy and its summary numbers (a release of the secure sum, public like the model);
    only numbers and the list of bucket counts pass."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        if v is None or isinstance(v, bool | int | float):
            out[key] = v
        elif key == "histogram" and isinstance(v, list) and all(
            isinstance(h, int | float) and not isinstance(h, bool) for h in v
        ):
            out[key] = [float(h) for h in v]
    return out


@router.get("/rounds")
async def get_rounds(
    store: StoreDep, limit: int | None = Query(None, ge=1, le=100_000)
) -> list[dict[str, Any]]:
    """The public round log: one object per round (done, aborted or running).

    ``sampled`` and ``survivors`` are counts and ``dropouts`` maps a stage to a count:
    who took part is not published (see :func:`public_round`).
    """
    return [public_round(r) for r in store.rounds(limit)]


@router.get("/status", response_model=Status)
async def get_status(
    request: Request,
    driver: DriverDep,
    store: StoreDep,
    models: ModelsDep,
    settings: SettingsDep,
) -> Status:
    snap = driver.snapshot()
    eps = driver.epsilon_report()
    cfg = settings.experiment
    live = driver.core.config.server  # the operator may have changed rounds and budget
    control = getattr(request.app.state, "control", None)
    return Status(
        stage=snap.stage,
        round=snap.round,
        version=snap.version,
        training_done=driver.finished,
        finished_reason=driver.finished_reason,
        rounds_done=driver.rounds_done,
        rounds_planned=live.rounds,
        epsilon=eps["epsilon"],
        epsilon_amplified=eps["epsilon_amplified"],
        epsilon_budget=live.epsilon_budget,
        delta=eps["delta"],
        sample_rate=driver.sample_rate,
        sampling=eps.get("sampling"),
        adjacency=eps.get("adjacency"),
        corrupt_fraction=eps.get("corrupt_fraction"),
        registered=store.device_count(),
        model_version=driver.model_version,
        task=models.task.name,
        config=cfg.public_dict(),
        operator=None if control is None else control.state(),
        changes=[] if control is None else control.public_log(STATUS_CHANGES),
    )
