"""The Docker executor: universal operations on a Docker engine through the `docker` SDK.

Targets are a container name or ID, a Compose service (`service` or `project/service`), or a
label selector (`key=value`). A target that matches several containers (replicas) runs the
operation on each, and the result's data has one item per container.

Connection settings come from environments.yml (`base_url`, `timeout_seconds`, `tls`). The
client is created on first use, never at import, so an engine that is down is an error of the
operation that needed it (retryable, saying which endpoint was tried and how to fix it).
"""

from __future__ import annotations

import difflib
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import docker
import docker.errors
import httpx
import requests.exceptions
from docker.models.containers import Container
from docker.tls import TLSConfig

from infrastructure.configuration.models import DockerConnection, DockerEnvironment, EnvironmentType
from infrastructure.executors.base import (
    EnvironmentExecutor,
    ErrorKind,
    ExecutorError,
    MethodOutput,
    ResolvedTarget,
    executor_method,
)
from infrastructure.executors.logtext import kept_lines, line_filter
from infrastructure.executors.status import normalised
from infrastructure.redaction import REDACTED, Redactor, is_secret_key
from infrastructure.registry import duration_seconds

# How far the engine's clock may be behind UICI's when a write's effect is looked for.
_CLOCK_SKEW_SECONDS = 2.0
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
_ZERO_TIME = "0001-01-01T00:00:00Z"
_HEALTH_OUTPUT_CHARS = 500
_MAX_PARALLEL = 8

Item = TypeVar("Item")


def _timestamp(value: str | None) -> str | None:
    """Docker's zero time means 'never'."""
    return None if not value or value.startswith("0001-01-01") else value


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f} MiB"


