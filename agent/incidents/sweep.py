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
from agent.incidents.models import IncidentContext, PlanStep
from agent.incidents.storage import IncidentStore
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import HealthSweepSettings

SWEEP_SOURCE = "sweep"
SWEEP_ALERTNAME = "HealthSweep"
UNFINISHED = ("open", "diagnosing", "awaiting_approval")


PREDICTED_STATE = "predicted"


class Forecast(BaseModel):
    """A resource forecast to reach its capacity: a warning, not a failure (yet)."""

    resource: str
    horizon: str
    seconds_to_capacity: float | None
    ratio: float | None
    predicted: float | None = None
    capacity: float | None = None


class UnhealthyService(BaseModel):
    environment: str
    service: str
    reason: str
    # What the sweep saw: the state (exited, restarting, CrashLoopBackOff) or the health;
    # `predicted` for a forecast.
    observed_state: str
    exit_code: int | None = None
    # Other names the listing gives the same service (a compose service), for the dedupe.
    aliases: list[str] = Field(default_factory=list)
    forecast: Forecast | None = None

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


def running_services(
    items: list[dict[str, Any]],
    unhealthy: Sequence[UnhealthyService],
    settings: HealthSweepSettings,
) -> list[str]:
    """The listed services that are up (neither unhealthy nor finished): the ones a forecast
    can warn about, at most forecast.max_services of them."""
    down = {name for u in unhealthy for name in u.names}
    names: list[str] = []
    for item in items:
        name = item.get("container") or item.get("name") or item.get("service")
        if not name or name in down or finished_cleanly(item, settings):
            continue
        if item.get("state") in settings.unhealthy_states:
            continue
        if item.get("health") in settings.unhealthy_health:
            continue
        names.append(str(name))
    limit = settings.forecast.max_services if settings.forecast else 0
    return list(dict.fromkeys(names))[:limit]


def forecast_finding(
    environment: str, service: str, resource: str, data: Any, settings: HealthSweepSettings
) -> UnhealthyService | None:
    """A `predicted` finding from a get_resource_trend result, or None: the resource is
    forecast to reach its capacity within the horizon and is already used past
    min_current_ratio."""
    forecast = settings.forecast
    trend = data.get(resource) if isinstance(data, dict) else None
    if forecast is None or not isinstance(trend, dict) or "error" in trend:
        return None
    ratio = trend.get("ratio")
    if not trend.get("reaches_capacity_within_horizon"):
        return None
    if not isinstance(ratio, int | float) or ratio < forecast.min_current_ratio:
        return None
    seconds = trend.get("seconds_to_capacity")
    seconds = float(seconds) if isinstance(seconds, int | float) else None
    when = f"in about {_duration(seconds)}" if seconds is not None else "within the horizon"
    return UnhealthyService(
        environment=environment,
        service=service,
        reason=(
            f"forecast: {resource} reaches its capacity {when} (horizon {forecast.horizon},"
            f" {ratio:.0%} used now)"
        ),
        observed_state=PREDICTED_STATE,
        forecast=Forecast(
            resource=resource,
            horizon=forecast.horizon,
            seconds_to_capacity=seconds,
            ratio=float(ratio),
            predicted=_number(trend.get("predicted")),
            capacity=_number(trend.get("capacity")),
        ),
    )


def forecast_steps(config: UICIConfig, environment: str, services: Sequence[str]) -> list[PlanStep]:
    """The get_resource_trend reads of a sweep's forecast: each running service, each
    configured resource the environment has a usage query for. None without Prometheus."""
    forecast = config.agents.health_sweep.forecast
    env = config.environments.environments.get(environment)
    if forecast is None or not forecast.enabled or env is None:
        return []
    observability = env.observability
    if observability.source("prometheus") is None or not observability.metric_labels:
        return []
    resources = [r for r in forecast.resources if getattr(observability.resources, f"{r}_usage")]
    return [
        PlanStep(
            phase="triage",
            operation="get_resource_trend",
            environment=environment,
            target=service,
            parameters={
                "resource": resource,
                "since": forecast.window,
                "horizon": forecast.horizon,
            },
            rationale=f"health sweep forecast of {resource}",
            proposed_by="runbook",
        )
        for service in services
        for resource in resources
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes / 60:.1f} h"


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
    if unhealthy.observed_state != PREDICTED_STATE:
        # A forecast warned before; a failure now is news and gets its own incident.
        label = settings.observed_state_label
        incidents = [i for i in incidents if i.context.alert.labels.get(label) != PREDICTED_STATE]
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
    annotations = {
        "summary": f"{unhealthy.service}: {unhealthy.reason}",
        "description": f"the health sweep found {unhealthy.service} on "
        f"{unhealthy.environment} unhealthy: {unhealthy.reason}",
    }
    forecast, forecasting = unhealthy.forecast, settings.forecast
    if forecast is not None and forecasting is not None:
        # A warning before a failure: named as a forecast everywhere it shows.
        labels["alertname"] = forecasting.alertname
        labels[forecasting.resource_label] = forecast.resource
        annotations = {
            "summary": f"FORECAST {unhealthy.service}: {unhealthy.reason}",
            "description": (
                f"a forecast, not a failure: the health sweep fitted {unhealthy.service}'s"
                f" {forecast.resource} on {unhealthy.environment} over"
                f" {forecasting.window} and it reaches its capacity within the"
                f" {forecast.horizon} horizon. {unhealthy.reason}"
            ),
            "forecast_horizon": forecast.horizon,
            "forecast_resource": forecast.resource,
            "forecast_seconds_to_capacity": (
                f"{forecast.seconds_to_capacity:.0f}"
                if forecast.seconds_to_capacity is not None
                else "unknown"
            ),
        }
    return {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
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
