"""Prefect costs of an incident, against baselines measured in the same run.

1. The four-phase diagnosis of a standard Docker scenario (the crash loop on a missing setting)
   with the runbook planner: median wall time of `diagnose_incident` (goal: under 10 s).
2. Orchestration overhead per operation: `get_status` as a Prefect task inside a flow against the
   same call on the executor directly (goal: under 10 ms added at the median).

Uses a temporary Prefect server (SQLite), like the tests. Run: make bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("UICI_STORAGE_URL", f"sqlite:///{tempfile.mkdtemp()}/uici.db")
# Only the figures: the temporary server's SQLite lock retries and run logs are noise here.
os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import docker  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from agent.evaluation.failures import FailureLab  # noqa: E402
from agent.incidents.models import AlertInfo, IncidentContext, PlanStep  # noqa: E402
from agent.safety.gate import GateRequest  # noqa: E402
from flows.diagnose import Services, diagnose_incident  # noqa: E402
from infrastructure.configuration.loader import load_config  # noqa: E402
from tasks.operations import run_read_step  # noqa: E402
from tests.data.capture_observations import alert_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--operations", type=int, default=30)
    args = parser.parse_args()
    lab = FailureLab(docker.from_env(), prefix="uici-bench-flow")
    try:
        lab.get("missing_env")
        alert = alert_for(lab, "missing_env")
        target = lab.name("api")
        with prefect_test_harness(server_startup_timeout=90):
            asyncio.run(diagnose_incident(alert=alert))  # warm-up: imports, first flow
            durations = []
            for _ in range(args.runs):
                start = time.perf_counter()
                asyncio.run(diagnose_incident(alert=alert))
                durations.append(time.perf_counter() - start)
            print(
                f"four-phase diagnosis (runbook planner, crash loop), median of {args.runs}: "
                f"{statistics.median(durations):.2f} s "
                f"(min {min(durations):.2f}, max {max(durations):.2f}; goal < 10 s)"
            )

            config = load_config()
            services = Services(config)
            context = IncidentContext(
                incident_id="bench",
                alert=AlertInfo(labels={"service": target}),
                environment="local-docker",
                service=target,
            )
            step = PlanStep(
                phase="triage",
                operation="get_status",
                environment="local-docker",
                target=target,
                proposed_by="runbook",
            )
            call = services.planner.policy.registry.validate(
                "get_status", "local-docker", {}, target
            )
            spec = services.gate.translator.translate(call)
            executor = services.gate.executor("local-docker")
            request = GateRequest(step=step, context=context, actor="bench", entry="flow")

            raw = []
            for _ in range(args.operations):
                start = time.perf_counter()
                executor.execute(spec)
                raw.append(time.perf_counter() - start)

            @flow(name="bench-operations")
            async def operations() -> list[float]:
                samples = []
                for _ in range(args.operations):
                    start = time.perf_counter()
                    await run_read_step(
                        "triage",
                        "local-docker",
                        "get_status",
                        target,
                        request,
                        services.gate,
                    )
                    samples.append(time.perf_counter() - start)
                return samples

            in_flow = asyncio.run(operations())
            raw_ms, flow_ms = statistics.median(raw) * 1000, statistics.median(in_flow) * 1000
            print(
                f"get_status, median of {args.operations}: executor {raw_ms:.2f} ms, "
                f"as a Prefect task in a flow {flow_ms:.2f} ms ({flow_ms / raw_ms:.1f}x): "
                f"orchestration adds {flow_ms - raw_ms:.2f} ms per operation (goal < 10 ms)"
            )
    finally:
        lab.cleanup()


if __name__ == "__main__":
    main()
