"""The audit trail: every state-changing request and every executed operation, append-only.

SQLite triggers refuse UPDATE and DELETE on the table, so a bug cannot rewrite history.
Parameters are masked before they are written (secret-looking keys, and the configuration's
redaction patterns on values).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.incidents.storage import audit_rows, insert_audit
from infrastructure.redaction import mask_secrets


class AuditRecord(BaseModel):
    id: int
    at: float
    actor: str
    action: str
    target: str | None
    parameters: dict[str, Any]
    result: str
    incident_id: str | None
    request_id: str | None


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(
        self,
        actor: str,
        action: str,
        result: str,
        target: str | None = None,
        parameters: dict[str, Any] | None = None,
        incident_id: str | None = None,
        request_id: str | None = None,
        db: sqlite3.Connection | None = None,
    ) -> None:
        insert_audit(
            self.path,
            time.time(),
            actor,
            action,
            target,
            json.dumps(mask_secrets(parameters or {}), default=str),
            result[:2000],
            incident_id,
            request_id,
            db,
        )

    def query(
        self,
        incident_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        rows = audit_rows(self.path, incident_id, actor, action, since, limit)
        return [
            AuditRecord(
                id=r["id"],
                at=r["at"],
                actor=r["actor"],
                action=r["action"],
                target=r["target"],
                parameters=json.loads(r["parameters"]),
                result=r["result"],
                incident_id=r["incident_id"],
                request_id=r["request_id"],
            )
            for r in rows
        ]
