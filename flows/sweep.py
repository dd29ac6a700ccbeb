"""health_sweep: check every service of every enabled environment, and open an incident (with a
diagnosis) for each unhealthy one that no open incident already covers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from agent.incidents.models import PlanStep
from agent.incidents.sweep import UnhealthyService, unhealthy_services
from flows.diagnose import Services, diagnose_incident, run_environment_steps
from flows.reconcile import reconcile_incidents
from infrastructure.configuration.loader import load_config


@flow(name="health-sweep", flow_run_name="health-sweep")
async def health_sweep(
    environments: list[str] | None = None,
    selector: str | None = None,
    start_diagnoses: bool = True,
) -> dict[str, Any]:
    """`selector` (key=value) limits the sweep to services carrying that label."""
    logger = get_run_logger()
    config = load_config()
    services = Services(config)
    names = environments or [n for n, e in config.environments.environments.items() if e.enabled]
    settings = config.agents.health_sweep
    limit = asyncio.Semaphore(settings.max_parallel)

    async def list_one(environment: str) -> list[UnhealthyService]:
        async with limit:
            step = PlanStep(
                phase="triage",
                operation="list_services",
                environment=environment,
                target=None,
                parameters={"selector": selector} if selector else {},
                rationale="health sweep",
                proposed_by="runbook",
            )
            context = _sweep_context(environment)
            [(_, result)] = await run_environment_steps(
                "triage", environment, [step], context, services
            )
            if not result.success:
                logger.error(
                    "%s: %s", environment, result.error.message if result.error else "failed"
                )
                return []
            return unhealthy_services(environment, result.data or [], settings)

    found = [u for batch in await asyncio.gather(*(list_one(n) for n in names)) for u in batch]
    started, skipped = [], []
    to_diagnose = []
    for unhealthy in found:
        if services.store.open_for(unhealthy.environment, unhealthy.service):
            skipped.append(unhealthy.service)
            continue
        to_diagnose.append(unhealthy)

    async def diagnose_one(unhealthy: UnhealthyService) -> str:
        incident_id = f"sweep-{uuid.uuid4().hex[:10]}"
        alert = {
            "labels": {
                "alertname": f"HealthSweep {unhealthy.reason}",
                "service": unhealthy.service,
                "uici_env": unhealthy.environment,
            },
            "annotations": {"summary": f"{unhealthy.service}: {unhealthy.reason}"},
        }
        async with limit:
            if deployment.id:
                # Deployed: hand each diagnosis to the work pool instead of blocking the sweep.
                name = f"diagnose-incident/{config.platform.prefect.deployments.diagnose_incident}"
                await run_deployment(  # type: ignore[misc]
                    name, parameters={"alert": alert, "incident_id": incident_id}, timeout=0
                )
            else:
                await diagnose_incident(alert=alert, incident_id=incident_id)
        return incident_id

    if start_diagnoses:
        started = list(await asyncio.gather(*(diagnose_one(u) for u in to_diagnose)))
    services.runner.close()
    escalated = await reconcile_incidents(config)
    for finding in escalated:
        logger.warning("escalated incident %s: %s", finding["incident"], finding["reason"])
    return {
        "unhealthy": [u.model_dump() for u in found],
        "incidents_started": started,
        "already_covered": skipped,
        "escalated": escalated,
    }


def _sweep_context(environment: str) -> Any:
    from agent.incidents.models import AlertInfo, IncidentContext

    return IncidentContext(
        incident_id=f"sweep-{environment}",
        alert=AlertInfo(labels={"alertname": "HealthSweep"}),
        environment=environment,
        service="-",
    )
