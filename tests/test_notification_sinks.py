"""Notification sinks against a real HTTP receiver on 127.0.0.1 (tests/http_receiver.py):
Slack messages within Slack's limits for any input, escaping of untrusted text, signed
webhooks, the classification of answers, apprise, and the configuration's checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.notifications import (
    DeliveryResult,
    Notification,
    build_approval,
    build_links,
    send,
    sign,
    slack_payload,
    verify,
    webhook_body,
)
from agent.notifications.delivery import NotificationSinkConfig, parse_retry_after
from infrastructure.configuration.loader import load_config
from infrastructure.configuration.models import (
    NOTIFICATION_EVENTS,
    AppriseSink,
    NotificationSettings,
    SlackSink,
    WebhookSink,
)
from infrastructure.configuration.problems import ConfigError
from tests.conftest import DATA, SHIPPED_CONFIG
from tests.http_receiver import HttpReceiver, Reply, slack_problems

SECRET = "whsec-test-0123456789abcdef"
# The secret part of a Slack incoming-webhook URL: it must never show in a result.
SLACK_TOKEN_PATH = "/slack/T0SECRET1/B0SECRET2/xoxSECRETtoken3456"
ALL_EVENTS = list(NOTIFICATION_EVENTS)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver(webhook_secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def settings() -> NotificationSettings:
    return load_config(DATA / "config", environ={}).platform.notifications


def slack_sink(url: str) -> SlackSink:
    return SlackSink.model_validate(
        {"name": "team-slack", "type": "slack", "url": url, "events": ALL_EVENTS, "severities": []}
    )


def webhook_sink(url: str, secret: str = SECRET) -> WebhookSink:
    return WebhookSink.model_validate(
        {
            "name": "hook",
            "type": "webhook",
            "url": url,
            "secret": secret,
            "events": ALL_EVENTS,
            "severities": [],
        }
    )


def apprise_sink(urls: str) -> AppriseSink:
    return AppriseSink.model_validate(
        {"name": "chat", "type": "apprise", "url": urls, "events": ALL_EVENTS, "severities": []}
    )


def notification(
    settings: NotificationSettings, event: str = "incident.diagnosed", **fields: Any
) -> Notification:
    data: dict[str, Any] = {
        "event": event,
        "incident_id": "inc-42",
        "at": 1_760_000_000.0,
        "environment": "prod",
        "service": "web",
        "severity": "critical",
        "alertname": "ContainerDown",
        "title": "web is down",
        "root_cause": "The container was killed for using more memory than its limit.",
        "category": "resource",
        "confidence": 0.9,
        "evidence": ["State.OOMKilled = true", "exit code 137"],
        "actions": ["restart_service web: done"],
        "health": "recovered: /health answers 200",
        "links": build_links(settings, "inc-42", "fr-7"),
    }
    if event.startswith("approval."):
        data["approval"] = build_approval(
            settings,
            "inc-42",
            "fr-7",
            step_key="resolution-0-restart_service",
            step="restart_service web",
            operation="restart_service",
            target="web",
            risk="write",
            command="docker restart web",
            expires_at=1_760_000_600.0,
            required_approvers=2,
            approvals_so_far=1,
        )
    data.update(fields)
    return Notification.model_validate(data)


def deliver(
    sink: NotificationSinkConfig, n: Notification, timeout: float = 5.0, delivery_id: str = "dlv-1"
) -> DeliveryResult:
    async def run() -> DeliveryResult:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await send(sink, n, delivery_id, client, timeout)

    return asyncio.run(run())


def texts(value: Any) -> Iterator[str]:
    """Every `text` string in a Slack payload, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


