"""Capture real observations of the failure library for `uici plan` examples and tests.

Starts each failure of tests/failures.py on the local engine (names prefixed `uici-demo-`),
runs the runbook investigation against it as production would (a write step runs only if the
shipped policy auto-approves it, e.g. restarting the OOM-killed worker),
and writes tests/data/alerts/<failure>.json and tests/data/observations/<failure>.json.
Run from the repository root: .venv/bin/python tests/data/capture_observations.py
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from agent.evaluation.failures import FailureLab  # noqa: E402

ALERTS = {
    "missing_env": ("ServiceCrashLooping", "api", []),
    "oom": ("WorkerExited", "worker", []),
    "unhealthy": ("WebUnhealthy", "web-unhealthy", []),
    "lost_dependency": ("OrdersUnavailable", "orders", ["db"]),
    "cpu_burn": ("HighCPUUsage", "cruncher", []),
}


def alert_for(lab: FailureLab, failure: str) -> dict[str, object]:
    alertname, suffix, dependencies = ALERTS[failure]
    labels = {
        "alertname": alertname,
        "service": lab.name(suffix),
        "severity": "critical",
        "uici_env": "local-docker",
    }
    if dependencies:
        labels["uici_dependencies"] = ",".join(lab.name(d) for d in dependencies)
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": f"{lab.name(suffix)}: {alertname}"},
        "startsAt": "2026-11-24T13:22:43.119Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": hashlib.sha256(failure.encode()).hexdigest()[:16],
    }


def main() -> None:
    """Run the diagnose-incident flow on each failure (Prefect's ephemeral server unless
    PREFECT_API_URL is set) and keep its alert and observations."""
    import asyncio
    import os

    from flows.diagnose import diagnose_incident

    client = docker.from_env()
    lab = FailureLab(client, prefix="uici-demo")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["UICI_STORAGE_URL"] = f"sqlite:///{Path(tmp) / 'uici.db'}"
            for failure in ALERTS:
                lab.get(failure)
                alert = alert_for(lab, failure)
                report = asyncio.run(diagnose_incident(alert=alert, incident_id=f"demo-{failure}"))
                (REPO / "tests/data/alerts" / f"{failure}.json").write_text(
                    json.dumps(alert, indent=2) + "\n"
                )
                (REPO / "tests/data/observations" / f"{failure}.json").write_text(
                    json.dumps(report["observations"], indent=1) + "\n"
                )
                rules = (report["diagnosis"] or {}).get("rules_matched")
                print(f"{failure}: {len(report['observations'])} observations -> {rules}")
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
