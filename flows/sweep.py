"""health_sweep: check every service of every enabled environment, and open an incident (with a
diagnosis) for each unhealthy one that no incident already covers. What is unhealthy, what
covers a service and the alert a sweep incident carries are decided in agent/incidents/sweep.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from agent.incidents.context import LabelConventions
from agent.incidents.investigation import Investigation
from agent.incidents.models import PlanStep
from agent.incidents.sweep import (
    UnhealthyService,
    forecast_finding,
    forecast_steps,
    open_sweep_incident,
    running_services,
    select_for_diagnosis,
    unhealthy_services,
)
from flows.diagnose import Services, diagnose_incident
from flows.reconcile import reconcile_incidents
from flows.steps import run_environment_steps
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
            run = Investigation(
                config, services.store, services.planner, services.gate,
                _sweep_context(environment), services.actor,
            )  # fmt: skip
            [(_, result)] = await run_environment_steps("triage", environment, [step], run)
            if not result.success:
                logger.error(
                    "%s: %s", environment, result.error.message if result.error else "failed"
                )
                return []
            unhealthy = unhealthy_services(environment, result.data or [], settings)
        # Where Prometheus is configured: warn about the running services heading for a limit.
        predicted = await forecast_one(environment, result.data or [], unhealthy)
        return [*unhealthy, *predicted]

    async def forecast_one(
        environment: str, items: list[dict[str, Any]], unhealthy: list[UnhealthyService]
    ) -> list[UnhealthyService]:
        steps = forecast_steps(config, environment, running_services(items, unhealthy, settings))
        if not steps:
            return []

        unreachable: list[str] = []

        async def one(step: PlanStep) -> UnhealthyService | None:
            async with limit:
                if unreachable:  # Prometheus did not answer: the other forecasts would wait too
                    return None
                run = Investigation(
                    config, services.store, services.planner, services.gate,
                    _sweep_context(environment, step.target), services.actor,
                )  # fmt: skip
                try:
                    [(_, result)] = await run_environment_steps("triage", environment, [step], run)
                except Exception as exc:  # a forecast is a bonus: it never fails the sweep
                    logger.error(
                        "forecasts on %s stopped: %s (%s)", environment, exc, type(exc).__name__
                    )
                    unreachable.append(environment)
                    return None
            if not result.success:
                logger.warning(
                    "forecast of %s on %s: %s", step.target, environment,
                    result.error.message if result.error else "failed",
                )  # fmt: skip
                if result.retryable:
                    unreachable.append(environment)
                return None
            resource = str(step.parameters["resource"])
            return forecast_finding(environment, str(step.target), resource, result.data, settings)

        return [f for f in await asyncio.gather(*(one(step) for step in steps)) if f is not None]

    found = [u for batch in await asyncio.gather(*(list_one(n) for n in names)) for u in batch]
    to_diagnose, covered = select_for_diagnosis(found, services.store, settings)
    for skip in covered:
        logger.info("%s on %s: already covered, %s", skip.service, skip.environment, skip.reason)
    conventions = LabelConventions.from_config(config)

    async def diagnose_one(unhealthy: UnhealthyService) -> str:
        # Stored before the diagnosis starts: the next sweep finds it even if it has not begun.
        alert, context = open_sweep_incident(services.store, unhealthy, conventions, settings)
        parameters: dict[str, Any] = {
            "alert": alert,
            "incident_id": context.incident_id,
            "environment": context.environment,
            "service": context.service,
        }
        async with limit:
            if deployment.id:
                # Deployed: hand each diagnosis to the work pool instead of blocking the sweep.
                name = f"diagnose-incident/{config.platform.prefect.deployments.diagnose_incident}"
                try:
                    run = await run_deployment(name, parameters=parameters, timeout=0)  # type: ignore[misc]
                except Exception:
                    services.store.set_status(context.incident_id, "failed")
                    logger.exception("could not start the diagnosis of %s", context.incident_id)
                    raise
                # The reconciler escalates the incident if this run never gets anywhere.
                services.store.attach_flow_run(context.incident_id, str(run.id))
            else:
                await diagnose_incident(**parameters)
        return context.incident_id

    started: list[str] = []
    if start_diagnoses:
        started = list(await asyncio.gather(*(diagnose_one(u) for u in to_diagnose)))
    services.gate.close()
    escalated = await reconcile_incidents(config)
    for finding in escalated:
        logger.warning("escalated incident %s: %s", finding["incident"], finding["reason"])
    return {
        "unhealthy": [u.model_dump() for u in found],
        "incidents_started": started,
        "already_covered": [c.service for c in covered],
        "covered_by": [c.model_dump() for c in covered],
        "escalated": escalated,
    }


def _sweep_context(environment: str, service: str | None = None) -> Any:
    from agent.incidents.models import AlertInfo, IncidentContext

    return IncidentContext(
        incident_id=f"sweep-{environment}",
        alert=AlertInfo(labels={"alertname": "HealthSweep"}),
        environment=environment,
        service=service or "-",
    )