# --- Slack --------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_a_slack_message_for_each_event_is_accepted(
    event: str, receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    n = notification(settings, event)
    result = deliver(slack_sink(receiver.url + SLACK_TOKEN_PATH), n)
    assert result.ok and result.status_code == 200, result
    [request] = receiver.received(SLACK_TOKEN_PATH)
    assert request.problems == () and request.headers["content-type"] == "application/json"
    payload = request.json()
    header = payload["blocks"][0]
    assert header["type"] == "header" and header["text"]["text"] == f"{n.label}: web is down"
    fields = [f["text"] for f in payload["blocks"][1]["fields"]]
    assert {"Environment: prod", "Service: web", "Severity: critical", f"Status: {n.label}"} <= set(
        fields
    )
    buttons = next(b for b in payload["blocks"] if b["type"] == "actions")["elements"]
    assert {b["url"] for b in buttons} == {
        "http://127.0.0.1:8080/incidents/inc-42",
        "http://127.0.0.1:4200/runs/flow-run/fr-7",
    }
    body = json.dumps(payload)
    if event.startswith("approval."):
        # POST routes are commands to run, not buttons to click
        assert "/approve" not in {b["url"][-8:] for b in buttons}
        code = [t for t in texts(payload["blocks"]) if "curl -X POST" in t]
        assert code, "the approval command is shown"
        assert (
            'curl -X POST -H "Authorization: Bearer $UICI_KEY" -H "Content-Type: application/json" '
            "http://127.0.0.1:8080/incidents/inc-42/approve "
            '-d \'{"step_key": "resolution-0-restart_service"}\''
        ) in code[0]
        assert "/incidents/inc-42/reject" in code[0]
        assert "Approvals: 1 of 2" in fields and "docker restart web" in body
        # the fallback text keeps the command usable: only untrusted text is defused
        assert "http://127.0.0.1:8080/incidents/inc-42/approve" in payload["text"]
    else:
        assert "curl" not in body
    assert any(t.startswith("Root cause:\nThe container was killed") for t in texts(payload))
    assert 0 < len(payload["text"]) <= 4000


def test_a_huge_notification_stays_within_slack_limits(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    annotation = ("x" * 60 + " <!here> & ") * 90  # over 6 KiB, and it grows when escaped
    assert len(annotation) > 6 * 1024
    n = notification(
        settings,
        "approval.needed",
        title=annotation,
        root_cause=annotation,
        health=annotation,
        evidence=[f"line {i}: {annotation[:200]}" for i in range(500)],
        actions=[annotation] * 500,
        alertname=annotation,
        service=annotation,
        environment=annotation,
        approval=build_approval(
            settings,
            "inc-42",
            "fr-7",
            step_key="s" * 200,
            step=annotation,
            operation="restart_service",
            target=annotation,
            risk="write",
            command=annotation,
            expires_at=None,
        ),
    )
    result = deliver(slack_sink(receiver.url + "/slack/huge"), n)
    assert result.ok, (result, receiver.received()[-1].problems)
    payload = receiver.received("/slack/huge")[0].json()
    assert slack_problems(payload) == []
    body = json.dumps(payload, ensure_ascii=False)
    assert "[truncated]" in body, "a cut is visible"
    assert "… and 490 more in the incident" in body
    assert len(payload["text"]) <= 4000
    assert len(payload["blocks"][0]["text"]["text"]) <= 150


@pytest.mark.parametrize(
    "piece",
    ["a", "&", "<", "é", "😀", " ", "&<>" * 3, "\n"],
    ids=["ascii", "amp", "lt", "latin", "astral", "space", "escapes", "newline"],
)
@pytest.mark.parametrize(
    "size", [0, 1, 74, 75, 76, 149, 150, 151, 1999, 2000, 2001, 3000, 3001, 9000]
)
def test_any_text_size_gives_a_message_slack_accepts(
    piece: str, size: int, receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    text = piece * size
    n = notification(
        settings,
        "approval.expiring",
        title=text,
        root_cause=text or None,
        evidence=[text] * 3,
        environment=text,
        service=text,
        health=text or None,
        links={"incident": "http://h/i", text[:20] or "x": "http://h/j"},
    )
    payload = slack_payload(n)
    result = deliver(slack_sink(receiver.url + "/slack/sizes"), n)
    assert result.ok, (slack_problems(payload), result)
    for value in texts(payload):
        assert "&" not in value.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")


def test_the_receiver_refuses_what_slack_refuses(receiver: HttpReceiver) -> None:
    """The receiver's checks are real: each broken message gets Slack's 400."""
    section = {"type": "section", "text": {"type": "plain_text", "text": "x"}}
    broken = {
        "header too long": {
            "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]
        },
        "51 blocks": {"blocks": [section] * 51},
        "section too long": {
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "s" * 3001}}]
        },
        "11 fields": {
            "blocks": [{"type": "section", "fields": [{"type": "plain_text", "text": "f"}] * 11}]
        },
        "long field": {
            "blocks": [{"type": "section", "fields": [{"type": "plain_text", "text": "f" * 2001}]}]
        },
        "long button": {
            "blocks": [
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "b" * 76},
                            "url": "http://x",
                        }
                    ],
                }
            ]
        },
        "long url": {
            "blocks": [
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "b"},
                            "url": "http://x/" + "u" * 3000,
                        }
                    ],
                }
            ]
        },
        "empty text": {"blocks": [{"type": "section", "text": {"type": "plain_text", "text": ""}}]},
        "astral header": {
            "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "😀" * 76}}]
        },
    }
    with httpx.Client(trust_env=False) as client:
        for name, payload in broken.items():
            answer = client.post(receiver.url + "/slack/x", json=payload)
            assert (answer.status_code, answer.text) == (400, "invalid_blocks"), name
        assert (
            client.post(receiver.url + "/slack/x", json={"unfurl_links": False}).text == "no_text"
        )
        assert client.post(receiver.url + "/slack/x", json={"blocks": [section]}).status_code == 200


