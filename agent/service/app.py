"""The agent service: `create_app()` builds the FastAPI application that `uici serve` runs.

Request path of an alert: authenticate (constant time) -> rate limit (503 for the webhook
credential, never 429) -> validate the body -> store alerts, incidents, outbox rows, events and
the audit record in one transaction -> 202. Nothing slower (Prefect, LLM, Docker) is on that
path: the dispatcher starts diagnoses from the outbox in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from agent.incidents.approvals import ApprovalDesk, ApprovalRefused, VoteResult
from agent.incidents.audit import AuditLog, AuditRecord
from agent.incidents.events import Event, EventLog
from agent.incidents.journal import Journal
from agent.incidents.models import AlertInfo, IncidentContext
from agent.incidents.operation_requests import RUNNER as OPERATION_REQUEST
from agent.incidents.operation_requests import OperationRequest, OperationRequests
from agent.incidents.storage import (
    UNRECORDABLE,
    IncidentRecord,
    IncidentStatus,
    IncidentStore,
    StoreFailure,
    failure_reason,
    insert_incident,
)
from agent.logs import request_id_var
from agent.notifications.delivery import DeliveryResult
from agent.notifications.notifier import Notifier
from agent.safety.gate import ExecutionGate, GateOutcome, requested_operation
from agent.service.auth import KeyRing, Principal, RateLimiter
from agent.service.auth import client_address as forwarded_client
from agent.service.dispatch import Dispatcher, Launcher, PrefectLauncher
from agent.service.intake import (
    AlertIngestor,
    AlertmanagerWebhook,
    IngestResult,
    NotANotification,
    enqueue,
    parse_notification,
)
from agent.service.metrics import ServiceMetrics
from agent.service.schemas import (
    AlertView,
    ApprovalView,
    DecisionRequest,
    DecisionResponse,
    DryRunResponse,
    ErrorResponse,
    IncidentDetail,
    IncidentSummary,
    Liveness,
    ManualIncidentRequest,
    ManualIncidentResponse,
    OperationSummary,
    Readiness,
    ReadinessCheck,
    RunOperationRequest,
)
from infrastructure.configuration.cache import ConfigCache
from infrastructure.configuration.loader import UICIConfig
from infrastructure.configuration.models import RiskLevel
from infrastructure.executors.base import OperationResult
from infrastructure.redaction import redact_result
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandSpec, CommandTranslator, TranslationError

log = logging.getLogger("uici.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


WEBHOOK_PATH = "/webhooks/alertmanager"


class BodyLimit:
    """Refuses bodies over the limit (413) by Content-Length, or while a chunked body streams.
    The webhook has its own (larger) limit; both follow configuration reloads."""

    def __init__(self, app: ASGIApp, limits: Callable[[Scope], int]) -> None:
        self.app = app
        self.limits = limits  # the limit for this request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits(scope)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _send_413(send, limit)
                return
        if not any(name == b"content-length" for name, _ in scope.get("headers", [])):
            # A chunked body: read it here, bounded, then hand it on whole.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    await _send_413(send, limit)
                    return
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


class ReloadingCORS:
    """CORS for the origins of the configuration in force (none: CORS is off)."""

    def __init__(self, app: ASGIApp, origins: Callable[[], list[str]]) -> None:
        self.app = app
        self.origins = origins
        self._built: tuple[tuple[str, ...], ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = tuple(self.origins())
        if not origins:
            await self.app(scope, receive, send)
            return
        if self._built is None or self._built[0] != origins:
            cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            )
            self._built = (origins, cors)
        await self._built[1](scope, receive, send)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ServiceState:
    """What the application holds: configuration, store, credentials, limits, metrics."""

    def __init__(self, configs: ConfigCache, launcher: Launcher | None) -> None:
        self.configs = configs
        config = configs.get()
        self.store = IncidentStore.from_config(config)
        self.events = EventLog(self.store.database, self.store.redactor)
        self.audit = AuditLog(self.store.database, self.store.redactor)
        self.journal = Journal(self.store.database)
        self.metrics = ServiceMetrics(self.store.database)
        self.launcher: Launcher = launcher or PrefectLauncher(config)
        self.dispatcher = Dispatcher(config, self.store, self.launcher)
        self.notifier = Notifier(self.configs.get, self.store, self._count_notification)
        self._credentials = (config.fingerprint, KeyRing(config.platform.api.api_keys))
        self._limits = (
            config.platform.api.rate_limits,
            RateLimiter(config.platform.api.rate_limits),
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._deep_lock = asyncio.Lock()
        self._deep_cache: tuple[float, Readiness] | None = None

    @property
    def config(self) -> UICIConfig:
        return self.configs.get()

    @property
    def keys(self) -> KeyRing:
        """The keys of the configuration in force: a key removed from platform.yml stops
        working once the configuration cache reloads (configuration.cache_ttl_seconds)."""
        config = self.config
        if self._credentials[0] != config.fingerprint:
            self._credentials = (config.fingerprint, KeyRing(config.platform.api.api_keys))
        return self._credentials[1]

    @property
    def limiter(self) -> RateLimiter:
        """The rate limits in force (their buckets start afresh when the limits change)."""
        limits = self.config.platform.api.rate_limits
        if self._limits[0] != limits:
            self._limits = (limits, RateLimiter(limits))
        return self._limits[1]

    def _count_notification(self, sink: str, result: DeliveryResult, state: str) -> None:
        outcome = "sent" if result.ok else ("retry" if state == "pending" else "failed")
        self.metrics.notification_attempts.labels(sink, outcome).inc()

    async def deep_health(self) -> Readiness:
        """The deep check, cached: concurrent and repeated callers share one run of it."""
        async with self._deep_lock:
            ttl = self.config.platform.api.deep_health.cache_seconds
            cached = self._deep_cache
            if cached is not None and time.monotonic() - cached[0] < ttl:
                return cached[1]
            checks = await readiness_checks(self, deep=True)
            body = Readiness(ready=all(c.ok for c in checks), checks=checks)
            self._deep_cache = (time.monotonic(), body)
            return body

    def wake_dispatcher(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.dispatcher.wake.set)


class RequireScope:
    """The dependency that authenticates a request, applies the rate limits and checks a scope."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, request: Request) -> Principal:
        state: ServiceState = request.app.state.uici
        found = state.keys.authenticate(request.headers.get("authorization"))
        address = client_address(state, request)
        limited = state.limiter.check(found, address)
        if limited is not None:
            bucket, wait = limited
            state.metrics.rate_limited.labels(bucket).inc()
            # Alertmanager drops a 429 but retries a 503: its credential never gets a 429.
            code = 503 if found is not None and found.is_webhook else 429
            raise HTTPException(code, "rate limit exceeded", headers={"Retry-After": str(wait)})
        if found is None:
            if request.method in _UNSAFE_METHODS:
                state.audit.record(
                    f"anonymous@{address}",
                    "auth.failed",
                    "401",
                    target=request.url.path[:200],
                    request_id=request.state.request_id,
                )
            raise HTTPException(
                401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"}
            )
        if self.scope not in found.scopes:
            raise HTTPException(403, f"this key lacks the {self.scope!r} scope")
        return found


