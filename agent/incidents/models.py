"""The models of an incident's diagnosis: context, steps, observations, decisions, diagnosis.

These are the boundary between planning (runbook or LLM), policy, execution and reports, and
they stay independent of Prefect so that planning can be tested directly.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Phase = Literal["triage", "isolation", "root_cause", "resolution"]
PHASES: tuple[Phase, ...] = ("triage", "isolation", "root_cause", "resolution")
PlannerKind = Literal["runbook", "llm"]


class AlertInfo(BaseModel):
    """What the alert said. Labels and annotations are untrusted text."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    status: str = "firing"
    fingerprint: str | None = None
    starts_at: str | None = None
    # The PromQL expression that fired it (Prometheus's generatorURL carries it as g0.expr).
    expression: str | None = None

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")


class IncidentContext(BaseModel):
    """One incident: the alert, where it happens, and the scope operations may touch."""

    incident_id: str
    alert: AlertInfo
    environment: str
    service: str
    dependencies: list[str] = Field(default_factory=list)
    # Host names the service's log names in connection, DNS and timeout errors, looked up as
    # services of the same environment: they may be read, never written (nothing read from a
    # log widens what may be changed).
    discovered: list[str] = Field(default_factory=list)
    # The service's recent incidents, one line each (incident memory), for the planner.
    history: list[str] = Field(default_factory=list)
    # Who asked for this incident (an API key's name; None for an alert): it may not
    # approve the incident's own writes.
    requested_by: str | None = None
    # An operation request made within another incident: that incident's scope and write
    # budget apply to it.
    parent_incident: str | None = None

    @property
    def scope(self) -> list[str]:
        """The targets any step may name: the alerted service and its declared dependencies."""
        return [self.service, *self.dependencies]

    @property
    def read_scope(self) -> list[str]:
        """The targets a read may name: the scope and the discovered dependencies."""
        return [*self.scope, *(d for d in self.discovered if d not in self.scope)]

    @property
    def all_dependencies(self) -> list[str]:
        return [*self.dependencies, *(d for d in self.discovered if d not in self.dependencies)]


class PlanStep(BaseModel):
    """One proposed operation. Whoever proposed it, it is validated before anything runs."""

    model_config = ConfigDict(frozen=True)

    phase: Phase
    operation: str
    environment: str
    target: str | None
    parameters: dict[str, Any] = Field(default_factory=dict)
    rationale: str = ""
    proposed_by: PlannerKind

    def key(self) -> str:
        """Identity of the exact action (operation, environment, target, parameters):
        an approval is bound to it."""
        canonical = json.dumps(
            [self.operation, self.environment, self.target, self.parameters],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in sorted(self.parameters.items()))
        target = f" {self.target}" if self.target else ""
        return f"{self.operation}{target} on {self.environment}" + (
            f" ({params})" if params else ""
        )


class Observation(BaseModel):
    """The result of one executed step, referred to by its id in a diagnosis."""

    id: str
    phase: Phase | None = None
    operation: str
    environment: str = ""
    target: str | None = None
    success: bool
    output: str = ""
    data: Any = None
    error: str | None = None


Decision = Literal["accepted", "needs_approval", "rejected"]


class StepDecision(BaseModel):
    """What happened to a proposed step, and why."""

    step: PlanStep
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    risk: str | None = None
    policy: str = ""  # the policy outcome in words: "read: runs", "auto-approved by runbook x"
    command: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    currency: str = ""

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.currency = self.currency or other.currency


class RecommendedStep(BaseModel):
    operation: str
    target: str | None
    parameters: dict[str, Any] = Field(default_factory=dict)
    rationale: str = ""


class Diagnosis(BaseModel):
    root_cause: str
    category: str
    confidence: float = Field(ge=0, le=1)
    evidence: list[str] = Field(default_factory=list)  # observation ids
    # The specific facts the root cause names (the variable, module, port, path, host...).
    facts: list[str] = Field(default_factory=list)
    # When nothing matched: the most telling log lines, and what the evidence rules out.
    telling_lines: list[str] = Field(default_factory=list)
    ruled_out: list[str] = Field(default_factory=list)
    recommended_actions: list[RecommendedStep] = Field(default_factory=list)
    source: PlannerKind
    rules_matched: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class PhasePlan(BaseModel):
    """One planning round of one phase, with the decision on every proposed step."""

    phase: Phase
    planner: PlannerKind
    runbook: str | None = None
    iteration: int = 0
    decisions: list[StepDecision] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cached: bool = False
    done: bool = True
    created_at: datetime | None = None

    @property
    def accepted(self) -> list[PlanStep]:
        return [d.step for d in self.decisions if d.decision == "accepted"]

    @property
    def needs_approval(self) -> list[StepDecision]:
        return [d for d in self.decisions if d.decision == "needs_approval"]
