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
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.incidents.audit import AuditLog
from agent.incidents.context import LabelConventions, UnmappedAlert, expression_of
from agent.incidents.events import EventLog
from agent.incidents.models import AlertInfo, IncidentContext
from agent.incidents.storage import (
    Connection,
    IncidentStore,
    Row,
    alert_by_key,
    count_alert_delivery,
    insert_alert,
    insert_delivery,
    insert_dispatch,
    insert_incident,
    insert_invalid_alert,
    resolve_alert,
    resolve_incident,
    set_alert_annotations,
    skip_pending_diagnosis,
    touch_incident,
)
from infrastructure.configuration.loader import UICIConfig
from infrastructure.redaction import Redactor, configured_redactor
from infrastructure.registry import OperationRegistry

_KEY_LIMIT = 256
TRUNCATION_MARKER = "…[cut by UICI: {length} characters]"


def _utc_iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# What of an alert's generatorURL is kept while it is parsed: enough for its expression.
MAX_GENERATOR_URL_CHARS = 8192


class AlertmanagerAlert(BaseModel):
    """One alert of a notification. Unknown fields (newer Alertmanager, Grafana) are kept.
    Values arrive already cut to the configured length (see `parse_notification`)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str | None = Field(default=None, max_length=256)
    # Values UICI cut: "labels.x" / "annotations.y" -> the original length in characters.
    truncated: dict[str, int] = Field(default_factory=dict, exclude=True)
    position: int | None = Field(default=None, exclude=True)  # its index in the notification

    @field_validator("labels", "annotations")
    @classmethod
    def _bounded_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > _KEY_LIMIT:
                raise ValueError(f"name {key[:40]!r}... is longer than {_KEY_LIMIT} characters")
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
    """Alertmanager's webhook body, version 4 (the OpenAPI schema of the route). The route
    parses leniently with `parse_notification`: one bad alert never costs the others."""

    model_config = ConfigDict(extra="allow")

    version: str = Field(default="4", description="Alertmanager's webhook payload version.")
    status: str = ""
    receiver: str = ""
    alerts: list[AlertmanagerAlert]
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0, le=2**31 - 1)  # SQLite integers are 64-bit


class InvalidAlert(BaseModel):
    """An alert of a notification that could not be read: stored with why, never dropped."""

    index: int
    reason: str
    body: str  # its JSON, bounded


class NotANotification(ValueError):
    """The body is not JSON, or not an Alertmanager notification at all: a 4xx."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


class ParsedNotification(BaseModel):
    notification: AlertmanagerWebhook
    invalid: list[InvalidAlert]


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def _cut(values: Any, limit: int, where: str, truncated: dict[str, int], redact: Redactor) -> Any:
    """Values redacted whole, then those over `limit` characters cut to it with a marker
    (redaction first, so a cut can never leave half a secret); the original length noted."""
    if not isinstance(values, dict):
        return values  # the model says what is wrong with it
    out: dict[Any, Any] = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = redact(value)
        if isinstance(value, str) and len(value) > limit:
            marker = TRUNCATION_MARKER.format(length=len(value))
            value = value[: max(0, limit - len(marker))] + marker
            truncated[f"{where}.{str(name)[:_KEY_LIMIT]}"] = len(values[name])  # as sent
        out[name] = value
    return out


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "alert"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:1000]


