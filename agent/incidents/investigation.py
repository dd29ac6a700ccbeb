"""One incident's investigation, independent of Prefect: the state the flow carries from phase to
phase, the approval state machine of a write, the final-status rule and the report.

flows/diagnose.py is the adapter: it calls these methods in phase order and wraps planning and
operations in Prefect tasks, approvals in a pause. Everything that decides lives here (and in
agent/safety), so it is tested without Prefect.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Literal

from pydantic import BaseModel

from agent.incidents.approvals import unauthenticated
from agent.incidents.context import observation_from_result
from agent.incidents.events import EventLog
from agent.incidents.memory import IncidentMemory
from agent.incidents.models import (
    IncidentContext,
    Observation,
    PhasePlan,
    PlanStep,
    StepDecision,
    Usage,
)
from agent.incidents.report import (
    ActionRecord,
    IncidentReport,
    TimelineEntry,
    escape_markdown,
    now,
    recovery,
    service_health,
)
from agent.incidents.storage import ApprovalRecord, ApprovalStatus, IncidentStatus, IncidentStore
from agent.planning.planner import DiagnosticPlanner
from agent.safety.gate import ExecutionGate, GateOutcome, GateRequest
from agent.safety.policy import Approval
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import Runbook
from infrastructure.executors.base import OperationResult


def run_context(
    config: UICIConfig,
    alert: dict[str, Any] | None,
    service: str | None,
    environment: str | None,
    dependencies: list[str] | None,
    incident_id: str | None,
) -> IncidentContext:
    """The context of a diagnose-incident run from its parameters: an alert (with the service
    and environment the webhook mapped it to), or a service by name."""
    from agent.incidents.context import LabelConventions, context_from_alert

    if not alert and not service:
        raise ValueError("diagnose_incident needs an alert or a service")
    alert = alert or {"labels": {"alertname": "manual", "service": service}}
    # platform.yml `alerts:` maps the labels; a service and environment the caller mapped win.
    return context_from_alert(
        alert,
        LabelConventions.from_config(config),
        incident_id,
        dependencies or [],
        environment=environment,
        service=service,
    )


def fail_unopened(
    store: IncidentStore, events: EventLog, incident_id: str | None, error: BaseException
) -> None:
    """A run that could not even build its context (e.g. an alert that names no service): an
    incident the service already stored for it ends `failed` with the error."""
    if incident_id is None or store.get(incident_id) is None:
        return
    message = store.redactor.cut(f"{type(error).__name__}: {error}", 2000)
    store.save_report(incident_id, {"incident_id": incident_id, "error": message}, "failed")
    events.emit("incident.failed", incident_id, error=message)


class ApprovalAsk(BaseModel):
    """What a person is asked: shown in the Prefect UI's Resume form and sent in events."""

    key: str
    command: str
    description: str
    timeout_seconds: int


class ApprovalAnswer(BaseModel):
    approve: bool
    approver: str = "prefect-ui"
    reason: str = ""
    step_key: str = ""  # the step the answer is for; another step's answer approves nothing
    token: str = ""  # the request's nonce: the service's or the CLI's wake-up, not a form


WriteNext = Literal["skip", "ask", "run"]


