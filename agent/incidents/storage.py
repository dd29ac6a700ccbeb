"""The incident store (SQLite at platform.yml `storage.url`): incidents, their reports, and the
remediation intents that make a write operation happen at most once.

SQLite serialises writes; every connection waits up to 30 s for the lock, and each method is
one short transaction, so several processes (service, workers, CLI) can share the file.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from agent.incidents.models import IncidentContext, PlanStep
from infrastructure.configuration.loader import UICIConfig
from infrastructure.executors.base import ResolvedTarget
from infrastructure.redaction import Redactor, RedactorHolder, configured_redactor

IncidentStatus = Literal[
    "open", "diagnosing", "awaiting_approval", "diagnosed", "resolved", "failed", "escalated"
]
WriteState = Literal["pending", "done", "failed", "unknown"]
# States that mean the write was (or may have been) sent: they count against the cool-down and
# the budgets, and hold the target's lock while pending.
SENT_STATES: tuple[WriteState, ...] = ("pending", "done", "unknown")
# What begin_write answers when the write's key is already recorded.
DUPLICATE_KEY = "duplicate key"

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
    expires_at REAL,
    required INTEGER NOT NULL DEFAULT 1,
    requested_by TEXT,
    via TEXT,
    runner TEXT NOT NULL DEFAULT 'flow',
    warned_at REAL,
    acted_at REAL,
    nonce TEXT,
    PRIMARY KEY (incident_id, step_key)
);
-- One row per person's answer to an approval request (the two-person rule counts them).
CREATE TABLE IF NOT EXISTS approval_votes (
    incident_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    approver TEXT NOT NULL,
    approve INTEGER NOT NULL,
    via TEXT NOT NULL,
    address TEXT,
    reason TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (incident_id, step_key, approver)
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
    request_id TEXT,
    truncated TEXT
);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);
-- Alerts of a notification that could not be read: kept with the reason, never dropped.
CREATE TABLE IF NOT EXISTS invalid_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    request_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    reason TEXT NOT NULL,
    body TEXT NOT NULL
);
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
-- /metrics aggregates events by type at every scrape.
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
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
-- Every write any entry point sends, recorded before it is sent (its remediation intent) and
-- finished after: pending -> done | failed | unknown. Cool-down, budgets and the per-target
-- lock read it; `write_targets` holds what the write really touches (container ids, the
-- Kubernetes workload, the OCI instance), so `web`, its container id and `project/web` meet.
CREATE TABLE IF NOT EXISTS writes (
    key TEXT PRIMARY KEY,
    incident_id TEXT,
    environment TEXT NOT NULL,
    operation TEXT NOT NULL,
    target TEXT,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    entry TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    owner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS writes_incident ON writes (incident_id, state);
CREATE INDEX IF NOT EXISTS writes_state ON writes (state);
CREATE TABLE IF NOT EXISTS write_targets (
    write_key TEXT NOT NULL,
    environment TEXT NOT NULL,
    identity TEXT NOT NULL,
    name TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (write_key, identity)
);
CREATE INDEX IF NOT EXISTS write_targets_identity ON write_targets (environment, identity, at);
-- Incident memory: one row per finished diagnosis, found again by service and class.
CREATE TABLE IF NOT EXISTS diagnoses (
    incident_id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    service TEXT NOT NULL,
    failure_class TEXT NOT NULL,
    signature TEXT NOT NULL,
    root_cause TEXT NOT NULL,
    remediations TEXT NOT NULL,
    recovered INTEGER,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS diagnoses_service ON diagnoses (environment, service, failure_class, at);
-- Each remediation sent, with the cause the rules named when it was decided.
CREATE TABLE IF NOT EXISTS remediations (
    incident_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    target TEXT NOT NULL,
    cause TEXT NOT NULL,
    step TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS remediations_target ON remediations (environment, target, cause, at);
-- The notification outbox: one row per sink and (incident, event, discriminator), so a message
-- is queued once however often its event is seen, and delivered with retries and back-off by
-- the service, surviving its restarts. `cursors` remembers the last event turned into rows.
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    event TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    dedup TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    status_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (sink, incident_id, event, dedup)
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- One row the readiness probe rewrites: the store takes writes.
CREATE TABLE IF NOT EXISTS readiness (id INTEGER PRIMARY KEY, at REAL);
"""


# Columns added to a table after it first shipped: a store made by an older UICI gets them.
_ADDED_COLUMNS = {
    "writes": {"owner": "TEXT NOT NULL DEFAULT ''"},
    "alerts": {"truncated": "TEXT"},
    "approvals": {
        "expires_at": "REAL",
        "required": "INTEGER NOT NULL DEFAULT 1",
        "requested_by": "TEXT",
        "via": "TEXT",
        "runner": "TEXT NOT NULL DEFAULT 'flow'",
        "warned_at": "REAL",
        "acted_at": "REAL",
        "nonce": "TEXT",
    },
}


def _migrate(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"storage.url {url!r}: only sqlite:/// URLs are supported")
    return Path(url.removeprefix("sqlite:///"))


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


class WriteRecord(BaseModel):
    key: str
    incident_id: str | None
    step: PlanStep
    state: WriteState
    actor: str
    entry: str
    recorded_at: float
    finished_at: float | None = None
    outcome: dict[str, Any] | None = None
    targets: list[ResolvedTarget] = []
    # The process sending it (host:pid:start time): a pending write whose process is gone was
    # never finished, one whose process lives is in progress.
    owner: str = ""


