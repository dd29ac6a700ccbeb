"""The audit trail: every state-changing request and every executed operation, append-only.

Triggers in the database refuse UPDATE and DELETE on the table (and TRUNCATE on PostgreSQL),
so a bug cannot rewrite history.
Everything is redacted before it is written: parameters (the values of secret-looking keys
masked, the configuration's redaction patterns on every value), the result text (whole, before
it is cut to its column's length), the target and the action (infrastructure/redaction.py: the
given redactor, else the one of the configuration this process runs with).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.incidents.storage import Connection, Database, audit_rows, database, insert_audit
from infrastructure.redaction import Redactor, RedactorHolder, mask_secrets

# The result column keeps this much of the redacted text.
MAX_RESULT_CHARS = 2000


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


class AuditLog(RedactorHolder):
    def __init__(self, source: Database | Path, redactor: Redactor | None = None) -> None:
        self.database = database(source)
        self._redactor = redactor

    def record(
        self,
        actor: str,
        action: str,
        result: str,
        target: str | None = None,
        parameters: dict[str, Any] | None = None,
        incident_id: str | None = None,
        request_id: str | None = None,
        db: Connection | None = None,
    ) -> None:
        redact = self.redactor
        masked = mask_secrets(json.loads(json.dumps(parameters or {}, default=str)))
        insert_audit(
            self.database,
            time.time(),
            redact(actor),
            redact(action),
            None if target is None else redact(target),
            json.dumps(redact.data(masked)),
            redact.cut(result, MAX_RESULT_CHARS),
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
        rows = audit_rows(self.database, incident_id, actor, action, since, limit)
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
