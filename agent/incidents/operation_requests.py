"""A write a person asks for over the API that needs approval: nobody approves their own.

`POST /operations/{name}/run` for such a write records an operation request instead of
running it: an incident (or the incident the caller named, whose scope and budget then apply)
with a pending approval that names the requester. Other people answer it like any approval
(POST /incidents/{id}/approve, agent/incidents/approvals.py); once enough of them approved,
the service sends the write through the execution gate with their names as the approval. No
flow run is involved, so the service also expires requests nobody answered in time.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from agent.incidents.approvals import VoteResult
from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from agent.incidents.storage import ApprovalRecord, IncidentStore, insert_incident
from agent.safety.gate import ExecutionGate, GateOutcome, GateRequest
from agent.safety.policy import Approval
from infrastructure.configuration.loader import UICIConfig

RUNNER = "service"  # approvals whose write the service runs once approved (not a flow run)


class OperationRequest(BaseModel):
    incident_id: str
    step_key: str
    status: str
    command_line: str
    expires_at: float
    required_approvers: int
    requested_by: str


class OperationRequests:
    def __init__(self, config: UICIConfig, store: IncidentStore) -> None:
        self.config = config
        self.store = store
        self.events = EventLog(store.database)
        self.audit = AuditLog(store.database)

    def open(
        self,
        step: PlanStep,
        command_line: str,
        requester: str,
        key: str,
        incident: IncidentContext | None,
        request_id: str | None,
    ) -> OperationRequest:
        """Record the request (idempotent per key: the same request sent again is the same
        request) and say who must answer it."""
        policy = self.config.environments.environments[step.environment].policy
        # Always an incident of its own: a flow's approvals are never touched. The request
        # key names it, so a client's retry finds the same request, whatever became of it.
        incident_id = f"op-{key}"
        existing = self.store.approval(incident_id, step.key())
        if existing is not None:
            return self._view(existing)
        context = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(
                labels={"alertname": "manual-operation", "service": step.target or "-"}
            ),
            environment=step.environment,
            service=step.target or "-",
            dependencies=[d for d in (incident.scope if incident else []) if d != step.target],
            requested_by=requester,
            parent_incident=incident.incident_id if incident else None,
        )
        expires_at = time.time() + policy.approval_timeout_seconds
        with self.store.transaction() as db:
            insert_incident(db, context)
        self.store.request_approval(
            incident_id, step, command_line, expires_at, policy.required_approvers, requester,
            runner=RUNNER,
        )  # fmt: skip
        self.store.set_status(incident_id, "awaiting_approval")
        self.events.emit(
            "approval.needed", incident_id, step=step.describe(), command=command_line,
            step_key=step.key(), operation=step.operation, target=step.target,
            environment=step.environment, risk="write", expires_at=expires_at,
            required_approvers=policy.required_approvers, requested_by=requester,
        )  # fmt: skip
        self.audit.record(
            requester, f"operation.{step.operation}",
            f"approval requested from {policy.required_approvers} other person(s)",
            f"{step.environment}/{step.target or '-'}", {"parameters": step.parameters},
            incident_id, request_id,
        )  # fmt: skip
        request = self.store.approval(incident_id, step.key())
        assert request is not None
        return self._view(request)

    def run_approved(
        self, vote: VoteResult, gate: ExecutionGate, request_id: str | None
    ) -> GateOutcome:
        """The approved write, through the gate, approved by the people who approved it."""
        request = self.store.claim_decision(vote.incident_id, vote.step_key)
        record = self.store.get(vote.incident_id)
        if request is None or record is None:
            raise RuntimeError(f"operation request {vote.incident_id} was taken up already")
        step = request.step
        # Within another incident, its scope and write budget apply.
        parent = record.context.parent_incident
        parent_record = self.store.get(parent) if parent else None
        context = parent_record.context if parent_record else record.context
        outcome = gate.execute(
            GateRequest(
                step=step,
                context=context,
                actor=request.requested_by or "api",
                entry="api",
                approval=Approval(
                    step_key=step.key(),
                    approved_by=", ".join(vote.approvers),
                    expires_at=gate.policy.approval_expiry(step),
                ),
                request_id=request_id,
                intent_key=f"api-{vote.incident_id}-{step.key()}",
            )
        )
        result = outcome.result.model_dump(mode="json") if outcome.result else None
        self._close(
            vote.incident_id, request, "resolved" if outcome.succeeded else "escalated",
            {"outcome": outcome.outcome, "note": outcome.note, "result": result,
             "approved_by": vote.approvers},
        )  # fmt: skip
        return outcome

    def closed(self, vote: VoteResult) -> None:
        """A rejected request: nothing runs, the incident says why."""
        request = self.store.approval(vote.incident_id, vote.step_key)
        if request is not None and request.requested_by is not None:
            self._close(vote.incident_id, request, "diagnosed", {"outcome": "rejected"})

    def expire_due(self, now: float | None = None) -> list[str]:
        """Requests whose time ran out with no decision: expired, nothing runs. And requests
        approved while the service stopped before finishing their write: escalated, so
        nothing stays waiting unseen (the write history says what happened to the write)."""
        now = time.time() if now is None else now
        for request in self.store.service_approvals("approved"):
            record = self.store.get(request.incident_id)
            if record is None or record.status != "awaiting_approval" or not request.decided_at:
                continue
            if now - request.decided_at > self._longest_write(request.step):
                self._close(
                    request.incident_id, request, "escalated",
                    {"outcome": "unknown", "note": "the service stopped while running the "
                     "approved write; `uici writes list` shows what became of it"},
                )  # fmt: skip
        expired = []
        for request in self.store.service_approvals("pending"):
            if request.expires_at is None or request.expires_at >= now:
                continue
            if self.store.decide_approval(
                request.incident_id, request.step_key, "expired", "uici", "no answer"
            ):
                self.audit.record(
                    "uici", "approval.expired", "no answer in time", request.step.describe(),
                    {"step_key": request.step_key}, request.incident_id,
                )  # fmt: skip
                self._close(request.incident_id, request, "diagnosed", {"outcome": "expired"})
                expired.append(request.incident_id)
        return expired

    def _longest_write(self, step: PlanStep) -> float:
        """How long sending an approved write may take: waiting for the target's lock, then
        every attempt of the operation."""
        policy = self.config.environments.environments[step.environment].policy
        spec = self.config.operations.operations[step.operation]
        retry = spec.retry
        waits = sum(retry.delay_seconds * retry.backoff_factor**n for n in range(retry.attempts))
        return policy.target_lock_wait_seconds + spec.timeout_seconds * retry.attempts + waits

    def _close(
        self, incident_id: str, request: ApprovalRecord, status: Any, details: dict[str, Any]
    ) -> None:
        report = {
            "incident_id": incident_id,
            "operation_request": {
                "step": request.step.describe(),
                "command": request.command,
                "requested_by": request.requested_by,
                **details,
            },
        }
        self.store.save_report(incident_id, report, status)
        if status == "escalated":  # a person must look: say so where people are told
            self.events.emit(
                "incident.diagnosed", incident_id, status=status, root_cause=None,
                healthy=None, operation_request=details.get("outcome"),
            )  # fmt: skip

    @staticmethod
    def _view(request: ApprovalRecord) -> OperationRequest:
        return OperationRequest(
            incident_id=request.incident_id,
            step_key=request.step_key,
            status=request.status,
            command_line=request.command,
            expires_at=request.expires_at or 0.0,
            required_approvers=request.required,
            requested_by=request.requested_by or "",
        )
