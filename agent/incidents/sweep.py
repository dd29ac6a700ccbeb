"""The health sweep's decisions, without Prefect (flows/sweep.py wires them in): which services
are unhealthy, which of them an incident already covers, and the alert and incident the sweep
opens for the rest.

The sweep never repeats itself: a service with an unfinished incident, or one whose incident
was updated within agents.yml `health_sweep.rediagnose_after_seconds`, gets no new incident;
a one-shot container that finished cleanly (`health_sweep.completed`) is not unhealthy. The
incidents it opens say so (the `source_label` is `sweep`) and carry the state it observed
(`observed_state_label`), which runbooks match on, as they match an alert's name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from agent.incidents.context import LabelConventions, context_from_alert
from agent.incidents.models import IncidentContext
from agent.incidents.storage import IncidentStore
from infrastructure.configuration.models import HealthSweepSettings

SWEEP_SOURCE = "sweep"
SWEEP_ALERTNAME = "HealthSweep"
UNFINISHED = ("open", "diagnosing", "awaiting_approval")


class UnhealthyService(BaseModel):
    environment: str
    service: str
    reason: str
    # What the sweep saw: the state (exited, restarting, CrashLoopBackOff) or the health.
    observed_state: str
    exit_code: int | None = None
    # Other names the listing gives the same service (a compose service), for the dedupe.
    aliases: list[str] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.service, *(a for a in self.aliases if a != self.service)]


class Covered(BaseModel):
    """An unhealthy service the sweep leaves alone, and the incident that covers it."""

    environment: str
    service: str
    incident_id: str
    reason: str


def finished_cleanly(item: dict[str, Any], settings: HealthSweepSettings) -> bool:
    """A one-shot run that stopped with a success exit code: done, not down."""
    return (
        item.get("state") in settings.completed.states
        and item.get("exit_code") is not None
        and item.get("exit_code") in settings.completed.exit_codes
    )


def unhealthy_services(
    environment: str, items: list[dict[str, Any]], settings: HealthSweepSettings
) -> list[UnhealthyService]:
    """From a list_services result: the services in an unhealthy state or failing their check."""
    found = []
    for item in items:
        name = item.get("container") or item.get("name") or item.get("service")
        if not name or finished_cleanly(item, settings):
            continue
        state, health, exit_code = item.get("state"), item.get("health"), item.get("exit_code")
        aliases = [str(a) for a in (item.get("compose_service"),) if a]
        if state in settings.unhealthy_states:
            code = f" (exit code {exit_code})" if isinstance(exit_code, int) else ""
            reason, observed = f"state {state}{code}", str(state)
        elif health in settings.unhealthy_health:
            reason, observed = f"health {health}", str(health)
        else:
            continue
        found.append(
            UnhealthyService(
                environment=environment,
                service=name,
                reason=reason,
                observed_state=observed,
                exit_code=exit_code if isinstance(exit_code, int) else None,
                aliases=aliases,
            )
        )
    return found


def covering_incident(
    store: IncidentStore,
    unhealthy: UnhealthyService,
    settings: HealthSweepSettings,
    now: float | None = None,
) -> Covered | None:
    """The incident that already covers this service: an unfinished one, else one updated
    within `rediagnose_after_seconds`; None when the sweep should open one."""
    now = time.time() if now is None else now
    window = settings.rediagnose_after_seconds
    incidents = store.covering(unhealthy.environment, unhealthy.names, now - window)
    if not incidents:
        return None
    unfinished = [i for i in incidents if i.status in UNFINISHED]
    incident = (unfinished or incidents)[0]
    if unfinished:
        reason = f"incident {incident.id} is {incident.status}"
    else:
        reason = (
            f"incident {incident.id} ({incident.status}) was updated "
            f"{max(0.0, now - incident.updated_at):.0f} s ago, within "
            f"health_sweep.rediagnose_after_seconds ({window:g} s)"
        )
    return Covered(
        environment=unhealthy.environment,
        service=unhealthy.service,
        incident_id=incident.id,
        reason=reason,
    )


def select_for_diagnosis(
    found: Sequence[UnhealthyService],
    store: IncidentStore,
    settings: HealthSweepSettings,
    now: float | None = None,
) -> tuple[list[UnhealthyService], list[Covered]]:
    """The unhealthy services to open an incident for (each once), and those left alone."""
    selected: list[UnhealthyService] = []
    covered: list[Covered] = []
    seen: set[tuple[str, str]] = set()
    for unhealthy in found:
        key = (unhealthy.environment, unhealthy.service)
        if key in seen:
            continue
        seen.add(key)
        existing = covering_incident(store, unhealthy, settings, now)
        if existing is None:
            selected.append(unhealthy)
        else:
            covered.append(existing)
    return selected, covered


def sweep_alert(
    unhealthy: UnhealthyService, conventions: LabelConventions, settings: HealthSweepSettings
) -> dict[str, Any]:
    """The alert a sweep-opened incident carries: named by the configured label conventions,
    marked as coming from the sweep, with the observed state for runbooks to match on."""
    labels = {
        "alertname": SWEEP_ALERTNAME,
        **conventions.labels_for(unhealthy.environment, unhealthy.service),
        settings.source_label: SWEEP_SOURCE,
        settings.observed_state_label: unhealthy.observed_state,
    }
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {
            "summary": f"{unhealthy.service}: {unhealthy.reason}",
            "description": f"the health sweep found {unhealthy.service} on "
            f"{unhealthy.environment} unhealthy: {unhealthy.reason}",
        },
        "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


def open_sweep_incident(
    store: IncidentStore,
    unhealthy: UnhealthyService,
    conventions: LabelConventions,
    settings: HealthSweepSettings,
) -> tuple[dict[str, Any], IncidentContext]:
    """Record the incident before its diagnosis is started, so a second sweep finds it even
    when the diagnosis has not begun yet. Returns the alert and the stored context."""
    alert = sweep_alert(unhealthy, conventions, settings)
    context = context_from_alert(
        alert,
        conventions,
        incident_id=f"sweep-{uuid.uuid4().hex[:10]}",
        environment=unhealthy.environment,
        service=unhealthy.service,
    )
    store.open_incident(context)
    return alert, context
