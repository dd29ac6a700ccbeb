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
import sqlite3
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

from agent.incidents.audit import AuditLog, AuditRecord
from agent.incidents.events import Event, EventLog
from agent.incidents.journal import Journal
from agent.incidents.models import AlertInfo, IncidentContext
from agent.incidents.storage import IncidentRecord, IncidentStatus, IncidentStore, insert_incident
from agent.logs import request_id_var
from agent.safety.gate import ExecutionGate, GateOutcome, requested_operation
from agent.service.auth import KeyRing, Principal, RateLimiter
from agent.service.dispatch import Dispatcher, Launcher, PrefectLauncher
from agent.service.intake import AlertIngestor, AlertmanagerWebhook, IngestResult, enqueue
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
from infrastructure.registry import CallValidationError, OperationRegistry
from infrastructure.translator import CommandSpec, CommandTranslator, TranslationError

log = logging.getLogger("uici.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyLimit:
    """Refuses bodies over the limit (413) by Content-Length, or while a chunked body streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _send_413(send, self.limit)
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
                if size > self.limit:
                    await _send_413(send, self.limit)
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
        self.events = EventLog(self.store.path)
        self.audit = AuditLog(self.store.path)
        self.journal = Journal(self.store.path)
        self.metrics = ServiceMetrics(self.store.path)
        self.launcher: Launcher = launcher or PrefectLauncher(config)
        self.dispatcher = Dispatcher(config, self.store, self.launcher)
        self.keys = KeyRing(config.platform.api.api_keys)
        self.limiter = RateLimiter(config.platform.api.rate_limits)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def config(self) -> UICIConfig:
        return self.configs.get()

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
        address = request.client.host if request.client else "unknown"
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
) -> FastAPI:
    state = ServiceState(configs, launcher)
    settings = state.config.platform.api
    if not len(state.keys):
        log.warning(
            "no API key is configured (platform.yml api.api_keys): every request except "
            "/health and /docs gets 401; `uici keys new NAME` creates one"
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.create_task(state.dispatcher.run_forever(stop)) if run_dispatcher else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task

    app = FastAPI(
        title="UICI agent service",
        version="0.1.0",
        description="Alertmanager webhooks, incidents, operations, live events, health and "
        "metrics of UICI, the Universal Infrastructure Command Interface.",
        lifespan=lifespan,
        responses={429: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
    )
    app.state.uici = state
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

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
    def health() -> Liveness:
        """Liveness: the process answers."""
        return Liveness(status="ok")

    @app.get(
        "/health/ready",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness}},
    )
    async def ready() -> JSONResponse:
        """Readiness: configuration, store, Prefect API and each enabled environment."""
        checks = await readiness_checks(state)
        body = Readiness(ready=all(c.ok for c in checks), checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics (a read key is needed if api.metrics_require_key)."""
        if state.config.platform.api.metrics_require_key:
            RequireScope("read")(request)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- the Alertmanager webhook -----------------------------------------------------------

    @app.post(
        "/webhooks/alertmanager",
        status_code=202,
        response_model=IngestResult,
        tags=["webhooks"],
        responses={503: {"model": ErrorResponse}, 400: {"model": ErrorResponse}},
    )
    def alertmanager_webhook(
        body: AlertmanagerWebhook, request: Request, sender: WebhookSender
    ) -> IngestResult:
        """Alertmanager's webhook (version 4). Answers 202 once every alert is stored."""
        started = time.perf_counter()
        address = request.client.host if request.client else "unknown"
        try:
            result = AlertIngestor(state.config, state.store).ingest(
                body, request.state.request_id, sender.name, address
            )
        except sqlite3.Error as exc:
            log.error("could not store a notification: %s", exc)
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
        if who.is_webhook:  # cannot happen with validated keys; kept as a second lock
            raise HTTPException(403, "the webhook credential cannot decide approvals")
        record = _incident_or_404(state, incident_id)
        pending = state.store.approvals(incident_id, "pending")
        if body.step_key is not None:
            pending = [p for p in pending if p.step_key == body.step_key]
        if not pending or record.flow_run_id is None:
            raise HTTPException(409, f"incident {incident_id} is {record.status}; nothing waits")
        approval = pending[0]
        action = "approve" if approve else "reject"
        try:
            await state.launcher.resume(
                record.flow_run_id, approve, who.name, body.reason, approval.step_key
            )
        except Exception as exc:
            state.audit.record(
                who.name, f"incident.{action}", f"failed: {exc}"[:300], approval.step.describe(),
                {"reason": body.reason}, incident_id, request.state.request_id,
            )  # fmt: skip
            raise HTTPException(502, f"could not resume flow run {record.flow_run_id}") from exc
        state.audit.record(
            who.name, f"incident.{action}", "resumed", approval.step.describe(),
            {"reason": body.reason, "step_key": approval.step_key}, incident_id,
            request.state.request_id,
        )  # fmt: skip
        return DecisionResponse(
            incident_id=incident_id,
            step=approval.step.describe(),
            command=approval.command,
            decision="approved" if approve else "rejected",
            by=who.name,
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
        annotations = {"summary": body.summary} if body.summary else {}
        context = IncidentContext(
            incident_id=incident_id,
            alert=AlertInfo(labels=labels, annotations=annotations),
            environment=environment,
            service=body.service,
            dependencies=body.dependencies,
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
        the environment's policy (a step that needs approval needs `approve: true`)."""
        config = state.config
        environment = body.environment or config.platform.platform.default_environment
        registry = OperationRegistry.from_config(config)
        try:
            call = registry.validate(name, environment, body.parameters, body.target)
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
            state.audit.record(
                who.name, f"operation.{name}", f"refused: {message}",
                f"{spec.environment}/{spec.target or '-'}", {"parameters": body.parameters},
                body.incident_id, request.state.request_id,
            )  # fmt: skip
            raise HTTPException(403, message)
        try:
            outcome = await asyncio.to_thread(
                _through_gate, state, config, spec, call.parameters, body, who, request
            )
        except (sqlite3.Error, OSError) as exc:  # fail closed: nothing runs unrecorded
            raise HTTPException(
                503, f"the incident store cannot be used ({exc}); no operation runs without it"
            ) from exc
        if outcome.result is None:
            code = {"policy": 403, "target": 422}.get(outcome.refused_by or "", 409)
            hint = " (review the dry run and send approve: true)"
            raise HTTPException(
                code, outcome.note + (hint if outcome.refused_by == "approval" else "")
            )
        return outcome.result

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
        try:
            while True:
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


def _through_gate(
    state: ServiceState,
    config: UICIConfig,
    spec: CommandSpec,
    parameters: dict[str, Any],
    body: RunOperationRequest,
    who: Principal,
    request: Request,
) -> GateOutcome:
    """The execution gate, as for every other entry point. A key with the operate scope that
    sends `approve: true` approves as itself; the cool-down and budgets still apply. The
    request id names the write, so a client that retries the same request writes once."""
    known = state.store.get(body.incident_id) if body.incident_id else None
    gate = ExecutionGate(config, state.store)
    request_id = request.state.request_id
    # The request id names the write: the same request sent again is the same write.
    what = json.dumps([spec.operation, spec.environment, spec.target, parameters], default=str)
    key = hashlib.sha256(f"{who.name}:{request_id}:{what}".encode()).hexdigest()[:24]
    gate_request = requested_operation(
        gate, spec, parameters, who.name, "api", body.approve,
        known.context if known else None, f"api-{key}", request_id,
    )  # fmt: skip
    try:
        return gate.execute(gate_request)
    finally:
        gate.close()


async def readiness_checks(state: ServiceState) -> list[ReadinessCheck]:
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
        if error is not None:
            raise RuntimeError(f"the changed configuration is invalid: {str(error)[:200]}")
        return f"fingerprint {state.config.fingerprint[:12]}"

    async def store() -> str:
        await asyncio.to_thread(state.store.probe_write)
        return str(state.store.path)

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

    checks = [
        timed("configuration", configuration),
        timed("store", store),
        timed("prefect", prefect),
    ]
    for name, environment in state.config.environments.environments.items():
        if environment.enabled:
            checks.append(timed(f"environment:{name}", environment_check(name, environment)))
    return list(await asyncio.gather(*checks))
