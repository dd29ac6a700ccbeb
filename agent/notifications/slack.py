"""A Slack incoming-webhook message (Block Kit) for a notification.

Everything from the notification is data. Slack's documented escaping is applied to every
text (`&` -> `&amp;`, `<` -> `&lt;`, `>` -> `&gt;`), so nothing can become a mention
(`<!channel>`, `<@U...>`) or a link (`<url|label>`); untrusted text goes only into
`plain_text` objects (no mrkdwn formatting), `://` in it is broken with a zero-width space
so no client turns it into a link, and the only `mrkdwn` text is our own (the approval
commands, with `verbatim`). Buttons carry only URLs built from configuration.

Slack's limits (docs.slack.dev, Block Kit reference) hold for any input: at most 50 blocks;
a section's text 3000 characters; at most 10 fields of 2000; a header 150; a button's text
75 and its URL 3000; at most 25 elements in an actions block; the top-level `text` 40000
(kept under 4000 here). Characters are counted as UTF-16 code units, the stricter count.
Text over a limit is cut with a visible marker, never at an escape sequence.
"""

from __future__ import annotations

from typing import Any

from agent.notifications.messages import (
    TRUNCATED,
    Notification,
    format_time,
)

MAX_BLOCKS = 50
SECTION_TEXT = 3000
FIELD_TEXT = 2000
MAX_FIELDS = 10
HEADER_TEXT = 150
BUTTON_TEXT = 75
BUTTON_URL = 3000
ACTIONS_ELEMENTS = 25
CONTEXT_TEXT = 3000
TOP_LEVEL_TEXT = 4000
# Presentation: how much of a list, and of one of its lines, a message shows.
LIST_ITEMS = 10
LIST_LINE = 300
MAX_BUTTONS = 5

_ZWSP = "\u200b"
_LINK_LABELS = {"incident": "Open incident", "flow_run": "Prefect flow run"}


