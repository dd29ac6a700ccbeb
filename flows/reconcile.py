"""Detect incident runs that died: Prefect OSS leaves a crashed flow run `Running` when its
process or machine dies, and nothing else would notice. The reconciler (run by every health
sweep, or on its own) finds incidents whose run is over, or far over its time budget, and
finishes or escalates them, resolving their pending remediation intents by observation."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.states import Crashed

from agent.incidents.events import EventLog
from agent.incidents.storage import IncidentStore, WriteRecord
from agent.safety.gate import ExecutionGate
from infrastructure.configuration.loader import UICIConfig

_ACTIVE = ("open", "diagnosing", "awaiting_approval")


def run_budget_seconds(config: UICIConfig) -> float:
    """The longest an incident run may take: every phase budget, the longest approval wait,
    and the validation's settle window and checks."""
    agent = config.agents.diagnostic_agent
    phases = sum(agent.phase_time_budget_seconds.values())
    approvals = max(
        e.policy.approval_timeout_seconds for e in config.environments.environments.values()
    )
    validation = agent.validation.settle_seconds + agent.validation.checks * (
        agent.validation.interval_seconds
    )
    return phases + approvals + validation


async def reconcile_incidents(config: UICIConfig, now: float | None = None) -> list[dict[str, Any]]:
    store = IncidentStore.from_config(config)
    gate = ExecutionGate(config, store)
    now = time.time() if now is None else now
    budget = run_budget_seconds(config)
    findings: list[dict[str, Any]] = []
    async with get_client() as client:
        for status in _ACTIVE:
            for incident in store.incidents(status=status, limit=1000):
                if not incident.flow_run_id:
                    continue
                try:
                    run = await client.read_flow_run(uuid.UUID(incident.flow_run_id))
                except Exception as exc:  # the run is gone from the server: escalate, say why
                    reason = f"its flow run {incident.flow_run_id} cannot be read: {exc}"
                    run = None
                state = run.state if run else None
                if state is not None and state.type.value in (
                    "RUNNING",
                    "PAUSED",
                    "PENDING",
                    "SCHEDULED",
                ):
                    if now - incident.updated_at <= budget:
                        continue
                    reason = (
                        f"its flow run has been {state.type.value} for "
                        f"{now - incident.updated_at:.0f} s "
                        f"without progress (budget {budget:.0f} s); marked Crashed"
                    )
                    await client.set_flow_run_state(
                        uuid.UUID(incident.flow_run_id), Crashed(message=reason), force=True
                    )
                elif state is not None:
                    reason = (
                        f"its flow run ended {state.type.value} before the incident was finished"
                    )
                unfinished = [
                    w
                    for state in ("pending", "unknown")
                    for w in store.writes(state=state, incident_id=incident.id)
                ]
                notes = [_resolve(gate, write) for write in unfinished]
                store.set_status(incident.id, "escalated")
                # People are told (notifications): the run is gone, a person must look.
                EventLog(store.database).emit(
                    "incident.escalated", incident.id, reason=reason, intents=notes
                )
                findings.append({"incident": incident.id, "reason": reason, "intents": notes})
    gate.close()
    return findings


def _resolve(gate: ExecutionGate, write: WriteRecord) -> str:
    """A crashed run's unfinished write: observe the target, never repeat the call."""
    found = gate.resolve(write)
    if found.state == "done":
        return f"{write.step.describe()}: took effect before the crash"
    seen = "unknown" if found.state == "unknown" else "not observed"
    return f"{write.step.describe()}: did not take effect ({seen})"
