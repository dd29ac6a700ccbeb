"""The incident flow: four phases, each planned, executed and recorded, ending in a report.

Phases run in order (triage, isolation, root cause, resolution); each phase's accepted steps run
as a subflow per environment whose operations are one task run each. Later phases see earlier
observations. Writes that need approval pause the flow with a typed input; no answer within the
environment's approval timeout means not executed. The logic lives in agent/; this module wires
it into Prefect.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from agent.incidents.context import StepRunner, context_from_alert, observation_from_result
from agent.incidents.journal import Journal
from agent.incidents.models import (
    PHASES,
    Diagnosis,
    IncidentContext,
    Observation,
    Phase,
    PhasePlan,
    PlanStep,
    StepDecision,
)
from agent.incidents.report import (
    ActionRecord,
    IncidentReport,
    TimelineEntry,
    escape_markdown,
    now,
    operations_table,
    render_markdown,
    service_health,
)
from agent.incidents.storage import IncidentStatus, IncidentStore
from agent.logs import configure_logging, incident_id_var, log_context, request_id_var
from agent.planning.planner import DiagnosticPlanner
from agent.safety.policy import Approval, WriteHistory
from agent.safety.remediation import Remediator
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.configuration.models import RiskLevel, Runbook
from infrastructure.executors.base import OperationResult
from tasks.operations import (
    RetryableOperationError,
    StepNotAuthorized,
    read_step_options,
    run_read_step,
    run_write_step,
)

log = logging.getLogger("uici.flow")


class ApprovalInput(RunInput):
    """The form shown in the Prefect UI (flow run page, Resume) for a write that needs a person."""

    approve: bool
    approver: str = "prefect-ui"
    reason: str = ""


class Services:
    """What one incident run uses: built once per flow run from the configuration."""

    def __init__(self, config: UICIConfig) -> None:
        self.config = config
        self.store = IncidentStore.from_config(config)
        self.planner = DiagnosticPlanner(config, WriteHistory.from_config(config))
        self.runner = StepRunner(config, self.planner.policy)
        self.remediator = Remediator(self.store, self.runner)
        self.journal = Journal(self.store.path)
        self.actor = f"flow-run:{flow_run.id}" if flow_run.id else "flow"


def artifact_key(incident_id: str, suffix: str = "") -> str:
    key = re.sub(r"[^a-z0-9-]+", "-", f"incident-{incident_id}{suffix}".lower()).strip("-")
    return key[:100]


def flow_run_url(flow_run_id: str | None) -> str | None:
    if not flow_run_id:
        return None
    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else None


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    alert = parameters.get("alert") or {}
    labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
    service = (
        parameters.get("service") or labels.get("service") or labels.get("container") or "service"
    )
    alertname = labels.get("alertname") or "manual"
    return f"incident-{service}-{alertname}"


@task(cache_policy=NO_CACHE, task_run_name="plan · {phase} · round {iteration}")
def plan_phase(
    phase: Phase,
    iteration: int,
    context: IncidentContext,
    observations: list[Observation],
    planned: int,
    planner: DiagnosticPlanner,
) -> PhasePlan:
    return planner.plan_phase(context, phase, observations, iteration, planned)


@task(cache_policy=NO_CACHE, task_run_name="diagnose")
def diagnose(
    context: IncidentContext, observations: list[Observation], planner: DiagnosticPlanner
) -> Diagnosis:
    return planner.diagnose(context, observations)


@flow(name="environment-steps", flow_run_name="{phase} · {environment}")
async def run_environment_steps(
    phase: Phase,
    environment: str,
    steps: list[PlanStep],
    context: IncidentContext,
    services: Services,
) -> list[tuple[PlanStep, OperationResult]]:
    """The accepted read steps of one phase in one environment, concurrently, one task each."""
    registry = services.planner.policy.registry

    async def one(step: PlanStep) -> tuple[PlanStep, OperationResult]:
        spec = registry.describe(step.operation)
        services.journal.started(
            step.operation, environment, step.target, context.incident_id, phase
        )
        result = await _read(step, spec)
        services.journal.finished(
            result,
            services.actor,
            {"parameters": step.parameters, "proposed_by": step.proposed_by},
            context.incident_id,
            request_id_var.get(),
            phase,
        )
        return step, result

    async def _read(step: PlanStep, spec: Any) -> OperationResult:
        state = await run_read_step.with_options(**read_step_options(spec))(  # type: ignore[misc]
            phase,
            environment,
            step.operation,
            step.target or "-",
            step,
            context,
            services.runner,
            return_state=True,
        )
        outcome = await state.aresult(raise_on_failure=False)
        if isinstance(outcome, OperationResult):
            return outcome
        if isinstance(outcome, RetryableOperationError):
            return outcome.result  # retried as configured, still failing: reported
        if isinstance(outcome, StepNotAuthorized):
            raise outcome
        raise RuntimeError(f"{step.describe()} ended in state {state.type}: {outcome}")

    return list(await asyncio.gather(*(one(step) for step in steps)))


@flow(name="diagnose-incident", flow_run_name=_run_name, log_prints=False)
async def diagnose_incident(
    alert: dict[str, Any] | None = None,
    service: str | None = None,
    environment: str | None = None,
    dependencies: list[str] | None = None,
    incident_id: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Diagnose one incident: an Alertmanager alert (or webhook body), or a service by name.

    The service passes the alert with the `service` and `environment` it mapped it to, and
    the request id of the webhook call, which this run's `uici` logs carry."""
    with log_context(request_id=request_id, incident_id=incident_id):
        return await _diagnose(alert, service, environment, dependencies, incident_id)