def escape(text: str) -> str:
    """Slack's escaping of its three control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def clip(escaped: str, limit: int) -> str:
    """An escaped text cut to `limit` UTF-16 units with a marker, never inside `&...;`."""
    if _units(escaped) <= limit:
        return escaped
    budget = limit - _units(TRUNCATED)
    cut = escaped[:budget]
    while _units(cut) > budget:
        cut = cut[: len(cut) - max(1, (_units(cut) - budget) // 2)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + TRUNCATED


def _inert(text: str) -> str:
    return text.replace("://", f":{_ZWSP}//")


def _data(text: str | None) -> str:
    """Untrusted text made inert for Slack: escaped, and no `scheme://` to autolink."""
    return escape(_inert((text or "").strip() or "-"))


def _inert_copy(n: Notification) -> Notification:
    """`n` with every untrusted string defused (URLs built from configuration stay)."""
    update: dict[str, Any] = {
        name: _inert(value)
        for name in (
            "title",
            "environment",
            "service",
            "severity",
            "alertname",
            "root_cause",
            "category",
            "health",
            "incident_id",
        )
        if isinstance(value := getattr(n, name), str)
    }
    update["evidence"] = [_inert(line) for line in n.evidence]
    update["actions"] = [_inert(line) for line in n.actions]
    update["links"] = {_inert(name): url for name, url in n.links.items()}
    if n.approval is not None:
        a = n.approval
        update["approval"] = a.model_copy(
            update={
                "step": _inert(a.step),
                "operation": _inert(a.operation),
                "target": _inert(a.target),
                "risk": _inert(a.risk),
                "command": None if a.command is None else _inert(a.command),
            }
        )
    return n.model_copy(update=update)


def _line(text: str | None) -> str:
    return " ".join((text or "").split())


def plain(text: str, limit: int) -> dict[str, Any]:
    """A plain_text object of (already escaped) text within `limit`."""
    return {"type": "plain_text", "text": clip(text, limit), "emoji": False}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": plain(text, SECTION_TEXT)}


def _list(title: str, items: list[str]) -> str:
    shown = [f"• {_data(_line(item)[: LIST_LINE * 2])}" for item in items[:LIST_ITEMS]]
    lines = [clip(line, LIST_LINE) for line in shown]
    more = len(items) - len(lines)
    header = f"{title} ({len(items)}, first {len(lines)} shown)" if more else title
    tail = [f"… and {more} more in the incident"] if more else []
    return "\n".join([header, *lines, *tail])


def _fields(n: Notification) -> list[dict[str, Any]]:
    facts: list[tuple[str, str | None]] = [
        ("Environment", n.environment),
        ("Service", n.service),
        ("Severity", n.severity),
        ("Status", n.label),
        ("Alert", n.alertname),
        ("Incident", n.incident_id),
    ]
    if n.category:
        facts.append(("Category", n.category))
    if n.confidence is not None:
        facts.append(("Confidence", f"{n.confidence:.0%}"))
    if n.approval is not None:
        a = n.approval
        facts.append(("Approvals", f"{a.approvals_so_far} of {a.required_approvers}"))
        if a.expires_at is not None:
            facts.append(("Expires", format_time(a.expires_at)))
    return [plain(f"{name}: {_data(_line(value))}", FIELD_TEXT) for name, value in facts][
        :MAX_FIELDS
    ]


def _approval_blocks(n: Notification) -> list[dict[str, Any]]:
    a = n.approval
    if a is None:
        return []
    details = [
        f"Waiting for approval: {_data(_line(a.step))}",
        f"Operation: {_data(a.operation)} on {_data(_line(a.target))} (risk: {_data(a.risk)})",
    ]
    if a.command:
        details.append(f"Dry run: {_data(a.command)}")
    blocks = [_section("\n".join(details))]
    approve, reject = a.curl("approve"), a.curl("reject")
    if "`" in approve + reject:  # cannot sit in a code block: show it as plain text
        blocks.append(_section(escape(f"Approve:\n{approve}\nReject:\n{reject}")))
    else:
        code = (
            "*Approve* (POST, a key with the operate scope in `$UICI_KEY`):\n"
            f"```{escape(approve)}```\n*Reject*:\n```{escape(reject)}```"
        )
        if _units(code) <= SECTION_TEXT:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": code, "verbatim": True}}
            )
        else:
            blocks.append(_section(escape(f"Approve:\n{approve}\nReject:\n{reject}")))
    return blocks


def _buttons(n: Notification) -> list[dict[str, Any]]:
    links = dict(n.links)
    if n.approval is not None and n.approval.prefect_url and "flow_run" not in links:
        links["flow_run"] = n.approval.prefect_url
    buttons: list[dict[str, Any]] = []
    for name, url in links.items():
        if len(buttons) == min(MAX_BUTTONS, ACTIONS_ELEMENTS):
            break
        if len(url) > BUTTON_URL or not url.startswith(("http://", "https://")):
            continue  # a link Slack would refuse is left out, not the message
        label = _LINK_LABELS.get(name) or f"Open {_line(name)}"
        buttons.append(
            {
                "type": "button",
                "action_id": f"uici-link-{len(buttons)}",
                "text": plain(_data(label), BUTTON_TEXT),
                "url": url,
            }
        )
    return buttons


def slack_payload(n: Notification) -> dict[str, Any]:
    """The incoming-webhook JSON body: Block Kit blocks and a plain fallback `text`."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": plain(_data(_line(f"{n.label}: {n.title}")), HEADER_TEXT)},
        {"type": "section", "fields": _fields(n)},
    ]
    if n.root_cause:
        blocks.append(_section(f"Root cause:\n{_data(n.root_cause)}"))
    if n.evidence:
        blocks.append(_section(_list("Evidence", n.evidence)))
    if n.actions:
        blocks.append(_section(_list("Actions", n.actions)))
    if n.health:
        blocks.append(_section(f"Health: {_data(n.health)}"))
    blocks += _approval_blocks(n)
    buttons = _buttons(n)
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    context = f"UICI · incident {_data(n.incident_id)} · {format_time(n.at)}"
    blocks.append({"type": "context", "elements": [plain(context, CONTEXT_TEXT)]})
    return {
        "text": clip(escape(_inert_copy(n).text(max_chars=TOP_LEVEL_TEXT)), TOP_LEVEL_TEXT),
        "blocks": blocks[:MAX_BLOCKS],
        "unfurl_links": False,
        "unfurl_media": False,
    }
