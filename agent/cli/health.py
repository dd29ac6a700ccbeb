"""`uici health`: is a UICI process up? For container health checks (the image's HEALTHCHECK).

GET a URL and exit 0 when it answers 2xx; otherwise print one line saying what failed
(connection refused at HOST:PORT, status N, timeout) and exit 1, never a traceback.

The default URL is the agent service's liveness route on loopback,
`http://127.0.0.1:<platform.yml service.port>/health`. A Prefect worker started with
`prefect worker start --with-healthcheck` answers the same route, `GET /health`, on
PREFECT_WORKER_WEBSERVER_PORT (8080 unless set: prefect/workers/server.py), so the same
command checks it. The readiness route of the service is `/health/ready` (pass it as --url).

It starts fast: the standard library's HTTP client, no Prefect, no SDK. Only `service.port`
of platform.yml is read (with `${VAR}` interpolation), not the whole configuration: a
configuration change that fails validation leaves a running service on its last good
configuration, and must not make its container unhealthy.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

HEALTH_PATH = "/health"
DEFAULT_TIMEOUT_SECONDS = 5.0
URL_VARIABLE = "UICI_HEALTH_URL"
EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
_BODY_CHARS = 200  # of a non-2xx answer, quoted in the failure line


class HealthCheckError(Exception):
    """What failed, as the one line to print."""


def service_port(config_dir: Path | None) -> int:
    """platform.yml `service.port` of the configuration directory UICI would use."""
    from pydantic import ValidationError

    from infrastructure.configuration.loader import resolve_config_dir
    from infrastructure.configuration.models import ServiceSettings
    from infrastructure.configuration.yaml_source import (
        interpolate_environment,
        load_yaml_document,
    )

    path = resolve_config_dir(config_dir) / "platform.yml"
    where = f"cannot read service.port from {path}"
    document, problems = load_yaml_document(path)
    if document is None:
        raise HealthCheckError(f"{where}: {problems[0].message if problems else 'unreadable'}")
    interpolate_environment(document, None)  # only service.port matters; other keys may fail
    service = document.data.get("service") if isinstance(document.data, dict) else None
    if not isinstance(service, dict):
        raise HealthCheckError(f"{where}: no `service` section; pass --url")
    try:
        return ServiceSettings.model_validate(service).port
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in ("service", *first["loc"]))
        raise HealthCheckError(f"{where}: {key}: {first['msg']}; pass --url") from None


def _one_line(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    if len(text) > _BODY_CHARS:
        text = text[: _BODY_CHARS - 1] + "…"
    return text


def _reason(error: BaseException) -> BaseException:
    """The OSError under urllib's URLError, if any."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return error.reason
    return error


def check(url: str, timeout: float) -> str:
    """GET `url`; return the success line, or raise HealthCheckError with the failure line.

    `timeout` bounds connecting and each read of the answer. Proxies from the environment
    are not used: a health check asks the process itself."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise HealthCheckError(f"invalid URL {url!r}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HealthCheckError(f"invalid URL {url!r} (expected http://HOST:PORT/PATH)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    at = f"{host}:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    # The scheme is http or https (checked above): no file: or custom schemes.
    request = urllib.request.Request(  # noqa: S310
        url, method="GET", headers={"User-Agent": "uici-health"}
    )
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as response:
            status, body = response.status, response.read(4096)
    except urllib.error.HTTPError as exc:  # a non-2xx answer (after redirects)
        status = exc.code
        try:
            body = exc.read(4096)
        except Exception:  # no body is fine
            body = b""
        finally:
            exc.close()
    except Exception as exc:  # every failure becomes one line
        raise HealthCheckError(_failure(_reason(exc), at, url, timeout)) from None
    elapsed_ms = (time.monotonic() - started) * 1000
    if 200 <= status < 300:
        return f"ok: GET {url} answered {status} in {elapsed_ms:.0f} ms"
    detail = _one_line(body)
    raise HealthCheckError(
        f"GET {url} answered status {status}" + (f": {detail}" if detail else "")
    )


def _failure(error: BaseException, at: str, url: str, timeout: float) -> str:
    if isinstance(error, TimeoutError | socket.timeout):
        return f"timeout: no answer from {at} within {timeout:g} s (GET {url})"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused at {at} (GET {url}): nothing listens there"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host of {at} (GET {url}): {error.strerror or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed with {at} (GET {url}): {error.reason or error}"
    if isinstance(error, http.client.RemoteDisconnected | ConnectionResetError):
        return f"{at} closed the connection without an answer (GET {url})"
    if isinstance(error, http.client.HTTPException):
        return f"{at} sent no valid HTTP answer (GET {url}): {type(error).__name__}"
    if isinstance(error, OSError):
        return f"cannot connect to {at} (GET {url}): {error.strerror or error}"
    return f"GET {url} failed: {type(error).__name__}: {error}"


def health(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar=URL_VARIABLE,
            help="What to GET. Default: http://127.0.0.1:<platform.yml service.port>/health, "
            "the agent service's liveness route (readiness: /health/ready). A Prefect worker "
            "started with --with-healthcheck answers /health on PREFECT_WORKER_WEBSERVER_PORT.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, max=300, help="Seconds to connect and per read."),
    ] = DEFAULT_TIMEOUT_SECONDS,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Directory of the configuration files, for service.port (default: "
            "UICI_CONFIG_DIR, else the shipped configuration).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Exit 0 when URL answers 2xx; else print what failed and exit 1 (for health checks)."""
    try:
        if url is None:
            chosen = config_dir or (ctx.obj or {}).get("config_dir")
            url = f"http://127.0.0.1:{service_port(chosen)}{HEALTH_PATH}"
        typer.echo(check(url, timeout))
    except HealthCheckError as exc:
        typer.echo(f"uici health: {exc}", err=True)
        raise typer.Exit(EXIT_UNHEALTHY) from None
    except Exception as exc:  # a health check never prints a traceback
        typer.echo(f"uici health: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(EXIT_UNHEALTHY) from None


__all__ = ["check", "health", "service_port"]
