"""One delivery attempt of one notification to one sink, classified for the retry loop.

`send` never raises for a delivery problem and never retries: the caller's outbox decides
when to try again, from `DeliveryResult.retryable` and `retry_after`. Sink URLs are secrets
(a Slack incoming-webhook URL is its own credential): no result, error or log line here
contains one; errors name the sink.

Classification: 2xx is delivered; 408, 425, 429, 5xx, timeouts and connection errors are
worth retrying; any other answer (other 4xx, and 3xx: redirects are not followed, a signed
body goes only where it was configured to) is permanent.

Slack and the generic webhook go over httpx, which gives status codes. Apprise is
synchronous and reports only success, failure or timeout per target: it runs in a thread,
bounded by the timeout, and any failure counts as retryable.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from agent.notifications.messages import Notification
from agent.notifications.slack import slack_payload
from agent.notifications.webhook import webhook_body, webhook_headers
from infrastructure.configuration.models import (
    AppriseSink,
    SlackSink,
    WebhookSink,
)

NotificationSinkConfig = SlackSink | WebhookSink | AppriseSink
RETRYABLE_STATUSES = frozenset({408, 425, 429})
ERROR_CHARS = 300
BODY_SNIPPET_CHARS = 120
# Waiting for apprise's thread: its own deadline plus this, in case it overruns.
APPRISE_GRACE_SECONDS = 2.0
USER_AGENT = "UICI-notifications/1"


class DeliveryResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sink: str
    ok: bool
    retryable: bool
    status_code: int | None = None
    # Short and free of the sink's URL; empty when ok.
    error: str = ""
    # Seconds the sink asked to wait (a 429's or 503's Retry-After), if it said.
    retry_after: float | None = None
    elapsed_seconds: float = 0.0


def _secret_parts(url: str) -> list[str]:
    parts = urlsplit(url)
    candidates = [url, parts.netloc, parts.path, parts.query, parts.password or ""]
    # token-like path segments (Slack's T.../B.../secret) on their own too
    candidates += [p for p in parts.path.split("/") if len(p) >= 16]
    return sorted({c for c in candidates if len(c) >= 4}, key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """`text` on one line, short, with every recognisable piece of `url` removed."""
    if url:
        for part in _secret_parts(url):
            text = text.replace(part, "[url]")
    return " ".join(text.split())[:ERROR_CHARS]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(
    sink: str, response: httpx.Response, url: str, started: float, now: float
) -> DeliveryResult:
    status = response.status_code
    elapsed = round(time.monotonic() - started, 3)
    if 200 <= status < 300:
        return DeliveryResult(
            sink=sink, ok=True, retryable=False, status_code=status, elapsed_seconds=elapsed
        )
    retryable = status in RETRYABLE_STATUSES or status >= 500
    retry_after = (
        parse_retry_after(response.headers.get("Retry-After"), now)
        if status in (429, 503)
        else None
    )
    snippet = scrub(response.text[:BODY_SNIPPET_CHARS], url) if response.content else ""
    kind = "retryable" if retryable else "permanent"
    error = f"sink {sink!r}: HTTP {status} ({kind})" + (f": {snippet}" if snippet else "")
    return DeliveryResult(
        sink=sink,
        ok=False,
        retryable=retryable,
        status_code=status,
        error=scrub(error, url),
        retry_after=retry_after,
        elapsed_seconds=elapsed,
    )


async def _post(
    sink: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    client: httpx.AsyncClient,
    timeout: float,
) -> DeliveryResult:
    started = time.monotonic()

    def failed(message: str, retryable: bool) -> DeliveryResult:
        return DeliveryResult(
            sink=sink,
            ok=False,
            retryable=retryable,
            error=scrub(f"sink {sink!r}: {message}", url),
            elapsed_seconds=round(time.monotonic() - started, 3),
        )

    try:
        async with asyncio.timeout(timeout):
            response = await client.post(
                url,
                content=body,
                headers={"User-Agent": USER_AGENT, **headers},
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
            )
    except (TimeoutError, httpx.TimeoutException):
        return failed(f"no answer within {timeout:g} s (timeout)", True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return failed(f"unusable URL ({type(exc).__name__})", False)
    except httpx.TransportError as exc:
        return failed(f"connection failed ({type(exc).__name__}: {scrub(str(exc), url)})", True)
    return classify(sink, response, url, started, time.time())


async def send(
    sink: NotificationSinkConfig,
    n: Notification,
    delivery_id: str,
    client: httpx.AsyncClient,
    timeout: float,
) -> DeliveryResult:
    """One attempt to deliver `n` to `sink`, bounded by `timeout` seconds.

    `delivery_id` identifies the delivery across its retries (the webhook sends it as
    `X-UICI-Delivery`). Whether the sink wants the event is the caller's question
    (`sink.accepts(n.event, n.severity)`); a disabled sink is a permanent error.
    """
    if sink.url is None:
        return DeliveryResult(
            sink=sink.name, ok=False, retryable=False, error=f"sink {sink.name!r} is off (no url)"
        )
    url = sink.url.get_secret_value()
    if isinstance(sink, SlackSink):
        body = json.dumps(slack_payload(n), ensure_ascii=False).encode()
        return await _post(
            sink.name, url, body, {"Content-Type": "application/json"}, client, timeout
        )
    if isinstance(sink, WebhookSink):
        if sink.secret is None:  # the configuration refuses this; kept as a second lock
            return DeliveryResult(
                sink=sink.name,
                ok=False,
                retryable=False,
                error=f"sink {sink.name!r} has no secret to sign with",
            )
        body = webhook_body(n)
        headers = webhook_headers(
            sink.secret.get_secret_value(), n, body, delivery_id, int(time.time())
        )
        return await _post(sink.name, url, body, headers, client, timeout)
    return await send_apprise(sink, n, timeout)


# --- apprise ----------------------------------------------------------------------------


def _quiet_apprise_debug_log() -> None:
    # Apprise's DEBUG log prints each target's URL, tokens included (e.g. "JSON POST URL:
    # ..."). Its INFO and WARNING lines name services and status codes only.
    logger = logging.getLogger("apprise")
    if logger.getEffectiveLevel() < logging.INFO:
        logger.setLevel(logging.INFO)


def _apprise_notify(
    sink: str, urls: list[str], title: str, body: str, timeout: float
) -> tuple[bool, bool, str]:
    """Runs in a worker thread: returns (ok, retryable, error)."""
    import apprise

    asset = apprise.AppriseAsset(service_timeout=timeout, async_mode=True)
    notifier = apprise.Apprise(asset=asset)
    for index, target in enumerate(urls, start=1):
        if not notifier.add(target):
            scheme = target.split("://", 1)[0][:20]
            return (
                False,
                False,
                f"sink {sink!r}: target {index} of {len(urls)} (scheme {scheme!r}) is not a "
                "URL apprise can use",
            )
    for service in notifier:
        service.retry = 0  # retries happen in one place: the caller's outbox
        service.socket_connect_timeout = min(service.socket_connect_timeout, timeout)
        service.socket_read_timeout = min(service.socket_read_timeout, timeout)
    result = notifier.notify(
        body=body,
        title=title,
        body_format=apprise.NotifyFormat.TEXT,
        timeout=timeout,
    )
    status = apprise.AppriseResultStatus
    if result.status == status.SUCCESS:
        return True, False, ""
    if result.status == status.NOMATCH:
        return False, False, f"sink {sink!r}: apprise had no target to notify"
    failed = [r for r in result if r.status != status.SUCCESS]
    names = ", ".join(sorted({f"{r.name} {r.status.name.lower()}" for r in failed})) or "?"
    timed_out = "timed out, " if result.status == status.TIMEOUT else ""
    return (
        False,
        True,
        f"sink {sink!r}: apprise {timed_out}{len(failed)} of {len(urls)} targets not "
        f"notified ({names})",
    )


async def send_apprise(sink: AppriseSink, n: Notification, timeout: float) -> DeliveryResult:
    """Apprise in a worker thread, bounded: apprise's own call deadline is `timeout`, and
    each target's connect and read timeouts are capped by it; a thread that still overruns
    is abandoned (apprise cannot be cancelled) and the attempt counts as timed out."""
    started = time.monotonic()
    urls = sink.apprise_urls()
    _quiet_apprise_debug_log()
    title = f"[UICI] {n.label}: {' '.join(n.title.split())}"[:250]
    try:
        ok, retryable, error = await asyncio.wait_for(
            asyncio.to_thread(_apprise_notify, sink.name, urls, title, n.text(), timeout),
            timeout + APPRISE_GRACE_SECONDS,
        )
    except TimeoutError:
        ok, retryable, error = False, True, f"sink {sink.name!r}: apprise timed out"
    except Exception as exc:  # a plugin's bug must not take the delivery loop down
        ok, retryable = False, True
        error = f"sink {sink.name!r}: apprise failed ({type(exc).__name__})"
    secret = sink.url.get_secret_value() if sink.url else None
    for target in urls:
        error = scrub(error, target)
    return DeliveryResult(
        sink=sink.name,
        ok=ok,
        retryable=retryable,
        error=scrub(error, secret),
        elapsed_seconds=round(time.monotonic() - started, 3),
    )
