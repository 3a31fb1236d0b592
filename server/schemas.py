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
    #: operator controls in effect (server.control); None on a server without them
    operator: OperatorState | None = None
    #: the latest operator changes, oldest first (public form: counts, never device ids)
    changes: list[ControlEntry] = Field(default_factory=list)


class OperatorState(BaseModel):
    """What the operator has set, public (counts only: who is disabled is not published)."""

    paused: bool = Field(..., description="no new round starts until resumed")
    pausing: bool = Field(..., description="paused while a round is still in flight")
    training: str = Field(..., description="running | paused | waiting | finished")
    rounds_planned: int
    rounds_done: int
    per_round: int = Field(..., description="devices sampled per round (expected, Poisson)")
    epsilon_budget: float | None
    sampling: str
    registered: int
    enabled: int
    disabled: int
    cohort_change: str | None = Field(
        None, description="why the per-round cohort cannot be changed (None: it can)"
    )


class ControlEntry(BaseModel):
    """One operator change: when, what, and the first round it can affect."""

    id: int
    at: float = Field(..., description="Unix time of the change")
    action: str = Field(..., description="start | pause | resume | settings | devices")
    before_round: int = Field(..., description="the change applies from this round on")
    detail: dict[str, Any]


class ControlSettings(BaseModel):
    """Any subset of the settings, applied from the next round. ``epsilon_budget: null``
    removes the budget; a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rounds: int | None = Field(None, ge=1, le=1_000_000, description="rounds planned")
    per_round: int | None = Field(
        None, ge=2, le=1_000_000, description="devices sampled per round (Poisson sampling)"
    )
    epsilon_budget: float | None = Field(
        None, gt=0, le=1e9, description="stop before a round whose worst case exceeds it"
    )


class DevicesRequest(BaseModel):
    """Enable or disable registered devices (disabled ones are not sampled)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    device_ids: list[int] = Field(..., min_length=1, max_length=100_000)
    enabled: bool


class DeviceInfo(BaseModel):
    device_id: int
    enabled: bool


class ControlResult(BaseModel):
    """The answer of a control: the state now, the change log entry, a sentence."""

    state: OperatorState
    entry: ControlEntry | None
    message: str


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


Status.model_rebuild()
