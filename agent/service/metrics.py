"""Prometheus metrics of the service (`GET /metrics`).

Counters of what the service itself handles live in this process. Incidents, operations,
approvals and LLM usage happen in flow runs in other processes, so they are read from the
store (the event log) at scrape time: one source of truth, correct across restarts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.incidents.storage import metric_rows, notification_summary

OPERATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    def __init__(self, store_path: Path) -> None:
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
        self.registry.register(StoreCollector(store_path))


class StoreCollector(Collector):
    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        incidents, status_rows, pending, outbox, operations, llm = metric_rows(self.path)
        opened = CounterMetricFamily("uici_incidents_opened", "Incidents opened.")
        opened.add_metric([], incidents[0] or 0)
        yield opened
        resolved = CounterMetricFamily("uici_incidents_resolved", "Incidents resolved.")
        resolved.add_metric([], incidents[1] or 0)
        yield resolved
        current = GaugeMetricFamily("uici_incidents", "Incidents by status.", labels=["status"])
        for status, count in status_rows:
            current.add_metric([status], count)
        yield current
        approvals = GaugeMetricFamily("uici_approvals_pending", "Write steps awaiting a person.")
        approvals.add_metric([], pending[0] or 0)
        yield approvals
        queue = GaugeMetricFamily("uici_dispatch_pending", "Stored alerts not yet dispatched.")
        queue.add_metric([], outbox[0] or 0)
        yield queue
        notifications = GaugeMetricFamily(
            "uici_notifications",
            "Notifications in the outbox by sink and state (pending, sent, failed).",
            labels=["sink", "state"],
        )
        for row in notification_summary(self.path):
            notifications.add_metric([row["sink"], row["state"]], row["count"])
        yield notifications
        yield from _operation_metrics([json.loads(r[0]) for r in operations])
        calls = CounterMetricFamily("uici_llm_calls", "LLM planner calls.")
        calls.add_metric([], llm[0] or 0)
        yield calls
        tokens = CounterMetricFamily("uici_llm_tokens", "LLM tokens, by kind.", labels=["kind"])
        tokens.add_metric(["prompt"], llm[1] or 0)
        tokens.add_metric(["completion"], llm[2] or 0)
        yield tokens
        cost = CounterMetricFamily("uici_llm_cost", "LLM cost in the configured currency.")
        cost.add_metric([], llm[3] or 0.0)
        yield cost


def _operation_metrics(events: list[dict[str, object]]) -> Iterator[Metric]:
    counts: dict[tuple[str, str, str], int] = {}
    durations: dict[tuple[str, str], list[float]] = {}
    for event in events:
        env, op = str(event.get("environment", "")), str(event.get("operation", ""))
        outcome = str(event.get("outcome", ""))
        counts[(env, op, outcome)] = counts.get((env, op, outcome), 0) + 1
        seconds = event.get("duration_seconds")
        if isinstance(seconds, int | float):
            durations.setdefault((env, op), []).append(float(seconds))
    total = CounterMetricFamily(
        "uici_operations",
        "Operations run, by environment, operation and outcome.",
        labels=["environment", "operation", "outcome"],
    )
    for labels, count in sorted(counts.items()):
        total.add_metric(list(labels), count)
    yield total
    latency = HistogramMetricFamily(
        "uici_operation_duration_seconds",
        "Operation latency, by environment and operation.",
        labels=["environment", "operation"],
    )
    for (env, op), values in sorted(durations.items()):
        buckets = [(str(b), sum(1 for v in values if v <= b)) for b in OPERATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        latency.add_metric([env, op], buckets, sum_value=sum(values))
    yield latency
