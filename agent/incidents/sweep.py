"""Which services a health sweep finds unhealthy (no Prefect here: testable directly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from infrastructure.configuration.models import HealthSweepSettings


class UnhealthyService(BaseModel):
    environment: str
    service: str
    reason: str


def unhealthy_services(
    environment: str, items: list[dict[str, Any]], settings: HealthSweepSettings
) -> list[UnhealthyService]:
    """From a list_services result: the services in an unhealthy state or failing their check."""
    found = []
    for item in items:
        name = item.get("container") or item.get("name") or item.get("service")
        if not name:
            continue
        state, health = item.get("state"), item.get("health")
        if state in settings.unhealthy_states:
            found.append(
                UnhealthyService(environment=environment, service=name, reason=f"state {state}")
            )
        elif health in settings.unhealthy_health:
            found.append(
                UnhealthyService(environment=environment, service=name, reason=f"health {health}")
            )
    return found
