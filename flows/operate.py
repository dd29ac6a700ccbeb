"""run_operation: one universal operation through the execution gate, like every other entry
point (for `prefect deployment run` and the UI); a write that needs approval pauses for it."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from agent.incidents.investigation import Investigation
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from flows.diagnose import Services
from flows.steps import remediate, run_environment_steps
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
    config = load_config()
    services = Services(config)
    environment = environment or config.platform.platform.default_environment
    context = IncidentContext(
        incident_id=f"op-{uuid.uuid4().hex[:10]}",
        alert=AlertInfo(labels={"alertname": "manual-operation", "service": target or "-"}),
        environment=environment,
        service=target or "-",
    )
    risk = services.planner.policy.registry.describe(operation).risk
    step = PlanStep(
        phase="triage" if risk is RiskLevel.READ else "resolution",
        operation=operation,
        environment=environment,
        target=target,
        parameters=parameters or {},
        rationale="requested by a person",
        proposed_by="runbook",
    )
    run = Investigation(
        config, services.store, services.planner, services.gate, context, services.actor,
        entry="run-operation",
    )  # fmt: skip
    try:
        [decision] = services.planner.policy.review([step], context, None)
        if decision.decision == "rejected":
            get_run_logger().error("rejected: %s", "; ".join(decision.reasons))
            return {"decision": decision.model_dump(mode="json"), "result": None}
        if risk is RiskLevel.READ:
            [(_, result)] = await run_environment_steps("triage", environment, [step], run)
            return {
                "decision": decision.model_dump(mode="json"),
                "result": result.model_dump(mode="json"),
            }
        run.open(str(flow_run.id) if flow_run.id else None)
        try:
            await remediate(decision, run)
            run.finish()
        except BaseException as exc:
            run.fail(exc)
            raise
        observations = run.report.observations
        return {
            "decision": decision.model_dump(mode="json"),
            "actions": [a.model_dump(mode="json") for a in run.report.actions],
            "result": observations[-1].model_dump(mode="json") if observations else None,
        }
    finally:
        services.gate.close()