async def _diagnose(
    alert: dict[str, Any] | None,
    service: str | None,
    environment: str | None,
    dependencies: list[str] | None,
    incident_id: str | None,
) -> dict[str, Any]:
    logger = get_run_logger()
    config = load_config()
    configure_logging(config.platform.logging.level, config.platform.logging.format)
    services = Services(config)
    default_environment = environment or config.platform.platform.default_environment
    if alert:
        context = context_from_alert(alert, default_environment, incident_id, dependencies or [])
        if service:  # the target the service mapped the alert to
            context = context.model_copy(update={"service": service})
    elif service:
        context = context_from_alert(
            {"labels": {"alertname": "manual", "service": service}},
            default_environment,
            incident_id,
            dependencies or [],
        )
    else:
        raise ValueError("diagnose_incident needs an alert or a service")
    if environment:
        context = context.model_copy(update={"environment": environment})
    run_id = str(flow_run.id) if flow_run.id else None
    incident_id_var.set(context.incident_id)
    log.info("diagnosis of %s on %s started", context.service, context.environment)
    services.store.open_incident(context, run_id)
    services.store.set_status(context.incident_id, "diagnosing", run_id)
    runbook = services.planner.runbooks.match(context)
    report = IncidentReport(
        incident_id=context.incident_id,
        alert=context.alert.model_dump(mode="json"),
        environment=context.environment,
        service=context.service,
        dependencies=context.dependencies,
        diagnosis=None,
        observations=[],
        plans=[],
        flow_run_url=flow_run_url(run_id),
    )
    report.timeline.append(
        TimelineEntry(at=now(), event=f"incident opened (runbook {runbook.name})")
    )
    progress = await acreate_progress_artifact(
        progress=0.0, description=f"incident {context.incident_id}"
    )
    rounds = config.agents.diagnostic_agent.max_llm_iterations_per_phase

    for index, phase in enumerate(PHASES):
        planned = 0
        services.journal.events.emit("phase.started", context.incident_id, phase=phase)
        for iteration in range(rounds):
            calls_before = services.planner.incident_usage(context.incident_id).model_copy()
            plan = plan_phase(
                phase, iteration, context, report.observations, planned, services.planner
            )
            _llm_event(services, context.incident_id, phase, calls_before)
            report.plans.append(plan)
            planned += len(plan.decisions)
            report.rejected.extend(d for d in plan.decisions if d.decision == "rejected")
            report.timeline.append(
                TimelineEntry(
                    at=now(),
                    event=f"{phase}: {plan.planner} planned "
                    f"{len(plan.accepted)} steps, {len(plan.needs_approval)} need approval",
                )
            )
            reads = [s for s in plan.accepted if _risk(services, s) is RiskLevel.READ]
            writes = [d for d in plan.decisions if d.decision != "rejected" and d.risk != "read"]
            for environment_name in sorted({s.environment for s in reads}):
                results = await run_environment_steps(
                    phase,
                    environment_name,
                    [s for s in reads if s.environment == environment_name],
                    context,
                    services,
                )
                for step, result in results:
                    _observe(report, step, result)
            for decision in writes:
                await _remediate(decision, context, runbook, services, report, logger)
            if plan.done or plan.planner == "runbook":
                break
        await aupdate_progress_artifact(progress, progress=100.0 * (index + 1) / len(PHASES))

    if report.actions and any(a.outcome in ("executed", "recovered") for a in report.actions):
        validation = PlanStep(
            phase="resolution",
            operation="get_status",
            environment=context.environment,
            target=context.service,
            rationale="validate after remediation",
            proposed_by="runbook",
        )
        for step, result in await run_environment_steps(
            "resolution", context.environment, [validation], context, services
        ):
            _observe(report, step, result)

    # A sync task called from this async flow runs inline and returns its value.
    report.diagnosis = diagnose(context, report.observations, services.planner)
    report.usage = services.planner.incident_usage(context.incident_id)
    report.healthy, report.health_detail = service_health(report.observations, context.service)
    report.timeline.append(TimelineEntry(at=now(), event="diagnosis complete"))
    status: IncidentStatus = "resolved" if report.healthy else "diagnosed"
    data = report.model_dump(mode="json")
    services.store.save_report(context.incident_id, data, status)
    services.journal.events.emit(
        "incident.diagnosed",
        context.incident_id,
        root_cause=report.diagnosis.root_cause if report.diagnosis else None,
        healthy=report.healthy,
    )
    await acreate_markdown_artifact(
        markdown=render_markdown(report),
        key=artifact_key(context.incident_id),
        description=f"incident report {context.incident_id}",
    )
    await acreate_table_artifact(
        table=operations_table(report),
        key=artifact_key(context.incident_id, "-ops"),
        description="operations of the incident",
    )
    services.runner.close()
    logger.info(
        "incident %s: %s",
        context.incident_id,
        report.diagnosis.root_cause if report.diagnosis else "no diagnosis",
    )
    return data


