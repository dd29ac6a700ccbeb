"""Prometheus metrics of the service (`GET /metrics`).

Counters of what the service itself handles live in this process. Incidents, operations,
approvals, gate decisions and LLM usage happen in flow runs in other processes, so they are
read from the store (the event log, the audit trail, the outboxes) at scrape time: one source
of truth, correct across restarts. SQLite aggregates them (agent/incidents/storage.py
`metric_rows`), so a scrape never loads the history into this process. Every API replica on
one store therefore reports the same store-derived series (differing only by the scrape's
`instance` label): queries take them through `max without (instance, pod)` before adding
them up, as the dashboard and the rules do.

deployments/grafana/dashboards/uici.json and deployments/prometheus/uici-rules.yml are built
on these names; tests/test_dashboard.py runs their queries against a real Prometheus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.incidents.events import EventType
from agent.incidents.storage import (
    ApprovalStatus,
    Database,
    IncidentStatus,
    MetricRows,
    Row,
    WriteState,
    database,
    metric_rows,
    notification_summary,
)

OPERATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A diagnosis takes seconds to minutes; one that waits for a person's approval takes longer.
DIAGNOSIS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
NOTIFICATION_STATES = ("pending", "sent", "failed")
CIRCUIT_OPEN = "llm.circuit_open"


class ServiceMetrics:
    def __init__(self, source: Database | Path) -> None:
        self.registry = CollectorRegistry()
        self.alerts_received = Counter(
            "uici_alerts_received",
            "Alerts received by the webhook, by the alert's own status.",
            ["status"],
            registry=self.registry,
        )
        self.alert_outcomes = Counter(
            "uici_alert_outcomes",
            "What became of received alerts (new_incident, repeat, resolved, unmapped, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_latency = Histogram(
            "uici_webhook_duration_seconds",
            "Time to handle an Alertmanager notification, by response code.",
            ["code"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.http_requests = Counter(
            "uici_http_requests",
            "API requests by route template and response code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "uici_rate_limited",
            "Requests refused by a rate limit, by bucket kind.",
            ["bucket"],
            registry=self.registry,
        )
        self.notification_attempts = Counter(
            "uici_notification_attempts",
            "Notification delivery attempts by sink and result (sent, retry, failed).",
            ["sink", "result"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(database(source)))


class StoreCollector(Collector):
    """Reads the store at each scrape. What is counted from the event log and the audit trail
    (which only grow) is added up here from the rows new since the last scrape, so a scrape
    costs the same however long the history is; the rest is a few small GROUP BYs."""

    def __init__(self, source: Database) -> None:
        self.database = source
        self._lock = threading.Lock()  # scrapes may overlap (the route runs in a thread pool)
        self._totals = _Totals()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            totals = self._totals
            rows = metric_rows(
                self.database,
                OPERATION_BUCKETS,
                DIAGNOSIS_BUCKETS,
                totals.event_id,
                totals.audit_id,
            )
            if rows.last_event_id < totals.event_id or rows.last_audit_id < totals.audit_id:
                # Another store at this path (recreated): count it from its start.
                self._totals = totals = _Totals()
                rows = metric_rows(self.database, OPERATION_BUCKETS, DIAGNOSIS_BUCKETS)
            totals.add(rows)
            snapshot = totals.copy()
        now = time.time()
        yield from _incident_metrics(rows)
        yield from _approval_metrics(rows, now)
        yield from _outbox_metrics(rows, self.database, now)
        yield from _event_metrics(snapshot)
        yield from _operation_metrics(snapshot)
        yield from _gate_metrics(rows, snapshot)


class _Totals:
    """Running sums of the growing tables, and the last ids they include."""

    def __init__(self) -> None:
        self.event_id = 0
        self.audit_id = 0
        # key columns -> summed value columns (for events `last` is a maximum instead)
        self.events: dict[str, list[float]] = {}
        self.operations: dict[tuple[str, str, str], list[float]] = {}
        self.gate_writes: dict[tuple[str, str], float] = {}
        self.gate_refusals: dict[tuple[str, str, str], float] = {}

    def add(self, rows: MetricRows) -> None:
        for row in rows.events:
            values = [row["count"], row["last"], row["calls"], row["prompt"]]
            values += [row["completion"], row["cost"]]
            known = self.events.setdefault(row["type"], [0.0] * len(values))
            for i, value in enumerate(values):
                known[i] = max(known[i], value) if i == 1 else known[i] + value
        for row in rows.operations:
            values = [row["count"], row["timed"], row["seconds"]]
            values += [row[f"b{i}"] for i in range(len(OPERATION_BUCKETS))]
            key = (row["environment"], row["operation"], row["outcome"])
            summed = self.operations.setdefault(key, [0.0] * len(values))
            for i, value in enumerate(values):
                summed[i] += value
        for row in rows.gate_writes:
            key2 = (row["environment"], row["outcome"])
            self.gate_writes[key2] = self.gate_writes.get(key2, 0) + row["count"]
        for row in rows.gate_refusals:
            key3 = (row["environment"], row["risk"], row["reason"])
            self.gate_refusals[key3] = self.gate_refusals.get(key3, 0) + row["count"]
        self.event_id, self.audit_id = rows.last_event_id, rows.last_audit_id

    def copy(self) -> _Totals:
        """What the metrics are built from, outside the lock."""
        other = _Totals()
        other.event_id, other.audit_id = self.event_id, self.audit_id
        other.events = {k: list(v) for k, v in self.events.items()}
        other.operations = {k: list(v) for k, v in self.operations.items()}
        other.gate_writes = dict(self.gate_writes)
        other.gate_refusals = dict(self.gate_refusals)
        return other


def _incident_metrics(rows: MetricRows) -> Iterator[Metric]:
    opened = CounterMetricFamily("uici_incidents_opened", "Incidents opened.")
    opened.add_metric([], rows.incidents["opened"] or 0)
    yield opened
    resolved = CounterMetricFamily("uici_incidents_resolved", "Incidents resolved.")
    resolved.add_metric([], rows.incidents["resolved"] or 0)
    yield resolved
    # Every status of every environment seen, zero included: a series that vanishes when
    # its count drops to nothing would leave rules and graphs without a value.
    counts = {(r["environment"], r["status"]): r["count"] for r in rows.by_status}
    current = GaugeMetricFamily(
        "uici_incidents", "Incidents by status and environment.", labels=["status", "environment"]
    )
    for environment in sorted({env for env, _ in counts}):
        for status in _with_known(
            get_args(IncidentStatus), (s for e, s in counts if e == environment)
        ):
            current.add_metric([status, environment], counts.get((environment, status), 0))
    yield current
    latency = HistogramMetricFamily(
        "uici_alert_to_diagnosis_seconds",
        "From the first delivery of the alert that opened an incident to the end of its first"
        " diagnosis, by environment.",
        labels=["environment"],
    )
    for row in rows.diagnosis:
        latency.add_metric(
            [row["environment"]],
            _buckets(row, DIAGNOSIS_BUCKETS, row["count"]),
            sum_value=row["seconds"],
        )
    yield latency


def _approval_metrics(rows: MetricRows, now: float) -> Iterator[Metric]:
    pending = [r for r in rows.approvals if r["status"] == "pending"]
    waiting = GaugeMetricFamily("uici_approvals_pending", "Write steps awaiting a person.")
    waiting.add_metric([], sum(r["count"] for r in pending))
    yield waiting
    oldest = GaugeMetricFamily(
        "uici_approvals_oldest_pending_age_seconds",
        "Age of the oldest approval request still waiting for a person (0: none waits).",
    )
    oldest.add_metric([], _age(now, (r["oldest"] for r in pending)))
    yield oldest
    counts = {(r["environment"], r["status"]): r["count"] for r in rows.approvals}
    by_status = GaugeMetricFamily(
        "uici_approvals",
        "Approval requests in the store by environment and status (pending, approved,"
        " rejected, expired, cancelled).",
        labels=["environment", "status"],
    )
    for environment in sorted({env for env, _ in counts}):
        for status in _with_known(
            get_args(ApprovalStatus), (s for e, s in counts if e == environment)
        ):
            by_status.add_metric([environment, status], counts.get((environment, status), 0))
    yield by_status


def _outbox_metrics(rows: MetricRows, source: Database, now: float) -> Iterator[Metric]:
    queue = GaugeMetricFamily("uici_dispatch_pending", "Stored alerts not yet dispatched.")
    queue.add_metric([], rows.pending_dispatch["count"] or 0)
    yield queue
    stuck = GaugeMetricFamily(
        "uici_dispatch_oldest_pending_age_seconds",
        "Age of the oldest alert waiting in the dispatch outbox (0: none waits).",
    )
    stuck.add_metric([], _age(now, [rows.pending_dispatch["oldest"]]))
    yield stuck
    summary = notification_summary(source)
    counts = {(r["sink"], r["state"]): r["count"] for r in summary}
    notifications = GaugeMetricFamily(
        "uici_notifications",
        "Notifications in the outbox by sink and state (pending, sent, failed).",
        labels=["sink", "state"],
    )
    sinks = sorted({sink for sink, _ in counts})
    for sink in sinks:
        for state in _with_known(NOTIFICATION_STATES, (s for k, s in counts if k == sink)):
            notifications.add_metric([sink, state], counts.get((sink, state), 0))
    yield notifications
    backlog = GaugeMetricFamily(
        "uici_notifications_oldest_pending_age_seconds",
        "Age of the oldest notification of a sink not yet delivered (0: none waits).",
        labels=["sink"],
    )
    for sink in sinks:
        oldest = [r["oldest"] for r in summary if r["sink"] == sink and r["state"] == "pending"]
        backlog.add_metric([sink], _age(now, oldest))
    yield backlog


def _event_metrics(totals: _Totals) -> Iterator[Metric]:
    by_type = totals.events  # type -> count, last, calls, prompt, completion, cost
    events = CounterMetricFamily(
        "uici_events",
        "Events recorded in the store, by type (incident.failed, notification.failed,"
        " dispatch.failed, ...).",
        labels=["type"],
    )
    for kind in _with_known(get_args(EventType), by_type):
        events.add_metric([kind], by_type[kind][0] if kind in by_type else 0)
    yield events
    llm = by_type.get("llm.call", [0.0] * 6)
    calls = CounterMetricFamily("uici_llm_calls", "LLM planner calls.")
    calls.add_metric([], llm[2])
    yield calls
    tokens = CounterMetricFamily("uici_llm_tokens", "LLM tokens, by kind.", labels=["kind"])
    tokens.add_metric(["prompt"], llm[3])
    tokens.add_metric(["completion"], llm[4])
    yield tokens
    cost = CounterMetricFamily("uici_llm_cost", "LLM cost in the configured currency.")
    cost.add_metric([], llm[5])
    yield cost
    circuit = by_type.get(CIRCUIT_OPEN, [0.0] * 6)
    openings = CounterMetricFamily(
        "uici_llm_circuit_openings",
        "Times the LLM client's circuit breaker opened (llm.circuit_breaker.failure_threshold"
        " failed calls in a row, or a failed trial call after it reset).",
    )
    openings.add_metric([], circuit[0])
    yield openings
    last = GaugeMetricFamily(
        "uici_llm_circuit_last_opened_timestamp_seconds",
        "When the LLM circuit breaker last opened, Unix time (0: never).",
    )
    last.add_metric([], circuit[1])
    yield last


def _operation_metrics(totals: _Totals) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "uici_operations",
        "Operations run, by environment, operation and outcome.",
        labels=["environment", "operation", "outcome"],
    )
    # The histogram is per environment and operation: the outcomes add up.
    timed: dict[tuple[str, str], list[float]] = {}
    for (environment, operation, outcome), values in sorted(totals.operations.items()):
        total.add_metric([environment, operation, outcome], values[0])
        summed = timed.setdefault((environment, operation), [0.0] * (len(values) - 1))
        for i, value in enumerate(values[1:]):
            summed[i] += value  # timed, seconds, then the buckets
    yield total
    latency = HistogramMetricFamily(
        "uici_operation_duration_seconds",
        "Operation latency, by environment and operation.",
        labels=["environment", "operation"],
    )
    for (environment, operation), (count, seconds, *counts) in sorted(timed.items()):
        buckets = [(str(b), counts[i]) for i, b in enumerate(OPERATION_BUCKETS)]
        latency.add_metric([environment, operation], [*buckets, ("+Inf", count)], sum_value=seconds)
    yield latency


def _gate_metrics(rows: MetricRows, totals: _Totals) -> Iterator[Metric]:
    writes = CounterMetricFamily(
        "uici_gate_writes",
        "Write operations the execution gate sent, by environment and outcome (success,"
        " retryable, permanent, ...).",
        labels=["environment", "outcome"],
    )
    for (environment, outcome), count in sorted(totals.gate_writes.items()):
        writes.add_metric([environment, outcome], count)
    yield writes
    refusals = CounterMetricFamily(
        "uici_gate_refusals",
        "Operations the execution gate refused, by environment, risk and reason (policy,"
        " approval, history, target).",
        labels=["environment", "risk", "reason"],
    )
    for (environment, risk, reason), count in sorted(totals.gate_refusals.items()):
        refusals.add_metric([environment, risk, reason], count)
    yield refusals
    counts = {(r["environment"], r["state"]): r["count"] for r in rows.writes}
    intents = GaugeMetricFamily(
        "uici_writes",
        "Recorded write intents by environment and state (pending, done, failed, unknown:"
        " a person must check the target).",
        labels=["environment", "state"],
    )
    for environment in sorted({env for env, _ in counts}):
        for state in _with_known(get_args(WriteState), (s for e, s in counts if e == environment)):
            intents.add_metric([environment, state], counts.get((environment, state), 0))
    yield intents


def _with_known(known: tuple[str, ...], seen: Iterable[str]) -> list[str]:
    """The known values, then any other value the store holds (never dropped)."""
    return [*dict.fromkeys(known), *sorted(set(seen) - set(known))]


def _buckets(row: Row, buckets: tuple[float, ...], count: float) -> list[tuple[str, float]]:
    """A histogram row's cumulative bucket counts (`b0`, `b1`, ...) as (le, count) pairs."""
    return [*((str(b), row[f"b{i}"]) for i, b in enumerate(buckets)), ("+Inf", count)]


def _age(now: float, times: Iterable[float | None]) -> float:
    present = [t for t in times if t is not None]
    return max(0.0, now - min(present)) if present else 0.0