def test_untrusted_text_cannot_mention_link_or_format(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    evil = "<!channel> <@U024BE7LH> see <https://evil.example/x|the fix> & *bold* `code`"
    n = notification(
        settings,
        "approval.needed",
        title=evil,
        service=evil,
        root_cause=evil,
        evidence=[evil],
        actions=[evil],
        health=evil,
        alertname=evil,
        approval=build_approval(
            settings,
            "inc-42",
            None,
            step_key="k",
            step=evil,
            operation="restart_service",
            target=evil,
            risk="write",
            command=evil,
            expires_at=None,
        ),
    )
    assert deliver(slack_sink(receiver.url + "/slack/evil"), n).ok
    payload = receiver.received("/slack/evil")[0].json()
    everything = list(texts(payload))
    assert all("<" not in t and ">" not in t for t in everything), everything
    joined = "\n".join(everything)
    assert "&lt;!channel&gt;" in joined and "&lt;@U024BE7LH&gt;" in joined
    assert "&amp; *bold*" in joined
    assert "https://evil.example" not in joined, "no autolinkable URL from the data"
    # untrusted text sits only in plain_text; mrkdwn holds only our own approval commands
    mrkdwn = [t for t in everything if t.startswith("*Approve*")]
    for block in payload["blocks"]:
        for obj in [block.get("text"), *block.get("fields", [])]:
            if obj and obj["type"] == "mrkdwn":
                assert obj["text"] in mrkdwn and obj["verbatim"] is True
                assert "evil" not in obj["text"]
    buttons = [e["url"] for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert all(u.startswith("http://127.0.0.1:") for u in buttons)


def test_links_from_data_are_refused_unless_http() -> None:
    with pytest.raises(ValueError, match="link 'x' must be an http"):
        Notification(
            event="incident.resolved",
            incident_id="i",
            at=0,
            environment="e",
            service="s",
            title="t",
            links={"x": "javascript:alert(1)"},
        )
    with pytest.raises(ValueError, match="approval is required for approval events"):
        Notification(
            event="approval.needed", incident_id="i", at=0, environment="e", service="s", title="t"
        )


def test_links_and_approval_routes_come_from_configuration(settings: NotificationSettings) -> None:
    links = build_links(settings, "inc/1", "run-9")
    assert links == {
        "incident": "http://127.0.0.1:8080/incidents/inc%2F1",
        "flow_run": "http://127.0.0.1:4200/runs/flow-run/run-9",
    }
    assert "flow_run" not in build_links(settings, "inc-1", None)
    shaped = settings.model_copy(update={"public_url": "https://uici.example.com"})
    approval = build_approval(
        shaped,
        "inc-1",
        None,
        step_key="k1",
        step="s",
        operation="o",
        target="t",
        risk="write",
        command=None,
        expires_at=None,
    )
    assert approval.approve_url == "https://uici.example.com/incidents/inc-1/approve"
    assert approval.reject_url == "https://uici.example.com/incidents/inc-1/reject"
    assert approval.prefect_url is None


def test_plain_text_is_bounded_and_keeps_the_commands(settings: NotificationSettings) -> None:
    n = notification(
        settings, "approval.needed", root_cause="r" * 20_000, evidence=["e" * 2000] * 500
    )
    text = n.text(max_chars=2000)
    assert len(text) <= 2000
    assert text.startswith("[UICI] Approval needed: web is down")
    assert "[truncated]" in text
    assert "http://127.0.0.1:8080/incidents/inc-42/approve" in text
    assert "http://127.0.0.1:8080/incidents/inc-42" in text
    short = notification(settings).text()
    assert "Evidence:\n  - State.OOMKilled = true" in short
    assert "environment prod | service web | severity critical" in short


# --- the generic webhook ------------------------------------------------------------------


def test_a_webhook_delivery_is_signed_and_verifiable(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    n = notification(settings, "incident.failed")
    result = deliver(webhook_sink(receiver.url + "/webhook/in"), n, delivery_id="dlv-77")
    assert result.ok and result.status_code == 200, result
    [request] = receiver.received("/webhook/in")
    assert request.problems == ()  # the receiver's own HMAC check passed
    headers = request.headers
    assert headers["x-uici-event"] == "incident.failed"
    assert headers["x-uici-delivery"] == "dlv-77"
    assert headers["content-type"] == "application/json"
    stamp = int(headers["x-uici-timestamp"])
    assert abs(stamp - time.time()) < 30
    assert request.body == webhook_body(n)
    assert Notification.model_validate(request.json()) == n
    # the signature, computed here independently
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256)
    assert headers["x-uici-signature"] == f"v1={mac.hexdigest()}"
    signature = headers["x-uici-signature"]
    assert verify(SECRET, request.body, str(stamp), signature, now=time.time())
    # a tampered body, another secret, a stale or future time, garbage: all refused
    tampered = request.body.replace(b"incident.failed", b"incident.resolved")
    assert not verify(SECRET, tampered, str(stamp), signature, now=time.time())
    assert not verify("another-secret-0123456", request.body, str(stamp), signature, now=stamp)
    assert not verify(SECRET, request.body, str(stamp), signature, now=stamp + 301)
    assert not verify(SECRET, request.body, str(stamp), signature, now=stamp - 301)
    assert verify(SECRET, request.body, str(stamp), signature, now=stamp + 299)
    assert not verify(SECRET, request.body, str(stamp + 1), signature, now=stamp)
    assert not verify(SECRET, request.body, None, signature, now=stamp)
    assert not verify(SECRET, request.body, str(stamp), "v1=00", now=stamp)
    assert not verify(SECRET, request.body, str(stamp), signature.replace("v1=", "v0="), now=stamp)
    assert not verify(SECRET, request.body, "1e9", signature, now=stamp)
    # rotation: any one of several v1 values may match
    assert verify(SECRET, request.body, str(stamp), f"v1=deadbeef, {signature}", now=stamp)


def test_sign_matches_a_known_vector() -> None:
    body = b'{"event":"incident.resolved"}'
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k" * 16, body, 1_700_000_000) == f"v1={expected}"
    assert sign(b"k" * 16, body, 1_700_000_000) == f"v1={expected}"


def test_a_webhook_signed_with_the_wrong_secret_is_refused_for_good(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    sink = webhook_sink(receiver.url + "/webhook/in", secret="not-the-receivers-secret")
    result = deliver(sink, notification(settings))
    assert (result.ok, result.retryable, result.status_code) == (False, False, 401)
    assert receiver.received("/webhook/in")[0].problems == ("bad signature",)


def test_a_retried_delivery_keeps_its_id_and_succeeds_after_503s(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    receiver.script("/webhook/flaky", Reply(503), Reply(503))
    sink = webhook_sink(receiver.url + "/webhook/flaky")
    n = notification(settings)
    results = [deliver(sink, n, delivery_id="dlv-same") for _ in range(3)]
    assert [(r.ok, r.retryable, r.status_code) for r in results] == [
        (False, True, 503),
        (False, True, 503),
        (True, False, 200),
    ]
    ids = {r.headers["x-uici-delivery"] for r in receiver.received("/webhook/flaky")}
    assert ids == {"dlv-same"}


# --- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ok", "retryable"),
    [
        (200, True, False),
        (204, True, False),
        (301, False, False),
        (400, False, False),
        (401, False, False),
        (403, False, False),
        (404, False, False),
        (410, False, False),
        (408, False, True),
        (425, False, True),
        (429, False, True),
        (500, False, True),
        (502, False, True),
        (503, False, True),
        (504, False, True),
    ],
)
def test_answers_are_classified(
    status: int, ok: bool, retryable: bool, receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    receiver.always(
        SLACK_TOKEN_PATH,
        Reply(
            status,
            b"no_service" if status >= 300 else b"ok",
            {"Location": "http://elsewhere/"} if status == 301 else {},
        ),
    )
    result = deliver(slack_sink(receiver.url + SLACK_TOKEN_PATH), notification(settings))
    assert (result.ok, result.retryable, result.status_code) == (ok, retryable, status)
    assert len(receiver.received()) == 1, "one attempt, no redirect followed, no retry"
    if not ok:
        assert "team-slack" in result.error and f"HTTP {status}" in result.error
    for secret in ("T0SECRET1", "B0SECRET2", "xoxSECRETtoken3456", receiver.url):
        assert secret not in repr(result)


def test_a_429_says_when_to_retry(receiver: HttpReceiver, settings: NotificationSettings) -> None:
    receiver.script("/slack/busy", Reply(429, b"rate_limited", {"Retry-After": "7"}))
    result = deliver(slack_sink(receiver.url + "/slack/busy"), notification(settings))
    assert (result.retryable, result.status_code, result.retry_after) == (True, 429, 7.0)
    assert "rate_limited" in result.error
    later = time.time() + 120
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(later))
    receiver.script("/slack/busy", Reply(429, b"", {"Retry-After": stamp}))
    dated = deliver(slack_sink(receiver.url + "/slack/busy"), notification(settings))
    assert dated.retry_after is not None and 100 < dated.retry_after <= 121
    assert parse_retry_after("soon", time.time()) is None


def test_a_refused_connection_is_retryable_and_names_no_url(settings: NotificationSettings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}{SLACK_TOKEN_PATH}"
    result = deliver(slack_sink(url), notification(settings))
    assert (result.ok, result.retryable, result.status_code) == (False, True, None)
    assert "connection failed" in result.error and "team-slack" in result.error
    assert "SECRET" not in repr(result) and str(port) not in result.error


def test_a_slow_sink_times_out_within_the_timeout(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    receiver.script("/webhook/slow", Reply(200, delay=3))
    started = time.monotonic()
    result = deliver(
        webhook_sink(receiver.url + "/webhook/slow"), notification(settings), timeout=0.5
    )
    assert time.monotonic() - started < 2
    assert (result.ok, result.retryable, result.status_code) == (False, True, None)
    assert "timeout" in result.error


def test_a_disabled_sink_sends_nothing(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    sink = SlackSink.model_validate(
        {"name": "off", "type": "slack", "url": "", "events": ALL_EVENTS, "severities": []}
    )
    result = deliver(sink, notification(settings))
    assert (sink.enabled, result.ok, result.retryable) == (False, False, False)
    assert receiver.received() == []


# --- apprise ------------------------------------------------------------------------------


def test_apprise_delivers_to_every_json_target(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    host = receiver.url.removeprefix("http://")
    sink = apprise_sink(f"json://{host}/apprise/a, json://{host}/apprise/b")
    n = notification(settings, "incident.escalated", title="web <b>still</b> down")
    result = deliver(sink, n)
    assert result.ok and result.retryable is False, result
    for path in ("/apprise/a", "/apprise/b"):
        [request] = receiver.received(path)
        body = request.json()
        assert body["title"] == "[UICI] Incident escalated: web <b>still</b> down"
        assert body["message"] == n.text()
        assert "http://127.0.0.1:8080/incidents/inc-42" in body["message"]


def test_apprise_failures_are_retryable_and_name_the_sink(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    receiver.always("/apprise/down", Reply(500, b"boom"))
    host = receiver.url.removeprefix("http://")
    result = deliver(
        apprise_sink(f"json://user:hunter2pass@{host}/apprise/down"), notification(settings)
    )
    assert (result.ok, result.retryable, result.status_code) == (False, True, None)
    assert "'chat'" in result.error and "1 of 1 targets" in result.error
    assert "hunter2pass" not in repr(result) and host not in repr(result)
    assert len(receiver.received("/apprise/down")) == 1, "apprise itself does not retry"


def test_apprise_is_bounded_by_the_timeout(
    receiver: HttpReceiver, settings: NotificationSettings
) -> None:
    receiver.always("/apprise/slow", Reply(200, delay=4))
    host = receiver.url.removeprefix("http://")
    started = time.monotonic()
    result = deliver(apprise_sink(f"json://{host}/apprise/slow"), notification(settings), timeout=1)
    assert time.monotonic() - started < 3
    assert (result.ok, result.retryable) == (False, True)
    # apprise reports the read timeout (capped at our timeout) as a failure of the target
    assert "'chat'" in result.error and "1 of 1 targets not notified" in result.error


def test_an_apprise_url_apprise_cannot_use_is_permanent(settings: NotificationSettings) -> None:
    result = deliver(apprise_sink("nosuchservice://token-abc/def"), notification(settings))
    assert (result.ok, result.retryable) == (False, False)
    assert "scheme 'nosuchservice'" in result.error and "token-abc" not in result.error


# --- configuration ------------------------------------------------------------------------


def problems_of(directory: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(directory, environ=environ or {})
    return [str(p).replace(f"{directory}/", "") for p in raised.value.problems]


def line_of(directory: Path, needle: str) -> int:
    """The line of platform.yml holding `needle` (computed, as others add lines above)."""
    lines = (directory / "platform.yml").read_text().splitlines()
    [number] = [i for i, line in enumerate(lines, start=1) if needle in line]
    return number


def edit(directory: Path, old: str, new: str) -> None:
    path = directory / "platform.yml"
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_the_shipped_sinks_are_off_until_their_variables_are_set() -> None:
    config = load_config(SHIPPED_CONFIG, environ={}).platform.notifications
    assert [(s.name, s.type, s.enabled) for s in config.sinks] == [
        ("slack", "slack", False),
        ("webhook", "webhook", False),
        ("apprise", "apprise", False),
    ]
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.approval_expiring_seconds == 300
    environ = {
        "UICI_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/sekrit-token-1",
        "UICI_NOTIFY_WEBHOOK_URL": "https://hooks.example.com/uici",
        "UICI_NOTIFY_WEBHOOK_SECRET": "0123456789abcdef0123",
        "UICI_APPRISE_URLS": "msteams://a/b/c/d mailto://u:p@example.com?to=a@x.com,b@y.com",
        "UICI_PUBLIC_URL": "https://uici.example.com/",
    }
    loaded = load_config(SHIPPED_CONFIG, environ=environ)
    sinks = loaded.platform.notifications.sinks
    assert all(s.enabled for s in sinks)
    assert loaded.platform.notifications.public_url == "https://uici.example.com"
    assert isinstance(sinks[2], AppriseSink)
    assert sinks[2].apprise_urls() == [
        "msteams://a/b/c/d",
        "mailto://u:p@example.com?to=a@x.com,b@y.com",
    ]
    shown = json.dumps(loaded.masked())
    assert "sekrit-token-1" not in shown and "0123456789abcdef0123" not in shown
    assert "sekrit-token-1" not in repr(loaded.platform)


def test_a_sink_accepts_its_events_and_severities(test_config_dir: Path) -> None:
    environ = {
        "UICI_TEST_NOTIFY_WEBHOOK_URL": "http://h/x",
        "UICI_TEST_NOTIFY_WEBHOOK_SECRET": SECRET,
    }
    sinks = load_config(test_config_dir, environ=environ).platform.notifications.sinks
    webhook = sinks[1]
    assert webhook.accepts("incident.diagnosed", "CRITICAL")
    assert not webhook.accepts("incident.diagnosed", "info")
    assert not webhook.accepts("incident.diagnosed", None), "a severity filter wants a severity"
    assert not webhook.accepts("approval.expiring", "critical"), "not among its events"
    assert not sinks[0].accepts("incident.diagnosed", "critical"), "slack is off"


def test_a_webhook_with_a_url_needs_a_secret(test_config_dir: Path) -> None:
    line = line_of(test_config_dir, 'secret: "${UICI_TEST_NOTIFY_WEBHOOK_SECRET:-}"')
    problems = problems_of(test_config_dir, {"UICI_TEST_NOTIFY_WEBHOOK_URL": "https://h/x"})
    assert len(problems) == 1
    assert problems[0].startswith(
        f"platform.yml:{line}: notifications.sinks[1].secret: webhook sink 'webhook' has a url but no secret"
    )
    assert "UICI_NOTIFY_WEBHOOK_SECRET" in problems[0] and "openssl rand -hex 32" in problems[0]
    short = problems_of(
        test_config_dir,
        {"UICI_TEST_NOTIFY_WEBHOOK_URL": "https://h/x", "UICI_TEST_NOTIFY_WEBHOOK_SECRET": "short"},
    )
    assert short == [
        f"platform.yml:{line}: notifications.sinks[1].secret: webhook sink 'webhook': the secret "
        "must be at least 16 characters (e.g. `openssl rand -hex 32`)"
    ]


def test_an_unknown_event_is_located(test_config_dir: Path) -> None:
    edit(
        test_config_dir,
        "events: [incident.diagnosed, incident.failed]",
        "events: [incident.diagnosed, incident.exploded]",
    )
    line = line_of(test_config_dir, "incident.exploded")
    assert problems_of(test_config_dir) == [
        f"platform.yml:{line}: notifications.sinks[2].events[1]: invalid value 'incident.exploded' "
        "('incident.diagnosed', 'approval.needed', 'approval.expiring', 'incident.resolved', "
        "'incident.failed' or 'incident.escalated')"
    ]


def test_duplicate_sink_names_are_located(test_config_dir: Path) -> None:
    edit(test_config_dir, "- name: apprise", "- name: slack")
    line = line_of(test_config_dir, "  sinks:")
    assert problems_of(test_config_dir) == [
        f"platform.yml:{line}: notifications.sinks: duplicate sink name 'slack' (sinks[0] and "
        "sinks[2]); each sink needs its own name"
    ]


def test_a_slack_url_must_be_http_and_is_not_echoed(test_config_dir: Path) -> None:
    problems = problems_of(
        test_config_dir, {"UICI_TEST_SLACK_URL": "hooks.slack.com/services/T/B/sekrit"}
    )
    assert problems == [
        f"platform.yml:{line_of(test_config_dir, 'UICI_TEST_SLACK_URL')}: notifications.sinks[0].url: must be an http:// or https:// URL "
        "(the value is not shown)"
    ]
    garbage = problems_of(test_config_dir, {"UICI_TEST_APPRISE_URLS": "sekrit json://x"})
    assert garbage[0].startswith(
        f"platform.yml:{line_of(test_config_dir, 'UICI_TEST_APPRISE_URLS')}: notifications.sinks[2].url: must be apprise URLs"
    )
    assert "sekrit" not in " ".join(problems + garbage)


def test_an_unknown_sink_type_is_located(test_config_dir: Path) -> None:
    edit(test_config_dir, "type: apprise", "type: teams")
    line = line_of(test_config_dir, "type: teams")
    assert problems_of(test_config_dir) == [
        f"platform.yml:{line}: notifications.sinks[2].type: invalid value 'teams' (one of: slack, webhook, apprise)"
    ]