class WriteFacts(BaseModel):
    """What the write history says about a write about to be sent, read in its transaction."""

    incident_writes: int  # writes sent in this incident (pending, done or unknown)
    last_write: WriteRecord | None  # the latest finished write (done or unknown) on the targets
    writes_in_window: int  # writes tried on the targets since the window's start, failed too
    in_progress: list[WriteRecord]  # pending writes on any of the targets (they hold the lock)
    unresolved: list[WriteRecord]  # writes on the targets whose outcome is unknown


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
    expires_at: float | None = None
    required: int = 1  # distinct approvers needed
    requested_by: str | None = None  # who asked for the write: never its approver
    via: str | None = None  # where the decision came from: api, cli, prefect-ui, uici, ...
    runner: str = "flow"  # flow: a paused run waits for it; service: the service runs it
    acted_at: float | None = None  # when its runner took the decision up (it cannot be undone)
    # A secret the service and the CLI send when they wake the paused run, so the run tells
    # their wake-up from an answer typed into the Prefect UI's form (which never knows it).
    nonce: str | None = Field(default=None, exclude=True, repr=False)


class ApprovalVote(BaseModel):
    approver: str
    approve: bool
    via: str
    address: str | None = None
    reason: str | None = None
    at: float


def insert_incident(
    db: sqlite3.Connection,
    context: IncidentContext,
    flow_run_id: str | None = None,
    now: float | None = None,
    redactor: Redactor | None = None,
) -> None:
    """Write a new incident inside the caller's transaction; an existing id is left as it is.
    The alert's labels and annotations are stored redacted (they may carry secrets)."""
    now = time.time() if now is None else now
    db.execute(
        "INSERT OR IGNORE INTO incidents VALUES (?, 'open', ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        (
            context.incident_id,
            context.environment,
            context.service,
            context.alert.fingerprint,
            context.alert.starts_at,
            _redacted_context(context, redactor or configured_redactor()),
            flow_run_id,
            now,
            now,
        ),
    )


# --- the notification outbox (agent.notifications.notifier) -------------------------------


NotificationState = Literal["pending", "sent", "failed"]


def read_cursor_in(db: sqlite3.Connection, name: str) -> int | None:
    row = db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def read_cursor(path: Path, name: str) -> int | None:
    with connect(path) as db:
        return read_cursor_in(db, name)


