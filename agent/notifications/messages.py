"""The notification: what every sink shows, built only from what the caller passes.

Nothing here reads the store. Every string in a `Notification` is data: it may come from
logs and alerts, so renderers show it literally (Slack: escaped plain text) and only URLs
built by `build_links` and `build_approval` from the configured `public_url` and
`prefect_ui_url` become links or buttons.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infrastructure.configuration.models import NotificationEvent, NotificationSettings

EVENT_LABELS: dict[str, str] = {
    "incident.diagnosed": "Incident diagnosed",
    "approval.needed": "Approval needed",
    "approval.expiring": "Approval expiring soon",
    "incident.resolved": "Incident resolved",
    "incident.failed": "Incident failed",
    "incident.escalated": "Incident escalated",
}
APPROVAL_EVENTS = frozenset({"approval.needed", "approval.expiring"})
TRUNCATED = "… [truncated]"
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+\S*$")
# Plain-text rendering: how much of a list and of one line is shown.
TEXT_LIST_ITEMS = 10
TEXT_LINE_CHARS = 500


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    if not _HTTP_URL.match(value):
        raise ValueError("must be an http:// or https:// URL")
    return value


class ApprovalRequest(_Data):
    """A write step waiting for people: what it would do and how to answer.

    approve_url and reject_url are POST endpoints of the UICI API (operate scope) taking
    `{"step_key": ...}`; they are shown as commands, never as links to click.
    """

    step_key: str = Field(min_length=1, max_length=200)
    step: str
    operation: str
    target: str
    risk: str
    # The dry-run command line of the step, as the gate rendered it.
    command: str | None = None
    # Unix time after which the request lapses (None: it does not expire).
    expires_at: float | None = None
    approve_url: str
    reject_url: str
    prefect_url: str | None = None
    required_approvers: int = Field(default=1, ge=1)
    approvals_so_far: int = Field(default=0, ge=0)

    @field_validator("approve_url", "reject_url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("prefect_url")
    @classmethod
    def _http_or_none(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    def curl(self, decision: Literal["approve", "reject"]) -> str:
        """The exact command that answers this request through the API."""
        url = self.approve_url if decision == "approve" else self.reject_url
        body = json.dumps({"step_key": self.step_key})
        return (
            'curl -X POST -H "Authorization: Bearer $UICI_KEY" '
            f'-H "Content-Type: application/json" {shlex.quote(url)} -d {shlex.quote(body)}'
        )


class Notification(_Data):
    """One message about one incident, for every sink alike.

    `at` is the time of the event (unix seconds), so a retried delivery carries the same
    body. `links` maps a name (`incident`, `flow_run`, ...) to an http(s) URL; only URLs the
    caller built from configuration belong there, never one taken from an alert or a log.
    """

    event: NotificationEvent
    incident_id: str = Field(min_length=1)
    at: float
    environment: str
    service: str
    severity: str | None = None
    alertname: str | None = None
    title: str
    root_cause: str | None = None
    category: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    evidence: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    health: str | None = None
    links: dict[str, str] = Field(default_factory=dict)
    approval: ApprovalRequest | None = None

    @field_validator("links")
    @classmethod
    def _http_links(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not _HTTP_URL.match(url):
                raise ValueError(f"link {name!r} must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _approval_events_carry_the_request(self) -> Notification:
        if (self.event in APPROVAL_EVENTS) != (self.approval is not None):
            raise ValueError("approval is required for approval events and only for them")
        return self

    @property
    def label(self) -> str:
        return EVENT_LABELS[self.event]

    def text(self, max_chars: int = 4000) -> str:
        """A plain-text rendering (apprise, Slack's fallback), at most `max_chars` long.

        The approval commands and the links come first among what is kept: the long parts
        (root cause, evidence, actions) are cut before them."""
        head = [f"[UICI] {self.label}: {_line(self.title)}", _facts(self)]
        tail: list[str] = []
        if self.approval is not None:
            tail += _approval_lines(self.approval)
        if self.links:
            tail.append("Links:")
            tail += [f"  {_line(name)}: {url}" for name, url in self.links.items()]
        body: list[str] = []
        if self.root_cause:
            cause = f"Root cause: {self.root_cause.strip()}"
            qualifiers = [q for q in (self.category, _percent(self.confidence)) if q]
            body.append(cause + (f" ({', '.join(qualifiers)})" if qualifiers else ""))
        body += _list_lines("Evidence", self.evidence)
        body += _list_lines("Actions", self.actions)
        if self.health:
            body.append(f"Health: {self.health.strip()}")
        head_text = clip("\n".join(head), max_chars)
        tail_text = clip("\n".join(tail), max(0, max_chars - len(head_text) - 1))
        room = max_chars - len(head_text) - (len(tail_text) + 1 if tail_text else 0) - 1
        body_text = clip("\n".join(body), room) if room > len(TRUNCATED) else ""
        return "\n".join(part for part in (head_text, body_text, tail_text) if part)


def clip(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """`text`, or its beginning and a visible marker, in at most `limit` characters."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[: max(0, limit)]
    return text[: limit - len(marker)] + marker


def _line(text: str) -> str:
    return " ".join(text.split())


def _percent(confidence: float | None) -> str | None:
    return None if confidence is None else f"confidence {confidence:.0%}"


def _facts(n: Notification) -> str:
    facts = [
        f"incident {n.incident_id}",
        f"environment {n.environment or '-'}",
        f"service {n.service or '-'}",
        f"severity {n.severity or '-'}",
    ]
    if n.alertname:
        facts.append(f"alert {n.alertname}")
    facts.append(format_time(n.at))
    return _line(" | ".join(facts))


def _list_lines(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = [f"  - {clip(_line(item), TEXT_LINE_CHARS)}" for item in items[:TEXT_LIST_ITEMS]]
    more = len(items) - len(shown)
    if more:
        shown.append(f"  ... and {more} more (see the incident)")
    return [f"{title}:", *shown]


def _approval_lines(a: ApprovalRequest) -> list[str]:
    lines = [
        f"Approval: {_line(a.step)}",
        f"  {a.operation} on {_line(a.target)} (risk {a.risk}); "
        f"approvals {a.approvals_so_far} of {a.required_approvers}",
    ]
    if a.command:
        lines.append(f"  dry run: {clip(_line(a.command), TEXT_LINE_CHARS)}")
    if a.expires_at is not None:
        lines.append(f"  expires {format_time(a.expires_at)}")
    lines += [f"  approve: {a.curl('approve')}", f"  reject: {a.curl('reject')}"]
    if a.prefect_url:
        lines.append(f"  Prefect: {a.prefect_url}")
    return lines


def format_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _path(segment: str) -> str:
    return quote(segment, safe="")


def build_links(
    settings: NotificationSettings, incident_id: str, flow_run_id: str | None = None
) -> dict[str, str]:
    """The incident in the API and, when known, its Prefect flow run in the UI."""
    links = {"incident": f"{settings.public_url}/incidents/{_path(incident_id)}"}
    if flow_run_id:
        links["flow_run"] = f"{settings.prefect_ui_url}/runs/flow-run/{_path(flow_run_id)}"
    return links


def build_approval(
    settings: NotificationSettings,
    incident_id: str,
    flow_run_id: str | None,
    *,
    step_key: str,
    step: str,
    operation: str,
    target: str,
    risk: str,
    command: str | None,
    expires_at: float | None,
    required_approvers: int = 1,
    approvals_so_far: int = 0,
) -> ApprovalRequest:
    """An approval request whose answer routes and Prefect link come from configuration."""
    base = f"{settings.public_url}/incidents/{_path(incident_id)}"
    links = build_links(settings, incident_id, flow_run_id)
    return ApprovalRequest(
        step_key=step_key,
        step=step,
        operation=operation,
        target=target,
        risk=risk,
        command=command,
        expires_at=expires_at,
        approve_url=f"{base}/approve",
        reject_url=f"{base}/reject",
        prefect_url=links.get("flow_run"),
        required_approvers=required_approvers,
        approvals_so_far=approvals_so_far,
    )
