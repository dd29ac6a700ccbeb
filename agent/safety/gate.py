"""The execution gate: the one code path every operation takes, from every entry point.

The diagnose and run-operation flows, `POST /operations/{name}/run` and `uici run` all call
`ExecutionGate.execute`; nothing else calls an executor's write method. For every operation:

  validate (registry) -> decide (the environment's policy: risk, scope, approval)
  reads:  -> execute -> record (events, audit)
  writes: -> resolve the targets (what the write really touches) -> observe earlier writes on
          them whose outcome is unknown -> record the intent, in one transaction with the
          write-history rules (blast radius, budget, cool-down, writes per target) and the
          per-target lock -> execute -> record the outcome (done, failed, unknown), events, audit

A write whose outcome is unknown (timed out, lost its connection) counts as sent, and nothing
more is sent to its targets until an observation or a person resolves it. The same intent met
again (a retried, resumed or re-run flow) is resolved by observing the target, never repeated
blindly.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.incidents.journal import Journal
from agent.incidents.models import (
    AlertInfo,
    IncidentContext,
    Observation,
    PlanStep,
    StepDecision,
)
from agent.incidents.storage import (
    DUPLICATE_KEY,
    IncidentStore,
    WriteFacts,
    WriteRecord,
    WriteState,
)
from agent.safety.policy import NEEDS_PERSON, UNKNOWN_OUTCOME, Approval, SafetyPolicy
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import RiskLevel, Runbook
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    ExecutorError,
    OperationError,
    OperationResult,
    ResolvedTarget,
    intent_value,
)
from infrastructure.executors.factory import create_executor
from infrastructure.translator import CommandSpec, CommandTranslator

Entry = Literal["flow", "run-operation", "api", "cli"]
BOUNDARIES = ("before_intent", "after_intent", "after_call", "after_outcome")
# Why a write was not sent: the API answers 403 for `policy`, 409 for `approval` and
# `history`, 422 for `target`.
RefusedBy = Literal["policy", "approval", "history", "target"]
Outcome = Literal[
    "executed", "failed", "unknown", "recovered", "already_done", "refused", "needs_approval"
]
# How often a write waiting for another write on the same target looks again.
_LOCK_POLL_SECONDS = 0.2
# An intent still pending this long after its operation's whole deadline belongs to a process
# that died: it is resolved by observation instead of being waited for.
_STALE_MARGIN_SECONDS = 5.0


def _process_start(pid: int) -> str | None:
    """The start time of a process on this host (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _host() -> str:
    """This host, and the pid namespace: a pid means something only within both."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}@{namespace}"


# This process: host and pid namespace, pid, and the process's start time (a reused pid does
# not look alive). Each write it sends gets a token of its own after it (`OWNER#token`).
OWNER = f"{_host()}:{os.getpid()}:{_process_start(os.getpid()) or '?'}"


def new_owner() -> str:
    return f"{OWNER}#{uuid.uuid4().hex[:12]}"


# The writes this process is sending right now: a pending write owned by this process that is
# not among them was left by a send that raised (or by a thread that died).
_SENDING: set[str] = set()
_SENDING_LOCK = threading.Lock()


def process_alive(owner: str) -> bool | None:
    """Whether the process that owns a write still runs; None when that cannot be seen
    from here (another host)."""
    host, _, rest = owner.partition("#")[0].partition(":")
    pid, _, started = rest.partition(":")
    if host != _host() or not pid.isdigit() or started == "?":
        return None
    return _process_start(int(pid)) == started


def _reserve(key: str) -> bool:
    """Mark a write as being sent by this process; False if a thread of it already is."""
    with _SENDING_LOCK:
        if key in _SENDING:
            return False
        _SENDING.add(key)
        return True


def _release(key: str) -> None:
    with _SENDING_LOCK:
        _SENDING.discard(key)


def intent_key(context: IncidentContext, step: PlanStep) -> str:
    """Alert fingerprint, startsAt, operation, target and parameters identify one remediation."""
    identity = [
        context.alert.fingerprint or context.incident_id,
        context.alert.starts_at,
        step.environment,
        step.operation,
        step.target,
        step.parameters,
    ]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


class GateRequest(BaseModel):
    step: PlanStep
    context: IncidentContext
    actor: str
    entry: Entry
    runbook: Runbook | None = None
    approval: Approval | None = None
    request_id: str | None = None
    # What the incident observed so far: a runbook step's `when` must hold on it for its write
    # to be auto-approved.
    observations: list[Observation] = Field(default_factory=list)
    # The write's identity; by default the alert and the step (see intent_key), so a re-run
    # for the same alert meets its own earlier intent.
    intent_key: str | None = None


def requested_operation(
    gate: ExecutionGate,
    spec: CommandSpec,
    parameters: dict[str, Any],
    actor: str,
    entry: Entry,
    approved: bool,
    incident: IncidentContext | None,
    intent_key: str,
    request_id: str | None = None,
) -> GateRequest:
    """One operation a person asks for (`uici run`, the API): their own incident scope unless
    they name an incident (its scope and budget then apply); with `approved`, they are the
    approver of the exact step."""
    context = incident or IncidentContext(
        incident_id=f"{entry}-{uuid.uuid4().hex[:10]}",
        alert=AlertInfo(labels={"alertname": "manual-operation"}),
        environment=spec.environment,
        service=spec.target or "-",
    )
    step = PlanStep(
        phase="triage" if spec.risk is RiskLevel.READ else "resolution",
        operation=spec.operation,
        environment=spec.environment,
        target=spec.target,
        parameters=parameters,
        rationale=f"requested by {actor}",
        proposed_by="runbook",
    )
    approval = None
    if approved:
        expires = gate.policy.approval_expiry(step)
        approval = Approval(step_key=step.key(), approved_by=actor, expires_at=expires)
    return GateRequest(
        step=step,
        context=context,
        actor=actor,
        entry=entry,
        approval=approval,
        request_id=request_id,
        intent_key=intent_key,
    )


class GateOutcome(BaseModel):
    decision: StepDecision
    outcome: Outcome
    result: OperationResult | None = None
    key: str | None = None
    note: str = ""
    refused_by: RefusedBy | None = None
    # A person must look before anything more happens: an unknown outcome, or the write
    # history says acting again would be a loop.
    needs_person: bool = False
    targets: list[ResolvedTarget] = Field(default_factory=list)

    @property
    def executed(self) -> bool:
        """This call sent the operation."""
        return self.outcome in ("executed", "failed", "unknown")

    @property
    def succeeded(self) -> bool:
        if self.result is not None:
            return self.result.success
        return self.outcome in ("recovered", "already_done")


class ExecutionGate:
    def __init__(
        self,
        config: UICIConfig,
        store: IncidentStore,
        policy: SafetyPolicy | None = None,
        clock: Callable[[], float] = time.time,
        checkpoint: Callable[[str], None] | None = None,
        executor_factory: Callable[[str, Any], EnvironmentExecutor] = create_executor,
    ) -> None:
        self.config = config
        # How an environment's executor is built: the factory by type; the evaluation's
        # replay and recording executors come in here.
        self.executor_factory = executor_factory
        self.store = store
        self.policy = policy or SafetyPolicy(config, store, clock)
        self.translator = CommandTranslator.from_config(config)
        self.journal = Journal(store.database)
        self.clock = clock
        # Called at each boundary (BOUNDARIES); crash tests use it to kill the process there.
        self.checkpoint = checkpoint or (lambda boundary: None)
        self._executors: dict[str, EnvironmentExecutor] = {}

    def executor(self, environment: str) -> EnvironmentExecutor:
        if environment not in self._executors:
            self._executors[environment] = self.executor_factory(
                environment, self.config.environments.environments[environment]
            )
        return self._executors[environment]

    def close(self) -> None:
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()

    # --- the one path ---------------------------------------------------------------------

    def execute(self, request: GateRequest) -> GateOutcome:
        step = request.step
        decision = self._decision(request)
        if decision.decision == "rejected":
            return self._refuse(request, decision, "policy", "; ".join(decision.reasons))
        if decision.decision == "needs_approval":
            who = f"environments.{step.environment}.policy.approval_required"
            return self._refuse(
                request, decision, "approval", f"{decision.policy}: approval needed ({who})"
            )
        if self._risk(step) is RiskLevel.READ:
            result = self._read(request)
            return GateOutcome(decision=decision, outcome=_sent(result), result=result)
        return self._write(request, decision)

    def check(self, request: GateRequest) -> GateOutcome | None:
        """Would this write be refused now, whatever a person answers? Asked before an approval
        is requested, so nobody approves what the write history will refuse. None: it may run
        once approved (execute checks everything again, atomically)."""
        step = request.step
        decision = self._decision(request)
        if decision.decision == "rejected":
            return self._refuse(request, decision, "policy", "; ".join(decision.reasons))
        if self._risk(step) is RiskLevel.READ:
            return None
        key = request.intent_key or intent_key(request.context, step)
        if self.store.write(key) is not None:
            return None  # the same intent again: execute resolves it by observation
        targets = self._targets(request, decision)
        if isinstance(targets, GateOutcome):
            return targets
        record = self._record(request, key, targets)
        facts = self.store.write_facts(record, self._window_start(step), self._history_start(step))
        refusal = self.policy.write_refusal(step, request.context, targets, facts)
        if refusal is None:
            return None
        return self._refuse(request, decision, "history", refusal, targets)

    # --- writes ---------------------------------------------------------------------------

    def _write(self, request: GateRequest, decision: StepDecision) -> GateOutcome:
        step = request.step
        key = request.intent_key or intent_key(request.context, step)
        self.checkpoint("before_intent")
        existing = self.store.write(key)
        if existing is not None:
            return self._again(request, decision, existing)
        targets = self._targets(request, decision)
        if isinstance(targets, GateOutcome):
            return targets
        if not _reserve(key):  # a thread of this process is sending this very write
            return self._refuse(
                request, decision, "history", f"this write ({key}) is being sent right now"
            )
        try:
            record = self._record(request, key, targets)
            refusal = self._begin(request, record)
            if refusal == DUPLICATE_KEY:  # another process recorded this very write first
                again = self.store.write(key)
                if again is not None:
                    return self._again(request, decision, again)
            if refusal is not None:
                return self._refuse(request, decision, "history", refusal, targets)
            return self._send_write(request, decision, record)
        finally:
            _release(key)

    def _begin(self, request: GateRequest, record: WriteRecord) -> str | None:
        """Record the intent if the policy allows it; wait (bounded) while another write holds
        one of the targets. Returns the refusal, if any."""
        step = request.step
        policy = self.config.environments.environments[step.environment].policy
        deadline = time.monotonic() + policy.target_lock_wait_seconds
        busy: list[WriteRecord] = []

        def check(facts: WriteFacts) -> str | None:
            radius = self.policy.blast_radius_refusal(step, record.targets)
            if radius is not None:
                return radius
            # A write in progress on a target holds its lock: wait for it, then the policy
            # decides on what it left (its cool-down, the budgets).
            if facts.in_progress:
                busy.extend(facts.in_progress)
                return "busy"
            return self.policy.write_refusal(step, request.context, record.targets, facts)

        while True:
            busy.clear()
            refusal = self.store.begin_write(
                record, self._window_start(step), check, self._history_start(step)
            )
            if not busy:
                return refusal
            if time.monotonic() >= deadline:
                other = busy[0]
                return (
                    f"another write holds the target: {other.step.describe()} (write {other.key},"
                    f" by {other.actor}) is still running after {policy.target_lock_wait_seconds:g}"
                    f" s (environments.{step.environment}.policy.target_lock_wait_seconds)"
                )
            time.sleep(_LOCK_POLL_SECONDS)
            self._observe_unresolved(step, record.targets)
            record.recorded_at = self.clock()

    def _send_write(
        self, request: GateRequest, decision: StepDecision, record: WriteRecord
    ) -> GateOutcome:
        """Send a recorded write; the caller holds it (_reserve) and it is its owner."""
        self.checkpoint("after_intent")
        if not self.store.still_owner(record.key, record.owner):
            note = f"another process took over this write ({record.key}); it is not sent twice"
            return self._refuse(request, decision, "history", note, record.targets, record.key)
        called: list[bool] = []
        try:
            result, sent = self._send(request, intent_value(record.key, record.recorded_at), called)
        except BaseException as exc:
            # Interrupted: once the executor was called it may have reached the target.
            state: WriteState = "unknown" if called else "failed"
            self.store.finish_write(record.key, state, {"interrupted": repr(exc)})
            raise
        return self._sent_write(request, decision, record, result, sent)

    def _sent_write(
        self,
        request: GateRequest,
        decision: StepDecision,
        record: WriteRecord,
        result: OperationResult,
        sent: bool,
    ) -> GateOutcome:
        self.checkpoint("after_call")
        state: WriteState = "done" if result.success else "failed"
        if not result.success and result.retryable and sent:
            state = "unknown"
        # The outcome first: if recording the audit fails, the write is still not pending.
        self.store.finish_write(record.key, state, result.model_dump(mode="json"))
        self._journal(request, result)
        self.policy.settle(request.context, request.step)
        self.checkpoint("after_outcome")
        note = ""
        if state == "unknown":
            note = (
                "the outcome is unknown (the call timed out or lost its connection): it counts "
                "as sent, and nothing more is sent to the target until it is observed"
            )
        return GateOutcome(
            decision=decision,
            outcome="unknown" if state == "unknown" else _sent(result),
            result=result,
            key=record.key,
            note=note,
            needs_person=state == "unknown",
            targets=record.targets,
        )

    def _again(
        self, request: GateRequest, decision: StepDecision, existing: WriteRecord
    ) -> GateOutcome:
        """The same intent met again (retry, resume, re-run): observe, never repeat blindly."""
        # A pending intent of this very key is one its process did not finish: the same alert's
        # run retried, resumed or re-run after a crash. It is resolved by observation.
        if existing.state == "done":
            return self._finished(request, decision, existing, "already_done", "already done")
        if existing.state == "failed":
            note = f"this write failed before ({_error(existing)}); it is not sent again"
            return self._refuse(request, decision, "history", note, existing.targets, existing.key)
        if existing.state == "pending":
            if not self._abandoned(existing):
                note = (
                    f"this write ({existing.key}) is being sent right now by {existing.actor} "
                    f"({existing.owner}); it is not sent twice"
                )
                return self._refuse(
                    request, decision, "history", note, existing.targets, existing.key
                )
            taken = f"another caller took over this write ({existing.key}) first"
            if not _reserve(existing.key):
                return self._refuse(
                    request, decision, "history", taken, existing.targets, existing.key
                )
            try:
                owner = new_owner()
                if not self.store.claim_write(existing.key, existing.owner, owner):
                    return self._refuse(
                        request, decision, "history", taken, existing.targets, existing.key
                    )
                existing.owner = owner
                return self._recover(request, decision, existing)
            finally:
                _release(existing.key)
        return self._recover(request, decision, existing)

    def _recover(
        self, request: GateRequest, decision: StepDecision, existing: WriteRecord
    ) -> GateOutcome:
        """A write of unknown outcome, or a pending one this caller now owns: observe."""
        step = request.step
        observed = self._observe(existing)
        if observed:
            self.store.finish_write(
                existing.key, "done", {"observed": True, **(existing.outcome or {})}
            )
            return self._finished(
                request, decision, existing, "recovered", "took effect earlier; not repeated"
            )
        if existing.state == "pending" and observed is False:
            # Its process is gone and the target shows no sign of the call: it died before
            # sending. Send it now, once (this process holds the claim).
            return self._send_write(request, decision, existing)
        if existing.state == "pending":
            self.store.finish_write(existing.key, "unknown", {"observed": None})
        note = (
            f"{UNKNOWN_OUTCOME}: {step.describe()} (write {existing.key}) cannot be "
            "observed as done; it is not repeated blindly: a person must check the target, "
            f"then `uici writes resolve {existing.key} done|failed`"
        )
        return self._refuse(request, decision, "history", note, existing.targets, existing.key)

    def _finished(
        self,
        request: GateRequest,
        decision: StepDecision,
        existing: WriteRecord,
        outcome: Outcome,
        note: str,
    ) -> GateOutcome:
        self.policy.settle(request.context, request.step)
        self.journal.audit.record(
            request.actor,
            f"operation.{request.step.operation}",
            f"not sent again: {note} (write {existing.key})",
            target=f"{request.step.environment}/{request.step.target or '-'}",
            parameters={"parameters": request.step.parameters, "entry": request.entry},
            incident_id=request.context.incident_id,
            request_id=request.request_id,
        )
        result = None
        if existing.outcome and "operation" in existing.outcome:
            result = OperationResult.model_validate(existing.outcome)
        return GateOutcome(
            decision=decision.model_copy(update={"policy": note}),
            outcome=outcome,
            result=result,
            key=existing.key,
            note=note,
            targets=existing.targets,
        )

    def resolve(self, write: WriteRecord) -> WriteRecord:
        """Observe whether an unfinished write (pending from a dead process, or unknown) took
        effect and record what is seen: done when it did; a pending one that did not was never
        sent (failed); what cannot be told stays or becomes unknown."""
        observed = self._observe(write)
        if observed:
            self.store.finish_write(write.key, "done", {"observed": True, **(write.outcome or {})})
        elif write.state == "pending":
            state: WriteState = "failed" if observed is False else "unknown"
            self.store.finish_write(write.key, state, {"observed": observed})
        found = self.store.write(write.key)
        return found if found is not None else write

    def _observe_unresolved(self, step: PlanStep, targets: list[ResolvedTarget]) -> None:
        """Before anything is sent to these targets, look at earlier writes there whose outcome
        is unknown, or that a dead process left pending."""
        probe = WriteRecord(
            key="",
            incident_id=None,
            step=step,
            state="pending",
            actor="",
            entry="flow",
            recorded_at=self.clock(),
            targets=targets,
        )
        facts = self.store.write_facts(probe, self._window_start(step), self._history_start(step))
        for write in [*facts.unresolved, *(w for w in facts.in_progress if self._abandoned(w))]:
            self.resolve(write)

    def _observe(self, write: WriteRecord) -> bool | None:
        step = write.step
        try:
            return self.executor(step.environment).effect_observed(
                step.operation,
                step.target or "",
                write.recorded_at,
                intent_value(write.key, write.recorded_at),
            )
        except Exception:  # cannot tell: never a reason to send again
            return None

    def _abandoned(self, write: WriteRecord) -> bool:
        """A pending write whose process is gone: on this host, its process no longer runs;
        elsewhere, it has been pending longer than its operation's whole deadline."""
        if write.owner.partition("#")[0] == OWNER:
            with _SENDING_LOCK:
                return write.key not in _SENDING
        alive = process_alive(write.owner)
        if alive is not None:
            return not alive
        spec = self.policy.registry.describe(write.step.operation)
        deadline = spec.timeout_seconds * spec.retry.attempts + _STALE_MARGIN_SECONDS
        return self.clock() - write.recorded_at > deadline

    def _targets(
        self, request: GateRequest, decision: StepDecision
    ) -> list[ResolvedTarget] | GateOutcome:
        """What the write touches, once earlier writes there of unknown outcome (or left
        pending by a dead process) were observed; or the refusal when it cannot be resolved."""
        step = request.step
        if step.target is None:
            return []
        try:
            targets = self.executor(step.environment).write_targets(step.target)
        except ExecutorError as exc:
            message = f"cannot resolve {step.target!r} on {step.environment}: {exc.message}"
            return self._refuse(
                request, decision, "target", message + (f" ({exc.hint})" if exc.hint else "")
            )
        except Exception as exc:  # an executor that cannot be built or reached
            message = f"cannot resolve {step.target!r} on {step.environment}: {exc}"
            return self._refuse(request, decision, "target", message)
        self._observe_unresolved(step, targets)
        return targets

    def _record(self, request: GateRequest, key: str, targets: list[ResolvedTarget]) -> WriteRecord:
        return WriteRecord(
            key=key,
            incident_id=request.context.incident_id,
            step=request.step,
            state="pending",
            actor=request.actor,
            entry=request.entry,
            recorded_at=self.clock(),
            targets=targets,
            owner=new_owner(),
        )

    def _window_start(self, step: PlanStep) -> float:
        policy = self.config.environments.environments[step.environment].policy
        return self.clock() - policy.write_window_seconds

    def _history_start(self, step: PlanStep) -> float:
        """Finished writes older than the window and the cool-down no longer matter."""
        policy = self.config.environments.environments[step.environment].policy
        return self.clock() - max(policy.write_window_seconds, policy.cooldown_seconds)

    # --- sending and recording --------------------------------------------------------------

    def _send(
        self, request: GateRequest, intent: str | None, called: list[bool] | None = None
    ) -> tuple[OperationResult, bool]:
        """Execute; also whether the call was sent at all (no executor: nothing was).
        `called` gets an entry the moment the executor is called."""
        step = request.step
        call = self.policy.registry.validate(
            step.operation, step.environment, step.parameters, step.target
        )
        spec = self.translator.translate(call, {"intent": intent} if intent else None)
        self.journal.started(
            step.operation, step.environment, step.target, request.context.incident_id, step.phase
        )
        try:
            executor = self.executor(step.environment)
        except Exception as exc:  # e.g. ExecutorUnavailable: reported as the operation's result
            return _unavailable(spec, exc), False
        if called is not None:
            called.append(True)
        return executor.execute(spec), True

    def _read(self, request: GateRequest) -> OperationResult:
        result, _ = self._send(request, None)
        self._journal(request, result)
        return result

    def _journal(self, request: GateRequest, result: OperationResult) -> None:
        step = request.step
        self.journal.finished(
            result,
            request.actor,
            {
                "parameters": step.parameters,
                "proposed_by": step.proposed_by,
                "entry": request.entry,
                "approved_by": request.approval.approved_by if request.approval else None,
            },
            request.context.incident_id,
            request.request_id,
            step.phase,
            self._risk(step).value,
        )

    def _refuse(
        self,
        request: GateRequest,
        decision: StepDecision,
        by: RefusedBy,
        reason: str,
        targets: list[ResolvedTarget] | None = None,
        key: str | None = None,
    ) -> GateOutcome:
        step = request.step
        self.policy.settle(request.context, step)
        self.journal.audit.record(
            request.actor,
            f"operation.{step.operation}",
            f"refused: {reason}",
            target=f"{step.environment}/{step.target or '-'}",
            # `refused_by` and `risk` let the metrics count refusals by why and what.
            parameters={
                "parameters": step.parameters,
                "entry": request.entry,
                "refused_by": by,
                "risk": decision.risk,
            },
            incident_id=request.context.incident_id,
            request_id=request.request_id,
        )
        refused = decision.model_copy(
            update={
                "decision": "needs_approval" if by == "approval" else "rejected",
                "reasons": [reason],
                "policy": reason,
            }
        )
        return GateOutcome(
            decision=refused,
            outcome="needs_approval" if by == "approval" else "refused",
            key=key,
            note=reason,
            refused_by=by,
            needs_person=by == "history" and reason.startswith(NEEDS_PERSON),
            targets=targets or [],
        )

    def _decision(self, request: GateRequest) -> StepDecision:
        return self.policy.decide(
            request.step, request.context, request.runbook, request.approval, request.observations
        )

    def _risk(self, step: PlanStep) -> RiskLevel:
        return self.policy.registry.describe(step.operation).risk


def _sent(result: OperationResult) -> Outcome:
    if result.success:
        return "executed"
    return "unknown" if result.retryable else "failed"


def _error(write: WriteRecord) -> str:
    error = (write.outcome or {}).get("error") or {}
    return str(error.get("message") or "no detail")


def _unavailable(spec: CommandSpec, exc: Exception) -> OperationResult:
    return OperationResult(
        operation=spec.operation,
        environment=spec.environment,
        environment_type=spec.environment_type,
        target=spec.target,
        success=False,
        error=OperationError(kind=ErrorKind.RETRYABLE, message=f"{spec.environment}: {exc}"),
        duration_seconds=0.0,
        started_at=datetime.now(UTC),
        command=spec.command,
    )
