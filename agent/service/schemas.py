"""Request and response models of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.incidents.storage import ApprovalStatus, IncidentStatus
from infrastructure.executors.base import OperationResult

TargetName = str


class ErrorResponse(BaseModel):
    error: str
    problems: list[str] = Field(default_factory=list)
    request_id: str | None = None


class Liveness(BaseModel):
    status: Literal["ok"]


class ReadinessCheck(BaseModel):
    name: str
    ok: bool
    latency_ms: float
    detail: str = ""


class Readiness(BaseModel):
    ready: bool
    checks: list[ReadinessCheck]


class IncidentSummary(BaseModel):
    id: str
    status: IncidentStatus
    environment: str
    service: str
    alertname: str
    root_cause: str | None = None
    flow_run_id: str | None = None
    created_at: float
    updated_at: float


class ApprovalView(BaseModel):
    step_key: str
    step: str
    command: str
    status: ApprovalStatus
    actor: str | None = None
    reason: str | None = None
    created_at: float
    decided_at: float | None = None
    expires_at: float | None = None
    required_approvers: int = 1
    requested_by: str | None = None
    via: str | None = Field(default=None, description="api, cli, prefect-ui or uici")
    approvers: list[str] = Field(default_factory=list, description="Who approved so far.")


class AlertView(BaseModel):
    fingerprint: str
    starts_at: str
    state: str
    labels: dict[str, str]
    deliveries: int
    first_seen: float
    last_seen: float
    resolved_at: float | None = None


class TimelineItem(BaseModel):
    at: float
    event: str
    data: dict[str, Any] = Field(default_factory=dict)


class IncidentDetail(IncidentSummary):
    context: dict[str, Any]
    report: dict[str, Any] | None = None
    approvals: list[ApprovalView]
    alerts: list[AlertView]
    timeline: list[TimelineItem]


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)
    step_key: str | None = Field(
        default=None, max_length=200, description="Which pending step (default: the first)."
    )


class DecisionResponse(BaseModel):
    incident_id: str
    step: str
    command: str
    decision: Literal["approved", "rejected", "pending"] = Field(
        description="pending: approved by this key, waiting for more approvers."
    )
    by: str
    approvers: list[str] = Field(default_factory=list)
    required_approvers: int = 1
    # An operation request (POST /operations/{name}/run) runs once approved: how it went.
    outcome: str | None = None
    result: OperationResult | None = None


class ManualIncidentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, max_length=253)
    environment: str | None = Field(default=None, max_length=63)
    dependencies: list[str] = Field(default_factory=list, max_length=20)
    summary: str = Field(default="", max_length=1000)


class ManualIncidentResponse(BaseModel):
    incident_id: str
    status: IncidentStatus
    environment: str
    service: str


class OperationSummary(BaseModel):
    name: str
    description: str
    risk: str
    environments: list[str]


class RunOperationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str | None = Field(default=None, max_length=63)
    target: str | None = Field(default=None, max_length=1024)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = False
    approve: bool = Field(
        default=False,
        description="The caller approves a step the environment's policy requires approval for.",
    )
    incident_id: str | None = Field(default=None, max_length=100)


class DryRunResponse(BaseModel):
    operation: str
    environment: str
    target: str | None
    command: list[str]
    command_line: str
    executor_call: str
    risk: str


class WebhookRejected(BaseModel):
    error: str
    request_id: str
