"""``POST /v1/predict``: the global model's answer for an uploaded image or feature vector.

Inputs come from an untrusted browser; clients.tasks' ``preprocess_upload`` validates them
(ValueError -> 400). TensorFlow runs in a worker thread. Nothing uploaded is kept.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from server.deps import AuthDep, DriverDep, ModelsDep, SettingsDep
from server.errors import ApiError
from server.limits import parse_json_object, read_body
from server.schemas import PredictFeatures, Prediction

router = APIRouter(prefix="/v1", tags=["predict"])


@router.post(
    "/predict",
    response_model=Prediction,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "application/json": {"schema": PredictFeatures.model_json_schema()},
            },
        }
    },
)
async def predict(
    request: Request, driver: DriverDep, models: ModelsDep, auth: AuthDep, settings: SettingsDep
) -> Prediction:
    """Multipart ``file`` (PNG/JPEG/... or a JSON/CSV feature file) or JSON {"features"}."""
    auth.limit_anonymous(request)
    limit = settings.experiment.server.max_upload_bytes
    ctype = request.headers.get("content-type", "")
    base = ctype.split(";", 1)[0].strip().lower()
    if base == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=limit)
        except (MultiPartException, ValueError, KeyError, UnicodeDecodeError) as err:
            raise ApiError(400, f"could not parse the multipart body: {err}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(400, "multipart body needs a file field named 'file'")
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, f"upload exceeds the limit of {limit} bytes")
            content_type = upload.content_type or "application/octet-stream"
        finally:
            await form.close()
    elif base == "application/json":
        data = await read_body(request, limit)
        content_type = "application/json"
        try:
            PredictFeatures.model_validate(parse_json_object(data))
        except ValidationError as err:
            first = err.errors(include_input=False, include_url=False)[0]
            loc = ".".join(str(x) for x in first.get("loc", ())) or "body"
            raise ApiError(422, f"invalid features: {loc}: {first.get('msg')}") from None
    else:
        raise ApiError(415, "send multipart/form-data with a 'file' field or application/json")
    weights, version = driver.weights, driver.model_version
    try:
        out = await asyncio.to_thread(models.predict, data, content_type, weights, version)
    except ValueError as err:
        raise ApiError(400, f"cannot use this input: {err}") from None
    return Prediction(
        label=out.get("label"),
        class_name=out.get("class_name"),
        scores=[float(s) for s in out.get("scores") or []],
        value=out.get("value"),
        model_version=version,
    )
