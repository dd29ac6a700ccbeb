"""Webhook ingestion under an alert storm (loopback, bounded): `uici serve` as a real process,
several Alertmanager-like senders, 30 % duplicate deliveries. Reports alerts/s, request
latency p50/p99, and the same load on GET /health as the baseline; checks none is lost and
duplicates collapse. Medians of several runs."""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.service.auth import key_hash
from tests.api_support import KEYS, alert, notification
from tests.service_process import ServiceProcess

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ALERTS = int(os.environ.get("BENCH_ALERTS", "3000"))
SENDERS = 4
# The goal: 500 alerts/s with p99 under 50 ms. Alertmanager batches a group's alerts
# into one notification; 5 per notification is a modest group.
PACED_RATE = float(os.environ.get("BENCH_PACED_RATE", "500"))


def storm(
    url: str,
    bodies: list[dict[str, object]] | None,
    count: int,
    requests_per_s: float | None = None,
) -> tuple[float, list[float]]:
    """Send `count` requests from SENDERS threads, as fast as possible or, with
    `requests_per_s`, open-loop on a fixed schedule: each request's latency counts from its
    scheduled time, so a slow answer that delays the next sends is not hidden."""
    latencies: list[float] = []
    lock = threading.Lock()
    work = list(range(count))
    headers = {"Authorization": f"Bearer {KEYS['webhook']}"}
    begin = time.perf_counter() + (0.1 if requests_per_s else 0.0)

    def sender() -> None:
        with httpx.Client(timeout=10) as client:
            while True:
                with lock:
                    if not work:
                        return
                    index = work.pop()
                started = time.perf_counter()
                if requests_per_s:
                    scheduled = begin + (count - 1 - index) / requests_per_s
                    time.sleep(max(0.0, scheduled - started))
                    started = scheduled
                if bodies is None:
                    response = client.get(f"{url}/health")
                else:
                    response = client.post(
                        f"{url}/webhooks/alertmanager", json=bodies[index], headers=headers
                    )
                elapsed = time.perf_counter() - started
                if response.status_code >= 300:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    started = begin
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def one_run(group: int, alerts_per_s: float | None = None) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="uici-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
    env.update(
        UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
        UICI_STORAGE_URL=f"sqlite:///{state}/uici.db",
        UICI_LOG_LEVEL="WARNING",
    )
    service = ServiceProcess(env, state / "serve.log", None, "--no-dispatch").start()
    try:
        alerts = [alert(f"svc-{i}", fingerprint=f"bench{i:011d}") for i in range(ALERTS)]
        bodies = [notification(*alerts[i : i + group]) for i in range(0, ALERTS, group)]
        deliveries = bodies + random.Random(1).sample(bodies, int(0.3 * len(bodies)))
        random.Random(2).shuffle(deliveries)
        rate = alerts_per_s / group if alerts_per_s else None
        seconds, latencies = storm(service.url, deliveries, len(deliveries), rate)
        _, base = storm(service.url, None, len(deliveries), rate)
        with sqlite3.connect(state / "uici.db") as db:
            incidents = db.execute("SELECT COUNT(*) FROM incidents").fetchone()[0]
        if incidents != ALERTS:
            raise RuntimeError(f"{incidents} incidents for {ALERTS} distinct alerts")
        sent = sum(len(b["alerts"]) for b in deliveries)  # type: ignore[arg-type]
        return {
            "alerts_per_s": sent / seconds,
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "base_p50_ms": pct(base, 0.5),
            "base_p99_ms": pct(base, 0.99),
            "requests": len(deliveries),
        }
    finally:
        service.stop()


def main() -> None:
    print(f"webhook ingestion: {ALERTS} distinct alerts + 30 % duplicate deliveries, "
          f"{SENDERS} senders, medians of {RUNS} runs")  # fmt: skip
    for group, paced in ((5, PACED_RATE), (10, None), (1, None)):
        runs = [one_run(group, paced) for _ in range(RUNS)]
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        mode = f"paced at {paced:.0f} alerts/s" if paced else "unpaced (saturation)"
        print(
            f"  {group:>2} alerts/notification, {mode}: {m['alerts_per_s']:7.0f} alerts/s, "
            f"p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms "
            f"(baseline GET /health same load: p50 {m['base_p50_ms']:.1f} ms, "
            f"p99 {m['base_p99_ms']:.1f} ms; p99 ratio {m['p99_ms'] / m['base_p99_ms']:.1f}x); "
            f"none lost, duplicates collapsed to {ALERTS} incidents"
        )


if __name__ == "__main__":
    main()