class DockerExecutor(EnvironmentExecutor):
    environment_type: ClassVar[EnvironmentType] = EnvironmentType.DOCKER

    def __init__(self, name: str, environment: DockerEnvironment) -> None:
        super().__init__(name, environment)
        self.connection: DockerConnection = environment.connection
        self._client: docker.DockerClient | None = None

    # --- connection -------------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            with self._errors():
                self._client = docker.DockerClient(
                    base_url=self.connection.base_url,
                    timeout=self.connection.timeout_seconds,
                    tls=self._tls(),
                    version="auto",
                )
        return self._client

    def _tls(self) -> TLSConfig | bool:
        tls = self.connection.tls
        if tls is None:
            return False
        client_cert = (
            (os.path.expanduser(tls.client_cert), os.path.expanduser(tls.client_key))
            if tls.client_cert and tls.client_key
            else None
        )
        return TLSConfig(
            client_cert=client_cert,
            ca_cert=os.path.expanduser(tls.ca_cert) if tls.ca_cert else None,
            verify=tls.verify,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _unreachable(self, reason: str) -> ExecutorError:
        base_url = self.connection.base_url
        hint = (
            f"start the Docker engine, or point environments.{self.name}.connection.base_url "
            "(DOCKER_HOST) at one that runs"
        )
        if base_url.startswith("unix://"):
            socket_path = base_url.removeprefix("unix://")
            if not os.path.exists(socket_path):
                hint = f"the socket {socket_path} does not exist: is dockerd running? " + hint
            elif not os.access(socket_path, os.R_OK | os.W_OK):
                hint = (
                    f"this user may not use {socket_path}: add it to the docker group "
                    "or use a socket proxy"
                )
        return ExecutorError(
            ErrorKind.RETRYABLE, f"Docker engine at {base_url} is unreachable: {reason}", hint
        )

    @contextmanager
    def _errors(self, target: str | None = None) -> Iterator[None]:
        """Classify SDK and transport errors into ErrorKinds."""
        try:
            yield
        except ExecutorError:
            raise
        except docker.errors.NotFound as exc:
            raise ExecutorError(
                ErrorKind.PERMANENT, f"not found: {_explanation(exc)}", self._closest(target)
            ) from exc
        except docker.errors.APIError as exc:
            status = exc.status_code or 0
            message = f"Docker API error {status}: {_explanation(exc)}"
            if status in (401, 403):
                raise ExecutorError(ErrorKind.DENIED, message) from exc
            if status == 501:
                # Not implemented, e.g. a logging driver that keeps no readable log (none,
                # syslog, a Loki driver): asking again cannot help.
                raise ExecutorError(
                    ErrorKind.PERMANENT,
                    message,
                    "the engine cannot do this for this container (for logs: read them where"
                    " its logging driver sends them, e.g. Loki with query_logs)",
                ) from exc
            if status >= 500 and "is not running" not in message:
                raise ExecutorError(ErrorKind.RETRYABLE, message) from exc
            raise ExecutorError(ErrorKind.PERMANENT, message) from exc
        except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise self._unreachable(_first_line(exc)) from exc
        except requests.exceptions.Timeout as exc:
            raise ExecutorError(
                ErrorKind.RETRYABLE,
                f"Docker engine at {self.connection.base_url} did not answer within "
                f"{self.connection.timeout_seconds:g} s",
                f"raise environments.{self.name}.connection.timeout_seconds"
                " or check the engine's load",
            ) from exc
        except docker.errors.DockerException as exc:
            text = str(exc)
            if "Error while fetching server API version" in text or "Connection" in text:
                raise self._unreachable(_first_line(exc)) from exc
            raise ExecutorError(ErrorKind.PERMANENT, f"Docker error: {_first_line(exc)}") from exc

    def check_connection(self) -> MethodOutput:
        start = time.perf_counter()
        with self._errors():
            version = self._docker().version()
        return MethodOutput(
            output=f"Docker {version.get('Version')} (API {version.get('ApiVersion')})",
            data={
                "version": version.get("Version"),
                "api_version": version.get("ApiVersion"),
                "latency_seconds": time.perf_counter() - start,
            },
        )

    # --- targets ----------------------------------------------------------------------

    def resolve(self, target: str) -> list[Container]:
        """Every container the target names, sorted by name; an unknown target lists near names."""
        client = self._docker()
        with self._errors(target):
            if "=" in target:
                containers = client.containers.list(all=True, filters={"label": target})
            elif "/" in target:
                project, _, service = target.partition("/")
                labels = [f"{COMPOSE_PROJECT}={project}", f"{COMPOSE_SERVICE}={service}"]
                containers = client.containers.list(all=True, filters={"label": labels})
            else:
                try:
                    containers = [client.containers.get(target)]
                except docker.errors.NotFound:
                    containers = client.containers.list(
                        all=True, filters={"label": f"{COMPOSE_SERVICE}={target}"}
                    )
        if not containers:
            raise ExecutorError(
                ErrorKind.PERMANENT, f"no container matches {target!r}", self._closest(target)
            )
        return sorted(containers, key=lambda c: c.name)

    def write_targets(self, target: str) -> list[ResolvedTarget]:
        """Every container the target names (a write acts on each of them)."""
        return [ResolvedTarget(identity=c.id, name=c.name) for c in self.resolve(target)]

    def _closest(self, target: str | None) -> str:
        if not target or self._client is None:
            return ""
        try:
            listed = self._client.containers.list(all=True, sparse=True)
        except Exception:  # the hint is best effort; the error itself is already known
            return ""
        # Sparse listings carry "Names" ("/name"), not "Name".
        names = [(c.attrs.get("Names") or ["/?"])[0].lstrip("/") for c in listed]
        if not names:
            return "no containers exist on this engine"
        close = difflib.get_close_matches(target, names, n=5, cutoff=0.4)
        return (
            f"closest names: {', '.join(close)}"
            if close
            else f"existing: {', '.join(sorted(names)[:10])}"
        )

    def _each(self, target: str, work: Callable[[Container], Item]) -> list[Item]:
        """Run `work` on every container of the target, in parallel when there are several."""
        containers = self.resolve(target)
        with self._errors(target):
            if len(containers) == 1:
                return [work(containers[0])]
            with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(containers))) as pool:
                return list(pool.map(work, containers))

    # --- read operations --------------------------------------------------------------

    @executor_method
    def list_services(
        self, include_stopped: bool = True, selector: str | None = None
    ) -> MethodOutput:
        client = self._docker()
        with self._errors():
            containers = client.containers.list(
                all=include_stopped, filters={"label": selector} if selector else None
            )
        items = [_summary(c, self.redactor) for c in sorted(containers, key=lambda c: c.name)]
        lines = [
            f"{i['container']}: {i['state']}"
            + (f" ({i['health']})" if i["health"] else "")
            + f", image {i['image']}, restarts {i['restart_count']}"
            for i in items
        ]
        return MethodOutput(output="\n".join(lines) or "no containers", data=items)

    @executor_method
    def get_status(self, target: str) -> MethodOutput:
        items = self._each(target, lambda container: _status(container, self.redactor))
        lines = []
        for item in items:
            health = item["health"]
            text = f"{item['container']}: {item['state']}"
            if health:
                text += f" ({health['status']})"
            text += f", exit code {item['exit_code']}, restarts {item['restart_count']}"
            if item["oom_killed"]:
                text += ", OOM-killed"
            if health and health["status"] == "unhealthy" and health["last_checks"]:
                text += f"; last check: {health['last_checks'][-1]['output'].strip()[:200]}"
            lines.append(text)
        return MethodOutput(output="\n".join(lines), data=items)

    @executor_method
    def get_logs(
        self,
        target: str,
        lines: int,
        max_bytes: int,
        since: str | None = None,
        until: str | None = None,
        timestamps: bool = False,
        level: str | None = None,
        level_patterns: dict[str, str] | None = None,
        pattern: str | None = None,
    ) -> MethodOutput:
        keep = line_filter(level, level_patterns or {}, pattern)
        now = int(time.time())
        since_at = now - duration_seconds(since) if since else None
        until_at = now - duration_seconds(until) if until else None

        def read(container: Container) -> dict[str, Any]:
            raw = container.logs(
                stdout=True,
                stderr=True,
                tail=lines,
                timestamps=timestamps,
                **({"since": since_at} if since_at is not None else {}),
                **({"until": until_at} if until_at is not None else {}),
            )
            text = raw.decode("utf-8", errors="replace")
            kept = kept_lines(text.splitlines(), keep, max_bytes, self.redactor)
            return {"container": container.name, **kept, "returned_lines": len(kept["lines"])}

        items = self._each(target, read)
        several = len(items) > 1
        output: list[str] = []
        for item in items:
            prefix = f"{item['container']} | " if several else ""
            output.extend(prefix + line for line in item["lines"])
            if item["truncated_lines"]:
                output.append(
                    f"{prefix}[{item['truncated_lines']} older lines cut at max_bytes={max_bytes}]"
                )
        return MethodOutput(output="\n".join(output), data=items)

    @executor_method
    def get_metrics(self, target: str) -> MethodOutput:
        items = self._each(target, _metrics)
        lines = []
        for item in items:
            if not item["running"]:
                lines.append(f"{item['container']}: not running, no metrics")
                continue
            lines.append(
                f"{item['container']}: cpu {item['cpu_percent']:.1f}%, memory "
                f"{_mib(item['memory_usage_bytes'])} / {_mib(item['memory_limit_bytes'])} "
                f"({item['memory_percent']:.1f}%), net rx {item['network_rx_bytes']} B "
                f"tx {item['network_tx_bytes']} B, pids {item['pids']}"
            )
        return MethodOutput(output="\n".join(lines), data=items)

    @executor_method
    def get_events(self, target: str, since: str, limit: int) -> MethodOutput:
        containers = self.resolve(target)
        client = self._docker()
        now = time.time()
        start = int(now - duration_seconds(since))
        names = {c.id: c.name for c in containers}
        events: list[dict[str, Any]] = []
        with self._errors(target):
            stream = client.events(
                since=start,
                until=f"{now:.6f}",  # now, not later: the engine streams until `until`
                filters={"type": "container", "container": list(names)},
                decode=True,
            )
            try:
                for event in stream:
                    events.append(_event(event, names))
            finally:
                stream.close()
        events = events[-limit:]
        output = "\n".join(
            f"{e['time']} {e['container']}: {e['action']}"
            + (f" (exit code {e['exit_code']})" if e.get("exit_code") is not None else "")
            for e in events
        )
        return MethodOutput(output=output or f"no events since {since}", data=events)

    @executor_method
    def describe(self, target: str) -> MethodOutput:
        items = self._each(target, _description)
        output = "\n".join(
            f"{i['container']}: image {i['image']}, command {' '.join(i['command'])}, "
            f"memory limit {_mib(i['limits']['memory_bytes'] or None)}, "
            f"ports {', '.join(f'{k}->{v}' for k, v in i['ports'].items()) or 'none'}"
            for i in items
        )
        return MethodOutput(output=output, data=items)

    @executor_method
    def exec_diagnostic(
        self,
        target: str,
        command: str,
        max_bytes: int,
        allowed_commands: dict[str, list[str]] | None = None,
    ) -> MethodOutput:
        argv = (allowed_commands or {}).get(command)
        if not argv:
            raise ExecutorError(
                ErrorKind.DENIED,
                f"{command!r} is not an allowed diagnostic",
                f"allowed: {', '.join(sorted(allowed_commands or {}))} "
                "(command_translations.yml: docker.exec_diagnostic.constants.allowed_commands)",
            )

        def run(container: Container) -> dict[str, Any]:
            container.reload()
            if container.status != "running":
                return {
                    "container": container.name,
                    "argv": argv,
                    "exit_code": None,
                    "output": "",
                    "error": f"{container.name} is {container.status}, not running",
                }
            result = container.exec_run(argv, stdout=True, stderr=True, tty=False)
            raw: bytes = result.output or b""
            # Redacted whole, then cut to max_bytes: the cut never keeps half a secret.
            text = self.redactor(raw.decode("utf-8", errors="replace")).encode("utf-8")
            return {
                "container": container.name,
                "argv": argv,
                "exit_code": result.exit_code,
                "output": text[:max_bytes].decode("utf-8", errors="ignore"),
                "truncated_bytes": max(0, len(text) - max_bytes),
                "error": None,
            }

        items = self._each(target, run)
        output = "\n".join(
            f"--- {i['container']}: {' '.join(argv)} (exit {i['exit_code']})\n{i['output']}"
            if i["error"] is None
            else f"--- {i['container']}: {i['error']}"
            for i in items
        )
        errors = [i["error"] for i in items if i["error"]]
        if errors:
            raise ExecutorError(ErrorKind.PERMANENT, "; ".join(errors), output=output, data=items)
        return MethodOutput(output=output, data=items)

    @executor_method
    def check_endpoint(
        self,
        target: str,
        port: int,
        path: str,
        expected_status: int,
        request_timeout: float,
    ) -> MethodOutput:
        engine_host = self._engine_host()

        def probe(container: Container) -> dict[str, Any]:
            bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp")
            item: dict[str, Any] = {"container": container.name, "port": port, "path": path}
            if not bindings:
                published = sorted(
                    key
                    for key, value in (
                        container.attrs["NetworkSettings"].get("Ports") or {}
                    ).items()
                    if value
                )
                item.update(
                    ok=False,
                    error=f"{container.name} does not publish port {port}/tcp "
                    f"(published: {', '.join(published) or 'none'})",
                )
                return item
            binding = bindings[0]
            host = binding.get("HostIp") or "0.0.0.0"  # noqa: S104 - compared, not bound
            if host in ("0.0.0.0", "::"):  # noqa: S104
                host = engine_host
            url = f"http://{host}:{binding['HostPort']}{path}"
            item["url"] = url
            start = time.perf_counter()
            try:
                # Redirects are not followed: UICI only calls URLs the service itself publishes.
                response = httpx.get(url, timeout=request_timeout, follow_redirects=False)
            except httpx.HTTPError as exc:
                item.update(
                    ok=False,
                    status=None,
                    latency_ms=round((time.perf_counter() - start) * 1000, 1),
                    error=f"GET {url} failed: {type(exc).__name__}: {exc}",
                )
                return item
            item.update(
                ok=response.status_code == expected_status,
                status=response.status_code,
                latency_ms=round((time.perf_counter() - start) * 1000, 1),
                body_excerpt=self.redactor.cut(response.text, 200),
                error=None
                if response.status_code == expected_status
                else f"GET {url} returned {response.status_code} (expected {expected_status})",
            )
            return item

        items = self._each(target, probe)
        output = "\n".join(
            f"{i['container']}: GET {i.get('url', path)} -> {i.get('status')} "
            f"in {i.get('latency_ms', '-')} ms" + ("" if i["ok"] else f"  FAILED: {i['error']}")
            for i in items
        )
        failed = [i["error"] for i in items if not i["ok"]]
        if failed:
            raise ExecutorError(ErrorKind.PERMANENT, "; ".join(failed), output=output, data=items)
        return MethodOutput(output=output, data=items)

    def _engine_host(self) -> str:
        parsed = urlparse(self.connection.base_url)
        if parsed.scheme in ("tcp", "ssh") and parsed.hostname:
            return parsed.hostname
        return "127.0.0.1"

    def effect_observed(
        self, operation: str, target: str, since: float, intent: str | None = None
    ) -> bool | None:
        """restart: all containers started after `since`; start: all running; stop: none
        running. When the effect is not there yet, the engine's own events tell whether the
        call reached it (a kill, stop or die since `since`: still in progress, so None, cannot
        tell) or not (False: nothing was sent)."""
        try:
            containers = self.resolve(target)
        except ExecutorError:
            return None
        states = [c.attrs["State"] for c in containers]
        if operation == "restart_service":
            done = all(
                (started := _timestamp(s.get("StartedAt"))) is not None
                and _parse_time(started).timestamp() > since
                for s in states
            )
        elif operation == "start_service":
            done = all(s.get("Running") for s in states)
        elif operation == "stop_service":
            done = not any(s.get("Running") for s in states)
        else:
            return None
        if done:
            return True
        signs = {"restart_service": ("kill", "stop", "die", "restart"),
                 "start_service": ("start",), "stop_service": ("kill", "stop", "die")}  # fmt: skip
        try:
            # The engine's clock may lag ours: look a little further back, so that a call that
            # did reach it reads as "cannot tell", never as "nothing was sent".
            touched = self._events_since(containers, since - _CLOCK_SKEW_SECONDS, signs[operation])
        except Exception:  # the events cannot be read: cannot tell
            return None
        return None if touched else False

    def _events_since(
        self, containers: list[Container], since: float, actions: tuple[str, ...]
    ) -> bool:
        stream = self._docker().events(
            since=f"{since:.6f}",
            until=f"{time.time():.6f}",
            filters={"type": "container", "container": [c.id for c in containers]},
            decode=True,
        )
        try:
            return any(event.get("Action") in actions for event in stream)
        finally:
            stream.close()

    # --- write operations -------------------------------------------------------------

    @executor_method
    def restart_service(self, target: str, stop_timeout: int) -> MethodOutput:
        def restart(container: Container) -> dict[str, Any]:
            before = _timestamp(container.attrs["State"].get("StartedAt"))
            container.restart(timeout=stop_timeout)
            container.reload()
            return {**_state_change(container), "previous_started_at": before}

        items = self._each(target, restart)
        return MethodOutput(output=_state_lines(items, "restarted"), data=items)

    @executor_method
    def start_service(self, target: str) -> MethodOutput:
        def start(container: Container) -> dict[str, Any]:
            container.start()
            container.reload()
            return _state_change(container)

        items = self._each(target, start)
        return MethodOutput(output=_state_lines(items, "started"), data=items)

    @executor_method
    def stop_service(self, target: str, stop_timeout: int) -> MethodOutput:
        def stop(container: Container) -> dict[str, Any]:
            container.stop(timeout=stop_timeout)
            container.reload()
            return _state_change(container)

        items = self._each(target, stop)
        return MethodOutput(output=_state_lines(items, "stopped"), data=items)


