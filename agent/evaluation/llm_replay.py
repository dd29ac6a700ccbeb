"""LLM exchanges of an evaluation, recorded and replayed for regression.

`RecordingLLMClient` passes each request to the configured provider and keeps the reply;
`ReplayLLMClient` answers the k-th request of a scenario with the k-th recorded reply, with
no provider at all, and notes when a prompt differs from the recorded one (the planner's
prompt changed since the recording: the replayed score may no longer hold).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent.planning.llm import LLMClient, LLMFailure, LLMReply

LLM_RECORDING_FILE = "llm.json"


def prompt_digest(system: str, user: str) -> str:
    return hashlib.sha256(f"{system}\n\x00\n{user}".encode()).hexdigest()[:16]


class RecordingLLMClient:
    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.exchanges: list[dict[str, Any]] = []

    def complete(
        self, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> LLMReply:
        reply = self.inner.complete(system, user, schema, schema_name)
        self.exchanges.append(
            {
                "schema": schema_name,
                "prompt_digest": prompt_digest(system, user),
                "reply": reply.model_dump(mode="json"),
            }
        )
        return reply

    def save(self, folder: Path) -> Path:
        path = folder / LLM_RECORDING_FILE
        path.write_text(json.dumps(self.exchanges, indent=1) + "\n", encoding="utf-8")
        return path


class ReplayLLMClient:
    def __init__(self, exchanges: list[dict[str, Any]]) -> None:
        self.exchanges = exchanges
        self.served = 0
        self.drift: list[str] = []

    @classmethod
    def load(cls, folder: Path) -> ReplayLLMClient | None:
        path = folder / LLM_RECORDING_FILE
        if not path.exists():
            return None
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def complete(
        self, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> LLMReply:
        if self.served >= len(self.exchanges):
            raise LLMFailure(
                "client_error", f"the recording has {len(self.exchanges)} exchanges; record again"
            )
        exchange = self.exchanges[self.served]
        self.served += 1
        if exchange["schema"] != schema_name or exchange["prompt_digest"] != prompt_digest(
            system, user
        ):
            self.drift.append(f"exchange {self.served} ({schema_name}): the prompt changed")
        return LLMReply.model_validate(exchange["reply"])
