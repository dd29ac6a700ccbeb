"""The durable notification outbox: events in, messages out, nothing lost.

The service (`uici serve`) runs this loop. Each round:

1. New events of the store (whoever wrote them: the service, a flow run in a worker, the CLI)
   become messages: one outbox row per sink that wants the event and the alert's severity,
   unique per (sink, incident, event, step), so an event seen twice or a diagnosis sent
   twice queues one message. The rows and the cursor (the last event read) commit together,
   so a service killed at any point neither loses nor repeats one.
2. Pending approval requests close to their expiry get an `approval.expiring` event (once).
3. Operation requests nobody answered in time expire (agent/incidents/operation_requests.py).
4. Due messages are sent, each sink in a task of its own, so a sink that is slow or down
   delays only its own messages. A failed attempt that may succeed later (a timeout, a
   connection error, 408, 425, 429, 5xx) is retried with growing waits (a Retry-After is
   honoured) up to `max_attempts`; a permanent one (another 4xx) is not retried. Either way
   a message that ends failed is visible: a `notification.failed` event, the metrics, and
   GET /health/deep.

Delivery is at least once: a service killed between sending and recording it sends it again
after its restart, with the same `X-UICI-Delivery` id, so a receiver can drop the repeat.
Messages are built when queued, from the stored (redacted) incident, and redacted once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from agent.incidents.events import EventLog
from agent.incidents.operation_requests import OperationRequests
from agent.incidents.storage import (
    IncidentRecord,
    IncidentStore,
    approvals_to_warn,
    claim_notifications,
    events_batch,
    finish_notification,
    insert_notification,
    last_notification,
    mark_warned,
    max_event_id,
    max_event_id_in,
    notification_summary,
    read_cursor,
    read_cursor_in,
    write_cursor,
)
from agent.notifications.delivery import DeliveryResult, NotificationSinkConfig, send
from agent.notifications.messages import Notification, build_approval, build_links
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import NotificationEvent

log = logging.getLogger("uici.notify")

CURSOR = "notifications"


def notification_events(event_type: str, data: dict[str, Any]) -> list[NotificationEvent]:
    """The notifications one stored event stands for."""
    if event_type == "incident.diagnosed":
        found: list[NotificationEvent] = ["incident.diagnosed"]
        status = data.get("status")
        if status == "resolved":
            found.append("incident.resolved")
        elif status == "escalated":
            found.append("incident.escalated")
        return found
    simple: dict[str, NotificationEvent] = {
        "incident.resolved": "incident.resolved",
        "incident.failed": "incident.failed",
        "incident.escalated": "incident.escalated",
        "approval.needed": "approval.needed",
        "approval.expiring": "approval.expiring",
    }
    return [simple[event_type]] if event_type in simple else []


def delivery_id(sink: str, incident_id: str, event: str, dedup: str) -> str:
    """Stable per message: a retried delivery carries the same id."""
    digest = hashlib.sha256(f"{sink}\0{incident_id}\0{event}\0{dedup}".encode()).hexdigest()
    return digest[:32]


class MessageBuilder:
    """A Notification from an event and the stored incident."""

    def __init__(self, config: UICIConfig, store: IncidentStore) -> None:
        self.config = config
        self.settings = config.platform.notifications
        self.store = store

    def build(
        self, event: NotificationEvent, incident: IncidentRecord, data: dict[str, Any], at: float
    ) -> Notification:
        context = incident.context
        labels = context.alert.labels
        report = incident.report or {}
        diagnosis = report.get("diagnosis") or {}
        observations = {o.get("id"): o for o in report.get("observations") or []}
        evidence = [str(f) for f in diagnosis.get("facts") or []]
        for obs_id in diagnosis.get("evidence") or []:
            obs = observations.get(obs_id)
            if obs:
                evidence.append(f"{obs.get('operation')} {obs.get('target') or ''}: " + _first(obs))
        evidence += [str(line) for line in diagnosis.get("telling_lines") or []]
        actions = [
            f"{a.get('step')}: {a.get('outcome')}"
            + (f" ({a.get('detail')})" if a.get("detail") else "")
            for a in report.get("actions") or []
        ]
        health = None
        if report.get("healthy") is not None:
            health = ("healthy" if report["healthy"] else "not healthy") + (
                f": {report.get('health_detail')}" if report.get("health_detail") else ""
            )
        if event == "incident.failed":
            health = f"the diagnosis failed: {data.get('error') or report.get('error') or ''}"
        approval = None
        if event in ("approval.needed", "approval.expiring"):
            approval = self._approval(incident, data)
        alertname = labels.get("alertname") or None
        return Notification(
            event=event,
            incident_id=incident.id,
            at=at,
            environment=incident.environment,
            service=incident.service,
            severity=labels.get("severity"),
            alertname=alertname,
            title=f"{alertname or 'incident'} on {incident.service} ({incident.environment})",
            root_cause=diagnosis.get("root_cause"),
            category=diagnosis.get("category"),
            confidence=diagnosis.get("confidence"),
            evidence=evidence,
            actions=actions,
            health=health,
            links=build_links(self.settings, incident.id, incident.flow_run_id),
            approval=approval,
        )

    def _approval(self, incident: IncidentRecord, data: dict[str, Any]) -> Any:
        request = self.store.approval(incident.id, str(data.get("step_key") or ""))
        if request is None:
            raise LookupError(f"no approval request {data.get('step_key')!r}")
        step = request.step
        spec = self.config.operations.operations.get(step.operation)
        votes = [v for v in self.store.votes(incident.id, request.step_key) if v.approve]
        return build_approval(
            self.settings,
            incident.id,
            incident.flow_run_id,
            step_key=request.step_key,
            step=step.describe(),
            operation=step.operation,
            target=step.target or "-",
            risk=spec.risk.value if spec else str(data.get("risk") or "write"),
            command=request.command,
            expires_at=request.expires_at,
            required_approvers=request.required,
            approvals_so_far=len(votes),
        )


class Notifier:
    def __init__(
        self,
        config: Callable[[], UICIConfig],
        store: IncidentStore,
        on_result: Callable[[str, DeliveryResult, str], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.events = EventLog(store.database)
        self.on_result = on_result  # (sink, result, final state) for the metrics
        self._busy: dict[str, asyncio.Task[None]] = {}

    # --- 1 and 2: events become outbox rows ---------------------------------------------------

    def enqueue(self) -> int:
        """Turn new events into outbox rows; the number of rows queued.

        The events are read and the messages built outside any write transaction; only the
        rows and the cursor are written, in one short transaction that also checks the
        cursor did not move meanwhile (another service on the same store), so the webhook's
        writes never wait on this."""
        config = self.config()
        sinks = [s for s in config.platform.notifications.sinks if s.enabled]
        after = read_cursor(self.store.database, CURSOR)
        if after is None or not sinks:
            # A first start on this store (history is not news), or nothing to send to.
            if after is None or max_event_id(self.store.database) != after:
                with self.store.transaction() as db:
                    if read_cursor_in(db, CURSOR) == after:
                        write_cursor(db, CURSOR, max_event_id_in(db))
            return 0
        rows = events_batch(
            self.store.database, after, config.platform.notifications.delivery.batch_size
        )
        if not rows:
            return 0
        builder = MessageBuilder(config, self.store)
        redact = self.store.redactor
        queued: list[tuple[str, str, str, str, str]] = []
        for row in rows:
            incident_id = row["incident_id"]
            data = json.loads(row["data"])
            wanted = notification_events(row["type"], data)
            if not wanted or incident_id is None:
                continue
            incident = self.store.get(incident_id)
            if incident is None:
                continue
            severity = incident.context.alert.labels.get("severity")
            for event in wanted:
                targets = [s for s in sinks if s.accepts(event, severity)]
                if not targets:
                    continue
                try:
                    message = builder.build(event, incident, data, row["at"])
                except Exception as exc:  # one bad event must not stop every later message
                    log.error("no %s message for incident %s: %s", event, incident_id, exc)
                    continue
                payload = json.dumps(redact.json_data(message.model_dump(mode="json")))
                dedup = str(data.get("step_key") or "")
                queued += [(s.name, event, incident_id, dedup, payload) for s in targets]
        inserted = 0
        with self.store.transaction() as db:
            if read_cursor_in(db, CURSOR) != after:
                return 0  # another notifier took these events: its rows stand
            for sink_name, kind, about, dedup, payload in queued:
                inserted += insert_notification(
                    db, sink_name, kind, about, dedup, payload, time.time()
                )
            write_cursor(db, CURSOR, rows[-1]["id"])
        return inserted

    def warn_expiring(self) -> int:
        """An `approval.expiring` event for each pending request close to its expiry."""
        window = self.config().platform.notifications.approval_expiring_seconds
        now = time.time()
        warned = 0
        for row in approvals_to_warn(self.store.database, now + window):
            request = self.store.approval(row["incident_id"], row["step_key"])
            if request is None:
                continue
            with self.store.transaction() as db:
                if not mark_warned(db, row["incident_id"], row["step_key"], now):
                    continue  # another service on this store warned first
                self.events.emit(
                    "approval.expiring", row["incident_id"], db, step=request.step.describe(),
                    step_key=request.step_key, expires_at=request.expires_at,
                )  # fmt: skip
            warned += 1
        return warned

    # --- 4: delivery ------------------------------------------------------------------------

    async def deliver(self) -> None:
        """Start a delivery task for each sink with due messages that has none running."""
        config = self.config()
        sinks: list[NotificationSinkConfig | str] = list(config.platform.notifications.sinks)
        configured = {s.name for s in config.platform.notifications.sinks}
        rows = await asyncio.to_thread(notification_summary, self.store.database)
        pending = {r["sink"] for r in rows if r["state"] == "pending"}
        sinks += sorted(pending - configured)
        for sink in sinks:
            name = sink if isinstance(sink, str) else sink.name
            if name not in pending:
                continue  # nothing to send: no claim (a write) and no HTTP client each poll
            task = self._busy.get(name)
            if task is not None and not task.done():
                continue  # this sink is still busy (slow or retrying): the others go on
            self._busy[name] = asyncio.create_task(self._deliver_sink(sink))

    async def drain(self) -> None:
        """Wait for the running deliveries (tests, shutdown)."""
        running = [t for t in self._busy.values() if not t.done()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _deliver_sink(self, sink: NotificationSinkConfig | str) -> None:
        """Up to batch_size due messages of one sink, one at a time, each leased while it is
        sent (a second service on the store leaves it alone; if this one dies, the lease runs
        out and the message is due again). `sink` is a name for a sink no longer configured."""
        delivery = self.config().platform.notifications.delivery
        name = sink if isinstance(sink, str) else sink.name
        async with contextlib.AsyncExitStack() as opened:
            client: httpx.AsyncClient | None = None
            for _ in range(delivery.batch_size):
                now = time.time()
                lease = now + 2 * delivery.timeout_seconds + delivery.poll_seconds
                rows = await asyncio.to_thread(
                    claim_notifications, self.store.database, name, now, 1, lease
                )
                if not rows:
                    return
                row = rows[0]
                if isinstance(sink, str) or not sink.enabled:
                    why = "is disabled" if not isinstance(sink, str) else "is no longer configured"
                    result = DeliveryResult(
                        sink=name, ok=False, retryable=False, status_code=None,
                        error=f"sink {name!r} {why}", retry_after=None, elapsed_seconds=0,
                    )  # fmt: skip
                    await asyncio.to_thread(self._record, row, result, delivery)
                    continue
                if client is None:  # only once there is something to send
                    # Redirects are not followed: a sink answers, it does not send us elsewhere.
                    client = await opened.enter_async_context(
                        httpx.AsyncClient(follow_redirects=False)
                    )
                try:
                    message = Notification.model_validate_json(row["payload"])
                    ident = delivery_id(name, row["incident_id"], row["event"], row["dedup"])
                    result = await send(sink, message, ident, client, delivery.timeout_seconds)
                except Exception as exc:  # a message that cannot be sent ends failed, visibly
                    result = DeliveryResult(
                        sink=name, ok=False, retryable=False, status_code=None,
                        error=f"{type(exc).__name__}: {exc}"[:300], retry_after=None,
                        elapsed_seconds=0,
                    )  # fmt: skip
                await asyncio.to_thread(self._record, row, result, delivery)
                if not result.ok and result.retryable:
                    return  # the sink is struggling: its later messages wait for the back-off

    def _record(self, row: Any, result: DeliveryResult, delivery: Any) -> None:
        attempts = row["attempts"] + 1
        now = time.time()
        if result.ok:
            state, next_at = "sent", now
        elif result.retryable and attempts < delivery.max_attempts:
            wait = delivery.retry_backoff_seconds * 2 ** (attempts - 1)
            if result.retry_after is not None:
                wait = max(wait, result.retry_after)
            state, next_at = "pending", now + min(wait, delivery.max_backoff_seconds)
        else:
            state, next_at = "failed", now
        finish_notification(
            self.store.database, row["id"], state, attempts, next_at,  # type: ignore[arg-type]
            None if result.ok else result.error, result.status_code, now,
        )  # fmt: skip
        if state == "failed":
            why = "permanent error" if not result.retryable else f"gave up after {attempts}"
            log.error(
                "notification %s to %s for incident %s failed (%s): %s",
                row["event"], row["sink"], row["incident_id"], why, result.error,
            )  # fmt: skip
            self.events.emit(
                "notification.failed", row["incident_id"], sink=row["sink"], event=row["event"],
                error=result.error, status_code=result.status_code, attempts=attempts,
            )  # fmt: skip
        elif not result.ok:
            log.warning(
                "notification %s to %s: attempt %d failed, retrying: %s",
                row["event"], row["sink"], attempts, result.error,
            )  # fmt: skip
        if self.on_result is not None:
            self.on_result(row["sink"], result, state)

    # --- the loop ---------------------------------------------------------------------------

    async def run_once(self) -> None:
        await asyncio.to_thread(self.enqueue)
        await asyncio.to_thread(self.warn_expiring)
        await asyncio.to_thread(OperationRequests(self.config(), self.store).expire_due)
        await self.deliver()

    async def run_forever(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except Exception:  # the store failing: log, wait, go on
                    log.exception("notification loop: one round failed")
                poll = self.config().platform.notifications.delivery.poll_seconds
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            for task in self._busy.values():
                task.cancel()
            await asyncio.gather(*self._busy.values(), return_exceptions=True)

    # --- health -------------------------------------------------------------------------------

    def sink_health(self) -> dict[str, tuple[bool, str]]:
        """Per configured sink: whether its last delivery went well, and what is known."""
        health: dict[str, tuple[bool, str]] = {}
        counts: dict[tuple[str, str], int] = {}
        for row in notification_summary(self.store.database):
            counts[(row["sink"], row["state"])] = row["count"]
        for sink in self.config().platform.notifications.sinks:
            if not sink.enabled:
                continue
            last = last_notification(self.store.database, sink.name)
            pending = counts.get((sink.name, "pending"), 0)
            failed = counts.get((sink.name, "failed"), 0)
            summary = (
                f"{counts.get((sink.name, 'sent'), 0)} sent, {pending} pending, {failed} failed"
            )
            if last is None or last["state"] == "sent":
                health[sink.name] = (True, summary)
            else:
                code = f" (HTTP {last['status_code']})" if last["status_code"] else ""
                error = f"last attempt failed{code}: {last['last_error']}"
                health[sink.name] = (False, f"{summary}; {error}"[:300])
        return health


def _first(observation: dict[str, Any]) -> str:
    text = observation.get("error") or observation.get("output") or ""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ("ok" if observation.get("success") else "failed")
