"""The event log: what happened to incidents and operations, in order, for `WS /ws/events`,
the metrics and the incident timeline.

Events are rows in the store, written by whichever process did the work (the service, a flow
run in a worker, the CLI), so one stream shows them all and a client that connects late can
replay from an id. Every payload is redacted before it is written (infrastructure/redaction.py:
the given redactor, else the one of the configuration this process runs with), so the stream,
the timeline and the API show no secret, whoever emitted the event.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.incidents.storage import (
    Connection,
    Database,
    Row,
    database,
    events_after,
    insert_event,
    last_event_id,
)
from infrastructure.redaction import Redactor, RedactorHolder

EventType = Literal[
    "incident.created",
    "incident.updated",
    "incident.resolved",
    "incident.diagnosed",
    "incident.failed",
    "incident.escalated",
    "alert.unmapped",
    "alert.invalid",
    "alert.ignored",
    "dispatch.started",
    "dispatch.failed",
    "phase.started",
    "operation.started",
    "operation.finished",
    "approval.needed",
    "approval.decided",
    "approval.vote",
    "approval.expiring",
    "notification.failed",
    # The LLM's circuit breaker opened: the provider is skipped until it resets.
    "llm.circuit_open",
    "llm.call",
]


class Event(BaseModel):
    """One event of the stream. `data` depends on `type` (see the README's event table)."""

    id: int = Field(description="Increasing; ask for events after it with ?since=<id>.")
    at: float = Field(description="Unix time, seconds.")
    type: EventType
    incident_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class EventLog(RedactorHolder):
    def __init__(self, source: Database | Path, redactor: Redactor | None = None) -> None:
        self.database = database(source)
        self._redactor = redactor

    def emit(
        self,
        type_: EventType,
        incident_id: str | None = None,
        db: Connection | None = None,
        **data: Any,
    ) -> None:
        """Record an event, its data redacted; inside `db`'s transaction when given (so it
        commits with the change)."""
        payload = json.dumps(self.redactor.json_data(data))
        insert_event(self.database, time.time(), type_, incident_id, payload, db)

    def since(
        self, after_id: int = 0, limit: int = 1000, incident_id: str | None = None
    ) -> list[Event]:
        return [_event(r) for r in events_after(self.database, after_id, limit, incident_id)]

    def last_id(self) -> int:
        return last_event_id(self.database)


def _event(row: Row) -> Event:
    return Event(
        id=row["id"],
        at=row["at"],
        type=row["type"],
        incident_id=row["incident_id"],
        data=json.loads(row["data"]),
    )