# --- shaping SDK objects into plain data ------------------------------------------------


def _explanation(exc: docker.errors.APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _health(state: dict[str, Any], redactor: Redactor) -> dict[str, Any] | None:
    health = state.get("Health")
    if not health:
        return None
    checks = [
        {
            "exit_code": entry.get("ExitCode"),
            # Redacted whole before the cut (and so every shorter cut made of it later).
            "output": redactor.cut(entry.get("Output") or "", _HEALTH_OUTPUT_CHARS),
            "end": entry.get("End"),
        }
        for entry in (health.get("Log") or [])[-3:]
    ]
    return {
        "status": health.get("Status"),
        "failing_streak": health.get("FailingStreak"),
        "last_checks": checks,
    }


def _summary(container: Container, redactor: Redactor) -> dict[str, Any]:
    attrs = container.attrs
    state = attrs["State"]
    health = _health(state, redactor)
    started = _timestamp(state.get("StartedAt"))
    uptime = None
    if state.get("Running") and started:
        uptime = round(time.time() - _parse_time(started).timestamp())
    labels = attrs["Config"].get("Labels") or {}
    return {
        "container": container.name,
        "id": container.id[:12],
        "image": attrs["Config"].get("Image"),
        "state": state.get("Status"),
        "health": health["status"] if health else None,
        "uptime_seconds": uptime,
        "restart_count": attrs.get("RestartCount", 0),
        # The health sweep tells a one-shot container that finished (exited 0) from a crash.
        "exit_code": state.get("ExitCode"),
        "compose_service": labels.get(COMPOSE_SERVICE),
    }


def _status(container: Container, redactor: Redactor) -> dict[str, Any]:
    attrs = container.attrs
    state = attrs["State"]
    policy = attrs["HostConfig"].get("RestartPolicy") or {}
    health = _health(state, redactor)
    started = _timestamp(state.get("StartedAt"))
    failing = [c for c in (health or {}).get("last_checks", []) if c["exit_code"] != 0]
    verdict = (health or {}).get("status")
    exit_code, oom_killed = state.get("ExitCode"), bool(state.get("OOMKilled"))
    if state.get("Running") and (attrs.get("RestartCount", 0) or oom_killed) and not exit_code:
        # The engine resets ExitCode when it restarts a container; a crash loop caught while
        # running still ended its last instance somehow, and the engine's events say how.
        exit_code, oom_killed = _last_exit(container, exit_code, oom_killed)
    return {
        "container": container.name,
        "id": container.id[:12],
        "image": attrs["Config"].get("Image"),
        **normalised(
            state=state.get("Status"),
            exit_code=exit_code,
            oom_killed=oom_killed,
            restart_count=attrs.get("RestartCount", 0),
            up_seconds=time.time() - _parse_time(started).timestamp()
            if state.get("Running") and started
            else None,
            # "starting": no verdict yet.
            healthy={"healthy": True, "unhealthy": False}.get(verdict or ""),
            message=state.get("Error") or None,
            probe_output=failing[-1]["output"].strip() if failing else None,
        ),
        "running": state.get("Running"),
        "restarting": state.get("Restarting"),
        "health": health,
        "error": state.get("Error") or None,
        "started_at": _timestamp(state.get("StartedAt")),
        "finished_at": _timestamp(state.get("FinishedAt")),
        "restart_policy": {
            "name": policy.get("Name") or "no",
            "maximum_retry_count": policy.get("MaximumRetryCount", 0),
        },
    }


def _last_exit(container: Container, exit_code: Any, oom_killed: bool) -> tuple[Any, bool]:
    """The exit code of the container's last `die` event (and whether an `oom` event came
    just before it), from the engine's event log since the container was created."""
    created = _timestamp(container.attrs.get("Created"))
    started = _timestamp(container.attrs["State"].get("StartedAt"))
    since = int(_parse_time(created).timestamp()) if created else 0
    # The death just before the current start: an older one says nothing about now.
    until = _parse_time(started).timestamp() + 1 if started else time.time()
    stream = container.client.api.events(
        since=since,
        until=f"{until:.6f}",
        filters={"container": container.id, "event": ["die", "oom"]},
        decode=True,
    )
    last_die: dict[str, Any] | None = None
    oom_seen = last_oom = False
    try:
        for event in stream:
            if event.get("Action") == "oom":
                oom_seen = True
            elif event.get("Action") == "die":
                last_die, last_oom, oom_seen = event, oom_seen, False
    finally:
        stream.close()
    if last_die is None:
        return exit_code, oom_killed
    code = ((last_die.get("Actor") or {}).get("Attributes") or {}).get("exitCode")
    return (int(str(code)) if str(code).isdigit() else exit_code), oom_killed or last_oom


def _metrics(container: Container) -> dict[str, Any]:
    item: dict[str, Any] = {
        "container": container.name,
        "running": container.status == "running",
        "cpu_percent": None,
        "memory_usage_bytes": None,
        "memory_limit_bytes": None,
        "memory_percent": None,
        "network_rx_bytes": None,
        "network_tx_bytes": None,
        "block_read_bytes": None,
        "block_write_bytes": None,
        "pids": None,
        "cpu_throttled_percent": None,
    }
    if not item["running"]:
        return item
    stats = container.stats(stream=False)
    cpu, previous = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        previous.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - previous.get("system_cpu_usage", 0)
    online = (
        cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    )
    memory = stats.get("memory_stats") or {}
    memory_detail = memory.get("stats") or {}
    # As `docker stats` does: the page cache that could be dropped is not usage.
    cache = memory_detail.get("total_inactive_file", memory_detail.get("inactive_file", 0))
    usage = max(0, memory.get("usage", 0) - cache)
    limit = memory.get("limit") or 0
    networks = (stats.get("networks") or {}).values()
    block = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    # Of one core, as `docker stats` shows it; of the CPU limit when the container has one.
    cores = (container.attrs["HostConfig"].get("NanoCpus") or 0) / 1e9 or 1.0
    item.update(
        cpu_percent=round(cpu_delta / system_delta * online * 100 / cores, 2)
        if system_delta > 0 and cpu_delta >= 0
        else 0.0,
        memory_usage_bytes=usage,
        memory_limit_bytes=limit,
        memory_percent=round(usage / limit * 100, 2) if limit else 0.0,
        network_rx_bytes=sum(n.get("rx_bytes", 0) for n in networks),
        network_tx_bytes=sum(n.get("tx_bytes", 0) for n in networks),
        block_read_bytes=sum(b.get("value", 0) for b in block if b.get("op", "").lower() == "read"),
        block_write_bytes=sum(
            b.get("value", 0) for b in block if b.get("op", "").lower() == "write"
        ),
        pids=(stats.get("pids_stats") or {}).get("current"),
    )
    # Of the CFS periods in the sample, the share in which the CPU limit held it back: a
    # container at its limit is saturated even when the host is too busy to show 100 %.
    throttled = (cpu.get("throttling_data") or {}), (previous.get("throttling_data") or {})
    periods = throttled[0].get("periods", 0) - throttled[1].get("periods", 0)
    held = throttled[0].get("throttled_periods", 0) - throttled[1].get("throttled_periods", 0)
    item["cpu_throttled_percent"] = round(100.0 * held / periods, 1) if periods > 0 else None
    return item


def _event(event: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    nanos = event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000
    exit_code = attributes.get("exitCode")
    return {
        "time": datetime.fromtimestamp(nanos / 1e9, tz=UTC).isoformat(timespec="milliseconds"),
        "container": attributes.get("name")
        or names.get(actor.get("ID", ""), actor.get("ID", "")[:12]),
        "action": event.get("Action") or event.get("status"),
        "exit_code": int(exit_code) if exit_code is not None and str(exit_code).isdigit() else None,
        "signal": attributes.get("signal"),
    }


def _description(container: Container) -> dict[str, Any]:
    attrs = container.attrs
    config = attrs["Config"]
    host = attrs["HostConfig"]
    healthcheck = config.get("Healthcheck")
    ports = {
        key: [f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}" for b in value]  # noqa: S104
        for key, value in ((attrs["NetworkSettings"].get("Ports") or {}).items())
        if value
    }
    labels = {
        key: REDACTED if is_secret_key(key) else value
        for key, value in (config.get("Labels") or {}).items()
    }
    return {
        "container": container.name,
        "id": container.id[:12],
        "image": config.get("Image"),
        "image_id": attrs.get("Image"),
        "command": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
        "created": attrs.get("Created"),
        "user": config.get("User") or None,
        "working_dir": config.get("WorkingDir") or None,
        "ports": ports,
        "mounts": [
            {
                "type": m.get("Type"),
                "source": m.get("Source"),
                "destination": m.get("Destination"),
                "read_only": not m.get("RW", True),
            }
            for m in attrs.get("Mounts") or []
        ],
        "limits": {
            "memory_bytes": host.get("Memory") or 0,
            "memory_swap_bytes": host.get("MemorySwap") or 0,
            "nano_cpus": host.get("NanoCpus") or 0,
            "cpu_shares": host.get("CpuShares") or 0,
            "pids_limit": host.get("PidsLimit"),
        },
        "healthcheck": {
            "test": healthcheck.get("Test"),
            "interval_seconds": (healthcheck.get("Interval") or 0) / 1e9,
            "timeout_seconds": (healthcheck.get("Timeout") or 0) / 1e9,
            "retries": healthcheck.get("Retries"),
        }
        if healthcheck
        else None,
        "restart_policy": (host.get("RestartPolicy") or {}).get("Name") or "no",
        "networks": sorted((attrs["NetworkSettings"].get("Networks") or {}).keys()),
        "labels": labels,
        # Names only: values of environment variables are where secrets live.
        "environment_variables": sorted(
            entry.split("=", 1)[0] for entry in config.get("Env") or []
        ),
    }


def _state_change(container: Container) -> dict[str, Any]:
    state = container.attrs["State"]
    return {
        "container": container.name,
        "state": state.get("Status"),
        "started_at": _timestamp(state.get("StartedAt")),
        "restart_count": container.attrs.get("RestartCount", 0),
    }


def _state_lines(items: list[dict[str, Any]], verb: str) -> str:
    return "\n".join(f"{i['container']}: {verb}, now {i['state']}" for i in items)


def _parse_time(value: str) -> datetime:
    # Docker writes nanoseconds; datetime takes microseconds.
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", value)
    if match is None:
        return datetime.fromtimestamp(0, tz=UTC)
    fraction = (match.group(2) or ".0")[:7]
    zone = match.group(3) or "Z"
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{'+00:00' if zone == 'Z' else zone}")
