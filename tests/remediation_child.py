"""A child process that runs one remediation and dies (os._exit) at a chosen boundary.

Usage: python -m tests.remediation_child CONFIG_STORAGE_URL TARGET BOUNDARY|none
Prints the outcome as JSON when it does not die.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

from agent.incidents.models import AlertInfo, IncidentContext, PlanStep
from agent.incidents.storage import IncidentStore
from agent.safety.gate import ExecutionGate, GateRequest
from agent.safety.policy import Approval
from infrastructure.configuration.loader import load_config


def main() -> None:
    storage_url, target, boundary = sys.argv[1:4]
    config = load_config(environ={"UICI_STORAGE_URL": storage_url})
    store = IncidentStore.from_config(config)

    def checkpoint(reached: str) -> None:
        if reached == boundary:
            os._exit(1)  # a worker killed here: no cleanup, no finally blocks

    context = IncidentContext(
        incident_id="inc-crash",
        alert=AlertInfo(
            labels={"alertname": "ServiceDown", "service": target},
            fingerprint="fp-crash",
            starts_at="2026-11-24T13:22:43Z",
        ),
        environment="local-docker",
        service=target,
    )
    step = PlanStep(
        phase="resolution",
        operation="restart_service",
        environment="local-docker",
        target=target,
        parameters={"stop_timeout": 0},
        proposed_by="runbook",
    )
    runbook = next(r for r in config.agents.runbooks if r.name == "service-down")
    gate = ExecutionGate(config, store, checkpoint=checkpoint)
    # A person approved it (auto-approval needs the runbook step's evidence, not the point here).
    approval = Approval(
        step_key=step.key(), approved_by="sre", expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    request = GateRequest(
        step=step, context=context, actor="test", entry="flow", runbook=runbook, approval=approval
    )
    outcome = gate.execute(request)
    gate.close()
    print(json.dumps({"executed": outcome.executed, "outcome": outcome.outcome}))


if __name__ == "__main__":
    main()
