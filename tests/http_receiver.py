"""A real HTTP receiver for notification tests: records every request and answers as told.

- Paths under `/slack` are checked like Slack checks an incoming-webhook message: the
  limits of Block Kit (the numbers from Slack's reference, written out here on purpose and
  not imported from agent/notifications) are enforced, and a message that breaks one is
  answered `400 invalid_blocks` (or `400 no_text`), as Slack does.
- Paths under `/webhook` verify `X-UICI-Signature` with this module's own HMAC code and
  answer 401 when it is missing, wrong or stale.
- Any path can be scripted: `script(path, Reply(503), Reply(503))` answers the next two
  requests 503 and then falls back to normal; `always(path, Reply(400))` answers every one;
  `Reply(200, delay=5)` sleeps first (a slow or hung sink).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.loopback_server import LoopbackServer, TrackedHandler

# Slack's documented limits (docs.slack.dev, Block Kit reference), counted in UTF-16 units.
SLACK_LIMITS = {
    "blocks": 50,
    "text": 40_000,
    "section.text": 3000,
    "section.fields": 10,
    "field.text": 2000,
    "header.text": 150,
    "actions.elements": 25,
    "context.elements": 10,
    "button.text": 75,
    "button.url": 3000,
    "action_id": 255,
    "block_id": 255,
    "text_object": 3000,
}
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what the receiver answered
    problems: tuple[str, ...] = ()

    def json(self) -> Any:
        return json.loads(self.body)


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _text_object(obj: Any, where: str, limit: int, problems: list[str], plain_only: bool) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: not a text object")
        return
    kind = obj.get("type")
    if kind not in ("plain_text", "mrkdwn") or (plain_only and kind != "plain_text"):
        problems.append(f"{where}: text type {kind!r}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(f"{where}: empty text")
        return
    if _units(text) > min(limit, SLACK_LIMITS["text_object"]):
        problems.append(f"{where}: {_units(text)} characters (limit {limit})")
    if "emoji" in obj and kind != "plain_text":
        problems.append(f"{where}: emoji is only for plain_text")
    if "verbatim" in obj and kind != "mrkdwn":
        problems.append(f"{where}: verbatim is only for mrkdwn")
    extra = set(obj) - {"type", "text", "emoji", "verbatim"}
    if extra:
        problems.append(f"{where}: unknown keys {sorted(extra)}")


def _block(block: Any, where: str, problems: list[str]) -> None:
    if not isinstance(block, dict):
        problems.append(f"{where}: not an object")
        return
    block_id = block.get("block_id")
    if block_id is not None and (
        not isinstance(block_id, str) or len(block_id) > SLACK_LIMITS["block_id"]
    ):
        problems.append(f"{where}.block_id: invalid")
    kind = block.get("type")
    if kind == "header":
        _text_object(
            block.get("text"), f"{where}.text", SLACK_LIMITS["header.text"], problems, True
        )
    elif kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"{where}: a section needs text or fields")
        if "text" in block:
            _text_object(
                block["text"], f"{where}.text", SLACK_LIMITS["section.text"], problems, False
            )
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or not fields:
                problems.append(f"{where}.fields: empty")
            elif len(fields) > SLACK_LIMITS["section.fields"]:
                problems.append(f"{where}.fields: {len(fields)} fields")
            else:
                for i, item in enumerate(fields):
                    _text_object(
                        item, f"{where}.fields[{i}]", SLACK_LIMITS["field.text"], problems, False
                    )
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}.elements: empty")
            return
        if len(elements) > SLACK_LIMITS["actions.elements"]:
            problems.append(f"{where}.elements: {len(elements)} elements")
        action_ids = [e.get("action_id") for e in elements if isinstance(e, dict)]
        if len([a for a in action_ids if a]) != len({a for a in action_ids if a}):
            problems.append(f"{where}.elements: duplicate action_id")
        for i, element in enumerate(elements):
            at = f"{where}.elements[{i}]"
            if not isinstance(element, dict) or element.get("type") != "button":
                problems.append(f"{at}: not a button")
                continue
            _text_object(
                element.get("text"), f"{at}.text", SLACK_LIMITS["button.text"], problems, True
            )
            url = element.get("url")
            if url is not None and (
                not isinstance(url, str)
                or not url.startswith(("http://", "https://"))
                or _units(url) > SLACK_LIMITS["button.url"]
            ):
                problems.append(f"{at}.url: invalid")
            action_id = element.get("action_id")
            if action_id is not None and len(str(action_id)) > SLACK_LIMITS["action_id"]:
                problems.append(f"{at}.action_id: too long")
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}.elements: empty")
        elif len(elements) > SLACK_LIMITS["context.elements"]:
            problems.append(f"{where}.elements: {len(elements)} elements")
        else:
            for i, element in enumerate(elements):
                _text_object(
                    element, f"{where}.elements[{i}]", SLACK_LIMITS["text_object"], problems, False
                )
    elif kind == "divider":
        pass
    else:
        problems.append(f"{where}: block type {kind!r} is not checked here")


def slack_problems(payload: Any) -> list[str]:
    """What Slack would refuse in an incoming-webhook message (empty: accepted)."""
    problems: list[str] = []
    if not isinstance(payload, dict):
        return ["not a JSON object"]
    text = payload.get("text")
    blocks = payload.get("blocks")
    if not (isinstance(text, str) and text.strip()) and not blocks:
        return ["no_text"]
    if isinstance(text, str) and _units(text) > SLACK_LIMITS["text"]:
        problems.append(f"text: {_units(text)} characters")
    if blocks is not None:
        if not isinstance(blocks, list) or not blocks:
            problems.append("blocks: empty")
        elif len(blocks) > SLACK_LIMITS["blocks"]:
            problems.append(f"blocks: {len(blocks)} blocks")
        else:
            for i, block in enumerate(blocks):
                _block(block, f"blocks[{i}]", problems)
    return problems


def signature_ok(secret: bytes, headers: dict[str, str], body: bytes, now: float) -> bool:
    """This receiver's own check of X-UICI-Signature (independent of agent/notifications)."""
    stamp = headers.get("x-uici-timestamp", "")
    signature = headers.get("x-uici-signature", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    offered = [v[3:] for v in (s.strip() for s in signature.split(",")) if v.startswith("v1=")]
    return any(hmac.compare_digest(mac, v) for v in offered)


class HttpReceiver(LoopbackServer):
    """Start with `with HttpReceiver(webhook_secret=...) as receiver:`; `receiver.url`."""

    def __init__(self, webhook_secret: str | bytes | None = None) -> None:
        super().__init__()
        if isinstance(webhook_secret, str):
            webhook_secret = webhook_secret.encode()
        self.webhook_secret = webhook_secret
        self.requests: list[Recorded] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._always: dict[str, Reply] = {}
        self._lock = threading.Lock()

    # -- scripting ---------------------------------------------------------------------

    def script(self, path: str, *replies: Reply) -> None:
        """The next requests to `path` get these replies, in order; then the normal one."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._always[path] = reply

    def received(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.received(path))} of {count} requests arrived")

    # -- answering ---------------------------------------------------------------------

    def _scripted(self, path: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(path)
            if queue:
                return queue.pop(0)
            return self._always.get(path)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        reply = self._scripted(path)
        if reply is not None and reply.delay:
            time.sleep(reply.delay)
        problems: list[str] = []
        if reply is None or 200 <= reply.status < 300:
            if path.startswith("/slack"):
                try:
                    problems = slack_problems(json.loads(body))
                except ValueError:
                    problems = ["invalid_payload"]
                if problems:
                    code = problems[0] if problems[0] in ("no_text", "invalid_payload") else None
                    reply = Reply(400, (code or "invalid_blocks").encode())
            elif path.startswith("/webhook") and (
                self.webhook_secret is None
                or not signature_ok(self.webhook_secret, headers, body, time.time())
            ):
                problems = ["bad signature"]
                reply = Reply(401, b"bad signature")
        reply = reply or Reply()
        with self._lock:
            self.requests.append(
                Recorded(method, path, headers, body, reply.status, tuple(problems))
            )
        return reply

    def handler_class(self) -> type[TrackedHandler]:
        receiver = self

        class Handler(TrackedHandler):
            def _any(self) -> None:
                headers, body = self.read_request()
                path = self.path.split("?", 1)[0]
                reply = receiver.answer(self.command, path, headers, body)
                self.send_reply(
                    reply.status, reply.body, {"Content-Type": "text/plain", **reply.headers}
                )

            do_POST = _any
            do_GET = _any
            do_PUT = _any

        return Handler