def parse_notification(
    raw: bytes, max_value_chars: int, redact: Redactor | None = None
) -> ParsedNotification:
    """Alertmanager's body, leniently: a body that is JSON and has an `alerts` list is a
    notification; each alert is read on its own (values cut to `max_value_chars`), and one
    that cannot be read is returned as invalid with the reason instead of failing the rest.
    Raises NotANotification (400 or 422) only for a body that is not JSON or not a
    notification at all."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotANotification(400, "malformed JSON body", [str(exc)[:300]]) from None
    except RecursionError:
        raise NotANotification(400, "malformed JSON body", ["nested too deeply"]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise NotANotification(422, "not an Alertmanager notification", [f"body: a {kind}"])
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise NotANotification(
            422, "not an Alertmanager notification", ["body.alerts: Field required (a list)"]
        )
    redact = redact or configured_redactor()
    envelope: dict[str, Any] = {"alerts": []}
    for name in ("version", "status", "receiver", "externalURL", "groupKey"):
        if name in data:
            envelope[name] = _text(data[name], 2000)
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        value = data.get(name)
        if isinstance(value, dict):
            envelope[name] = {
                str(k)[:_KEY_LIMIT]: _text(v, max_value_chars) for k, v in value.items()
            }
    count = data.get("truncatedAlerts", 0)
    envelope["truncatedAlerts"] = count if isinstance(count, int) and 0 <= count < 2**31 else 0
    notification = AlertmanagerWebhook.model_validate(envelope)
    valid: list[AlertmanagerAlert] = []
    invalid: list[InvalidAlert] = []
    for index, given in enumerate(alerts):
        body = redact(json.dumps(given, default=str))[:4000]  # redacted whole, then cut
        if not isinstance(given, dict):
            invalid.append(InvalidAlert(index=index, reason="not an object", body=body))
            continue
        truncated: dict[str, int] = {}
        labels = given.get("labels")
        if not given.get("fingerprint") and isinstance(labels, dict) and labels:
            # A sender without fingerprints: the identity is the labels as sent, before any
            # cut, so it stays the same whatever max_value_chars is.
            canonical = json.dumps(sorted((str(k), str(v)) for k, v in labels.items()))
            given = {**given, "fingerprint": hashlib.sha256(canonical.encode()).hexdigest()[:16]}
        item = {
            **given,
            "labels": _cut(given.get("labels"), max_value_chars, "labels", truncated, redact),
            "annotations": _cut(
                given.get("annotations", {}), max_value_chars, "annotations", truncated, redact
            ),
        }
        url = item.get("generatorURL")
        if isinstance(url, str) and len(url) > MAX_GENERATOR_URL_CHARS:
            # Too long to keep whole: without its query (a cut expression would be wrong; the
            # alerting rule is looked up by name instead). The store keeps 2000 characters.
            item["generatorURL"] = url.split("?", 1)[0][:MAX_GENERATOR_URL_CHARS]
        try:
            alert = AlertmanagerAlert.model_validate(item)
        except ValidationError as exc:
            invalid.append(InvalidAlert(index=index, reason=_problems(exc), body=body))
            continue
        valid.append(alert.model_copy(update={"truncated": truncated, "position": index}))
    notification.alerts = valid
    return ParsedNotification(notification=notification, invalid=invalid)


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
    "unmapped", "invalid",
]  # fmt: skip


class AlertDisposition(BaseModel):
    index: int = Field(description="The alert's position in the notification's list.")
    fingerprint: str | None = None
    starts_at: str | None = None
    status: str | None = None
    outcome: AlertOutcome
    incident_id: str | None = None
    reason: str | None = None
    truncated: dict[str, int] = Field(
        default_factory=dict, description="Values cut to api.webhook.max_value_chars: length."
    )


class IngestResult(BaseModel):
    """The webhook's answer: what became of each alert of the notification."""

    request_id: str
    received: int
    invalid: int = Field(description="Alerts that could not be read (stored with the reason).")
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
        self.events = EventLog(store.database, store.redactor)
        self.audit = AuditLog(store.database, store.redactor)

    def ingest(
        self,
        payload: AlertmanagerWebhook,
        request_id: str,
        actor: str,
        source: str,
        invalid: list[InvalidAlert] | None = None,
    ) -> IngestResult:
        invalid = invalid or []
        dispositions: list[AlertDisposition] = []
        now = time.time()
        with self.store.transaction() as db:
            for position, given in enumerate(payload.alerts):
                if given.position is None:
                    given = given.model_copy(update={"position": position})
                labels = {k: v for k, v in given.labels.items() if k not in self.reserved}
                alert = given.model_copy(update={"labels": labels})
                disposition = self._one(db, alert, payload, request_id, now)
                dispositions.append(disposition.model_copy(update={"truncated": alert.truncated}))
            for bad in invalid:
                # Kept to look at later: redacted whole before it was cut (parse_notification).
                insert_invalid_alert(db, now, request_id, bad.index, bad.reason, bad.body)
                self.events.emit(
                    "alert.invalid", None, db, index=bad.index, reason=bad.reason,
                    request_id=request_id,
                )  # fmt: skip
                dispositions.append(
                    AlertDisposition(index=bad.index, outcome="invalid", reason=bad.reason)
                )
            dispositions.sort(key=lambda d: d.index)
            result = IngestResult(
                request_id=request_id,
                received=len(payload.alerts) + len(invalid),
                invalid=len(invalid),
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
                payload.status[:20],
                len(payload.alerts) + len(invalid),
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
                parameters={
                    "alerts": len(payload.alerts) + len(invalid),
                    "group_key": payload.groupKey,  # the audit redacts, then cuts
                },
                request_id=request_id,
                db=db,
            )
        return result

    def _one(
        self,
        db: Connection,
        alert: AlertmanagerAlert,
        payload: AlertmanagerWebhook,
        request_id: str,
        now: float,
    ) -> AlertDisposition:
        key = alert.key
        base = {
            "index": alert.position or 0,
            "fingerprint": alert.identity,
            "starts_at": alert.starts_at,
            "status": alert.status,
        }
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
        expression = expression_of(alert.generatorURL)
        context = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(
                labels=alert.labels,
                annotations=alert.annotations,
                status="firing",
                fingerprint=alert.identity,
                starts_at=alert.starts_at,
                expression=expression,
            ),
            environment=mapping.environment,
            service=mapping.target,
            dependencies=mapping.dependencies,
        )
        insert_incident(db, context, now=now, redactor=self.store.redactor)
        # Prefect keeps a run's parameters (the UI shows them): they carry the alert redacted.
        redact = self.store.redactor
        parameters = {
            "alert": {
                "status": "firing",
                "labels": redact.data(dict(alert.labels)),
                "annotations": redact.data(dict(alert.annotations)),
                "fingerprint": alert.identity,
                "startsAt": alert.starts_at,
                "expression": redact.text(expression) if expression else None,
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
        db: Connection,
        row: Row,
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
            set_alert_annotations(
                db, row["key"], json.dumps(alert.annotations), self.store.redactor
            )
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
        db: Connection,
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
            json.dumps(alert.truncated) if alert.truncated else None,
            self.store.redactor,
        )


def enqueue(
    db: Connection,
    kind: str,
    key: str,
    incident_id: str,
    payload: dict[str, Any],
    now: float,
) -> None:
    """An outbox row, at most one per (kind, key)."""
    insert_dispatch(db, kind, key, incident_id, json.dumps(payload), now)
