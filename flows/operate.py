"""run_operation: one universal operation through the same validation, policy and audit path as
an incident's steps (for the CLI, the API and `prefect deployment run`)."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger

from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from agent.incidents.report import IncidentReport
from flows.diagnose import Services, _remediate, run_environment_steps
from infrastructure.configuration.loader import load_config
from infrastructure.configuration.models import RiskLevel


@flow(name="run-operation", flow_run_name="operate-{operation}-{target}")
async def run_operation(
    operation: str,
    target: str | None = None,
    environment: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate, authorize and run one operation; a write that needs approval pauses for it."""
    logger = get_run_logger()
    config = load_config()
    services = Services(config)
    environment = environment or config.platform.platform.default_environment
    context = IncidentContext(
        incident_id=f"op-{uuid.uuid4().hex[:10]}",
        alert=AlertInfo(labels={"alertname": "manual-operation", "service": target or "-"}),
        environment=environment,
        service=target or "-",
    )
    registry = services.planner.policy.registry
    spec = registry.describe(operation)
    step = PlanStep(
        phase="triage" if spec.risk is RiskLevel.READ else "resolution",
        operation=operation,
        environment=environment,
        target=target,
        parameters=parameters or {},
        rationale="requested by a person",
        proposed_by="runbook",
    )
    [decision] = services.planner.policy.review([step], context, None)
    report = IncidentReport(
        incident_id=context.incident_id,
        alert=context.alert.model_dump(mode="json"),
        environment=environment,
        service=context.service,
        dependencies=[],
        diagnosis=None,
        observations=[],
        plans=[],
    )
    if decision.decision == "rejected":
        logger.error("rejected: %s", "; ".join(decision.reasons))
        services.runner.close()
        return {"decision": decision.model_dump(mode="json"), "result": None}
    if spec.risk is RiskLevel.READ:
        [(_, result)] = await run_environment_steps(
            "triage", environment, [step], context, services
        )
        services.runner.close()
        return {
            "decision": decision.model_dump(mode="json"),
            "result": result.model_dump(mode="json"),
        }
    services.store.open_incident(context)
    await _remediate(decision, context, None, services, report, logger)
    services.runner.close()
    return {
        "decision": decision.model_dump(mode="json"),
        "actions": [a.model_dump(mode="json") for a in report.actions],
        "result": report.observations[-1].model_dump(mode="json") if report.observations else None,
    }
