"""Request/response models of the HTTP API (pydantic). Binary bodies are octet-stream."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(
        ..., max_length=100, description="raw 32-byte Ed25519 public key, base64"
    )


class RegisterResponse(BaseModel):
    device_id: int


class CurrentRound(BaseModel):
    round: int | None
    stage: str
    version: int
    deadline: float | None
    sampled: bool
    params: dict[str, Any] | None
    plan: dict[str, Any] | None
    rotation_seed: str | None
    model_version: int


class Accepted(BaseModel):
    accepted: bool = True
    round: int
    stage: str


class KeysResponse(BaseModel):
    keys: dict[str, dict[str, Any]]


class CiphertextsResponse(BaseModel):
    ciphertexts: dict[str, str]


class ModelMeta(BaseModel):
    version: int
    task: str
    dim: int
    dtype: str = "float32"
    input_shape: list[int]
    num_classes: int | None
    class_names: list[str]
    metric: str


class Status(BaseModel):
    stage: str
    round: int | None
    version: int
    training_done: bool
    finished_reason: str | None
    rounds_done: int
    rounds_planned: int
    #: None: no guarantee (mechanism none), or no proven amplified bound
    epsilon: float | None
    epsilon_amplified: float | None
    epsilon_budget: float | None
    delta: float
    sample_rate: float | None
    #: "poisson" or "fixed": the sampling the amplified figure is proven for
    sampling: str | None = None
    #: which neighbouring relation each figure holds under
    adjacency: dict[str, str | None] | None = None
    #: fraction of sampled devices assumed to collude (their noise is not counted)
    corrupt_fraction: float | None = None
    registered: int
    model_version: int
    task: str
    config: dict[str, Any]


class PredictFeatures(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: list[float] = Field(..., max_length=1_000_000)


class Prediction(BaseModel):
    label: int | None
    class_name: str | None
    scores: list[float]
    value: float | None
    model_version: int


# Schemas of the JSON protocol messages (for the docs; secagg's from_dict validates them).
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "secagg message .to_dict() (bytes as base64); round_id and sender must "
    "match the URL and the authenticated device",
}
