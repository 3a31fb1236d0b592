"""Public read routes: the global model, its metadata, the round log and the status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from server.deps import DriverDep, ModelsDep, SettingsDep, StoreDep
from server.schemas import ModelMeta, Status

router = APIRouter(prefix="/v1", tags=["model"])


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
    """The current global model as float32 little-endian bytes."""
    return Response(
        content=driver.model_bytes,
        media_type="application/octet-stream",
        headers={"X-Model-Version": str(driver.model_version), "Cache-Control": "no-store"},
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


@router.get("/rounds")
async def get_rounds(
    store: StoreDep, limit: int | None = Query(None, ge=1, le=100_000)
) -> list[dict[str, Any]]:
    """The round log: one object per round (done, aborted or running)."""
    return store.rounds(limit)


@router.get("/status", response_model=Status)
async def get_status(
    driver: DriverDep, store: StoreDep, models: ModelsDep, settings: SettingsDep
) -> Status:
    snap = driver.snapshot()
    eps = driver.epsilon_report()
    cfg = settings.experiment
    return Status(
        stage=snap.stage,
        round=snap.round,
        version=snap.version,
        training_done=driver.finished,
        finished_reason=driver.finished_reason,
        rounds_done=driver.rounds_done,
        rounds_planned=cfg.server.rounds,
        epsilon=eps["epsilon"],
        epsilon_amplified=eps["epsilon_amplified"],
        epsilon_budget=cfg.server.epsilon_budget,
        delta=eps["delta"],
        sample_rate=driver.sample_rate,
        registered=store.device_count(),
        model_version=driver.model_version,
        task=models.task.name,
        config=cfg.public_dict(),
    )