def write_cursor(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute(
        "INSERT INTO cursors (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def events_batch(path: Path, after_id: int, limit: int) -> list[sqlite3.Row]:
    with connect(path) as db:
        return db.execute(
            "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()


def max_event_id_in(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


def max_event_id(path: Path) -> int:
    with connect(path) as db:
        return max_event_id_in(db)


def insert_notification(
    db: sqlite3.Connection,
    sink: str,
    event: str,
    incident_id: str,
    dedup: str,
    payload: str,
    now: float,
) -> bool:
    """Queue one message; False when the same one is already queued or sent."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO notifications (sink, event, incident_id, dedup, payload, state,"
        " attempts, next_attempt_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        (sink, event, incident_id, dedup, payload, now, now, now),
    )
    return cursor.rowcount == 1


def claim_notifications(
    path: Path, sink: str, now: float, limit: int, lease_until: float
) -> list[sqlite3.Row]:
    """Due messages of a sink, leased to the caller until `lease_until` (another service on
    the same store does not send them too; a caller that dies lets the lease run out)."""
    with write_transaction(path) as db:
        rows = db.execute(
            "SELECT * FROM notifications WHERE sink = ? AND state = 'pending'"
            " AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (sink, now, limit),
        ).fetchall()
        db.executemany(
            "UPDATE notifications SET next_attempt_at = ? WHERE id = ?",
            [(lease_until, row["id"]) for row in rows],
        )
        return rows


def finish_notification(
    path: Path,
    notification_id: int,
    state: NotificationState,
    attempts: int,
    next_attempt_at: float,
    error: str | None,
    status_code: int | None,
    now: float,
) -> None:
    with write_transaction(path) as db:
        db.execute(
            "UPDATE notifications SET state = ?, attempts = ?, next_attempt_at = ?,"
            " last_error = ?, status_code = ?, updated_at = ? WHERE id = ?",
            (state, attempts, next_attempt_at, error, status_code, now, notification_id),
        )


def notification_summary(path: Path) -> list[sqlite3.Row]:
    """Per sink and state: how many, the oldest pending, the last error and when."""
    with connect(path) as db:
        return db.execute(
            "SELECT sink, state, COUNT(*) AS count, MIN(created_at) AS oldest,"
            " MAX(updated_at) AS latest FROM notifications GROUP BY sink, state"
        ).fetchall()


def last_notification(path: Path, sink: str) -> sqlite3.Row | None:
    """The sink's latest finished or retried delivery (its health)."""
    with connect(path) as db:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM notifications WHERE sink = ? AND (state != 'pending' OR attempts > 0)"
            " ORDER BY updated_at DESC LIMIT 1",
            (sink,),
        ).fetchone()
        return row


def approvals_to_warn(path: Path, before: float) -> list[sqlite3.Row]:
    """Pending approval requests that expire before `before` and were not warned about."""
    with connect(path) as db:
        return db.execute(
            "SELECT incident_id, step_key FROM approvals WHERE status = 'pending'"
            " AND warned_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?"
            " AND expires_at > ?",
            (before, time.time()),
        ).fetchall()


def mark_warned(db: sqlite3.Connection, incident_id: str, step_key: str, now: float) -> None:
    db.execute(
        "UPDATE approvals SET warned_at = ? WHERE incident_id = ? AND step_key = ?",
        (now, incident_id, step_key),
    )


# --- the event log (agent.incidents.events) --------------------------------------------


def insert_event(
    path: Path,
    at: float,
    type_: str,
    incident_id: str | None,
    data: str,
    db: sqlite3.Connection | None = None,
) -> None:
    """An event row (`data` is JSON); inside `db`'s transaction when given."""
    execute(
        path,
        "INSERT INTO events (at, type, incident_id, data) VALUES (?, ?, ?, ?)",
        (at, type_, incident_id, data),
        db,
    )


def events_after(
    path: Path, after_id: int, limit: int, incident_id: str | None = None
) -> list[sqlite3.Row]:
    """Events with an id above `after_id`, oldest first, of one incident when given."""
    query = "SELECT * FROM events WHERE id > ?"
    values: list[Any] = [after_id]
    if incident_id is not None:
        query += " AND incident_id = ?"
        values.append(incident_id)
    with connect(path) as db:
        return db.execute(query + " ORDER BY id LIMIT ?", (*values, limit)).fetchall()


def last_event_id(path: Path) -> int:
    with connect(path) as db:
        row = db.execute("SELECT MAX(id) FROM events").fetchone()
    return int(row[0] or 0)


# --- the audit trail (agent.incidents.audit) -------------------------------------------


def insert_audit(
    path: Path,
    at: float,
    actor: str,
    action: str,
    target: str | None,
    parameters: str,
    result: str,
    incident_id: str | None,
    request_id: str | None,
    db: sqlite3.Connection | None = None,
) -> None:
    """An audit row (`parameters` is JSON, already masked); inside `db`'s transaction when
    given."""
    execute(
        path,
        "INSERT INTO audit (at, actor, action, target, parameters, result, incident_id,"
        " request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (at, actor, action, target, parameters, result, incident_id, request_id),
        db,
    )


def audit_rows(
    path: Path,
    incident_id: str | None,
    actor: str | None,
    action: str | None,
    since: float | None,
    limit: int,
) -> list[sqlite3.Row]:
    """Audit rows matching the filters that are not None, newest first."""
    where, values = where_clause(
        (
            ("incident_id = ?", incident_id),
            ("actor = ?", actor),
            ("action = ?", action),
            ("at >= ?", since),
        )
    )
    with connect(path) as db:
        return db.execute(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed clauses
            (*values, limit),
        ).fetchall()


# --- alerts and deliveries (agent.service.intake), inside the webhook's transaction ----


def insert_delivery(
    db: sqlite3.Connection,
    at: float,
    request_id: str,
    source: str,
    receiver: str,
    group_key: str,
    status: str,
    alerts: int,
    truncated_alerts: int,
    summary: str,
) -> None:
    """One received notification (`summary` is JSON)."""
    db.execute(
        "INSERT INTO deliveries (at, request_id, source, receiver, group_key, status,"
        " alerts, truncated_alerts, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (at, request_id, source, receiver, group_key, status, alerts, truncated_alerts, summary),
    )


def alert_by_key(db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM alerts WHERE key = ?", (key,)).fetchone()
    return row


def insert_alert(
    db: sqlite3.Connection,
    key: str,
    fingerprint: str,
    starts_at: str,
    state: str,
    labels: str,
    annotations: str,
    ends_at: str | None,
    generator_url: str,
    receiver: str,
    group_key: str,
    environment: str | None,
    target: str | None,
    reason: str | None,
    incident_id: str | None,
    now: float,
    resolved_at: float | None,
    request_id: str,
    truncated: str | None = None,
    redactor: Redactor | None = None,
) -> None:
    """A first delivery of an alert (`labels`, `annotations` and `truncated` are JSON); what
    the alert says is stored redacted (labels, annotations, generator URL, group key)."""
    redact = redactor or configured_redactor()
    labels, annotations = _redacted_json(labels, redact), _redacted_json(annotations, redact)
    generator_url, group_key = redact(generator_url), redact(group_key)
    db.execute(
        "INSERT INTO alerts (key, fingerprint, starts_at, state, labels, annotations, ends_at,"
        " generator_url, receiver, group_key, environment, target, reason, incident_id,"
        " deliveries, first_seen, last_seen, resolved_at, request_id, truncated)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
        (
            key,
            fingerprint,
            starts_at,
            state,
            labels,
            annotations,
            ends_at,
            generator_url,
            receiver,
            group_key,
            environment,
            target,
            reason,
            incident_id,
            now,
            now,
            resolved_at,
            request_id,
            truncated,
        ),
    )


def insert_invalid_alert(
    db: sqlite3.Connection, at: float, request_id: str, position: int, reason: str, body: str
) -> None:
    db.execute(
        "INSERT INTO invalid_alerts (at, request_id, position, reason, body)"
        " VALUES (?, ?, ?, ?, ?)",
        (at, request_id, position, reason, body),
    )


def count_alert_delivery(db: sqlite3.Connection, key: str, now: float) -> None:
    """One more delivery of a known alert."""
    db.execute(
        "UPDATE alerts SET deliveries = deliveries + 1, last_seen = ? WHERE key = ?",
        (now, key),
    )


def set_alert_annotations(
    db: sqlite3.Connection, key: str, annotations: str, redactor: Redactor | None = None
) -> None:
    stored = _redacted_json(annotations, redactor or configured_redactor())
    db.execute("UPDATE alerts SET annotations = ? WHERE key = ?", (stored, key))


def _redacted_json(text: str, redactor: Redactor) -> str:
    """A JSON document with every string in it redacted (text that is no JSON: redacted)."""
    try:
        value = json.loads(text)
    except ValueError:
        return redactor(text)
    return json.dumps(redactor.data(value))


def resolve_alert(db: sqlite3.Connection, key: str, ends_at: str | None, now: float) -> None:
    db.execute(
        "UPDATE alerts SET state = 'resolved', ends_at = ?, resolved_at = ? WHERE key = ?",
        (ends_at, now, key),
    )


def touch_incident(db: sqlite3.Connection, incident_id: str, now: float) -> None:
    db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (now, incident_id))


def resolve_incident(db: sqlite3.Connection, incident_id: str, now: float) -> None:
    """The incident's alert resolved: the incident is resolved, whatever its status was."""
    db.execute(
        "UPDATE incidents SET status = 'resolved', updated_at = ? WHERE id = ?",
        (now, incident_id),
    )


def set_flow_run(db: sqlite3.Connection, incident_id: str, flow_run_id: str, now: float) -> None:
    """The flow run the outbox started for the incident."""
    db.execute(
        "UPDATE incidents SET flow_run_id = ?, updated_at = ? WHERE id = ?",
        (flow_run_id, now, incident_id),
    )


# --- the dispatch outbox (agent.service.intake, agent.service.dispatch) ---------------


def insert_dispatch(
    db: sqlite3.Connection,
    kind: str,
    key: str,
    incident_id: str,
    payload: str,
    now: float,
) -> None:
    """An outbox row (`payload` is JSON), at most one per (kind, key)."""
    db.execute(
        "INSERT OR IGNORE INTO dispatch (kind, key, incident_id, payload, state, attempts,"
        " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        (kind, key, incident_id, payload, now, now, now),
    )


def skip_pending_diagnosis(db: sqlite3.Connection, key: str, now: float) -> None:
    """The alert resolved: its diagnosis, if not yet started, is not started."""
    db.execute(
        "UPDATE dispatch SET state = 'skipped', result = 'alert resolved before dispatch',"
        " updated_at = ? WHERE kind = 'diagnose' AND key = ? AND state = 'pending'",
        (now, key),
    )


def dispatch_done(db: sqlite3.Connection, dispatch_id: int, result: str, now: float) -> None:
    db.execute(
        "UPDATE dispatch SET state = 'done', result = ?, attempts = attempts + 1,"
        " updated_at = ? WHERE id = ?",
        (result, now, dispatch_id),
    )


def dispatch_failed(
    db: sqlite3.Connection,
    dispatch_id: int,
    attempts: int,
    next_attempt_at: float,
    error: str,
    now: float,
) -> None:
    """A failed attempt: retried at `next_attempt_at`."""
    db.execute(
        "UPDATE dispatch SET attempts = ?, next_attempt_at = ?, last_error = ?,"
        " updated_at = ? WHERE id = ?",
        (attempts, next_attempt_at, error, now, dispatch_id),
    )


# --- metrics (agent.service.metrics) ----------------------------------------------------


class MetricRows(NamedTuple):
    """What `GET /metrics` reads from the store: aggregates only, computed by SQLite.

    The event log and the audit trail only grow (the audit is append-only by trigger, events
    are never deleted, and both get their ids in commit order), so what is counted from them
    comes per range of ids: `events`, `operations`, `gate_*` cover the ids after the ones the
    caller already counted, up to `last_event_id` and `last_audit_id`. A scrape then reads
    only what is new. Histogram rows end in one cumulative count per bucket, columns `b0`,
    `b1`, ... in the order of the buckets asked for."""

    last_event_id: int
    last_audit_id: int
    incidents: sqlite3.Row  # opened (COUNT(*)), resolved
    by_status: list[sqlite3.Row]  # environment, status, count
    approvals: list[sqlite3.Row]  # environment, status, count, oldest (created_at)
    pending_dispatch: sqlite3.Row  # count, oldest (created_at)
    diagnosis: list[sqlite3.Row]  # environment, count, seconds, b*
    writes: list[sqlite3.Row]  # environment, state, count
    # New since the given ids:
    events: list[sqlite3.Row]  # type, count, last (at), calls, prompt, completion, cost
    operations: list[sqlite3.Row]  # environment, operation, outcome, count, timed, seconds, b*
    gate_writes: list[sqlite3.Row]  # environment, outcome, count
    gate_refusals: list[sqlite3.Row]  # environment, risk, reason, count


def _bucket_columns(value: str, buckets: tuple[float, ...]) -> str:
    """`, TOTAL(value <= ?) AS b0, ...`: one placeholder per bucket (bound by the caller)."""
    return "".join(f", TOTAL({value} <= ?) AS b{i}" for i in range(len(buckets)))


def metric_rows(
    path: Path,
    operation_buckets: tuple[float, ...],
    diagnosis_buckets: tuple[float, ...],
    after_event_id: int = 0,
    after_audit_id: int = 0,
) -> MetricRows:
    """One read transaction, so every figure of a scrape comes from the same snapshot."""
    with connect(path) as db:
        db.execute("BEGIN")
        try:
            return _metric_rows(
                db, operation_buckets, diagnosis_buckets, after_event_id, after_audit_id
            )
        finally:
            db.execute("COMMIT")


def _metric_rows(
    db: sqlite3.Connection,
    operation_buckets: tuple[float, ...],
    diagnosis_buckets: tuple[float, ...],
    after_event_id: int,
    after_audit_id: int,
) -> MetricRows:
    last_event = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    last_audit = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])
    new_events = (after_event_id, last_event)
    new_audit = (after_audit_id, last_audit)
    incidents = db.execute(
        "SELECT COUNT(*) AS opened, TOTAL(status = 'resolved') AS resolved FROM incidents"
    ).fetchone()
    by_status = db.execute(
        "SELECT environment, status, COUNT(*) AS count FROM incidents GROUP BY environment, status"
    ).fetchall()
    approvals = db.execute(
        "SELECT COALESCE(json_extract(step, '$.environment'), '') AS environment, status,"
        " COUNT(*) AS count, MIN(created_at) AS oldest FROM approvals GROUP BY 1, 2"
    ).fetchall()
    dispatch = db.execute(
        "SELECT COUNT(*) AS count, MIN(created_at) AS oldest FROM dispatch WHERE state = 'pending'"
    ).fetchone()
    # From the first delivery of the alert that opened an incident to the end of the
    # incident's first diagnosis (its first incident.diagnosed event). Incidents no alert
    # opened (operation requests, the health sweep) have no such time.
    diagnosis = db.execute(
        "SELECT i.environment AS environment, COUNT(*) AS count, TOTAL(d.seconds) AS seconds"  # noqa: S608 - bucket placeholders only
        + _bucket_columns("d.seconds", diagnosis_buckets)
        + " FROM (SELECT e.incident_id AS incident_id, MAX(0, MIN(e.at) - (SELECT"
        " MIN(a.first_seen) FROM alerts a WHERE a.incident_id = e.incident_id)) AS seconds"
        " FROM events e WHERE e.type = 'incident.diagnosed' AND e.incident_id IS NOT NULL"
        " GROUP BY e.incident_id) d JOIN incidents i ON i.id = d.incident_id"
        " WHERE d.seconds IS NOT NULL GROUP BY i.environment",
        diagnosis_buckets,
    ).fetchall()
    writes = db.execute(
        "SELECT environment, state, COUNT(*) AS count FROM writes GROUP BY environment, state"
    ).fetchall()
    # The counts by type and what the LLM calls spent, in one pass (an llm.call event sums
    # the calls of one planning phase: `calls`, else one).
    events = db.execute(
        "SELECT type, COUNT(*) AS count, MAX(at) AS last,"
        " TOTAL(CASE WHEN type = 'llm.call' THEN COALESCE(json_extract(data, '$.calls'), 1) END)"
        " AS calls,"
        " TOTAL(CASE WHEN type = 'llm.call' THEN json_extract(data, '$.prompt_tokens') END)"
        " AS prompt,"
        " TOTAL(CASE WHEN type = 'llm.call' THEN json_extract(data, '$.completion_tokens') END)"
        " AS completion,"
        " TOTAL(CASE WHEN type = 'llm.call' THEN json_extract(data, '$.cost') END) AS cost"
        " FROM events WHERE id > ? AND id <= ? GROUP BY type",
        new_events,
    ).fetchall()
    # Materialized: each event's JSON is read once, not once per bucket column.
    operations = db.execute(
        "WITH finished AS MATERIALIZED (SELECT"  # noqa: S608 - bucket placeholders only
        " COALESCE(json_extract(data, '$.environment'), '') AS environment,"
        " COALESCE(json_extract(data, '$.operation'), '') AS operation,"
        " COALESCE(json_extract(data, '$.outcome'), '') AS outcome,"
        " json_extract(data, '$.duration_seconds') AS raw"
        " FROM events WHERE id > ? AND id <= ? AND type = 'operation.finished'),"
        " timed AS (SELECT environment, operation, outcome,"
        " CASE WHEN typeof(raw) IN ('integer', 'real') THEN raw END AS seconds FROM finished)"
        " SELECT environment, operation, outcome, COUNT(*) AS count, COUNT(seconds) AS timed,"
        " TOTAL(seconds) AS seconds"
        + _bucket_columns("seconds", operation_buckets)
        + " FROM timed GROUP BY environment, operation, outcome",
        (*new_events, *operation_buckets),
    ).fetchall()
    # The gate's audit rows (agent/safety/gate.py): an operation it sent is journaled with its
    # risk and a result that starts with the outcome ("success", "retryable: ..."); one it
    # refused has `refused_by`.
    gate_writes = db.execute(
        "SELECT substr(target, 1, instr(target, '/') - 1) AS environment,"
        " CASE WHEN instr(result, ':') > 0 THEN substr(result, 1, instr(result, ':') - 1)"
        " ELSE result END AS outcome, COUNT(*) AS count FROM audit"
        " WHERE id > ? AND id <= ? AND action LIKE 'operation.%' AND instr(target, '/') > 0"
        " AND json_extract(parameters, '$.risk') IN ('write', 'destructive')"
        " AND json_extract(parameters, '$.refused_by') IS NULL GROUP BY 1, 2",
        new_audit,
    ).fetchall()
    gate_refusals = db.execute(
        "SELECT substr(target, 1, instr(target, '/') - 1) AS environment,"
        " COALESCE(json_extract(parameters, '$.risk'), 'unknown') AS risk,"
        " json_extract(parameters, '$.refused_by') AS reason, COUNT(*) AS count FROM audit"
        " WHERE id > ? AND id <= ? AND action LIKE 'operation.%' AND instr(target, '/') > 0"
        " AND json_extract(parameters, '$.refused_by') IS NOT NULL GROUP BY 1, 2, 3",
        new_audit,
    ).fetchall()
    return MetricRows(
        last_event,
        last_audit,
        incidents,
        by_status,
        approvals,
        dispatch,
        diagnosis,
        writes,
        events,
        operations,
        gate_writes,
        gate_refusals,
    )


def _redacted_context(context: IncidentContext, redactor: Redactor) -> str:
    alert = context.alert
    redacted = alert.model_copy(
        update={
            "labels": redactor.data(dict(alert.labels)),
            "annotations": redactor.data(dict(alert.annotations)),
        }
    )
    return context.model_copy(update={"alert": redacted}).model_dump_json()


class IncidentStore(RedactorHolder):
    """`redactor` redacts what the store keeps from outside (reports, alert labels and
    annotations); from_config builds it from the configuration, else it is the one of the
    configuration this process runs with (infrastructure/redaction.py)."""

    def __init__(self, path: Path | str, redactor: Redactor | None = None) -> None:
        self.path = Path(path)
        self._redactor = redactor
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
            _migrate(db)

    @classmethod
    def from_config(cls, config: UICIConfig) -> IncidentStore:
        return cls(sqlite_path(config.platform.storage.url), Redactor.from_config(config))

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
            insert_incident(db, context, flow_run_id, redactor=self.redactor)
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
        """Every stored report is redacted here, whoever built it: the one choke point."""
        stored = json.dumps(self.redactor.json_data(report))
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET report = ?, updated_at = ?,"
                " status = CASE WHEN status = 'resolved' AND EXISTS (SELECT 1 FROM alerts"
                " WHERE alerts.incident_id = incidents.id AND alerts.state = 'resolved')"
                " THEN status ELSE ? END WHERE id = ?",
                (stored, time.time(), status, incident_id),
            )

    # --- incident memory ----------------------------------------------------------------

    def record_diagnosis(
        self,
        incident_id: str,
        environment: str,
        service: str,
        failure_class: str,
        signature: str,
        root_cause: str,
        remediations: list[str],
        recovered: bool | None,
        at: float | None = None,
    ) -> None:
        """Remember one finished diagnosis (a re-run of the incident replaces its row)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO diagnoses (incident_id, environment, service,"
                " failure_class, signature, root_cause, remediations, recovered, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    incident_id,
                    environment,
                    service,
                    failure_class,
                    signature,
                    root_cause,
                    json.dumps(remediations),
                    None if recovered is None else int(recovered),
                    time.time() if at is None else at,
                ),
            )

    def record_remediation(
        self, incident_id: str, environment: str, target: str, cause: str, step: str
    ) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO remediations (incident_id, environment, target, cause, step, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (incident_id, environment, target, cause, step, time.time()),
            )

    def remediated_incidents(
        self, environment: str, target: str, cause: str, since: float, exclude_incident: str
    ) -> list[str]:
        """The incidents that remediated `cause` on `target` since `since`, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT incident_id, MIN(at) AS first FROM remediations WHERE environment = ?"
                " AND target = ? AND cause = ? AND at >= ? AND incident_id != ?"
                " GROUP BY incident_id ORDER BY first",
                (environment, target, cause, since, exclude_incident),
            ).fetchall()
        return [row["incident_id"] for row in rows]

    def diagnosis_time(self, incident_id: str) -> float | None:
        with self._db() as db:
            row = db.execute(
                "SELECT at FROM diagnoses WHERE incident_id = ?", (incident_id,)
            ).fetchone()
        return None if row is None else float(row["at"])

    def past_diagnoses(
        self,
        environment: str,
        service: str,
        failure_class: str | None = None,
        limit: int = 20,
        exclude_incident: str | None = None,
        since: float = 0.0,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Earlier diagnoses of the service (of one class), newest first; before `until` when
        given, and before the excluded incident's own diagnosis when it has one."""
        query = (
            "SELECT * FROM diagnoses WHERE environment = ? AND service = ? AND at >= ?"
            " AND incident_id != ? AND at < COALESCE(?, (SELECT at FROM diagnoses"
            " WHERE incident_id = ?), 1e300)"
        )
        arguments: list[Any] = [
            environment,
            service,
            since,
            exclude_incident or "",
            until,
            exclude_incident or "",
        ]
        if failure_class is not None:
            query += " AND failure_class = ?"
            arguments.append(failure_class)
        query += " ORDER BY at DESC LIMIT ?"
        arguments.append(limit)
        with self._db() as db:
            rows = db.execute(query, arguments).fetchall()
        return [
            {
                **dict(row),
                "remediations": json.loads(row["remediations"]),
                "recovered": None if row["recovered"] is None else bool(row["recovered"]),
            }
            for row in rows
        ]

    def alerts_of(self, incident_id: str) -> list[sqlite3.Row]:
        """The alerts that opened or repeated this incident."""
        with self._db() as db:
            return db.execute(
                "SELECT * FROM alerts WHERE incident_id = ?", (incident_id,)
            ).fetchall()

    def alert_resolved(self, incident_id: str) -> bool:
        """Whether the alert that opened this incident has resolved (no remediation then)."""
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM alerts WHERE incident_id = ? AND state = 'resolved'", (incident_id,)
            ).fetchone()
        return row is not None

    # --- approvals --------------------------------------------------------------------

    def request_approval(
        self,
        incident_id: str,
        step: PlanStep,
        command: str,
        expires_at: float | None = None,
        required: int = 1,
        requested_by: str | None = None,
        runner: str = "flow",
    ) -> None:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO approvals (incident_id, step_key, step, command, status,"
                " actor, reason, created_at, decided_at, expires_at, required, requested_by, via,"
                " runner, nonce)"
                " VALUES (?, ?, ?, ?, 'pending', NULL, NULL, ?, NULL, ?, ?, ?, NULL, ?, ?)",
                (
                    incident_id, step.key(), step.model_dump_json(), self.redactor(command), now,
                    expires_at, required, requested_by, runner, secrets.token_hex(16),
                ),
            )  # fmt: skip
            # A request asked again (a new run of the same step) starts with no answers.
            db.execute(
                "DELETE FROM approval_votes WHERE incident_id = ? AND step_key = ?",
                (incident_id, step.key()),
            )

    def decide_approval(
        self,
        incident_id: str,
        step_key: str,
        status: ApprovalStatus,
        actor: str,
        reason: str,
        via: str = "uici",
    ) -> bool:
        """Record the decision if the request is still pending; False if it was not."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE approvals SET status = ?, actor = ?, reason = ?, decided_at = ?, via = ?"
                " WHERE incident_id = ? AND step_key = ? AND status = 'pending'",
                (status, actor, self.redactor(reason), time.time(), via, incident_id, step_key),
            )
            return cursor.rowcount == 1

    def reopen_approval(self, incident_id: str, step_key: str, actor: str) -> bool:
        """Undo a decision `actor` recorded (the run could not be told): pending again.
        False when its runner already acted on it: then it stands."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE approvals SET status = 'pending', actor = NULL, reason = NULL,"
                " decided_at = NULL, via = NULL"
                " WHERE incident_id = ? AND step_key = ? AND actor = ? AND acted_at IS NULL",
                (incident_id, step_key, actor),
            )
            return cursor.rowcount == 1

    def claim_decision(self, incident_id: str, step_key: str) -> ApprovalRecord | None:
        """The decided request, taken up by this caller: from now on an undo no longer
        applies and nobody else can take it up. None while it is pending, or when another
        caller took it up already (a decision is acted on once)."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE approvals SET acted_at = ? WHERE incident_id = ? AND step_key = ?"
                " AND status != 'pending' AND acted_at IS NULL",
                (time.time(), incident_id, step_key),
            )
            if cursor.rowcount != 1:
                return None
        return self.approval(incident_id, step_key)

    def service_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        """Requests the service itself runs once approved (operation requests)."""
        with self._db() as db:
            ids = db.execute(
                "SELECT DISTINCT incident_id FROM approvals"
                " WHERE status = ? AND runner = 'service'",
                (status,),
            ).fetchall()
        return [
            a
            for (incident_id,) in ids
            for a in self.approvals(incident_id, status)
            if a.runner == "service"
        ]

    def approval(self, incident_id: str, step_key: str) -> ApprovalRecord | None:
        return next((a for a in self.approvals(incident_id) if a.step_key == step_key), None)

    def record_vote(
        self,
        incident_id: str,
        step_key: str,
        approver: str,
        approve: bool,
        via: str,
        address: str | None,
        reason: str,
    ) -> bool:
        """One person's answer; False if this person already answered this request."""
        with self._db() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO approval_votes (incident_id, step_key, approver, approve,"
                " via, address, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    incident_id,
                    step_key,
                    approver,
                    int(approve),
                    via,
                    address,
                    self.redactor(reason),
                    time.time(),
                ),
            )
            return cursor.rowcount == 1

    def withdraw_vote(self, incident_id: str, step_key: str, approver: str) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM approval_votes"
                " WHERE incident_id = ? AND step_key = ? AND approver = ?",
                (incident_id, step_key, approver),
            )

    def votes(self, incident_id: str, step_key: str) -> list[ApprovalVote]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM approval_votes WHERE incident_id = ? AND step_key = ? ORDER BY at",
                (incident_id, step_key),
            ).fetchall()
        return [
            ApprovalVote(
                approver=r["approver"],
                approve=bool(r["approve"]),
                via=r["via"],
                address=r["address"],
                reason=r["reason"],
                at=r["at"],
            )
            for r in rows
        ]

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
                expires_at=r["expires_at"],
                required=r["required"],
                requested_by=r["requested_by"],
                via=r["via"],
                runner=r["runner"],
                acted_at=r["acted_at"],
                nonce=r["nonce"],
            )
            for r in rows
        ]

    # --- writes: intents, outcomes, history ------------------------------------------

    def begin_write(
        self,
        record: WriteRecord,
        window_start: float,
        check: Callable[[WriteFacts], str | None],
        history_start: float | None = None,
    ) -> str | None:
        """Record a write before it is sent, unless `check` (the policy) refuses it given the
        history: both in one BEGIN IMMEDIATE transaction, so two writers racing for one target
        cannot both pass. Returns the refusal, or None when recorded."""
        with self.transaction() as db:
            facts = self._write_facts(db, record, window_start, history_start)
            refusal = check(facts)
            if refusal is not None:
                return refusal
            inserted = db.execute(
                "INSERT OR IGNORE INTO writes"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, NULL, NULL, ?)",
                (
                    record.key,
                    record.incident_id,
                    record.step.environment,
                    record.step.operation,
                    record.step.target,
                    record.step.model_dump_json(),
                    record.actor,
                    record.entry,
                    record.recorded_at,
                    record.owner,
                ),
            )
            if inserted.rowcount == 0:
                return DUPLICATE_KEY  # another caller recorded this very write first
            db.executemany(
                "INSERT OR IGNORE INTO write_targets VALUES (?, ?, ?, ?, ?)",
                [
                    (record.key, record.step.environment, t.identity, t.name, record.recorded_at)
                    for t in record.targets
                ],
            )
        return None

    def write_facts(
        self, record: WriteRecord, window_start: float, history_start: float | None = None
    ) -> WriteFacts:
        with self._db() as db:
            return self._write_facts(db, record, window_start, history_start)

    def _write_facts(
        self,
        db: sqlite3.Connection,
        record: WriteRecord,
        window_start: float,
        history_start: float | None = None,
    ) -> WriteFacts:
        """`window_start`: writes since then count per target; `history_start` (default the
        window's start): older finished writes are not read at all."""
        since = window_start if history_start is None else min(window_start, history_start)
        sent = ",".join(f"'{s}'" for s in SENT_STATES)
        incident_writes = 0
        if record.incident_id is not None:
            incident_writes = db.execute(
                f"SELECT COUNT(*) FROM writes WHERE incident_id = ? AND state IN ({sent})",  # noqa: S608 - fixed states
                (record.incident_id,),
            ).fetchone()[0]
        identities = [t.identity for t in record.targets]
        marks = ",".join("?" for _ in identities)
        # Only placeholders are formatted into the query.
        on_targets = (
            "SELECT DISTINCT w.* FROM writes w JOIN write_targets t ON t.write_key = w.key"  # noqa: S608
            " WHERE t.environment = ? AND t.identity IN (" + marks + ") AND w.key != ?"
        )
        values = (record.step.environment, *identities, record.key)
        rows = (
            []
            if not identities
            else db.execute(
                f"{on_targets} AND (w.recorded_at >= ? OR w.state IN ('pending', 'unknown'))"
                " ORDER BY w.recorded_at DESC",
                (*values, since),
            ).fetchall()
        )
        writes = [self._write(db, row) for row in rows]
        finished = [w for w in writes if w.state in ("done", "unknown")]
        return WriteFacts(
            incident_writes=int(incident_writes),
            last_write=finished[0] if finished else None,
            writes_in_window=sum(1 for w in writes if w.recorded_at >= window_start),
            in_progress=[w for w in writes if w.state == "pending"],
            unresolved=[w for w in writes if w.state == "unknown"],
        )

    def claim_write(self, key: str, owner: str, new_owner: str) -> bool:
        """Take over a pending write whose process is gone: only one caller wins."""
        with self._db() as db:
            changed = db.execute(
                "UPDATE writes SET owner = ? WHERE key = ? AND state = 'pending' AND owner = ?",
                (new_owner, key, owner),
            ).rowcount
        return changed == 1

    def still_owner(self, key: str, owner: str) -> bool:
        """Right before a write is sent: is it still pending and ours (nobody took it over)?"""
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM writes WHERE key = ? AND owner = ? AND state = 'pending'",
                (key, owner),
            ).fetchone()
        return row is not None

    def write(self, key: str) -> WriteRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM writes WHERE key = ?", (key,)).fetchone()
            return None if row is None else self._write(db, row)

    def finish_write(self, key: str, state: WriteState, outcome: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE writes SET state = ?, finished_at = ?, outcome = ? WHERE key = ?",
                (state, time.time(), json.dumps(outcome, default=str), key),
            )

    def writes(
        self,
        state: WriteState | None = None,
        incident_id: str | None = None,
        limit: int = 100,
    ) -> list[WriteRecord]:
        where, values = where_clause((("state = ?", state), ("incident_id = ?", incident_id)))
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM writes {where} ORDER BY recorded_at DESC LIMIT ?",  # noqa: S608 - fixed column names
                (*values, limit),
            ).fetchall()
            return [self._write(db, row) for row in rows]

    def writes_in_incident(self, incident_id: str) -> int:
        sent = ",".join(f"'{s}'" for s in SENT_STATES)
        with self._db() as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM writes WHERE incident_id = ? AND state IN ({sent})",  # noqa: S608 - fixed states
                (incident_id,),
            ).fetchone()
        return int(row[0])

    @staticmethod
    def _write(db: sqlite3.Connection, row: sqlite3.Row) -> WriteRecord:
        targets = db.execute(
            "SELECT identity, name FROM write_targets WHERE write_key = ? ORDER BY name",
            (row["key"],),
        ).fetchall()
        return WriteRecord(
            key=row["key"],
            incident_id=row["incident_id"],
            step=PlanStep.model_validate_json(row["step"]),
            state=row["state"],
            actor=row["actor"],
            entry=row["entry"],
            recorded_at=row["recorded_at"],
            finished_at=row["finished_at"],
            outcome=json.loads(row["outcome"]) if row["outcome"] else None,
            owner=row["owner"],
            targets=[ResolvedTarget(identity=r["identity"], name=r["name"]) for r in targets],
        )

    def covering(self, environment: str, services: list[str], since: float) -> list[IncidentRecord]:
        """Incidents on a service (under any of its names) that are unfinished, or were last
        updated at or after `since`, newest first: the health sweep opens no new one then."""
        if not services:
            return []
        names = ", ".join("?" for _ in services)
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM incidents WHERE environment = ? AND service IN ({names}) AND"  # noqa: S608 - placeholders only
                " (status IN ('open', 'diagnosing', 'awaiting_approval') OR updated_at >= ?)"
                " ORDER BY updated_at DESC",
                (environment, *services, since),
            ).fetchall()
        return [_incident(row) for row in rows]

    def attach_flow_run(self, incident_id: str, flow_run_id: str) -> None:
        """Name the flow run started for an incident, unless its run already named itself;
        the status is left as it is (the run may have moved it on already)."""
        with self._db() as db:
            db.execute(
                "UPDATE incidents SET flow_run_id = ? WHERE id = ? AND flow_run_id IS NULL",
                (flow_run_id, incident_id),
            )

    # --- the dispatch outbox and the readiness probe -------------------------------------

    def due_dispatch(self, now: float, limit: int) -> list[sqlite3.Row]:
        """Pending outbox rows whose next attempt is due, oldest first."""
        with self._db() as db:
            return db.execute(
                "SELECT * FROM dispatch WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()

    def probe_write(self) -> None:
        """Rewrite the readiness row in a write transaction: raises unless the store takes
        writes."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO readiness VALUES (1, ?)", (time.time(),))


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
