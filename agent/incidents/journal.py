"""One place that records an operation: its events (for the stream and the metrics) and its
audit record. Used by flow runs, the API and anything else that executes operations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.storage import Database
from infrastructure.executors.base import OperationResult


class Journal:
    def __init__(self, source: Database | Path) -> None:
        self.events = EventLog(source)
        self.audit = AuditLog(source)

    def started(
        self,
        operation: str,
        environment: str,
        target: str | None,
        incident_id: str | None = None,
        phase: str | None = None,
    ) -> None:
        self.events.emit(
            "operation.started",
            incident_id,
            operation=operation,
            environment=environment,
            target=target,
            phase=phase,
        )

    def finished(
        self,
        result: OperationResult,
        actor: str,
        parameters: dict[str, Any],
        incident_id: str | None = None,
        request_id: str | None = None,
        phase: str | None = None,
        risk: str = "read",
    ) -> None:
        outcome = (
            "success" if result.success else (result.error.kind.value if result.error else "failed")
        )
        self.events.emit(
            "operation.finished",
            incident_id,
            operation=result.operation,
            environment=result.environment,
            target=result.target,
            phase=phase,
            outcome=outcome,
            duration_seconds=round(result.duration_seconds, 4),
            error=self.events.redactor.cut(result.error.message, 300) if result.error else None,
        )
        self.audit.record(
            actor,
            f"operation.{result.operation}",
            outcome
            if result.success
            else f"{outcome}: {result.error.message if result.error else ''}",
            target=f"{result.environment}/{result.target or '-'}",
            parameters={"risk": risk, "command": result.command, **parameters},
            incident_id=incident_id,
            request_id=request_id,
        )