Reader = Annotated[Principal, Depends(RequireScope("read"))]
Operator = Annotated[Principal, Depends(RequireScope("operate"))]
Admin = Annotated[Principal, Depends(RequireScope("admin"))]
WebhookSender = Annotated[Principal, Depends(RequireScope("webhook"))]


def create_app(
    configs: ConfigCache,
    launcher: Launcher | None = None,
    run_dispatcher: bool = True,
    run_notifier: bool = True,
) -> FastAPI:
    state = ServiceState(configs, launcher)
    if not len(state.keys):
        log.warning(
            "no API key is configured (platform.yml api.api_keys): every request except "
            "/health and /docs gets 401; `uici keys new NAME` creates one"
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        tasks = []
        if run_dispatcher:
            tasks.append(asyncio.create_task(state.dispatcher.run_forever(stop)))
        if run_notifier:  # notifications and expiring operation requests
            tasks.append(asyncio.create_task(state.notifier.run_forever(stop)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    app = FastAPI(
        title="UICI agent service",
        version="0.1.0",
        description="Alertmanager webhooks, incidents, operations, live events, health and "
        "metrics of UICI, the Universal Infrastructure Command Interface.",
        lifespan=lifespan,
        responses={429: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
    )
    app.state.uici = state
    app.add_middleware(ReloadingCORS, origins=lambda: state.config.platform.api.cors_origins)

    def body_limit(scope: Scope) -> int:
        """The webhook's larger limit only for a request with the webhook key: nobody else
        makes the service hold 16 MiB."""
        api = state.config.platform.api
        if scope.get("path") == WEBHOOK_PATH:
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            found = state.keys.authenticate(authorization or None)
            if found is not None and found.is_webhook:
                return api.webhook.max_body_bytes
        return api.max_body_bytes

    app.add_middleware(BodyLimit, limits=body_limit)

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        request.state.request_id = request_id
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = request_id
        route = request.scope.get("route")
        state.metrics.http_requests.labels(
            getattr(route, "path", "unmatched"), str(response.status_code)
        ).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        malformed = any(e.get("type") == "json_invalid" for e in exc.errors())
        return JSONResponse(
            status_code=400 if malformed else 422,
            content=ErrorResponse(
                error="malformed JSON body" if malformed else "invalid request",
                problems=problems,
                request_id=getattr(request.state, "request_id", None),
            ).model_dump(),
        )

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database went away mid-request (restart, failover, network): a 503 the client
        # retries; the pool replaces the connection, so the service recovers by itself.
        log.error("the incident store failed: %s", failure_reason(exc))
        return JSONResponse(
            status_code=503,
            content=ErrorResponse(
                error="the incident store is unavailable; retry",
                request_id=getattr(request.state, "request_id", None),
            ).model_dump(),
            headers={"Retry-After": "5"},
        )

    for failure in StoreFailure:
        app.add_exception_handler(failure, store_unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content=ErrorResponse(
                error=str(exc.detail), request_id=getattr(request.state, "request_id", None)
            ).model_dump(),
            headers=exc.headers,
        )

    # --- authentication and limits ------------------------------------------------------

    # --- health and metrics ---------------------------------------------------------------

    @app.get("/health", response_model=Liveness, tags=["health"])
    async def health() -> Liveness:
        """Liveness: the process answers (on the event loop, so threads the store holds
        waiting for a database cannot stall it)."""
        return Liveness(status="ok")

    @app.get(
        "/health/ready",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness}},
    )
    async def ready() -> JSONResponse:
        """Readiness of the webhook: the configuration is loaded and the store takes writes.
        Cheap, and independent of Prefect and the environments (the outbox covers a Prefect
        outage), so an orchestrator keeps the webhook in service while Alertmanager can be
        answered. GET /health/deep checks everything else."""
        checks = await readiness_checks(state, deep=False)
        body = Readiness(ready=all(c.ok for c in checks), checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get(
        "/health/deep",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness}},
    )
    async def deep(_: Reader) -> JSONResponse:
        """Every dependency: configuration, store, Prefect API, each enabled environment and
        the notification sinks. Needs a read key; checked at most once per
        api.deep_health.cache_seconds (callers in between get the cached answer)."""
        body = await state.deep_health()
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics (a read key is needed if api.metrics_require_key)."""
        if state.config.platform.api.metrics_require_key:
            RequireScope("read")(request)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- the Alertmanager webhook -----------------------------------------------------------

    @app.post(
        "/webhooks/alertmanager",  # WEBHOOK_PATH, written out for tests/test_k8s_manifests.py
        status_code=202,
        response_model=IngestResult,
        tags=["webhooks"],
        responses={
            503: {"model": ErrorResponse},
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": AlertmanagerWebhook.model_json_schema(
                            ref_template="#/components/schemas/{model}"
                        )
                    }
                },
            }
        },
    )
    async def alertmanager_webhook(request: Request, sender: WebhookSender) -> IngestResult:
        """Alertmanager's webhook (version 4). Answers 202 once every alert is stored. An alert
        that cannot be read is stored with the reason and reported, the others proceed; a
        value over api.webhook.max_value_chars is cut with a marker. Only a body that is not
        JSON (400) or not a notification at all (422) is refused."""
        started = time.perf_counter()
        address = client_address(state, request)
        config = state.config
        raw = await request.body()
        try:  # parsing up to 16 MiB is work for a thread, not the event loop
            parsed = await asyncio.to_thread(
                parse_notification, raw, config.platform.api.webhook.max_value_chars,
                state.store.redactor,
            )  # fmt: skip
        except NotANotification as exc:
            state.metrics.webhook_latency.labels(str(exc.status)).observe(
                time.perf_counter() - started
            )
            return JSONResponse(  # type: ignore[return-value]
                status_code=exc.status,
                content=ErrorResponse(
                    error=str(exc), problems=exc.problems, request_id=request.state.request_id
                ).model_dump(),
            )
        body = parsed.notification
        try:
            result = await asyncio.to_thread(
                AlertIngestor(config, state.store).ingest,
                body, request.state.request_id, sender.name, address, parsed.invalid,
            )  # fmt: skip
        except StoreFailure as exc:
            log.error("could not store a notification: %s", failure_reason(exc))
            state.metrics.webhook_latency.labels("503").observe(time.perf_counter() - started)
            # 5xx: Alertmanager keeps the notification and retries it.
            raise HTTPException(
                503, "could not store the alerts; retry", headers={"Retry-After": "5"}
            ) from exc
        for alert in body.alerts:
            state.metrics.alerts_received.labels(alert.status).inc()
        for disposition in result.alerts:
            state.metrics.alert_outcomes.labels(disposition.outcome).inc()
        if body.truncatedAlerts:
            log.warning(
                "notification from %s is truncated: %d alerts were not sent",
                body.receiver,
                body.truncatedAlerts,
            )
        if result.new_incidents or result.resolved_incidents:
            state.wake_dispatcher()
        state.metrics.webhook_latency.labels("202").observe(time.perf_counter() - started)
        return result

    # --- incidents --------------------------------------------------------------------------

    @app.get("/incidents", response_model=list[IncidentSummary], tags=["incidents"])
    def list_incidents(
        _: Reader,
        status: IncidentStatus | None = None,
        service: Annotated[str | None, Query(max_length=253)] = None,
        environment: Annotated[str | None, Query(max_length=63)] = None,
        since: Annotated[float | None, Query(description="Unix time, created at or after")] = None,
        until: Annotated[float | None, Query(description="Unix time, created before")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[IncidentSummary]:
        """Incidents, newest first."""
        records = state.store.incidents(status, service, environment, limit, since, until)
        return [_summary(r) for r in records]

    @app.get(
        "/incidents/{incident_id}",
        response_model=IncidentDetail,
        tags=["incidents"],
        responses={404: {"model": ErrorResponse}},
    )
    def get_incident(incident_id: str, _: Reader) -> IncidentDetail:
        """One incident with its alerts, approvals, timeline and report."""
        record = _incident_or_404(state, incident_id)
        alert_rows = state.store.alerts_of(incident_id)
        timeline = [
            {"at": e.at, "event": e.type, "data": e.data}
            for e in state.events.since(0, 1000, incident_id)
        ]
        return IncidentDetail(
            **_summary(record).model_dump(),
            context=record.context.model_dump(mode="json"),
            report=record.report,
            approvals=[
                ApprovalView(
                    step_key=a.step_key,
                    step=a.step.describe(),
                    command=a.command,
                    status=a.status,
                    actor=a.actor,
                    reason=a.reason,
                    created_at=a.created_at,
                    decided_at=a.decided_at,
                    expires_at=a.expires_at,
                    required_approvers=a.required,
                    requested_by=a.requested_by,
                    via=a.via,
                    approvers=[
                        v.approver for v in state.store.votes(incident_id, a.step_key) if v.approve
                    ],
                )
                for a in state.store.approvals(incident_id)
            ],
            alerts=[
                AlertView(
                    fingerprint=r["fingerprint"],
                    starts_at=r["starts_at"],
                    state=r["state"],
                    labels=json.loads(r["labels"]),
                    deliveries=r["deliveries"],
                    first_seen=r["first_seen"],
                    last_seen=r["last_seen"],
                    resolved_at=r["resolved_at"],
                )
                for r in alert_rows
            ],
            timeline=timeline,
        )

    async def decide(
        incident_id: str, body: DecisionRequest, who: Principal, approve: bool, request: Request
    ) -> DecisionResponse:
        """The key's name is the approver. The answer is recorded first (the decision of
        record, which the run reads), then the paused run is woken up."""
        if who.is_webhook:  # cannot happen with validated keys; kept as a second lock
            raise HTTPException(403, "the webhook credential cannot decide approvals")
        # Store reads and writes run in a thread: a store waiting on a lock must not stall
        # the event loop (the webhook, health probes and every other request).
        record = await asyncio.to_thread(_incident_or_404, state, incident_id)
        desk = ApprovalDesk(state.store)
        request_id = request.state.request_id
        try:
            waiting = await asyncio.to_thread(desk.pending, incident_id, body.step_key)
        except ApprovalRefused as refused:
            raise HTTPException(refused.status, str(refused)) from refused
        by_service = waiting.runner == OPERATION_REQUEST
        if not by_service and record.flow_run_id is None:
            raise HTTPException(409, f"incident {incident_id} is {record.status}; nothing waits")
        try:
            result = await asyncio.to_thread(
                desk.answer, incident_id, waiting.step_key, who.name, approve, "api",
                client_address(state, request), body.reason, request_id,
            )  # fmt: skip
        except ApprovalRefused as refused:
            raise HTTPException(refused.status, str(refused)) from refused
        outcome = None
        if by_service:
            if result.decision == "approved":
                outcome = await asyncio.to_thread(_run_approved, state, result, request_id)
            elif result.decision == "rejected":
                await asyncio.to_thread(OperationRequests(state.config, state.store).closed, result)
        elif result.decision != "pending" and record.flow_run_id is not None:
            try:
                await state.launcher.resume(
                    record.flow_run_id, approve, who.name, body.reason, result.step_key,
                    waiting.nonce or "",
                )  # fmt: skip
            except Exception as exc:
                if await asyncio.to_thread(desk.undo, result, str(exc), request_id):
                    raise HTTPException(
                        502, f"could not resume flow run {record.flow_run_id}; nothing was decided"
                    ) from exc
                # The run's pause had ended and it acted on the recorded decision: it stands.
        return DecisionResponse(
            incident_id=incident_id,
            step=result.step,
            command=result.command,
            decision=result.decision,
            by=who.name,
            approvers=result.approvers,
            required_approvers=result.required,
            outcome=outcome.outcome if outcome else None,
            result=outcome.result if outcome else None,
        )

    decision_responses: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        502: {"model": ErrorResponse},
    }

    @app.post(
        "/incidents/{incident_id}/approve",
        response_model=DecisionResponse,
        tags=["incidents"],
        responses=decision_responses,
    )
    async def approve(
        incident_id: str, body: DecisionRequest, who: Operator, request: Request
    ) -> DecisionResponse:
        """Approve the write step the incident's flow run is paused for (it resumes)."""
        return await decide(incident_id, body, who, True, request)

    @app.post(
        "/incidents/{incident_id}/reject",
        response_model=DecisionResponse,
        tags=["incidents"],
        responses=decision_responses,
    )
    async def reject(
        incident_id: str, body: DecisionRequest, who: Operator, request: Request
    ) -> DecisionResponse:
        """Reject the write step the incident's flow run is paused for: it is not executed."""
        return await decide(incident_id, body, who, False, request)

    @app.post(
        "/incidents",
        status_code=202,
        response_model=ManualIncidentResponse,
        tags=["incidents"],
        responses={422: {"model": ErrorResponse}},
    )
    def trigger_incident(
        body: ManualIncidentRequest, who: Operator, request: Request
    ) -> ManualIncidentResponse:
        """Open an incident by hand; its diagnosis starts like an alert's."""
        config = state.config
        environment = body.environment or config.platform.platform.default_environment
        spec = config.environments.environments.get(environment)
        if spec is None or not spec.enabled:
            raise HTTPException(422, f"environment {environment!r} is not configured or enabled")
        registry = OperationRegistry.from_config(config)
        for name in (body.service, *body.dependencies):
            if problem := registry.target_problem(name):
                raise HTTPException(422, problem)
        incident_id = f"manual-{uuid.uuid4().hex[:12]}"
        labels = {"alertname": "manual", "service": body.service, "uici_env": environment}
        annotations = {"summary": state.store.redactor(body.summary)} if body.summary else {}
        context = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(labels=labels, annotations=annotations),
            environment=environment,
            service=body.service,
            dependencies=body.dependencies,
            requested_by=who.name,
        )
        now = time.time()
        parameters = {
            "alert": {"status": "firing", "labels": labels, "annotations": annotations},
            "incident_id": incident_id,
            "environment": environment,
            "service": body.service,
            "dependencies": body.dependencies,
            "request_id": request.state.request_id,
        }
        with state.store.transaction() as db:
            insert_incident(db, context, now=now)
            enqueue(db, "diagnose", incident_id, incident_id, parameters, now)
            state.events.emit(
                "incident.created", incident_id, db, environment=environment,
                service=body.service, alertname="manual", by=who.name,
            )  # fmt: skip
            state.audit.record(
                who.name, "incident.create", "accepted", f"{environment}/{body.service}",
                body.model_dump(), incident_id, request.state.request_id, db=db,
            )  # fmt: skip
        state.wake_dispatcher()
        return ManualIncidentResponse(
            incident_id=incident_id, status="open", environment=environment, service=body.service
        )

    # --- operations -------------------------------------------------------------------------

    @app.get("/operations", response_model=list[OperationSummary], tags=["operations"])
    def list_operations(_: Reader) -> list[OperationSummary]:
        """The universal operations of operations.yml."""
        registry = OperationRegistry.from_config(state.config)
        return [
            OperationSummary(
                name=name,
                description=spec.description,
                risk=spec.risk.value,
                environments=[e.value for e in spec.environments],
            )
            for name, spec in registry.operations_for()
        ]

    @app.get(
        "/operations/{name}",
        tags=["operations"],
        responses={404: {"model": ErrorResponse}},
    )
    def describe_operation(name: str, _: Reader) -> dict[str, Any]:
        """One operation: risk, parameters, timeout, retries, supported environment types."""
        spec = state.config.operations.operations.get(name)
        if spec is None:
            raise HTTPException(404, f"unknown operation {name[:64]!r}")
        return {"name": name, **spec.model_dump(mode="json")}

    @app.post(
        "/operations/{name}/run",
        tags=["operations"],
        responses={
            403: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    async def run_operation(
        name: str, body: RunOperationRequest, who: Reader, request: Request
    ) -> OperationResult | DryRunResponse:
        """Validate, translate and run one operation. Writes need the operate scope and pass
        the environment's policy. A write that needs approval is not run: it becomes an
        operation request (202, with its incident id) that other people approve at
        POST /incidents/{incident_id}/approve; nobody approves their own."""
        config = state.config
        environment = body.environment or config.platform.platform.default_environment
        registry = OperationRegistry.from_config(config)
        try:
            # A dry run touches nothing, so it also works on a disabled environment; the gate
            # validates again, without that allowance, before anything is sent.
            call = registry.validate(
                name, environment, body.parameters, body.target, allow_disabled=body.dry_run
            )
            spec = CommandTranslator.from_config(config).translate(call)
        except CallValidationError as exc:
            raise HTTPException(422, "; ".join(str(p) for p in exc.problems)) from exc
        except TranslationError as exc:
            raise HTTPException(422, str(exc)) from exc
        if body.dry_run:
            return DryRunResponse(
                operation=spec.operation,
                environment=spec.environment,
                target=spec.target,
                command=spec.command,
                command_line=spec.command_line(),
                executor_call=spec.executor_call(),
                risk=spec.risk.value,
            )
        if spec.risk is not RiskLevel.READ and "operate" not in who.scopes:
            message = f"{spec.risk.value} operations need a key with the 'operate' scope"
            await asyncio.to_thread(
                state.audit.record, who.name, f"operation.{name}", f"refused: {message}",
                f"{spec.environment}/{spec.target or '-'}", {"parameters": body.parameters},
                body.incident_id, request.state.request_id,
            )  # fmt: skip
            raise HTTPException(403, message)
        try:
            outcome = await asyncio.to_thread(
                _through_gate, state, config, spec, call.parameters, body, who, request
            )
        except UNRECORDABLE as exc:  # fail closed: nothing runs unrecorded
            raise HTTPException(
                503,
                f"the incident store cannot be used ({failure_reason(exc)}); no operation runs"
                " without it",
            ) from exc
        if outcome.refused_by == "approval":
            if body.approve:
                raise HTTPException(
                    403,
                    "a requester cannot approve its own write: send it without approve, and "
                    "another person approves it at POST /incidents/{incident_id}/approve",
                )
            opened = await asyncio.to_thread(
                _request_approval, state, config, spec, call.parameters, body, who, request
            )
            return JSONResponse(opened.model_dump(), status_code=202)  # type: ignore[return-value]
        if outcome.result is None:
            code = {"policy": 403, "target": 422}.get(outcome.refused_by or "", 409)
            raise HTTPException(code, outcome.note)
        # Executors redact what they return; this is the second layer at the exit.
        return redact_result(outcome.result, state.store.redactor)

    # --- audit and events -------------------------------------------------------------------

    @app.get("/audit", response_model=list[AuditRecord], tags=["audit"])
    def audit(
        _: Admin,
        incident_id: Annotated[str | None, Query(max_length=100)] = None,
        actor: Annotated[str | None, Query(max_length=200)] = None,
        action: Annotated[str | None, Query(max_length=100)] = None,
        since: float | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditRecord]:
        """The append-only audit trail, newest first."""
        return state.audit.query(incident_id, actor, action, since, limit)

    @app.get("/events", response_model=list[Event], tags=["events"])
    def events(
        _: Reader,
        since: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
        incident_id: Annotated[str | None, Query(max_length=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Event]:
        """Events after an id (the same stream as WS /ws/events, for polling clients)."""
        return state.events.since(since, limit, incident_id)

    @app.get("/events/schema", tags=["events"])
    def events_schema() -> dict[str, Any]:
        """The JSON schema of one event message of WS /ws/events."""
        return Event.model_json_schema()

    @app.websocket("/ws/events")
    async def event_stream(websocket: WebSocket) -> None:
        """Live events. Authenticate with an `Authorization` header (read scope); `?since=<id>`
        replays what came after that id first (at most api.events.replay_limit)."""
        found = state.keys.authenticate(websocket.headers.get("authorization"))
        if found is None or "read" not in found.scopes:
            await websocket.close(code=1008, reason="a key with the read scope is required")
            return
        settings = state.config.platform.api.events
        since_text = websocket.query_params.get("since")
        try:
            after = (
                int(since_text)
                if since_text is not None
                else await asyncio.to_thread(state.events.last_id)
            )
        except ValueError:
            after = -1
        if not 0 <= after < 2**63:
            await websocket.close(code=1008, reason="since must be an event id")
            return
        await websocket.accept()
        authorization = websocket.headers.get("authorization")
        try:
            while True:
                # A key removed from the configuration ends the stream it opened.
                still = state.keys.authenticate(authorization)
                if still is None or "read" not in still.scopes:
                    await websocket.close(code=1008, reason="the key is no longer valid")
                    return
                batch = await asyncio.to_thread(state.events.since, after, settings.replay_limit)
                for event in batch:
                    await websocket.send_text(event.model_dump_json())
                    after = event.id
                if not batch:
                    await asyncio.sleep(settings.poll_seconds)
        except (WebSocketDisconnect, RuntimeError):
            return

    return app


# --- helpers ---------------------------------------------------------------------------------


def client_address(state: ServiceState, request: Request) -> str:
    """The caller's address (X-Forwarded-For only from api.trusted_proxies)."""
    peer = request.client.host if request.client else "unknown"
    # Several X-Forwarded-For lines are one list (RFC 9110): a client cannot hide behind
    # an extra line of its own in front of the proxy's.
    forwarded = ",".join(request.headers.getlist("x-forwarded-for")) or None
    return forwarded_client(peer, forwarded, state.config.platform.api.trusted_proxies)


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


def _summary(record: IncidentRecord) -> IncidentSummary:
    diagnosis = (record.report or {}).get("diagnosis") or {}
    return IncidentSummary(
        id=record.id,
        status=record.status,
        environment=record.environment,
        service=record.service,
        alertname=record.context.alert.alertname,
        root_cause=diagnosis.get("root_cause"),
        flow_run_id=record.flow_run_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _incident_or_404(state: ServiceState, incident_id: str) -> IncidentRecord:
    record = state.store.get(incident_id)
    if record is None:
        raise HTTPException(404, f"no incident {incident_id[:100]!r}")
    return record


def _write_key(
    spec: CommandSpec, parameters: dict[str, Any], who: Principal, request: Request
) -> str:
    # The request id names the write: the same request sent again is the same write.
    what = json.dumps([spec.operation, spec.environment, spec.target, parameters], default=str)
    request_id = request.state.request_id
    return hashlib.sha256(f"{who.name}:{request_id}:{what}".encode()).hexdigest()[:24]


def _through_gate(
    state: ServiceState,
    config: UICIConfig,
    spec: CommandSpec,
    parameters: dict[str, Any],
    body: RunOperationRequest,
    who: Principal,
    request: Request,
) -> GateOutcome:
    """The execution gate, as for every other entry point, with no approval: a write that
    needs one is refused here and becomes an operation request. The cool-down and budgets
    apply. A client that retries the same request (same request id) writes once."""
    known = state.store.get(body.incident_id) if body.incident_id else None
    gate = ExecutionGate(config, state.store)
    key = _write_key(spec, parameters, who, request)
    gate_request = requested_operation(
        gate, spec, parameters, who.name, "api", False,
        known.context if known else None, f"api-{key}", request.state.request_id,
    )  # fmt: skip
    try:
        return gate.execute(gate_request)
    finally:
        gate.close()


def _request_approval(
    state: ServiceState,
    config: UICIConfig,
    spec: CommandSpec,
    parameters: dict[str, Any],
    body: RunOperationRequest,
    who: Principal,
    request: Request,
) -> OperationRequest:
    known = state.store.get(body.incident_id) if body.incident_id else None
    gate = ExecutionGate(config, state.store)
    try:
        step = requested_operation(
            gate, spec, parameters, who.name, "api", False, None, "", None
        ).step
    finally:
        gate.close()
    return OperationRequests(config, state.store).open(
        step, spec.command_line(), who.name, _write_key(spec, parameters, who, request),
        known.context if known else None, request.state.request_id,
    )  # fmt: skip


def _run_approved(state: ServiceState, vote: VoteResult, request_id: str) -> GateOutcome:
    config = state.config
    gate = ExecutionGate(config, state.store)
    try:
        return OperationRequests(config, state.store).run_approved(vote, gate, request_id)
    finally:
        gate.close()


async def readiness_checks(state: ServiceState, deep: bool) -> list[ReadinessCheck]:
    timeout = state.config.platform.api.readiness_timeout_seconds

    async def timed(name: str, check: Callable[[], Awaitable[str]]) -> ReadinessCheck:
        started = time.perf_counter()
        try:
            detail = await asyncio.wait_for(check(), timeout)
            ok = True
        except TimeoutError:
            ok, detail = False, f"no answer within {timeout:g} s"
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
        return ReadinessCheck(
            name=name,
            ok=ok,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            detail=detail,
        )

    async def configuration() -> str:
        state.configs.get()
        error = state.configs.last_error
        in_force = f"fingerprint {state.config.fingerprint[:12]}"
        if error is not None:
            # The last good configuration still serves the webhook: ready, but the deep
            # check says the change was rejected.
            if deep:
                raise RuntimeError(f"the changed configuration is invalid: {str(error)[:200]}")
            return f"{in_force}; a change was rejected (see /health/deep)"
        return in_force

    async def store() -> str:
        await asyncio.to_thread(state.store.probe_write, timeout)
        return state.store.database.name

    async def write_lock() -> str:
        await asyncio.to_thread(state.store.probe_write_lock, timeout)
        return "taken and released"

    async def prefect() -> str:
        await state.launcher.reachable()
        return state.config.platform.prefect.api_url

    def environment_check(name: str, environment: Any) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            from infrastructure.executors.factory import create_executor

            def connect() -> str:
                executor = create_executor(name, environment)
                try:
                    return executor.check_connection().output or "reachable"
                finally:
                    executor.close()

            return await asyncio.to_thread(connect)

        return check

    checks = [timed("configuration", configuration), timed("store", store)]
    if not deep:
        return list(await asyncio.gather(*checks))
    checks.append(timed("store write lock", write_lock))
    checks.append(timed("prefect", prefect))

    def sink_check(name: str) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            health = await asyncio.to_thread(state.notifier.sink_health)
            ok, detail = health.get(name, (True, "no delivery yet"))
            if not ok:
                raise RuntimeError(detail)
            return detail

        return check

    for sink in state.config.platform.notifications.sinks:
        if sink.enabled:
            checks.append(timed(f"notification:{sink.name}", sink_check(sink.name)))
    for name, environment in state.config.environments.environments.items():
        if environment.enabled:
            checks.append(timed(f"environment:{name}", environment_check(name, environment)))
    return list(await asyncio.gather(*checks))