class Investigation:
    """Built once per incident run (flow run); owns the planner, the gate and the report."""

    def __init__(
        self,
        config: UICIConfig,
        store: IncidentStore,
        planner: DiagnosticPlanner,
        gate: ExecutionGate,
        context: IncidentContext,
        actor: str,
        entry: Literal["flow", "run-operation"] = "flow",
        request_id: str | None = None,
        flow_run_url: str | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.planner = planner
        self.gate = gate
        self.context = context
        self.actor = actor
        self.entry = entry
        self.request_id = request_id
        self.events = gate.journal.events
        self.runbook: Runbook = planner.runbooks.match(context)
        self.memory = IncidentMemory(store, config.agents.incident_memory)
        self._causes: dict[str, str] = {}  # step key -> the cause a write was decided for
        self._evidence_until: int | None = None  # observations before the first write sent
        context.history = self.memory.summary(context)
        # Set by `validated` once a remediation was checked after settling.
        self.recovered: bool | None = None
        self.recovery_detail = ""
        self.report = IncidentReport(
            incident_id=context.incident_id,
            alert=context.alert.model_dump(mode="json"),
            environment=context.environment,
            service=context.service,
            dependencies=context.dependencies,
            diagnosis=None,
            observations=[],
            plans=[],
            flow_run_url=flow_run_url,
        )

    # --- opening and planning -------------------------------------------------------------

    def open(self, flow_run_id: str | None) -> None:
        record = self.store.open_incident(self.context, flow_run_id)
        # Who asked for the incident (stored by the service that opened it) never approves.
        self.context.requested_by = self.context.requested_by or record.context.requested_by
        self.store.set_status(self.context.incident_id, "diagnosing", flow_run_id)
        self._timeline(f"incident opened (runbook {self.runbook.name})")

    def record_plan(
        self, plan: PhasePlan
    ) -> tuple[list[PlanStep], list[StepDecision], list[PlanStep]]:
        """Add a phase plan to the report. Returns the read steps to run first, the write
        decisions, and the read steps that come after a write in the plan: those validate it,
        so they run after it."""
        self.report.plans.append(plan)
        self.report.rejected.extend(d for d in plan.decisions if d.decision == "rejected")
        self._timeline(
            f"{plan.phase}: {plan.planner} planned {len(plan.accepted)} steps, "
            f"{len(plan.needs_approval)} need approval"
        )
        before: list[PlanStep] = []
        writes: list[StepDecision] = []
        after: list[PlanStep] = []
        for decision in plan.decisions:
            if decision.decision == "rejected":
                if decision.risk not in (None, "read"):
                    self._audit_refusal(decision)
                continue
            if decision.risk != "read":
                writes.append(decision)
            elif decision.decision == "accepted":
                (after if writes else before).append(decision.step)
        return before, writes, after

    def usage_so_far(self) -> Usage:
        return self.planner.incident_usage(self.context.incident_id).model_copy()

    def usage_event(self, phase: str, before: Usage) -> None:
        """An `llm.call` event for what planning spent since `before` (nothing if no call)."""
        after = self.planner.incident_usage(self.context.incident_id)
        if after.calls == before.calls:
            return
        self.events.emit(
            "llm.call",
            self.context.incident_id,
            phase=phase,
            calls=after.calls - before.calls,
            prompt_tokens=after.prompt_tokens - before.prompt_tokens,
            completion_tokens=after.completion_tokens - before.completion_tokens,
            cost=round(after.cost - before.cost, 8),
        )

    def request(self, step: PlanStep, approval: Approval | None = None) -> GateRequest:
        return GateRequest(
            step=step,
            context=self.context,
            actor=approval.approved_by if approval else self.actor,
            entry=self.entry,
            # Only a diagnosis has a runbook that may auto-approve; one requested operation
            # is approved by a person.
            runbook=self.runbook if self.entry == "flow" else None,
            approval=approval,
            request_id=self.request_id,
            observations=list(self.report.observations),
        )

    def observe(self, step: PlanStep, result: OperationResult) -> Observation:
        observation = observation_from_result(
            f"obs-{len(self.report.observations) + 1}", step, result
        )
        self.report.observations.append(observation)
        return observation

    # --- the approval state machine of one write --------------------------------------------

    def next_for_write(
        self, decision: StepDecision, can_ask: bool = True
    ) -> tuple[WriteNext, ApprovalAsk | None]:
        """skip (recorded in the report with the reason), ask a person, or run now. A runner
        with nobody to ask (`can_ask=False`) skips a write that needs a person, asking no one."""
        step = decision.step
        if self.store.alert_resolved(self.context.incident_id):
            self._not_executed(decision, decision.decision, "the alert resolved first")
            return "skip", None
        # The cause as the rules read it now, before the write changes what they see: a cause
        # remediated too often on this target is escalated.
        cause = self.planner.runbooks.diagnose(self.context, self.report.observations).category
        self._causes[step.key()] = cause
        repeated = self.memory.repeat_refusal(self.context, step.target or "-", cause)
        if repeated is not None:
            self._not_executed(decision, "rejected", repeated, needs_person=True)
            return "skip", None
        refused = self.gate.check(self.request(step))
        if refused is not None:
            self._not_executed(refused.decision, "rejected", refused.note, refused.needs_person)
            return "skip", None
        if decision.decision != "needs_approval":
            return "run", None
        if not can_ask:
            self._not_executed(
                decision,
                "needs_approval",
                "needs a person's approval; nobody is asked in a run outside Prefect"
                " (`uici diagnose`, `uici eval`): run it with `uici run ... --yes` after checking",
                needs_person=True,
            )
            return "skip", None
        command = " ".join(decision.command)
        timeout = self.approval_timeout(step)
        expires_at = time.time() + timeout
        required = self.required_approvers(step)
        self.store.request_approval(
            self.context.incident_id, step, command, expires_at, required,
            self.context.requested_by,
        )  # fmt: skip
        self.store.set_status(self.context.incident_id, "awaiting_approval")
        self.events.emit(
            "approval.needed", self.context.incident_id, step=step.describe(), command=command,
            step_key=step.key(), operation=step.operation, target=step.target,
            environment=step.environment, risk=decision.risk, expires_at=expires_at,
            required_approvers=required, flow_run_url=self.report.flow_run_url,
        )  # fmt: skip
        self._timeline(f"approval requested: {step.describe()}")
        # The rationale may come from an LLM: shown as text, never as links, images or HTML.
        description = (
            f"## Approve `{step.operation}` on `{step.target}`?\n\n"
            f"- environment: {step.environment}\n- command: `{command}`\n"
            f"- rationale: {escape_markdown(step.rationale)}\n- proposed by: {step.proposed_by}\n"
            f"- step key: {step.key()}\n\nNo answer within {timeout} s means it is not executed."
        )
        ask = ApprovalAsk(
            key=f"approval-{step.key()}",
            command=command,
            description=description,
            timeout_seconds=timeout,
        )
        return "ask", ask

    def answered(
        self, decision: StepDecision, answer: ApprovalAnswer | None
    ) -> Approval | Literal["again"] | None:
        """What the run does after its pause ends: the approval to run the write with, None
        when it will not run, or "again" to wait on (an answer that does not count).

        The decision of record is the approvals row a person's authenticated answer wrote
        (agent/incidents/approvals.py) before waking the run; a pause answered with no row
        decided came from the Prefect UI's form, and counts only where the configuration
        allows it."""
        step = decision.step
        incident = self.context.incident_id
        decided = self.store.claim_decision(incident, step.key())
        if decided is not None:
            return self._decided(decision, decided)
        request = self.store.approval(incident, step.key())
        if answer is None:
            if self.store.decide_approval(incident, step.key(), "expired", "uici", "no answer"):
                self.store.claim_decision(incident, step.key())
                self.store.set_status(incident, "diagnosing")
                waited = f"no approval within {self.approval_timeout(step)} s"
                self.gate.journal.audit.record(
                    "uici", "approval.expired", waited, step.describe(),
                    {"step_key": step.key()}, incident, self.request_id,
                )  # fmt: skip
                self._not_executed(
                    decision, "needs_approval",
                    f"no approval within {self.approval_timeout(step)} s",
                )  # fmt: skip
                return None
            request = self.store.claim_decision(incident, step.key())  # decided just now
            if request is None:
                self._not_executed(decision, "needs_approval", "the approval request is gone")
                return None
            return self._decided(decision, request)
        ours = request is not None and bool(request.nonce and answer.token)
        if ours and request is not None and hmac.compare_digest(answer.token, request.nonce or ""):
            # Woken by the service or the CLI for an answer they took back (the wake-up
            # looked failed to them): nothing was decided, wait on.
            return "again"
        return self._from_prefect_ui(decision, answer, request)

    def _from_prefect_ui(
        self, decision: StepDecision, answer: ApprovalAnswer, request: ApprovalRecord | None
    ) -> Approval | Literal["again"] | None:
        step = decision.step
        incident = self.context.incident_id
        who = unauthenticated(answer.approver)
        required = request.required if request else self.required_approvers(step)
        refusal = None
        if self.config.platform.api.approvals.prefect_ui == "disabled":
            refusal = "Prefect UI approvals are disabled (platform.yml api.approvals.prefect_ui)"
        elif required > 1:
            refusal = f"{required} approvers are required: answers are counted over the API only"
        elif self.context.requested_by is not None:
            # The form cannot tell whether the requester is the one answering.
            refusal = f"requested by {self.context.requested_by}: answers over the API only"
        elif request is not None and request.expires_at and time.time() > request.expires_at:
            refusal = "the approval request expired"
        # Neither a yes nor a no from the form counts then (the form's default is a no).
        if refusal is not None:
            self.gate.journal.audit.record(
                who, "approval.ignored", refusal, step.describe(),
                {"via": "prefect-ui", "step_key": step.key()}, incident, self.request_id,
            )  # fmt: skip
            self._timeline(f"answer from the Prefect UI ignored ({refusal}): {step.describe()}")
            return "again"
        if answer.approve and answer.step_key != step.key():
            # An answer meant for another step (e.g. a stale form) approves nothing here.
            answer = answer.model_copy(
                update={"approve": False, "reason": f"answer was for step {answer.step_key}"}
            )
        verdict: ApprovalStatus = "approved" if answer.approve else "rejected"
        self.store.record_vote(
            incident, step.key(), who, answer.approve, "prefect-ui", None, answer.reason
        )
        if not self.store.decide_approval(
            incident, step.key(), verdict, who, answer.reason, "prefect-ui"
        ):
            request = self.store.claim_decision(incident, step.key())  # decided meanwhile
            return self._decided(decision, request) if request else "again"
        self.gate.journal.audit.record(
            who, f"approval.{'approve' if answer.approve else 'reject'}", verdict,
            step.describe(), {"via": "prefect-ui", "address": None, "step_key": step.key(),
            "reason": answer.reason}, incident, self.request_id,
        )  # fmt: skip
        self.events.emit(
            "approval.decided", incident, step=step.describe(), decision=verdict, by=who,
            via="prefect-ui",
        )  # fmt: skip
        request = self.store.claim_decision(incident, step.key())
        return self._decided(decision, request) if request else None

    def _decided(self, decision: StepDecision, request: ApprovalRecord) -> Approval | None:
        """Act on the recorded decision of a request."""
        step = decision.step
        self.store.set_status(self.context.incident_id, "diagnosing")
        who = request.actor or "someone"
        if request.status == "approved":
            votes = [
                v for v in self.store.votes(request.incident_id, request.step_key) if v.approve
            ]
            if len({v.approver for v in votes}) < request.required:  # a second lock
                self._not_executed(
                    decision, "rejected",
                    f"approved by {len(votes)} of the {request.required} people required",
                )  # fmt: skip
                return None
            self._timeline(f"approved by {who} (via {request.via}): {step.describe()}")
            return Approval(
                step_key=step.key(),
                approved_by=who,
                expires_at=self.planner.policy.approval_expiry(step),
            )
        label = "rejected" if request.status in ("rejected", "cancelled") else "needs_approval"
        detail = {
            "rejected": f"rejected by {who}",
            "cancelled": f"cancelled by {who}: {request.reason or ''}".rstrip(": "),
            "expired": f"no approval within {self.approval_timeout(step)} s",
        }.get(request.status, request.status)
        self._timeline(f"{request.status} by {who}: {step.describe()}")
        self._not_executed(decision, label, detail)
        return None

    def diagnosis_evidence(self) -> list[Observation]:
        """What the diagnosis reads: the observations of the failure, i.e. those made before
        the first write that was sent (after it, reads show the remediation's effect, which
        validation judges)."""
        if self._evidence_until is None:
            return list(self.report.observations)
        return self.report.observations[: self._evidence_until]

    def record_write(self, step: PlanStep, outcome: GateOutcome) -> None:
        if self._evidence_until is None and (
            outcome.executed or outcome.outcome in ("recovered", "already_done")
        ):
            self._evidence_until = len(self.report.observations)
        if outcome.result is not None:
            self.observe(step, outcome.result)
        if outcome.executed or outcome.outcome in ("recovered", "already_done"):
            cause = (
                self._causes.get(step.key())
                or self.planner.runbooks.diagnose(self.context, self.report.observations).category
            )
            self.memory.remediated(self.context, step.target or "-", cause, step.describe())
        text = {
            "executed": "executed",
            "failed": "failed",
            "unknown": "unknown",
            "recovered": "recovered",
            "already_done": "recovered",
        }.get(outcome.outcome, "not executed")
        self.report.actions.append(
            ActionRecord(
                step=step.describe(),
                decision=outcome.decision.decision,
                policy=outcome.decision.policy,
                outcome=text,
                detail=outcome.note,
                needs_person=outcome.needs_person,
            )
        )
        self._timeline(f"{text}: {step.describe()}")

    def approval_timeout(self, step: PlanStep) -> int:
        policy = self.config.environments.environments[step.environment].policy
        return int(policy.approval_timeout_seconds)

    def required_approvers(self, step: PlanStep) -> int:
        return self.config.environments.environments[step.environment].policy.required_approvers

    def approval_wait(self, step: PlanStep) -> float:
        """Seconds left until the step's approval request expires (0 when it has)."""
        request = self.store.approval(self.context.incident_id, step.key())
        if request is None or request.expires_at is None:
            return float(self.approval_timeout(step))
        return max(0.0, request.expires_at - time.time())

    def validation_step(self) -> PlanStep | None:
        """After a remediation that ran: the service's status, to be checked once it settled
        (agents.yml diagnostic_agent.validation)."""
        if not any(a.outcome in ("executed", "recovered") for a in self.report.actions):
            return None
        return PlanStep(
            phase="resolution",
            operation="get_status",
            environment=self.context.environment,
            target=self.context.service,
            rationale="validate after remediation, once the service settled",
            proposed_by="runbook",
        )

    def validated(self, checks: list[Observation]) -> None:
        """Record what the checks after the settle window say: recovered or not, and why."""
        settings = self.config.agents.diagnostic_agent.validation
        self.recovered, detail = recovery(checks, self.context.service, settings.settle_seconds)
        self.recovery_detail = detail
        self._timeline(detail)

    # --- the end ------------------------------------------------------------------------------

    def final_status(self) -> IncidentStatus:
        """resolved: the service is healthy at the end; escalated: a person must look (a
        write's outcome is unknown, the write history stopped UICI acting again, or a
        remediation failed and the service is still not healthy); diagnosed otherwise."""
        actions = self.report.actions
        failed = any(a.outcome == "failed" for a in actions)
        if any(a.needs_person for a in actions) or (failed and not self.report.healthy):
            return "escalated"
        return "resolved" if self.report.healthy else "diagnosed"

    def finish(self) -> dict[str, Any]:
        report = self.report
        report.usage = self.planner.incident_usage(self.context.incident_id)
        report.discovered_dependencies = [
            name
            for name in self.context.discovered
            if any(
                o.operation == "get_status" and o.target == name and o.success
                for o in report.observations
            )
        ]
        if self.recovered is not None:
            report.healthy, report.health_detail = self.recovered, self.recovery_detail
        else:
            report.healthy, report.health_detail = service_health(
                report.observations, self.context.service
            )
        if report.diagnosis is not None:
            report.similar_incidents = [
                s.model_dump(mode="json")
                for s in self.memory.similar(self.context, report.diagnosis)
            ]
            self.memory.remember(
                self.context,
                report.diagnosis,
                [a.step for a in report.actions if a.outcome in ("executed", "recovered")],
                self.recovered,
            )
        self._timeline("diagnosis complete")
        status = self.final_status()
        self._cancel_waiting("the run finished")
        data = report.model_dump(mode="json")
        self.store.save_report(self.context.incident_id, data, status)
        self.events.emit(
            "incident.diagnosed",
            self.context.incident_id,
            root_cause=report.diagnosis.root_cause if report.diagnosis else None,
            healthy=report.healthy,
            status=status,
        )
        return data

    def fail(self, error: BaseException) -> dict[str, Any]:
        """Any exception in the run: the incident ends `failed`, with the error and what was
        done so far in its report, never left `diagnosing`."""
        message = self.store.redactor.cut(f"{type(error).__name__}: {error}", 2000)
        self._timeline(f"failed: {message}")
        self.report.health_detail = f"the diagnosis failed: {message}"
        self._cancel_waiting(f"the run failed: {message[:200]}")
        data = {**self.report.model_dump(mode="json"), "error": message}
        self.store.save_report(self.context.incident_id, data, "failed")
        self.events.emit("incident.failed", self.context.incident_id, error=message)
        return data

    def not_executed(self, decision: StepDecision, detail: str) -> None:
        """A write its runner does not send (e.g. `uici diagnose` without --allow-writes)."""
        self._not_executed(decision, decision.decision, detail)

    def _not_executed(
        self, decision: StepDecision, label: str, detail: str, needs_person: bool = False
    ) -> None:
        """A write that will not run: give back its reservation and say why in the report."""
        self.planner.policy.settle(self.context, decision.step)
        self.report.actions.append(
            ActionRecord(
                step=decision.step.describe(),
                decision=label,
                policy=decision.policy,
                outcome="not executed",
                detail=detail,
                needs_person=needs_person,
            )
        )
        self._timeline(f"not executed: {decision.step.describe()} ({detail})")

    def _audit_refusal(self, decision: StepDecision) -> None:
        """A write refused when it was planned is audited like one the gate refuses."""
        step = decision.step
        self.gate.journal.audit.record(
            self.actor,
            f"operation.{step.operation}",
            "refused: " + "; ".join(decision.reasons),
            target=f"{step.environment}/{step.target or '-'}",
            parameters={"parameters": step.parameters, "entry": self.entry, "planned": True},
            incident_id=self.context.incident_id,
            request_id=self.request_id,
        )

    def _cancel_waiting(self, reason: str) -> None:
        """No approval request outlives its run: one still pending is cancelled."""
        for waiting in self.store.approvals(self.context.incident_id, "pending"):
            self.store.decide_approval(
                self.context.incident_id, waiting.step_key, "cancelled", "uici", reason
            )

    def _timeline(self, event: str) -> None:
        self.report.timeline.append(TimelineEntry(at=now(), event=event))
