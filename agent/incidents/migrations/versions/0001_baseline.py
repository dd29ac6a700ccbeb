"""The baseline: the store as UICI 0.1 made it before migrations were versioned.

A store made by an older UICI (SQLite, created table by table at every start) already holds
some of it: what is missing is added (tables, indexes, the columns added since a table first
shipped), what is there is left as it is. The definitions below are frozen: a later change is
a new revision, never an edit here.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()
# SQLite needs exactly INTEGER for an id that is the rowid; PostgreSQL gets 64 bits.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Real = sa.Float(precision=53)


def _id() -> sa.Column[Any]:
    return sa.Column("id", Id, primary_key=True, autoincrement=True)


def _table(name: str, *columns: Any) -> sa.Table:
    # AUTOINCREMENT on SQLite: an id is never reused, as the metrics and the stream expect.
    return sa.Table(name, metadata, *columns, sqlite_autoincrement=True)


def text_(name: str, nullable: bool = True, default: str | None = None) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(f"'{default}'")
    return sa.Column(name, sa.Text, nullable=nullable, server_default=server_default)


def real(name: str, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, Real, nullable=nullable)


def integer(name: str, nullable: bool = True, default: int | None = None) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(str(default))
    return sa.Column(name, sa.Integer, nullable=nullable, server_default=server_default)


_table(
    "incidents",
    text_("id", False),
    text_("status", False),
    text_("environment", False),
    text_("service", False),
    text_("fingerprint"),
    text_("starts_at"),
    text_("context", False),
    text_("report"),
    text_("flow_run_id"),
    real("created_at", False),
    real("updated_at", False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("incidents_service", "environment", "service", "status"),
)
_table(
    "approvals",
    text_("incident_id", False),
    text_("step_key", False),
    text_("step", False),
    text_("command", False),
    text_("status", False),
    text_("actor"),
    text_("reason"),
    real("created_at", False),
    real("decided_at"),
    real("expires_at"),
    integer("required", False, 1),
    text_("requested_by"),
    text_("via"),
    text_("runner", False, "flow"),
    real("warned_at"),
    real("acted_at"),
    text_("nonce"),
    sa.PrimaryKeyConstraint("incident_id", "step_key"),
)
_table(
    "approval_votes",
    text_("incident_id", False),
    text_("step_key", False),
    text_("approver", False),
    integer("approve", False),
    text_("via", False),
    text_("address"),
    text_("reason"),
    real("at", False),
    sa.PrimaryKeyConstraint("incident_id", "step_key", "approver"),
)
_table(
    "alerts",
    text_("key", False),
    text_("fingerprint", False),
    text_("starts_at", False),
    text_("state", False),
    text_("labels", False),
    text_("annotations", False),
    text_("ends_at"),
    text_("generator_url"),
    text_("receiver"),
    text_("group_key"),
    text_("environment"),
    text_("target"),
    text_("reason"),
    text_("incident_id"),
    integer("deliveries", False),
    real("first_seen", False),
    real("last_seen", False),
    real("resolved_at"),
    text_("request_id"),
    text_("truncated"),
    sa.PrimaryKeyConstraint("key"),
    sa.Index("alerts_incident", "incident_id"),
)
_table(
    "invalid_alerts",
    _id(),
    real("at", False),
    text_("request_id", False),
    integer("position", False),
    text_("reason", False),
    text_("body", False),
)
_table(
    "deliveries",
    _id(),
    real("at", False),
    text_("request_id", False),
    text_("source"),
    text_("receiver"),
    text_("group_key"),
    text_("status"),
    integer("alerts", False),
    integer("truncated_alerts", False),
    text_("summary", False),
)
_table(
    "dispatch",
    _id(),
    text_("kind", False),
    text_("key", False),
    text_("incident_id", False),
    text_("payload", False),
    text_("state", False),
    integer("attempts", False, 0),
    real("next_attempt_at", False),
    text_("last_error"),
    text_("result"),
    real("created_at", False),
    real("updated_at", False),
    sa.UniqueConstraint("kind", "key"),
    sa.Index("dispatch_due", "state", "next_attempt_at"),
)
_table(
    "events",
    _id(),
    real("at", False),
    text_("type", False),
    text_("incident_id"),
    text_("data", False),
    # /metrics aggregates events by type at every scrape.
    sa.Index("events_type", "type", "id"),
)
_table(
    "audit",
    _id(),
    real("at", False),
    text_("actor", False),
    text_("action", False),
    text_("target"),
    text_("parameters", False),
    text_("result", False),
    text_("incident_id"),
    text_("request_id"),
    sa.Index("audit_incident", "incident_id"),
)
_table(
    "writes",
    text_("key", False),
    text_("incident_id"),
    text_("environment", False),
    text_("operation", False),
    text_("target"),
    text_("step", False),
    text_("state", False),
    text_("actor", False),
    text_("entry", False),
    real("recorded_at", False),
    real("finished_at"),
    text_("outcome"),
    text_("owner", False, ""),
    sa.PrimaryKeyConstraint("key"),
    sa.Index("writes_incident", "incident_id", "state"),
    sa.Index("writes_state", "state"),
)
_table(
    "write_targets",
    text_("write_key", False),
    text_("environment", False),
    text_("identity", False),
    text_("name", False),
    real("at", False),
    sa.PrimaryKeyConstraint("write_key", "identity"),
    sa.Index("write_targets_identity", "environment", "identity", "at"),
)
_table(
    "diagnoses",
    text_("incident_id", False),
    text_("environment", False),
    text_("service", False),
    text_("failure_class", False),
    text_("signature", False),
    text_("root_cause", False),
    text_("remediations", False),
    integer("recovered"),
    real("at", False),
    sa.PrimaryKeyConstraint("incident_id"),
    sa.Index("diagnoses_service", "environment", "service", "failure_class", "at"),
)
_table(
    "remediations",
    text_("incident_id", False),
    text_("environment", False),
    text_("target", False),
    text_("cause", False),
    text_("step", False),
    real("at", False),
    sa.Index("remediations_target", "environment", "target", "cause", "at"),
)
_table(
    "notifications",
    _id(),
    text_("sink", False),
    text_("event", False),
    text_("incident_id", False),
    text_("dedup", False),
    text_("payload", False),
    text_("state", False),
    integer("attempts", False, 0),
    real("next_attempt_at", False),
    text_("last_error"),
    integer("status_code"),
    real("created_at", False),
    real("updated_at", False),
    sa.UniqueConstraint("sink", "incident_id", "event", "dedup"),
    sa.Index("notifications_due", "state", "next_attempt_at"),
)
_table("cursors", text_("name", False), integer("value", False), sa.PrimaryKeyConstraint("name"))
_table("readiness", sa.Column("id", sa.Integer, primary_key=True), real("at"))

_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit"
    " BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
]
_POSTGRESQL_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION uici_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS"
    " $fn$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $fn$",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit"
    " FOR EACH ROW EXECUTE FUNCTION uici_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit"
    " FOR EACH STATEMENT EXECUTE FUNCTION uici_audit_append_only()",
]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing:
            table.create(bind)
            continue
        # A table an older UICI made: the columns added since, and any missing index.
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                op.add_column(
                    table.name,
                    sa.Column(
                        column.name,
                        column.type,
                        nullable=column.nullable,
                        server_default=column.server_default,
                    ),
                )
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(bind)
    triggers = _POSTGRESQL_APPEND_ONLY if bind.dialect.name == "postgresql" else _SQLITE_APPEND_ONLY
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: restore a backup instead")
