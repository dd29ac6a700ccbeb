"""The incident store (SQLite at platform.yml `storage.url`): incidents, their reports, and the
remediation intents that make a write operation happen at most once.

SQLite serialises writes; every connection waits up to 30 s for the lock, and each method is
one short transaction, so several processes (service, workers, CLI) can share the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agent.incident import IncidentContext, PlanStep
from agent.policy import sqlite_path
from infrastructure.configuration.loader import UICIConfig

IncidentStatus = Literal[
    "open", "diagnosing", "awaiting_approval", "diagnosed", "resolved", "failed", "escalated"
]
IntentState = Literal["pending", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    fingerprint TEXT,
    starts_at TEXT,
    context TEXT NOT NULL,
    report TEXT,
    flow_run_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_service ON incidents (environment, service, status);
CREATE TABLE IF NOT EXISTS approvals (
    incident_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    step TEXT NOT NULL,
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    actor TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    decided_at REAL,
    PRIMARY KEY (incident_id, step_key)
);
CREATE TABLE IF NOT EXISTS intents (
    key TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT
);
"""


class IncidentRecord(BaseModel):
    id: str
    status: IncidentStatus
    environment: str
    service: str
    context: IncidentContext
    report: dict[str, Any] | None = None
    flow_run_id: str | None = None
    created_at: float
    updated_at: float


class Intent(BaseModel):
    key: str
    incident_id: str
    step: PlanStep
    state: IntentState
    recorded_at: float
    finished_at: float | None = None
    outcome: dict[str, Any] | None = None


ApprovalStatus = Literal["pending", "approved", "rejected", "expired"]


class ApprovalRecord(BaseModel):
    incident_id: str
    step_key: str
    step: PlanStep
    command: str
    status: ApprovalStatus
    actor: str | None = None
    reason: str | None = None
    created_at: float
    decided_at: float | None = None


class IncidentStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def from_config(cls, config: UICIConfig) -> IncidentStore:
        return cls(sqlite_path(config.platform.storage.url))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            yield connection
        finally:
            connection.close()

    # --- incidents --------------------------------------------------------------------

    def open_incident(
        self, context: IncidentContext, flow_run_id: str | None = None
    ) -> IncidentRecord:
        """Create the incident, or return the existing one with the same id."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO incidents VALUES (?, 'open', ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (
                    context.incident_id,
                    context.environment,
                    context.service,
                    context.alert.fingerprint,
                    context.alert.starts_at,
                    context.model_dump_json(),
                    flow_run_id,
                    now,
                    now,
                ),
            )
        record = self.get(context.incident_id)
        assert record is not None
        return record

    def get(self, incident_id: str) -> IncidentRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return None if row is None else _incident(row)

    def incidents(
        self,
        status: str | None = None,
        service: str | None = None,
        environment: str | None = None,
        limit: int = 100,
    ) -> list[IncidentRecord]:
        clauses, values = [], []
        for column, value in (
            ("status", status),
            ("service", service),
            ("environment", environment),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM incidents {where} ORDER BY created_at DESC LIMIT ?",  # noqa: S608 - fixed column names
                (*values, limit),
            ).fetchall()
        return [_incident(row) for row in rows]

    def open_for(self, environment: str, service: str) -> list[IncidentRecord]:
        """Incidents on this service that are not finished (for the sweep's dedupe)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM incidents WHERE environment = ? AND service = ? AND status IN "
                "('open', 'diagnosing', 'awaiting_approval')",
                (environment, service),
            ).fetchall()
        return [_incident(row) for row in rows]

    def set_status(
        self, incident_id: str, status: IncidentStatus, flow_run_id: str | None = None
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET status = ?, updated_at = ?,"
                " flow_run_id = COALESCE(?, flow_run_id) WHERE id = ?",
                (status, time.time(), flow_run_id, incident_id),
            )

    def save_report(self, incident_id: str, report: dict[str, Any], status: IncidentStatus) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET report = ?, status = ?, updated_at = ? WHERE id = ?",
                (json.dumps(report, default=str), status, time.time(), incident_id),
            )

    # --- approvals --------------------------------------------------------------------

    def request_approval(self, incident_id: str, step: PlanStep, command: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO approvals"
                " VALUES (?, ?, ?, ?, 'pending', NULL, NULL, ?, NULL)",
                (incident_id, step.key(), step.model_dump_json(), command, time.time()),
            )

    def decide_approval(
        self, incident_id: str, step_key: str, status: ApprovalStatus, actor: str, reason: str
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE approvals SET status = ?, actor = ?, reason = ?, decided_at = ?"
                " WHERE incident_id = ? AND step_key = ?",
                (status, actor, reason, time.time(), incident_id, step_key),
            )

    def approvals(
        self, incident_id: str, status: ApprovalStatus | None = None
    ) -> list[ApprovalRecord]:
        query = "SELECT * FROM approvals WHERE incident_id = ?"
        values: tuple[str, ...] = (incident_id,)
        if status is not None:
            query += " AND status = ?"
            values = (incident_id, status)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY created_at", values).fetchall()
        return [
            ApprovalRecord(
                incident_id=r["incident_id"],
                step_key=r["step_key"],
                step=PlanStep.model_validate_json(r["step"]),
                command=r["command"],
                status=r["status"],
                actor=r["actor"],
                reason=r["reason"],
                created_at=r["created_at"],
                decided_at=r["decided_at"],
            )
            for r in rows
        ]

    # --- remediation intents ----------------------------------------------------------

    def begin_intent(self, key: str, incident_id: str, step: PlanStep, at: float) -> Intent:
        """Record the intent before the call; an existing intent with this key is returned as is."""
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO intents VALUES (?, ?, ?, 'pending', ?, NULL, NULL)",
                (key, incident_id, step.model_dump_json(), at),
            )
        intent = self.intent(key)
        assert intent is not None
        return intent

    def intent(self, key: str) -> Intent | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM intents WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Intent(
            key=row["key"],
            incident_id=row["incident_id"],
            step=PlanStep.model_validate_json(row["step"]),
            state=row["state"],
            recorded_at=row["recorded_at"],
            finished_at=row["finished_at"],
            outcome=json.loads(row["outcome"]) if row["outcome"] else None,
        )

    def finish_intent(self, key: str, state: IntentState, outcome: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE intents SET state = ?, finished_at = ?, outcome = ? WHERE key = ?",
                (state, time.time(), json.dumps(outcome, default=str), key),
            )

    def pending_intents(self) -> list[Intent]:
        with self._db() as db:
            keys = [r["key"] for r in db.execute("SELECT key FROM intents WHERE state = 'pending'")]
        return [i for k in keys if (i := self.intent(k)) is not None]


def _incident(row: sqlite3.Row) -> IncidentRecord:
    return IncidentRecord(
        id=row["id"],
        status=row["status"],
        environment=row["environment"],
        service=row["service"],
        context=IncidentContext.model_validate_json(row["context"]),
        report=json.loads(row["report"]) if row["report"] else None,
        flow_run_id=row["flow_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
