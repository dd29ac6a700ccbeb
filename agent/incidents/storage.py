"""The incident store (SQLite at platform.yml `storage.url`): incidents, their reports, and the
remediation intents that make a write operation happen at most once.

SQLite serialises writes; every connection waits up to 30 s for the lock, and each method is
one short transaction, so several processes (service, workers, CLI) can share the file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from agent.incidents.models import IncidentContext, PlanStep
from agent.safety.policy import sqlite_path
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
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    state TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    ends_at TEXT,
    generator_url TEXT,
    receiver TEXT,
    group_key TEXT,
    environment TEXT,
    target TEXT,
    reason TEXT,
    incident_id TEXT,
    deliveries INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    resolved_at REAL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    request_id TEXT NOT NULL,
    source TEXT,
    receiver TEXT,
    group_key TEXT,
    status TEXT,
    alerts INTEGER NOT NULL,
    truncated_alerts INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dispatch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS dispatch_due ON dispatch (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    incident_id TEXT,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    parameters TEXT NOT NULL,
    result TEXT NOT NULL,
    incident_id TEXT,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_incident ON audit (incident_id);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
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


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """An autocommit connection. WAL with synchronous=NORMAL: a committed write survives the
    process being killed (not a power cut), and readers never block the writer."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        yield connection
    finally:
        connection.close()


@contextmanager
def write_transaction(path: Path) -> Iterator[sqlite3.Connection]:
    with connect(path) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def execute(
    path: Path, query: str, values: tuple[Any, ...], db: sqlite3.Connection | None = None
) -> None:
    """One statement inside the caller's transaction `db` when given (so it commits with the
    caller's change), otherwise on its own autocommit connection."""
    if db is not None:
        db.execute(query, values)
        return
    with connect(path) as own:
        own.execute(query, values)


def where_clause(filters: tuple[tuple[str, Any], ...]) -> tuple[str, list[Any]]:
    """`WHERE a = ? AND ...` from fixed clauses whose value is not None, and their values."""
    used = [(clause, value) for clause, value in filters if value is not None]
    if not used:
        return "", []
    return "WHERE " + " AND ".join(c for c, _ in used), [v for _, v in used]


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


ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "cancelled"]


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


def insert_incident(
    db: sqlite3.Connection,
    context: IncidentContext,
    flow_run_id: str | None = None,
    now: float | None = None,
) -> None:
    """Write a new incident inside the caller's transaction; an existing id is left as it is."""
    now = time.time() if now is None else now
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


class IncidentStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def from_config(cls, config: UICIConfig) -> IncidentStore:
        return cls(sqlite_path(config.platform.storage.url))

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self.path)

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed on success, rolled back on error."""
        return write_transaction(self.path)

    # --- incidents --------------------------------------------------------------------

    def open_incident(
        self, context: IncidentContext, flow_run_id: str | None = None
    ) -> IncidentRecord:
        """Create the incident, or return the existing one with the same id."""
        with self._db() as db:
            insert_incident(db, context, flow_run_id)
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
        since: float | None = None,
        until: float | None = None,
    ) -> list[IncidentRecord]:
        where, values = where_clause(
            (
                ("status = ?", status),
                ("service = ?", service),
                ("environment = ?", environment),
                ("created_at >= ?", since),
                ("created_at < ?", until),
            )
        )
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

    # An incident closed because its alert resolved stays resolved, whatever its run does later.
    def set_status(
        self, incident_id: str, status: IncidentStatus, flow_run_id: str | None = None
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET updated_at = ?, flow_run_id = COALESCE(?, flow_run_id),"
                " status = CASE WHEN status = 'resolved' AND EXISTS (SELECT 1 FROM alerts"
                " WHERE alerts.incident_id = incidents.id AND alerts.state = 'resolved')"
                " THEN status ELSE ? END WHERE id = ?",
                (time.time(), flow_run_id, status, incident_id),
            )

    def save_report(self, incident_id: str, report: dict[str, Any], status: IncidentStatus) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET report = ?, updated_at = ?,"
                " status = CASE WHEN status = 'resolved' AND EXISTS (SELECT 1 FROM alerts"
                " WHERE alerts.incident_id = incidents.id AND alerts.state = 'resolved')"
                " THEN status ELSE ? END WHERE id = ?",
                (json.dumps(report, default=str), time.time(), status, incident_id),
            )

    def alert_resolved(self, incident_id: str) -> bool:
        """Whether the alert that opened this incident has resolved (no remediation then)."""
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM alerts WHERE incident_id = ? AND state = 'resolved'", (incident_id,)
            ).fetchone()
        return row is not None

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
                " WHERE incident_id = ? AND step_key = ? AND status = 'pending'",
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
