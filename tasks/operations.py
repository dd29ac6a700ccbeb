"""Prefect tasks that run universal operations: thin wrappers over agent/ and infrastructure/.

Each operation is one task run, named like a runbook line (`triage · local-docker · get_logs ·
web`). Retries, their delays and the timeout come from operations.yml per operation, and only
`retryable` errors are retried. Write operations run through the Remediator (intent before,
outcome after) inside a strict global concurrency limit per target, so remediations on one
service are serialised across all runs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency

from agent.incidents.context import StepRunner
from agent.incidents.models import IncidentContext, PlanStep, StepDecision
from agent.safety.policy import Approval
from agent.safety.remediation import RemediationOutcome, Remediator
from infrastructure.configuration.models import OperationSpec, Runbook
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
    def __init__(self, decision: StepDecision) -> None:
        super().__init__(decision.policy)
        self.decision = decision


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
    step: PlanStep,
    context: IncidentContext,
    runner: StepRunner,
) -> OperationResult:
    decision, result = await asyncio.to_thread(runner.run, step, context, None)
    if result is None:
        raise StepNotAuthorized(decision)
    if result.retryable:
        raise RetryableOperationError(result)
    return result


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


def concurrency_name(environment: str, target: str | None) -> str:
    """One global concurrency limit per remediated target (names: lowercase, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{environment}-{target or 'none'}".lower()).strip("-")
    return f"uici-remediate-{slug}"[:120]


@task(cache_policy=NO_CACHE, task_run_name="{phase} · {environment} · {operation} · {target}")
async def run_write_step(
    phase: str,
    environment: str,
    operation: str,
    target: str | None,
    step: PlanStep,
    context: IncidentContext,
    runbook: Runbook | None,
    approval: Approval | None,
    remediator: Remediator,
    wait_seconds: float,
) -> RemediationOutcome:
    name = concurrency_name(environment, target)
    async with get_client() as client:
        # The limit must exist, or a non-strict acquisition would silently not limit.
        await client.upsert_global_concurrency_limit_by_name(name, 1)
    async with concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True):
        return await asyncio.to_thread(remediator.run, step, context, runbook, approval)
