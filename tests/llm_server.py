"""A small OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1 with scripted replies.

Tests talk to it through the real `openai` and `anthropic` SDKs, and assert on what left the
process: every request's path, headers and JSON body is recorded. A reply is either scripted
(a queue) or computed by a responder function from the request, which is how the
"compromised LLM" of the injection tests obeys whatever the prompt tells it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # a dict is sent as JSON; a str as text
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        """All message text of the request, as the model would see it."""
        parts = []
        if isinstance(self.body.get("system"), str):
            parts.append(self.body["system"])
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(c.get("text", "") for c in content if isinstance(c, dict))
        return "\n".join(parts)


def chat(
    content: str | None,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    model: str = "test-model",
) -> Reply:
    """An OpenAI chat.completions reply."""
    return Reply(
        body={
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def message(
    text: str,
    input_tokens: int = 100,
    output_tokens: int = 20,
    *,
    stop_reason: str = "end_turn",
    model: str = "test-model",
) -> Reply:
    """An Anthropic messages reply."""
    return Reply(
        body={
            "id": "msg_test",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    )


def error(
    status: int, message_text: str = "scripted error", headers: dict[str, str] | None = None
) -> Reply:
    return Reply(
        status=status,
        body={"error": {"message": message_text, "type": "scripted", "code": status}},
        headers=headers or {},
    )


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: list[Reply] = []
        self.responder: Callable[[Request], Reply] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode(errors="replace")}
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = server._next(request)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = (
                    json.dumps(reply.body).encode()
                    if not isinstance(reply.body, str)
                    else reply.body.encode()
                )
                try:
                    self.send_response(reply.status)
                    self.send_header(
                        "Content-Type",
                        "application/json" if not isinstance(reply.body, str) else "text/plain",
                    )
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test); nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            return self.responder(request)
        return error(500, "no scripted reply left")

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.responder = None

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
