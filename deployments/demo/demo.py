"""`make demo`: a small system with two real problems, diagnosed by UICI through Prefect.

Expects `make up` to have started the Prefect server, the deployments and a worker. Starts an
API that crash-loops because DATABASE_URL is missing and a worker that is OOM-killed, fires one
alert for each at the diagnose-incident deployment (as the Alertmanager bridge does, with an
idempotency key), waits for both diagnoses and prints each report with its Prefect UI link.
Re-runnable: the previous demo containers are removed first.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.flow_runs import wait_for_flow_run  # noqa: E402

from agent.evaluation.failures import FailureLab  # noqa: E402
from agent.incidents.storage import IncidentStore  # noqa: E402
from flows.diagnose import flow_run_url  # noqa: E402
from infrastructure.configuration.loader import load_config  # noqa: E402

PREFIX = "uici-demo"
TELLING = re.compile(r"(?i)(fatal|error|oom|killed|refused|unhealthy|not set)")
PROBLEMS = [("missing_env", "api", "ServiceCrashLooping"), ("oom", "worker", "WorkerExited")]


def reset_demo_containers(client: docker.DockerClient) -> None:
    for container in client.containers.list(all=True, filters={"name": f"{PREFIX}-"}):
        container.remove(force=True)


async def main() -> int:
    started = time.monotonic()
    config = load_config()
    client = docker.from_env()
    reset_demo_containers(client)
    lab = FailureLab(client, prefix=PREFIX)
    print(
        "demo: starting the demo system "
        "(an API missing DATABASE_URL, a worker over its memory limit)"
    )
    for failure, _, _ in PROBLEMS:
        lab.get(failure)
    deployment = f"diagnose-incident/{config.platform.prefect.deployments.diagnose_incident}"
    runs = []
    stamp = datetime.now(UTC).isoformat()
    for failure, suffix, alertname in PROBLEMS:
        service = lab.name(suffix)
        alert = {
            "status": "firing",
            "labels": {
                "alertname": alertname,
                "service": service,
                "severity": "critical",
                "uici_env": "local-docker",
            },
            "annotations": {"summary": f"{service}: {alertname}"},
            "startsAt": stamp,
            "fingerprint": f"demo-{failure}",
        }
        run = await run_deployment(  # type: ignore[misc]
            deployment,
            parameters={"alert": alert, "incident_id": f"demo-{failure}-{int(time.time())}"},
            timeout=0,
            idempotency_key=f"demo-{failure}:{stamp}",
        )
        print(
            f"demo: alert {alertname} on {service} -> flow run {run.name} "
            f"{flow_run_url(str(run.id))}"
        )
        runs.append((service, run))

    async with get_client() as prefect:
        finished = await asyncio.gather(
            *(
                wait_for_flow_run(run.id, timeout=170, client=prefect, log_states=False)
                for _, run in runs
            )
        )
    store = IncidentStore.from_config(config)
    failures = 0
    for (service, run), state_run in zip(runs, finished, strict=True):
        print("\n" + "=" * 78)
        state = state_run.state
        print(
            f"{service}: flow run {run.name} {state.type.value if state else '?'}  "
            f"{flow_run_url(str(run.id))}"
        )
        record = next(
            (r for r in store.incidents(service=service) if r.flow_run_id == str(run.id)), None
        )
        if record is None or record.report is None:
            print("  no report was written: see the flow run's logs in the UI")
            failures += 1
            continue
        diagnosis = record.report["diagnosis"] or {}
        print(f"  root cause: {diagnosis.get('root_cause')}")
        print(
            f"  category: {diagnosis.get('category')}, confidence {diagnosis.get('confidence')}, "
            f"rules: {', '.join(diagnosis.get('rules_matched', []))}"
        )
        evidence = {o["id"]: o for o in record.report["observations"]}
        for observation_id in diagnosis.get("evidence", []):
            observation = evidence.get(observation_id, {})
            lines = (observation.get("output") or "").strip().splitlines()
            telling = (
                list(dict.fromkeys(line for line in lines if TELLING.search(line))) or lines[-1:]
            )
            print(
                f"  evidence {observation_id} ({observation.get('operation')}): "
                f"{' | '.join(telling[:2])}"
            )
        for action in record.report.get("actions", []):
            print(f"  action: {action['step']}: {action['outcome']} ({action['policy']})")
        print(f"  full report: .venv/bin/uici incidents show {record.id}")
    print("\n" + "=" * 78)
    print(
        f"demo: done in {time.monotonic() - started:.0f} s. The Prefect UI stays up at "
        f"{config.platform.prefect.api_url.removesuffix('/api')} ; stop everything with: make down"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
