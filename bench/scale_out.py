"""Webhook ingestion scaled out: two `uici serve` processes on one PostgreSQL store against one,
and, as the reference, one process on SQLite (the embedded default). Each run is a new store
and real processes (`--no-dispatch`: intake only, no Prefect), loaded by the same Alertmanager-
like senders with the same deliveries (distinct alerts plus 30 % duplicate deliveries, spread
round-robin over the processes of the run). Reports alerts/s and request latency p50/p99,
medians of several runs, with ratios against the one-process PostgreSQL baseline of the same
invocation, and the API processes' CPU per request and cores kept busy (one process near one
core is saturated; without a free core a second process adds no throughput). Checks that none
is lost and duplicates collapse.

Writes its figures under "scale_out" in .uici/bench/results.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import psycopg  # noqa: E402
from webhook_ingest import pct  # noqa: E402

from agent.service.auth import key_hash  # noqa: E402
from tests.api_support import KEYS, alert, notification  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402

RESULTS = REPO / ".uici" / "bench" / "results.json"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ALERTS = int(os.environ.get("BENCH_ALERTS", "1000"))
# Alerts per notification: 1 makes the HTTP path (where more processes could help) the most
# of each request; the store's write transaction is the same for every process.
GROUP = int(os.environ.get("BENCH_GROUP", "1"))
# The same client load for every configuration: enough senders to keep two processes busy.
SENDERS = 8


def storm(urls: list[str], bodies: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """Send every body once, unpaced, from SENDERS threads; body i goes to urls[i % n]."""
    latencies: list[float] = []
    lock = threading.Lock()
    work = list(range(len(bodies)))
    headers = {"Authorization": f"Bearer {KEYS['webhook']}"}
    failures: list[str] = []

    def sender() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                with lock:
                    if not work or failures:
                        return
                    index = work.pop()
                started = time.perf_counter()
                response = client.post(
                    f"{urls[index % len(urls)]}/webhooks/alertmanager",
                    json=bodies[index],
                    headers=headers,
                )
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code >= 300:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    latencies.append(elapsed)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries failed, e.g. {failures[0]}")
    return time.perf_counter() - began, latencies


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def incidents(url: str) -> int:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return int(db.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])
    with psycopg.connect(url) as db:
        row = db.execute("SELECT COUNT(*) FROM incidents").fetchone()
        return int(row[0]) if row else 0


def one_run(store: str, processes: int, seed: int, state: Path) -> dict[str, float]:
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UICI_", "PREFECT_"))}
    env.update(
        UICI_WEBHOOK_KEY_SHA256=key_hash(KEYS["webhook"]),
        UICI_STORAGE_URL=store,
        UICI_LOG_LEVEL="WARNING",
    )
    services: list[ServiceProcess] = []
    try:
        for i in range(processes):  # one after the other: the first migrates the new store
            services.append(
                ServiceProcess(env, state / f"serve-{i}.log", None, "--no-dispatch").start(60)
            )
        alerts = [alert(f"svc-{i}", fingerprint=f"scale{seed:03d}{i:08d}") for i in range(ALERTS)]
        bodies = [notification(*alerts[i : i + GROUP]) for i in range(0, ALERTS, GROUP)]
        deliveries = bodies + random.Random(seed).sample(bodies, int(0.3 * len(bodies)))
        random.Random(seed + 1).shuffle(deliveries)
        pids = [s.process.pid for s in services if s.process is not None]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        seconds, latencies = storm([s.url for s in services], deliveries)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        found = incidents(store)
        if found != ALERTS:
            raise RuntimeError(f"{found} incidents for {ALERTS} distinct alerts")
        sent = sum(len(b["alerts"]) for b in deliveries)
        return {
            "alerts_per_s": sent / seconds,
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            # What the API processes spent on it: a process near one core is saturated.
            "serve_cpu_ms_per_request": 1000 * cpu / len(deliveries),
            "serve_cores_busy": cpu / seconds,
            "requests": len(deliveries),
        }
    finally:
        for service in services:
            service.stop()


def main() -> None:
    print(
        f"webhook scale-out: {ALERTS} distinct alerts + 30 % duplicate deliveries, {GROUP} per"
        f" notification, {SENDERS} senders, unpaced, medians of {RUNS} runs"
    )
    root = Path(tempfile.mkdtemp(prefix="uici-bench-scale-"))
    cluster = PostgresCluster()
    try:
        # Each makes a new store for a run: (its URL, how many API processes share it).
        configurations: dict[str, Callable[[int], tuple[str, int]]] = {
            "sqlite_1_process": lambda run: (f"sqlite:///{root}/{run}/uici.db", 1),
            "postgres_1_process": lambda run: (cluster.database(), 1),
            "postgres_2_processes": lambda run: (cluster.database(), 2),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
        # Interleaved, so a slow moment of the machine hits every configuration alike.
        for run in range(RUNS):
            for number, (name, make) in enumerate(configurations.items()):
                seed = run * 10 + number
                store, processes = make(seed)
                runs[name].append(one_run(store, processes, seed, root / str(seed)))
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    figures: dict[str, Any] = {}
    for name, measured in runs.items():
        figures[name] = {k: statistics.median(r[k] for r in measured) for k in measured[0]}
    base = figures["postgres_1_process"]
    figures["ratios"] = {
        "two_processes_alerts_per_s": figures["postgres_2_processes"]["alerts_per_s"]
        / base["alerts_per_s"],
        "two_processes_p99": figures["postgres_2_processes"]["p99_ms"] / base["p99_ms"],
        "postgres_vs_sqlite_alerts_per_s": base["alerts_per_s"]
        / figures["sqlite_1_process"]["alerts_per_s"],
        "postgres_vs_sqlite_p99": base["p99_ms"] / figures["sqlite_1_process"]["p99_ms"],
    }
    figures["settings"] = {
        "alerts": ALERTS,
        "group": GROUP,
        "senders": SENDERS,
        "runs": RUNS,
        "cores": os.cpu_count(),
    }
    for name in configurations:
        m = figures[name]
        print(
            f"  {name:<21} {m['alerts_per_s']:7.0f} alerts/s, p50 {m['p50_ms']:.1f} ms,"
            f" p99 {m['p99_ms']:.1f} ms; API processes: {m['serve_cpu_ms_per_request']:.1f} ms CPU"
            f" per request, {m['serve_cores_busy']:.2f} of {os.cpu_count()} cores busy"
        )
    r = figures["ratios"]
    print(
        "  two processes against one (PostgreSQL): alerts/s"
        f" x{r['two_processes_alerts_per_s']:.2f}, p99 x{r['two_processes_p99']:.2f};"
        " one process PostgreSQL against SQLite: alerts/s"
        f" x{r['postgres_vs_sqlite_alerts_per_s']:.2f}, p99 x{r['postgres_vs_sqlite_p99']:.2f};"
        f" none lost, duplicates collapsed to {ALERTS} incidents every run"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["scale_out"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"  written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
