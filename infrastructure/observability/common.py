"""What the Prometheus and Loki clients share: HTTP clients, error kinds and time windows."""

from __future__ import annotations

import math
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from infrastructure.configuration.models import LokiSource, PrometheusSource
from infrastructure.executors.base import ErrorKind, ExecutorError

# How much of a server's error text is quoted back (its message, not a page of HTML).
_MAX_ERROR_CHARS = 600


def http_client(source: PrometheusSource | LokiSource, timeout_seconds: float) -> httpx.Client:
    """An httpx client for `source`: its auth, TLS settings, tenant header and a timeout
    bounded by both the source's and the operation's."""
    headers = {"User-Agent": "uici"}
    auth: httpx.BasicAuth | None = None
    if source.bearer_token is not None:
        headers["Authorization"] = f"Bearer {source.bearer_token.get_secret_value()}"
    elif source.password is not None:
        auth = httpx.BasicAuth(source.username, source.password.get_secret_value())
    if isinstance(source, LokiSource) and source.tenant:
        headers["X-Scope-OrgID"] = source.tenant
    # Plain http needs no TLS context (building one costs ~170 ms per client).
    verify: bool | ssl.SSLContext = False
    if source.url.startswith("https:") and source.verify_tls:
        verify = ssl.create_default_context(cafile=source.ca_file or None)
    timeout = min(source.timeout_seconds, timeout_seconds)
    return httpx.Client(
        base_url=source.url, headers=headers, auth=auth, verify=verify, timeout=timeout
    )


def bounded_request(
    client: httpx.Client,
    source: PrometheusSource | LokiSource,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    """The answer, read at most up to the source's max_response_bytes: a query that matches
    too much is refused (permanent, saying how to narrow it) before it fills the memory."""
    limit = source.max_response_bytes
    try:
        with client.stream(method, path, params=params, data=data) as response:
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ExecutorError(
                        ErrorKind.PERMANENT,
                        f"{kind_of(source)} {source.name!r} answered more than {limit} bytes"
                        " (max_response_bytes); the rest was not read",
                        "narrow the query: a shorter window, fewer series or streams, a larger"
                        " step or a lower limit",
                    )
                chunks.append(chunk)
            # The bytes are decoded already: the rebuilt answer must not decode them again.
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
            ]
            return httpx.Response(
                response.status_code,
                headers=headers,
                content=b"".join(chunks),
                request=response.request,
            )
    except httpx.HTTPError as exc:
        raise request_error(source, exc) from exc


def request_error(source: PrometheusSource | LokiSource, exc: httpx.HTTPError) -> ExecutorError:
    """A failure to reach the server at all: retryable, naming the source and its url."""
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else f"unreachable ({exc})"
    return ExecutorError(
        ErrorKind.RETRYABLE,
        f"{kind_of(source)} source {source.name!r} at {source.url} {what}",
        "check the url in environments.yml observability_sources and that the server runs",
    )


def status_error(
    source: PrometheusSource | LokiSource, response: httpx.Response, message: str
) -> ExecutorError:
    """An answer that is an error: 401/403 denied, 429/5xx retryable, other 4xx permanent.
    `message` is the server's own text (Prometheus's `error`, Loki's plain-text body)."""
    code = response.status_code
    quoted = " ".join(message.split())[:_MAX_ERROR_CHARS] or response.reason_phrase
    where = f"{kind_of(source)} {source.name!r} answered {code}: {quoted}"
    if code in (401, 403):
        return ExecutorError(
            ErrorKind.DENIED,
            where,
            "check the credentials (bearer_token or username/password) and, for Loki, tenant",
        )
    if code in (408, 425, 429) or code >= 500:
        return ExecutorError(ErrorKind.RETRYABLE, where, "the server is busy or failing; retry")
    return ExecutorError(ErrorKind.PERMANENT, where, "fix the query or its parameters")


def kind_of(source: PrometheusSource | LokiSource) -> str:
    return "Loki" if isinstance(source, LokiSource) else "Prometheus"


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def parse_time(value: str, what: str) -> datetime:
    """RFC 3339 (2026-12-01T10:00:00Z) or Unix seconds."""
    text = value.strip()
    try:
        if _NUMBER.match(text):
            seconds = float(text)
            if not math.isfinite(seconds):
                raise ValueError(text)
            return datetime.fromtimestamp(seconds, tz=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"{what} {value!r} is not a time",
            "give RFC 3339 (2026-12-01T10:00:00Z) or Unix seconds",
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def window(
    start: str | None,
    end: str | None,
    since: float | None,
    default_since: float,
    now: datetime | None = None,
) -> Window:
    """The time range of a query: `end` (default now), and `start`, else `since` before end,
    else `default_since` before end."""
    end_at = parse_time(end, "end") if end else (now or datetime.now(UTC))
    if start:
        start_at = parse_time(start, "start")
    else:
        start_at = end_at - timedelta(seconds=since if since else default_since)
    if start_at >= end_at:
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"the window starts ({start_at:%Y-%m-%dT%H:%M:%SZ}) at or after it ends"
            f" ({end_at:%Y-%m-%dT%H:%M:%SZ})",
            "give a start before the end",
        )
    return Window(start_at, end_at)


def json_body(source: PrometheusSource | LokiSource, response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or a permanent error saying it was something else."""
    try:
        body = response.json()
    except ValueError as exc:
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"{kind_of(source)} {source.name!r} answered {response.status_code} with a body"
            f" that is not JSON: {response.text[:200]!r}",
            "check that the url points at the server's API, not a proxy's page",
        ) from exc
    if not isinstance(body, dict):
        raise ExecutorError(
            ErrorKind.PERMANENT,
            f"{kind_of(source)} {source.name!r} answered JSON of an unknown shape",
        )
    return body