def _risk(services: Services, step: PlanStep) -> RiskLevel:
    return services.planner.policy.registry.describe(step.operation).risk


def _observe(report: IncidentReport, step: PlanStep, result: OperationResult) -> None:
    observation = observation_from_result(f"obs-{len(report.observations) + 1}", step, result)
    report.observations.append(observation)


def _not_executed(
    decision: StepDecision,
    context: IncidentContext,
    services: Services,
    report: IncidentReport,
    label: str,
    detail: str,
) -> None:
    """A remediation that will not run: give back its reservation and say why in the report."""
    services.planner.policy.release(context, decision.step)
    report.actions.append(
        ActionRecord(
            step=decision.step.describe(),
            decision=label,
            policy=decision.policy,
            outcome="not executed",
            detail=detail,
        )
    )


async def _remediate(
    decision: StepDecision,
    context: IncidentContext,
    runbook: Runbook | None,
    services: Services,
    report: IncidentReport,
    logger: Any,
) -> None:
    step = decision.step
    approval: Approval | None = None
    policy = services.planner.policy
    if services.store.alert_resolved(context.incident_id):
        # The alert resolved while we diagnosed: never start a remediation for it.
        _not_executed(
            decision, context, services, report, decision.decision,
            "the alert resolved before the remediation started",
        )  # fmt: skip
        return
    if decision.decision == "needs_approval":
        command = " ".join(decision.command)
        services.store.request_approval(context.incident_id, step, command)
        services.store.set_status(context.incident_id, "awaiting_approval")
        timeout = config_timeout(services, step)
        logger.warning("approval needed for %s: %s", step.describe(), command)
        services.journal.events.emit(
            "approval.needed", context.incident_id, step=step.describe(), command=command
        )
        report.timeline.append(
            TimelineEntry(at=now(), event=f"approval requested: {step.describe()}")
        )
        # The rationale may come from an LLM: shown as text, never as links, images or HTML.
        description = (
            f"## Approve `{step.operation}` on `{step.target}`?\n\n"
            f"- environment: {step.environment}\n- command: `{command}`\n"
            f"- rationale: {escape_markdown(step.rationale)}\n- proposed by: {step.proposed_by}\n"
            f"- step key: {step.key()}\n\nNo answer within {timeout} s means it is not executed."
        )
        try:
            answer = await apause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(
                    description=description, approve=False
                ),
                timeout=timeout,
                poll_interval=services.config.platform.prefect.approval_poll_seconds,
                key=f"approval-{step.key()}",
            )
        except FlowPauseTimeout:
            services.store.decide_approval(
                context.incident_id, step.key(), "expired", "uici", "no answer"
            )
            _not_executed(
                decision, context, services, report, "needs_approval",
                f"no approval within {timeout} s",
            )  # fmt: skip
            services.store.set_status(context.incident_id, "diagnosing")
            return
        services.store.set_status(context.incident_id, "diagnosing")
        services.journal.events.emit(
            "approval.decided",
            context.incident_id,
            step=step.describe(),
            decision="approved" if answer is not None and answer.approve else "rejected",
            by=answer.approver if answer else "unknown",
        )
        if answer is None or not answer.approve:
            who = answer.approver if answer else "unknown"
            services.store.decide_approval(
                context.incident_id, step.key(), "rejected", who, answer.reason if answer else ""
            )
            _not_executed(decision, context, services, report, "rejected", f"rejected by {who}")
            report.timeline.append(
                TimelineEntry(at=now(), event=f"rejected by {who}: {step.describe()}")
            )
            return
        services.store.decide_approval(
            context.incident_id, step.key(), "approved", answer.approver, answer.reason
        )
        approval = Approval(
            step_key=step.key(),
            approved_by=answer.approver,
            expires_at=policy.approval_expiry(step),
        )
        report.timeline.append(
            TimelineEntry(at=now(), event=f"approved by {answer.approver}: {step.describe()}")
        )

    services.journal.started(
        step.operation, step.environment, step.target, context.incident_id, step.phase
    )
    outcome = await run_write_step(
        step.phase,
        step.environment,
        step.operation,
        step.target or "-",
        step,
        context,
        runbook,
        approval,
        services.remediator,
        float(config_timeout(services, step)),
    )
    if outcome.result is not None:
        _observe(report, step, outcome.result)
        services.journal.finished(
            outcome.result,
            approval.approved_by if approval else services.actor,
            {"parameters": step.parameters, "policy": outcome.decision.policy},
            context.incident_id,
            request_id_var.get(),
            step.phase,
            _risk(services, step).value,
        )
    result_text = (
        "executed" if outcome.executed else "recovered" if outcome.recovered else "not executed"
    )
    if outcome.result is not None and not outcome.result.success:
        result_text = "failed"
    report.actions.append(
        ActionRecord(
            step=step.describe(),
            decision=outcome.decision.decision,
            policy=outcome.decision.policy,
            outcome=result_text,
            detail=outcome.note,
        )
    )
    report.timeline.append(TimelineEntry(at=now(), event=f"{result_text}: {step.describe()}"))


def _llm_event(services: Services, incident_id: str, phase: str, before: Any) -> None:
    after = services.planner.incident_usage(incident_id)
    if after.calls == before.calls:
        return
    services.journal.events.emit(
        "llm.call",
        incident_id,
        phase=phase,
        calls=after.calls - before.calls,
        prompt_tokens=after.prompt_tokens - before.prompt_tokens,
        completion_tokens=after.completion_tokens - before.completion_tokens,
        cost=round(after.cost - before.cost, 8),
    )


def config_timeout(services: Services, step: PlanStep) -> int:
    return int(
        services.config.environments.environments[step.environment].policy.approval_timeout_seconds
    )


if __name__ == "__main__":
    import sys

    started = time.monotonic()
    asyncio.run(diagnose_incident(service=sys.argv[1] if len(sys.argv) > 1 else "web"))
    print(f"done in {time.monotonic() - started:.1f} s")
