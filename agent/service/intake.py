"""Alertmanager alerts in: the webhook body, how an alert maps to an environment and a target,
and durable ingestion (one incident per fingerprint and startsAt, an outbox for dispatch).

Alertmanager's contract shapes everything here: delivery is at least once and every
notification repeats the whole group, so ingestion is idempotent; a payload may mix firing and
resolved alerts, so each alert's own status counts; a late firing after its resolve must not
reopen the incident; nothing is acknowledged before it is committed to the store.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.incidents.audit import AuditLog
from agent.incidents.context import LabelConventions, UnmappedAlert
from agent.incidents.events import EventLog
from agent.incidents.models import AlertInfo, IncidentContext
from agent.incidents.storage import (
    IncidentStore,
    alert_by_key,
    count_alert_delivery,
    insert_alert,
    insert_delivery,
    insert_dispatch,
    insert_incident,
    resolve_alert,
    resolve_incident,
    set_alert_annotations,
    skip_pending_diagnosis,
    touch_incident,
)
from infrastructure.configuration.loader import UICIConfig
from infrastructure.registry import OperationRegistry

MAX_ALERTS_PER_NOTIFICATION = 10_000
_LABEL_VALUE_LIMIT = 4096


def _utc_iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class AlertmanagerAlert(BaseModel):
    """One alert of a notification. Unknown fields (newer Alertmanager, Grafana) are kept."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str | None = Field(default=None, max_length=256)

    @field_validator("labels", "annotations")
    @classmethod
    def _bounded_values(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if len(key) > 256 or len(text) > _LABEL_VALUE_LIMIT:
                raise ValueError(f"label or annotation {key[:40]!r} is longer than allowed")
        return value

    @property
    def starts_at(self) -> str:
        return _utc_iso(self.startsAt)

    @property
    def ends_at(self) -> str | None:
        # A firing alert carries 0001-01-01T00:00:00Z: "no end yet", not a time.
        if self.endsAt is None or self.endsAt.year <= 1:
            return None
        return _utc_iso(self.endsAt)

    @property
    def identity(self) -> str:
        """Alertmanager's fingerprint, or a hash of the labels when a sender gives none."""
        if self.fingerprint:
            return self.fingerprint
        canonical = json.dumps(sorted(self.labels.items()))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        """One firing episode of one alert: the deduplication and idempotency key."""
        return f"{self.identity}@{self.starts_at}"


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"] = Field(description="Alertmanager's webhook payload version.")
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS_PER_NOTIFICATION)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0, le=2**31 - 1)  # SQLite integers are 64-bit


class Mapping(BaseModel):
    environment: str
    target: str
    dependencies: list[str] = Field(default_factory=list)


class Unmapped(BaseModel):
    reason: str


class AlertMapper:
    """platform.yml `alerts`: labels -> (environment, target), or the reason there is none.
    The label conventions are the incident flow's and the sweep's (LabelConventions); this
    adds what the webhook checks before it opens an incident: the environment is configured
    and enabled, and the target and dependencies are valid target names."""

    def __init__(self, config: UICIConfig) -> None:
        self.conventions = LabelConventions.from_config(config)
        self.environments = config.environments.environments
        self.registry = OperationRegistry.from_config(config)

    def map(self, labels: dict[str, str]) -> Mapping | Unmapped:
        try:
            found = self.conventions.map(labels)
        except UnmappedAlert as exc:
            return Unmapped(reason=exc.reason)
        spec = self.environments.get(found.environment)
        if spec is None:
            return Unmapped(reason=f"environment {found.environment[:80]!r} is not configured")
        if not spec.enabled:
            return Unmapped(reason=f"environment {found.environment!r} is disabled")
        problem = self.registry.target_problem(found.target)
        if problem:
            return Unmapped(reason=problem)
        if any(self.registry.target_problem(d) for d in found.dependencies):
            declared = self.conventions.declared_dependencies(labels)
            return Unmapped(reason=f"invalid dependency list {declared[:80]!r}")
        return Mapping(
            environment=found.environment, target=found.target, dependencies=found.dependencies
        )


