"""Prefect tasks that run universal operations: thin wrappers over the execution gate.

Each operation is one task run, named like a runbook line (`triage · local-docker · get_logs ·
web`). Retries, their delays and the timeout come from operations.yml per operation, and only
`retryable` read errors are retried. Writes go through the same gate (intent before, outcome
after, per-target lock in the store) and are never retried by Prefect: a write whose outcome is
unknown is resolved by observation, not by sending it again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from agent.safety.gate import ExecutionGate, GateOutcome, GateRequest
from infrastructure.configuration.models import OperationSpec
from infrastructure.executors.base import OperationResult

# Prefect's own deadline sits a little behind the executor's, so that an overrun is reported
# by the executor (classified, with its message) rather than cut off by Prefect.
_TIMEOUT_MARGIN_SECONDS = 5


class RetryableOperationError(Exception):
    """Raised so that Prefect retries; carries the last result."""

    def __init__(self, result: OperationResult) -> None:
        message = result.error.message if result.error else "retryable failure"
        super().__init__(message)
        self.result = result


class StepNotAuthorized(Exception):
    def __init__(self, outcome: GateOutcome) -> None:
        super().__init__(outcome.note)
        self.outcome = outcome


def _retry_only_retryable(task: Any, task_run: Any, state: Any) -> bool:
    # The engine hands over a Failed state whose data is the exception the task raised.
    return isinstance(state.data, RetryableOperationError)


@task(
    cache_policy=NO_CACHE,
    task_run_name="{phase} · {environment} · {operation} · {target}",
    retry_condition_fn=_retry_only_retryable,
)
async def run_read_step(
    phase: str,
    environment: str,
    operation: str,
    target: str | None,
    request: GateRequest,
    gate: ExecutionGate,
) -> OperationResult:
    outcome = await asyncio.to_thread(gate.execute, request)
    if outcome.result is None:
        raise StepNotAuthorized(outcome)
    if outcome.result.retryable:
        raise RetryableOperationError(outcome.result)
    return outcome.result


def read_step_options(spec: OperationSpec) -> dict[str, Any]:
    retries = spec.retry.attempts - 1
    return {
        "retries": retries,
        "retry_delay_seconds": [
            spec.retry.delay_seconds * spec.retry.backoff_factor**i for i in range(retries)
        ]
        or 0,
        "timeout_seconds": spec.timeout_seconds * spec.retry.attempts + _TIMEOUT_MARGIN_SECONDS,
    }


@task(cache_policy=NO_CACHE, task_run_name="{phase} · {environment} · {operation} · {target}")
async def run_write_step(
    phase: str,
    environment: str,
    operation: str,
    target: str | None,
    request: GateRequest,
    gate: ExecutionGate,
) -> GateOutcome:
    return await asyncio.to_thread(gate.execute, request)
