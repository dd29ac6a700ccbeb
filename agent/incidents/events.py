"""The event log: what happened to incidents and operations, in order, for `WS /ws/events`,
the metrics and the incident timeline.

Events are rows in the store, written by whichever process did the work (the service, a flow
run in a worker, the CLI), so one stream shows them all and a client that connects late can
replay from an id.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.incidents.storage import connect, execute

EventType = Literal[
    "incident.created",
    "incident.updated",
    "incident.resolved",
    "incident.diagnosed",
    "incident.failed",
    "alert.unmapped",
    "alert.ignored",
    "dispatch.started",
    "dispatch.failed",
    "phase.started",
    "operation.started",
    "operation.finished",
    "approval.needed",
    "approval.decided",
    "llm.call",
]


class Event(BaseModel):
    """One event of the stream. `data` depends on `type` (see the README's event table)."""

    id: int = Field(description="Increasing; ask for events after it with ?since=<id>.")
    at: float = Field(description="Unix time, seconds.")
    type: EventType
    incident_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(
        self,
        type_: EventType,
        incident_id: str | None = None,
        db: sqlite3.Connection | None = None,
        **data: Any,
    ) -> None:
        """Record an event; inside `db`'s transaction when given (so it commits with the change)."""
        row = (time.time(), type_, incident_id, json.dumps(data, default=str))
        query = "INSERT INTO events (at, type, incident_id, data) VALUES (?, ?, ?, ?)"
        execute(self.path, query, row, db)

    def since(
        self, after_id: int = 0, limit: int = 1000, incident_id: str | None = None
    ) -> list[Event]:
        query = "SELECT * FROM events WHERE id > ?"
        values: list[Any] = [after_id]
        if incident_id is not None:
            query += " AND incident_id = ?"
            values.append(incident_id)
        with connect(self.path) as db:
            rows = db.execute(query + " ORDER BY id LIMIT ?", (*values, limit)).fetchall()
        return [_event(r) for r in rows]

    def last_id(self) -> int:
        with connect(self.path) as db:
            row = db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        at=row["at"],
        type=row["type"],
        incident_id=row["incident_id"],
        data=json.loads(row["data"]),
    )
