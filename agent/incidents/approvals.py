"""People's answers to approval requests, with identity.

The decision of record is the approvals row, written by whoever authenticated the person: the
service for an API key (the key's name is the approver), the CLI for a shell user. Only then
is the paused flow run woken up; the run reads the row, so what a Resume form in the Prefect
UI says can neither override nor impersonate it. An answer that reaches the run without a row
decided for it came from the Prefect UI: it counts only where `api.approvals.prefect_ui` is
`allowed` and one approver suffices, and the report then says the approver is
unauthenticated.

The rules: the requester of an incident or an operation never approves its own write (it may
withdraw it by rejecting); each person answers once; a rejection decides at once; a write
runs after `required_approvers` distinct people approved it (environments.yml, the two-person
rule where it is 2); an expired request takes no answers. Every answer is in the audit trail
with who, when, from where and through what.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel

from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.storage import ApprovalRecord, IncidentStore

Via = Literal["api", "cli", "prefect-ui"]


class ApprovalRefused(Exception):
    """An answer that is not taken: 403 (not allowed for this person) or 409 (nothing waits)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VoteResult(BaseModel):
    incident_id: str
    step_key: str
    step: str
    command: str
    decision: Literal["approved", "rejected", "pending"]
    approvers: list[str]
    required: int
    by: str


def unauthenticated(name: str) -> str:
    """How an approver named in a Prefect UI form appears: never as a verified identity."""
    return f"{name.strip()[:100] or 'someone'} (Prefect UI, unauthenticated)"


class ApprovalDesk:
    def __init__(self, store: IncidentStore) -> None:
        self.store = store
        self.audit = AuditLog(store.database)
        self.events = EventLog(store.database)

    def pending(self, incident_id: str, step_key: str | None) -> ApprovalRecord:
        waiting = self.store.approvals(incident_id, "pending")
        if step_key is not None:
            waiting = [a for a in waiting if a.step_key == step_key]
        if not waiting:
            record = self.store.get(incident_id)
            status = record.status if record else "unknown"
            raise ApprovalRefused(409, f"incident {incident_id} is {status}; nothing waits")
        return waiting[0]

    def answer(
        self,
        incident_id: str,
        step_key: str | None,
        approver: str,
        approve: bool,
        via: Via,
        address: str | None,
        reason: str = "",
        request_id: str | None = None,
    ) -> VoteResult:
        """Record one person's answer; decide the request when it is enough. Raises
        ApprovalRefused for an answer that is not taken (audited too)."""
        action = "approval.approve" if approve else "approval.reject"
        where = {"via": via, "address": address, "reason": reason}
        try:
            request = self.pending(incident_id, step_key)
            where["step_key"] = request.step_key
            self._check(request, approver, approve, via)
            if not self.store.record_vote(
                incident_id, request.step_key, approver, approve, via, address, reason
            ):
                raise ApprovalRefused(
                    409, f"{approver} already answered this request; another person must"
                )
        except ApprovalRefused as refused:
            self.audit.record(
                approver, action, f"refused: {refused}", where.get("step_key"), where,
                incident_id, request_id,
            )  # fmt: skip
            raise
        approvers = [v.approver for v in self.store.votes(incident_id, request.step_key)]
        approving = [
            v.approver
            for v in self.store.votes(incident_id, request.step_key)
            if v.approve and v.approver != request.requested_by
        ]
        decision: Literal["approved", "rejected", "pending"] = "pending"
        if not approve:
            decision = "rejected"
        elif len(approving) >= request.required:
            decision = "approved"
        if decision != "pending":
            decided_by = approver if decision == "rejected" else ", ".join(approving)
            if not self.store.decide_approval(
                incident_id, request.step_key, decision, decided_by, reason, via
            ):
                raise ApprovalRefused(409, "the request was decided or cancelled meanwhile")
            self.events.emit(
                "approval.decided", incident_id, step=request.step.describe(),
                decision=decision, by=decided_by, via=via,
            )  # fmt: skip
        else:
            self.events.emit(
                "approval.vote", incident_id, step=request.step.describe(), by=approver,
                via=via, approvals=len(approving), required=request.required,
            )  # fmt: skip
        self.audit.record(
            approver, action,
            decision if decision != "pending" else f"approved {len(approving)} of "
            f"{request.required}; waiting for another person",
            request.step.describe(), {**where, "approvers": approvers}, incident_id, request_id,
        )  # fmt: skip
        return VoteResult(
            incident_id=incident_id,
            step_key=request.step_key,
            step=request.step.describe(),
            command=request.command,
            decision=decision,
            approvers=approving,
            required=request.required,
            by=approver,
        )

    def undo(self, result: VoteResult, error: str, request_id: str | None = None) -> bool:
        """The run could not be woken up: the decision is taken back and this answer
        withdrawn, so the request is pending again and the answer can be given again. False
        when the run had already acted on the decision (its pause ended and it read it): the
        decision then stands."""
        if result.decision != "pending":
            decided_by = result.by if result.decision == "rejected" else ", ".join(result.approvers)
            if not self.store.reopen_approval(result.incident_id, result.step_key, decided_by):
                return False
        self.store.withdraw_vote(result.incident_id, result.step_key, result.by)
        self.audit.record(
            result.by, "approval.undone", f"the run could not be resumed: {error}"[:500],
            result.step, {"step_key": result.step_key}, result.incident_id, request_id,
        )  # fmt: skip
        return True

    def _check(
        self, request: ApprovalRecord, approver: str, approve: bool, via: Via = "api"
    ) -> None:
        if request.expires_at is not None and time.time() > request.expires_at:
            raise ApprovalRefused(409, "the approval request expired")
        requester = request.requested_by
        if requester is None:
            record = self.store.get(request.incident_id)
            requester = record.context.requested_by if record else None
        if approve and via == "cli" and (request.required > 1 or requester is not None):
            # A shell user and an API key are different names for people: counting both could
            # let one person be two approvers, or approve what their key requested.
            raise ApprovalRefused(
                403,
                "this approval is counted over the API only (several approvers are required, "
                "or an API key requested it): POST /incidents/{id}/approve",
            )
        if approve and requester is not None and approver == requester:
            raise ApprovalRefused(
                403, f"{approver} requested this write and cannot approve it; another person must"
            )