def incident_id_for(alert_key: str) -> str:
    return "am-" + hashlib.sha256(alert_key.encode()).hexdigest()[:16]


AlertOutcome = Literal[
    "new_incident", "repeat", "resolved", "repeat_resolved", "late_firing", "resolved_unknown",
    "unmapped",
]  # fmt: skip


class AlertDisposition(BaseModel):
    fingerprint: str
    starts_at: str
    status: str
    outcome: AlertOutcome
    incident_id: str | None = None
    reason: str | None = None


class IngestResult(BaseModel):
    """The webhook's answer: what became of each alert of the notification."""

    request_id: str
    received: int
    truncated_alerts: int
    new_incidents: list[str]
    resolved_incidents: list[str]
    alerts: list[AlertDisposition]


class AlertIngestor:
    """Stores a notification in one transaction: alerts, incidents, outbox rows, events and
    the audit record commit together or not at all."""

    def __init__(self, config: UICIConfig, store: IncidentStore) -> None:
        self.mapper = AlertMapper(config)
        self.store = store
        # Labels only UICI's own health sweep sets: an alert from outside cannot claim to come
        # from the sweep, nor pick a runbook by a state UICI never observed.
        sweep = config.agents.health_sweep
        self.reserved = {sweep.source_label, sweep.observed_state_label}
        self.events = EventLog(store.path)
        self.audit = AuditLog(store.path)

    def ingest(
        self, payload: AlertmanagerWebhook, request_id: str, actor: str, source: str
    ) -> IngestResult:
        dispositions: list[AlertDisposition] = []
        now = time.time()
        with self.store.transaction() as db:
            for given in payload.alerts:
                labels = {k: v for k, v in given.labels.items() if k not in self.reserved}
                alert = given.model_copy(update={"labels": labels})
                dispositions.append(self._one(db, alert, payload, request_id, now))
            result = IngestResult(
                request_id=request_id,
                received=len(payload.alerts),
                truncated_alerts=payload.truncatedAlerts,
                new_incidents=[d.incident_id for d in dispositions if d.outcome == "new_incident"],
                resolved_incidents=[
                    d.incident_id for d in dispositions if d.outcome == "resolved" and d.incident_id
                ],
                alerts=dispositions,
            )
            counts: dict[str, int] = {}
            for d in dispositions:
                counts[d.outcome] = counts.get(d.outcome, 0) + 1
            summary = {
                "outcomes": counts,
                "truncated_alerts": payload.truncatedAlerts,
                "group_key": payload.groupKey[:200],
            }
            insert_delivery(
                db,
                now,
                request_id,
                source,
                payload.receiver[:200],
                payload.groupKey[:500],
                payload.status,
                len(payload.alerts),
                payload.truncatedAlerts,
                json.dumps(summary),
            )
            result_text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "empty"
            if payload.truncatedAlerts:
                result_text += f"; truncated: {payload.truncatedAlerts} alerts not in the list"
            self.audit.record(
                actor,
                "webhook.alertmanager",
                result_text,
                target=payload.receiver[:200] or None,
                parameters={"alerts": len(payload.alerts), "group_key": payload.groupKey[:200]},
                request_id=request_id,
                db=db,
            )
        return result

    def _one(
        self,
        db: sqlite3.Connection,
        alert: AlertmanagerAlert,
        payload: AlertmanagerWebhook,
        request_id: str,
        now: float,
    ) -> AlertDisposition:
        key = alert.key
        base = {"fingerprint": alert.identity, "starts_at": alert.starts_at, "status": alert.status}
        row = alert_by_key(db, key)
        if row is not None:
            return self._known(db, row, alert, base, now)
        if alert.status == "resolved":
            # Resolved before we ever saw it firing (or it resolved within group_wait): record it.
            self._insert(db, alert, payload, "resolved", None, None, request_id, now)
            return AlertDisposition(**base, outcome="resolved_unknown")
        mapping = self.mapper.map(alert.labels)
        if isinstance(mapping, Unmapped):
            self._insert(db, alert, payload, "unmapped", None, mapping.reason, request_id, now)
            self.events.emit(
                "alert.unmapped",
                None,
                db,
                fingerprint=alert.identity,
                alertname=alert.labels.get("alertname", ""),
                reason=mapping.reason,
            )
            return AlertDisposition(**base, outcome="unmapped", reason=mapping.reason)
        incident_id = incident_id_for(key)
        self._insert(db, alert, payload, "firing", mapping, None, request_id, now, incident_id)
        context = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(
                labels=alert.labels,
                annotations=alert.annotations,
                status="firing",
                fingerprint=alert.identity,
                starts_at=alert.starts_at,
            ),
            environment=mapping.environment,
            service=mapping.target,
            dependencies=mapping.dependencies,
        )
        insert_incident(db, context, now=now)
        parameters = {
            "alert": {
                "status": "firing",
                "labels": alert.labels,
                "annotations": alert.annotations,
                "fingerprint": alert.identity,
                "startsAt": alert.starts_at,
            },
            "incident_id": incident_id,
            "environment": mapping.environment,
            "service": mapping.target,
            "dependencies": mapping.dependencies,
            "request_id": request_id,
        }
        enqueue(db, "diagnose", key, incident_id, parameters, now)
        self.events.emit(
            "incident.created",
            incident_id,
            db,
            environment=mapping.environment,
            service=mapping.target,
            alertname=alert.labels.get("alertname", ""),
            fingerprint=alert.identity,
            request_id=request_id,
        )
        return AlertDisposition(**base, outcome="new_incident", incident_id=incident_id)

    def _known(
        self,
        db: sqlite3.Connection,
        row: sqlite3.Row,
        alert: AlertmanagerAlert,
        base: dict[str, Any],
        now: float,
    ) -> AlertDisposition:
        incident_id = row["incident_id"]
        count_alert_delivery(db, row["key"], now)
        state = row["state"]
        if state == "unmapped":
            return AlertDisposition(**base, outcome="unmapped", reason=row["reason"])
        if alert.status == "firing":
            if state == "resolved":
                # Out of order (retries, HA peers): a firing older than the resolve changes nothing.
                self.events.emit("alert.ignored", incident_id, db, reason="firing after resolved")
                return AlertDisposition(**base, outcome="late_firing", incident_id=incident_id)
            set_alert_annotations(db, row["key"], json.dumps(alert.annotations))
            touch_incident(db, incident_id, now)
            return AlertDisposition(**base, outcome="repeat", incident_id=incident_id)
        if state == "resolved":
            return AlertDisposition(**base, outcome="repeat_resolved", incident_id=incident_id)
        resolve_alert(db, row["key"], alert.ends_at, now)
        resolve_incident(db, incident_id, now)
        # A diagnosis not yet started is not started; a write waiting for approval is cancelled.
        skip_pending_diagnosis(db, row["key"], now)
        enqueue(db, "cancel_approvals", row["key"], incident_id, {"reason": "alert resolved"}, now)
        self.events.emit(
            "incident.resolved", incident_id, db, by="alertmanager", ends_at=alert.ends_at
        )
        return AlertDisposition(**base, outcome="resolved", incident_id=incident_id)

    def _insert(
        self,
        db: sqlite3.Connection,
        alert: AlertmanagerAlert,
        payload: AlertmanagerWebhook,
        state: str,
        mapping: Mapping | None,
        reason: str | None,
        request_id: str,
        now: float,
        incident_id: str | None = None,
    ) -> None:
        insert_alert(
            db,
            alert.key,
            alert.identity,
            alert.starts_at,
            state,
            json.dumps(alert.labels),
            json.dumps(alert.annotations),
            alert.ends_at,
            alert.generatorURL[:2000],
            payload.receiver[:200],
            payload.groupKey[:500],
            mapping.environment if mapping else None,
            mapping.target if mapping else None,
            reason,
            incident_id,
            now,
            now if state == "resolved" else None,
            request_id,
        )


def enqueue(
    db: sqlite3.Connection,
    kind: str,
    key: str,
    incident_id: str,
    payload: dict[str, Any],
    now: float,
) -> None:
    """An outbox row, at most one per (kind, key)."""
    insert_dispatch(db, kind, key, incident_id, json.dumps(payload), now)
