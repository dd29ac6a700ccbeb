"""LLM access for the planner: the openai SDK (OpenAI and any OpenAI-compatible endpoint) and
the anthropic SDK, with configured timeouts, one retry layer, a circuit breaker and usage
accounting.

The SDKs' own defaults (a 600 s timeout, two hidden retries) are replaced: each client gets
`llm.timeout_seconds` and `max_retries=0`, and this module retries only what is transient
(timeouts, connection errors, 429 honouring Retry-After, 5xx), at most `llm.max_retries`
times. A failing provider therefore costs a known number of attempts: 1 + max_retries per
call, and none at all while the breaker is open.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from agent.incidents.models import Usage
from infrastructure.configuration.models import LLMProvider, LLMSettings
from infrastructure.retry import parse_retry_after, retry_delay

FailureKind = Literal[
    "timeout",
    "rate_limited",
    "server_error",
    "connection",
    "client_error",
    "refused",
    "invalid_json",
    "empty_plan",
    "circuit_open",
    "not_configured",
]
_RETRYABLE: set[str] = {"timeout", "rate_limited", "server_error", "connection"}
log = logging.getLogger("uici.llm")


class LLMFailure(Exception):
    def __init__(self, kind: FailureKind, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class LLMReply(BaseModel):
    text: str
    model: str
    usage: Usage


class CompletionClient(Protocol):
    """What the planner asks of an LLM client: LLMClient, or the evaluation's recording and
    replaying clients."""

    def complete(
        self, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> LLMReply: ...


class CircuitBreaker:
    """Closed: calls go through. After `threshold` failed calls in a row: open, no calls for
    `reset_seconds`. Then half-open: one trial call decides."""

    def __init__(
        self,
        threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[int], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        # Told each time the breaker opens (the failures in a row): the state lives in this
        # process only, so this is how the store, and the metrics, learn of it.
        self.on_open = on_open
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_seconds else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.state == "half-open":
            self.opened_at = self.clock()
            if self.on_open is not None:
                self.on_open(self.failures)


class LLMClient:
    """One configured provider. `complete` returns the reply text or raises LLMFailure."""

    def __init__(
        self,
        settings: LLMSettings,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_circuit_open: Callable[[int], None] | None = None,
    ) -> None:
        """`on_circuit_open(failures)`: called when the breaker opens, e.g. to record an
        `llm.circuit_open` event; an error in it never fails the LLM call's caller."""
        if settings.provider is LLMProvider.NONE:
            raise LLMFailure("not_configured", "platform.yml: llm.provider is none")
        self.settings = settings
        self.sleep = sleep
        self.on_circuit_open = on_circuit_open
        self.breaker = CircuitBreaker(
            settings.circuit_breaker.failure_threshold,
            settings.circuit_breaker.reset_seconds,
            clock,
            self._circuit_opened,
        )
        self._sdk: Any = None

    def _circuit_opened(self, failures: int) -> None:
        if self.on_circuit_open is None:
            return
        try:
            self.on_circuit_open(failures)
        except Exception:  # recording it must not turn an LLM failure into another error
            log.exception("could not record that the LLM circuit opened")

    def _client(self) -> Any:
        if self._sdk is None:
            settings = self.settings
            key = settings.api_key.get_secret_value() if settings.api_key else "not-needed"
            if settings.provider is LLMProvider.ANTHROPIC:
                import anthropic

                self._sdk = anthropic.Anthropic(
                    api_key=key,
                    base_url=settings.base_url,
                    timeout=settings.timeout_seconds,
                    max_retries=0,
                )
            else:
                import openai

                self._sdk = openai.OpenAI(
                    api_key=key,
                    base_url=settings.base_url,
                    timeout=settings.timeout_seconds,
                    max_retries=0,
                )
        return self._sdk

    def complete(
        self, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> LLMReply:
        if not self.breaker.allow():
            raise LLMFailure(
                "circuit_open",
                f"the {self.settings.provider.value} provider failed "
                f"{self.breaker.failures} calls in a row; not called again for "
                f"{self.settings.circuit_breaker.reset_seconds:g} s",
            )
        attempts = 1 + self.settings.max_retries
        last: LLMFailure | None = None
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                reply = self._call(system, user, schema, schema_name)
                self.breaker.succeeded()
                return reply
            except LLMFailure as failure:
                last = failure
            except Exception as exc:  # classified below; never escapes unclassified
                last, retry_after = _classify(exc)
            last.attempts = attempt
            if last.kind not in _RETRYABLE or attempt == attempts:
                break
            self.sleep(
                retry_delay(
                    retry_after,
                    attempt,
                    self.settings.retry_backoff_seconds,
                    self.settings.max_retry_after_seconds,
                )
            )
        assert last is not None
        self.breaker.failed()
        raise last

    def _call(self, system: str, user: str, schema: dict[str, Any], schema_name: str) -> LLMReply:
        settings = self.settings
        if settings.provider is LLMProvider.ANTHROPIC:
            create = self._client().messages.create
            arguments: dict[str, Any] = {
                "model": settings.model,
                "system": system,
                "messages": [{"role": "user", "content": user}],
                "max_tokens": settings.max_tokens,
            }
            # Recent anthropic SDKs no longer take `temperature`; send it only where they do.
            if "temperature" in inspect.signature(create).parameters:
                arguments["temperature"] = settings.temperature
            response = create(**arguments)
            if response.stop_reason == "refusal":
                raise LLMFailure("refused", "the model refused to answer")
            text = "".join(
                getattr(block, "text", "") for block in response.content if block.type == "text"
            )
            prompt_tokens = response.usage.input_tokens
            completion_tokens = response.usage.output_tokens
            model = response.model
        else:
            arguments = {
                "model": settings.model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "temperature": settings.temperature,
                "max_tokens": settings.max_tokens,
            }
            if settings.response_format == "json_schema":
                arguments["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "schema": schema, "strict": False},
                }
            elif settings.response_format == "json_object":
                arguments["response_format"] = {"type": "json_object"}
            response = self._client().chat.completions.create(**arguments)
            if not response.choices:
                raise LLMFailure("invalid_json", "the reply had no choices")
            choice = response.choices[0]
            if getattr(choice.message, "refusal", None) or choice.finish_reason == "content_filter":
                raise LLMFailure(
                    "refused",
                    "the model refused: "
                    + (getattr(choice.message, "refusal", "") or "content filter"),
                )
            text = choice.message.content or ""
            prompt_tokens = response.usage.prompt_tokens if response.usage else 0
            completion_tokens = response.usage.completion_tokens if response.usage else 0
            model = response.model
        pricing = settings.pricing
        cost = (
            prompt_tokens * pricing.prompt_per_million_tokens
            + completion_tokens * pricing.completion_per_million_tokens
        ) / 1_000_000
        return LLMReply(
            text=text,
            model=model or settings.model,
            usage=Usage(
                calls=1,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
                currency=pricing.currency,
            ),
        )


def _classify(exc: Exception) -> tuple[LLMFailure, float | None]:
    """Map SDK exceptions (openai and anthropic share their shapes) to failure kinds."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = str(exc).splitlines()[0] if str(exc) else name
    if name == "APITimeoutError":
        return LLMFailure("timeout", f"no answer within the configured timeout ({message})"), None
    if name == "APIConnectionError":
        return LLMFailure("connection", f"cannot reach the provider: {message}"), None
    if status == 429:
        return LLMFailure("rate_limited", f"rate limited (429): {message}"), _retry_after(exc)
    if isinstance(status, int) and status >= 500:
        return LLMFailure("server_error", f"provider error {status}: {message}"), _retry_after(exc)
    if isinstance(status, int):
        return LLMFailure("client_error", f"request rejected ({status}): {message}"), None
    return LLMFailure("client_error", f"{name}: {message}"), None


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return parse_retry_after(headers.get("retry-after"))
