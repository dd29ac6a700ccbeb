"""The outbox dispatcher: stored alerts start their diagnosis, resolved alerts cancel waiting
approvals. It runs in the background of `uici serve`, so the webhook answers as soon as an
alert is stored, and a Prefect outage only delays work: failed starts are retried with backoff
and nothing is lost. Starting a diagnosis carries an idempotency key (fingerprint and
startsAt), so a retry after an ambiguous failure returns the run that already exists.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol
from uuid import UUID

from agent.incidents.audit import AuditLog
from agent.incidents.events import EventLog
from agent.incidents.storage import (
    UNRECORDABLE,
    ApprovalRecord,
    IncidentStore,
    dispatch_done,
    dispatch_failed,
    failure_reason,
    release_dispatch,
    set_flow_run,
)
from agent.logs import log_context
from infrastructure.configuration.loader import UICIConfig

log = logging.getLogger("uici.dispatch")

ACTOR = "uici-service"


class Launcher(Protocol):
    """Where diagnoses run (Prefect deployments in production)."""

    async def start_diagnosis(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        """Start (or find, by key) the diagnosis run; return its id."""
        ...

    async def cancel_approval(self, flow_run_id: str, reason: str, token: str = "") -> bool:
        """Wake a paused run whose approval was cancelled; False if it was not paused."""
        ...

    async def resume(
        self,
        flow_run_id: str,
        approve: bool,
        approver: str,
        reason: str,
        step_key: str = "",
        token: str = "",
    ) -> None:
        """Wake a paused run to read the recorded decision of the step `step_key`; `token`
        (the request's nonce) tells the run this wake-up is not a Prefect UI answer."""
        ...

    async def reachable(self) -> None:
        """Raise unless the orchestrator answers."""
        ...


class Dispatcher:
    def __init__(self, config: UICIConfig, store: IncidentStore, launcher: Launcher) -> None:
        self.settings = config.platform.api.dispatch
        self.store = store
        self.launcher = launcher
        self.events = EventLog(store.database)
        self.audit = AuditLog(store.database)
        self.wake = asyncio.Event()

    def _due(self) -> list[dict[str, Any]]:
        """The due rows, leased to this dispatcher (another `uici serve` on the same store
        does not start them too; if this one dies, the lease runs out and they are retried)."""
        now = time.time()
        lease = now + self.settings.lease_seconds
        rows = self.store.claim_dispatch(now, self.settings.batch_size, lease)
        return [{**r, "lease": lease} for r in rows]

    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Dispatch every due outbox row once; the number taken up (successfully or not).
        Once `stop` is set, the rows not yet taken up are given back at once, even while the
        one in flight still waits for Prefect."""
        rows = await asyncio.to_thread(self._due)
        started = 0
        given_back = False

        async def give_back() -> None:
            nonlocal given_back
            rest = [(row["id"], row["lease"]) for row in rows[started:]]
            given_back = True
            if rest:  # due again at once, not when their lease runs out
                await asyncio.shield(asyncio.to_thread(self._release, rest))

        try:
            for row in rows:
                if (stop is not None and stop.is_set()) or time.time() >= row["lease"]:
                    break  # stopping, or the lease ran out: another dispatcher may take them
                # From here the row is in flight: it keeps its lease even if this task is
                # cancelled, so no other dispatcher starts it while this one might still be.
                started += 1
                try:
                    result = await self._until_done(self._dispatch(row), stop, give_back)
                except Exception as exc:
                    await asyncio.to_thread(self._failed, row, exc)
                else:
                    await asyncio.to_thread(self._done, row, result)
                if given_back:
                    break
        finally:
            if not given_back:
                await give_back()
        return started

    @staticmethod
    async def _until_done(
        work: Coroutine[Any, Any, str],
        stop: asyncio.Event | None,
        on_stop: Callable[[], Awaitable[None]],
    ) -> str:
        """`work`'s result; if `stop` is set first, `on_stop` runs while it goes on."""
        task = asyncio.ensure_future(work)
        try:
            if stop is not None and not stop.is_set():
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if not task.done():
                    await on_stop()
            return await task
        except asyncio.CancelledError:
            task.cancel()  # cancelled from outside: so is the work
            raise

    def _release(self, leases: list[tuple[int, float]]) -> None:
        try:
            release_dispatch(self.store.database, leases, time.time())
        except UNRECORDABLE as exc:
            log.warning(
                "could not give back %d outbox rows (%s): they are due again when their lease"
                " runs out",
                len(leases),
                failure_reason(exc),
            )

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.run_once(stop)
            except Exception:  # the store itself failing: log, wait, go on
                log.exception("dispatch loop: could not read the outbox")
                handled = 0
            if handled >= self.settings.batch_size:
                continue
            self.wake.clear()
            waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(
                waiters, timeout=self.settings.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()

    async def _dispatch(self, row: dict[str, Any]) -> str:
        payload = json.loads(row["payload"])
        if row["kind"] == "diagnose":
            return await self.launcher.start_diagnosis(payload, row["key"])
        if row["kind"] == "cancel_approvals":
            return await self._cancel_approvals(row["incident_id"], payload["reason"])
        raise ValueError(f"unknown outbox kind {row['kind']!r}")

    async def _cancel_approvals(self, incident_id: str, reason: str) -> str:
        record = await asyncio.to_thread(self.store.get, incident_id)
        approvals = await asyncio.to_thread(self.store.approvals, incident_id)
        waiting = [a for a in approvals if a.status in ("pending", "cancelled")]
        if record is None or not waiting or not record.flow_run_id:
            return "nothing waiting for approval"
        # Recorded first: the run, once resumed, reads the decision of record. A request a
        # person decided just before is left as they decided it.
        token = ""
        for approval in waiting:
            if approval.status != "pending":
                continue
            cancelled = await asyncio.to_thread(
                self.store.decide_approval,
                incident_id,
                approval.step_key,
                "cancelled",
                "alertmanager",
                reason,
                "alertmanager",
            )
            if not cancelled:
                continue
            token = approval.nonce or ""
            await asyncio.to_thread(self._cancelled, incident_id, approval, reason)
        # Raises while the run is still on its way to the pause: the outbox retries.
        if not token and not any(a.status == "cancelled" for a in waiting):
            return "nothing waiting for approval"
        paused = await self.launcher.cancel_approval(record.flow_run_id, reason, token)
        return "cancelled" if paused else "run was no longer paused"

    def _cancelled(self, incident_id: str, approval: ApprovalRecord, reason: str) -> None:
        self.audit.record(
            "alertmanager", "approval.cancel", "cancelled", approval.step.describe(),
            {"via": "alertmanager", "step_key": approval.step_key, "reason": reason},
            incident_id,
        )  # fmt: skip
        self.events.emit(
            "approval.decided",
            incident_id,
            step=approval.step.describe(),
            decision="cancelled",
            by="alertmanager",
        )

    def _done(self, row: dict[str, Any], result: str) -> None:
        now = time.time()
        with self.store.transaction() as db:
            if not dispatch_done(db, row["id"], row["lease"], result, now):
                log.warning("dispatch row %s: lease lost, another dispatcher has it", row["id"])
                return
            if row["kind"] == "diagnose":
                set_flow_run(db, row["incident_id"], result, now)
                self.events.emit("dispatch.started", row["incident_id"], db, flow_run_id=result)
            request_id = json.loads(row["payload"]).get("request_id")
            self.audit.record(
                ACTOR,
                f"dispatch.{row['kind']}",
                result,
                incident_id=row["incident_id"],
                request_id=request_id,
                db=db,
            )

    def _failed(self, row: dict[str, Any], exc: Exception) -> None:
        attempts = row["attempts"] + 1
        delay = min(
            self.settings.max_backoff_seconds,
            self.settings.retry_backoff_seconds * 2 ** (attempts - 1),
        )
        message = f"{type(exc).__name__}: {exc}"[:500]
        with log_context(incident_id=row["incident_id"]):
            log.warning(
                "dispatch %s for incident %s failed (attempt %d, next in %.1f s): %s",
                row["kind"],
                row["incident_id"],
                attempts,
                delay,
                message,
            )
        with self.store.transaction() as db:
            held = dispatch_failed(
                db, row["id"], row["lease"], attempts, time.time() + delay, message, time.time()
            )
            if held and attempts == 1:
                self.events.emit(
                    "dispatch.failed", row["incident_id"], db, kind=row["kind"], error=message
                )


class PrefectLauncher:
    """Starts the diagnose-incident deployment through the Prefect API in platform.yml."""

    def __init__(self, config: UICIConfig) -> None:
        prefect = config.platform.prefect
        self.api_url = prefect.api_url
        self.deployment = f"diagnose-incident/{prefect.deployments.diagnose_incident}"
        self._deployment_id: Any = None

    def _settings(self) -> Any:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url})

    async def start_diagnosis(self, parameters: dict[str, Any], idempotency_key: str) -> str:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with self._settings():
            async with get_client() as client:
                if self._deployment_id is None:
                    deployment = await client.read_deployment_by_name(self.deployment)
                    self._deployment_id = deployment.id
                try:
                    run = await client.create_flow_run_from_deployment(
                        self._deployment_id,
                        parameters=parameters,
                        idempotency_key=idempotency_key,
                        tags=["uici", "alertmanager"],
                    )
                except ObjectNotFound:
                    self._deployment_id = None  # redeployed under a new id: look it up again
                    raise
        return str(run.id)

    async def cancel_approval(self, flow_run_id: str, reason: str, token: str = "") -> bool:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound

        try:
            await self.resume(flow_run_id, False, "alertmanager", reason, token=token)
        except (FlowPauseTimeout, ObjectNotFound):
            return False  # timed out or gone: nothing waits any more
        except NotPausedError:
            with self._settings():
                async with get_client() as client:
                    run = await client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and run.state.is_final():
                return False
            raise RuntimeError("the run has not reached its approval pause yet") from None
        return True

    async def resume(
        self,
        flow_run_id: str,
        approve: bool,
        approver: str,
        reason: str,
        step_key: str = "",
        token: str = "",
    ) -> None:
        """Wake the run paused for the step `step_key` (raises NotPausedError if it is not
        paused); it acts on the recorded decision, which this input only points it to."""
        from prefect.flow_runs import aresume_flow_run

        with self._settings():
            await aresume_flow_run(
                UUID(flow_run_id),
                run_input={
                    "approve": approve,
                    "approver": approver,
                    "reason": reason,
                    "step_key": step_key,
                    "token": token,
                },
            )

    async def reachable(self) -> None:
        from prefect.client.orchestration import get_client

        with self._settings():
            async with get_client() as client:
                response = await client._client.get("/health")
                response.raise_for_status()
