"""Redaction: secrets taken out of everything that leaves UICI.

What leaves UICI: stored incident reports and contexts (and so the API's answers), event
payloads, the audit trail, Prefect artifacts, logs (the `uici` loggers and the Prefect run
logger), the result of an operation run through the API, and what an LLM is sent. All of it
passes through one `Redactor`, built from agents.yml `redaction.patterns`.

Design
------
* Where the text is made. Every `OperationResult` leaves `EnvironmentExecutor.execute`
  redacted (output, data, error, command), and an executor method that cuts text (a log's
  byte cap, a health check's output, a response excerpt, exec output) redacts the whole text
  before the cut. Observations (agent/incidents/context.py) are redacted again when they are
  made, for results that come from elsewhere (a replayed recording).
* Where it is kept or sent. `IncidentStore.save_report` (every stored report) and
  `insert_incident` (the stored context: alert labels and annotations), `EventLog.emit`,
  `AuditLog.record`, the artifacts and return value of the flows, a logging filter on the
  `uici` handler and the Prefect run loggers (agent/logs.py), the LLM prompt
  (agent/planning/untrusted.py), and `redact_result` for an API answer.
* Where the redactor comes from. Whoever holds the configuration builds it with
  `Redactor.from_config(config)` (IncidentStore.from_config, the flows, the LLM planner).
  What is built from a path or an environment model alone (EventLog(path), AuditLog(path),
  IncidentStore(path), executors, observation_from_result) uses `configured_redactor()`: the
  patterns of the configuration this process runs with (the directory every entry point loads
  when given none: UICI_CONFIG_DIR, else the shipped one). So nothing is threaded through call
  sites, and nothing can opt out: there is no "no redactor" state.
* Caches, not state. Compiled redactors are memoised by their patterns, and the configured
  one by (directory, digest of its agents.yml), so an edited agents.yml applies to the next
  component built; tests never reset anything. infrastructure/ imports nothing of agent/.

Whole text before any cut: patterns run over a whole text, never line by line (a private key
spans lines), and before any truncation, so a cut can never keep half a secret. A key block a
source cut itself is still caught: a BEGIN with no END (the pattern ends at the END or at the
end of the text), and an END with no BEGIN before it (`docker logs --tail` starting inside a
key: everything from the start of the text up to that END).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from infrastructure.configuration.loader import UICIConfig
    from infrastructure.configuration.models import RedactionSettings

REDACTED = "**********"

# `api_key`, `token`, `auth_token`, `DB_PASSWORD`, `llm.api_key`... but not `max_tokens`.
_SECRET_KEY = re.compile(
    r"(?:^|[_.\-])(?:api_?key|key_passphrase|token|password|passwd|pwd|secret|credentials?|"
    r"passphrase|private_?key|access_?key)$",
    re.IGNORECASE,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# Texts at least this long are remembered (with their redaction, which is its own redaction):
# the same log passes several exits (executor, observation, report, artifact), and patterns
# cost about 1 ms per KB together. A memo of a pure function; nothing to reset.
_MEMO_MIN_CHARS = 512
_MEMO_MAX_CHARS = 256 * 1024  # 128 entries of at most this: a bounded memo
_MEMO_ENTRIES = 128


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def mask_secrets(value: object) -> object:
    """A copy of `value` with the values of secret-bearing keys replaced, at any depth."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else mask_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


class Redactor:
    """Applies the redaction patterns, in order, to a whole text (or every string of a value)."""

    def __init__(self, patterns: Iterable[tuple[str, str]]) -> None:
        self.patterns = tuple(patterns)
        self._compiled = [(re.compile(p), replacement) for p, replacement in self.patterns]
        self._memo: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> Redactor:
        return _compiled(tuple((p.pattern, p.replacement) for p in settings.patterns))

    @classmethod
    def from_config(cls, config: UICIConfig) -> Redactor:
        return cls.from_settings(config.agents.redaction)

    def __call__(self, text: str) -> str:
        if len(text) < _MEMO_MIN_CHARS or len(text) > _MEMO_MAX_CHARS:
            return self._apply(text)  # the memo holds mid-sized texts only (bounded memory)
        with self._lock:
            known = self._memo.get(text)
        if known is not None:
            return known
        redacted = self._apply(text)
        with self._lock:
            while len(self._memo) >= _MEMO_ENTRIES:
                del self._memo[next(iter(self._memo))]
            self._memo[text] = redacted
        return redacted

    def _apply(self, text: str) -> str:
        for pattern, replacement in self._compiled:
            text = pattern.sub(replacement, text)
        return text

    def text(self, text: str) -> str:
        return self(text)

    def cut(self, text: str, max_chars: int) -> str:
        """The first `max_chars` characters of the redacted text: redaction first, then the cut."""
        return self(text)[:max_chars]

    def lines(self, lines: Sequence[str]) -> list[str]:
        """Lines redacted as one text (a key block spans lines): a block becomes one line."""
        if not lines:
            return []
        return self("\n".join(lines)).split("\n")

    def data(self, value: T) -> T:
        """A copy of `value` with every string redacted and the values of secret-looking keys
        masked, at any depth (dict keys, numbers and other values are kept); a list of lines is
        redacted as one text."""
        return self._data(value)  # type: ignore[no-any-return]

    def _data(self, value: Any) -> Any:
        if isinstance(value, str):
            redacted = self(value)
            return value if redacted == value else redacted  # keeps a StrEnum an enum
        if isinstance(value, dict):
            return {
                k: REDACTED
                if isinstance(k, str) and is_secret_key(k) and isinstance(v, str) and v
                else self._data(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            if len(value) > 1 and all(isinstance(v, str) and "\n" not in v for v in value):
                return self._lines_of(value)
            return [self._data(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._data(v) for v in value)
        if isinstance(value, BaseModel):
            return self.model(value)
        return value

    def _lines_of(self, items: list[str]) -> list[str]:
        """A list of single-line strings (a log's lines) redacted as one text: a key block
        across items is caught. Items stay as they are unless a match spans them (then the
        redacted text's lines come back, one for the block)."""
        joined = "\n".join(items)
        redacted = self(joined)
        if redacted == joined:
            return list(items)
        lines = redacted.split("\n")
        if len(lines) != len(items):
            return lines
        return [item if line == item else line for item, line in zip(items, lines, strict=True)]

    def json_data(self, value: Any) -> Any:
        """`value` as JSON data (anything else through str(), as json.dumps(default=str) would
        write it), redacted: what is redacted is exactly what gets written."""
        return self._data(json.loads(json.dumps(value, default=str)))

    def model(self, model: M) -> M:
        """A redacted copy of a pydantic model (validated again, so types are kept)."""
        return type(model).model_validate(self._data(model.model_dump()))


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[tuple[str, str], ...]) -> Redactor:
    return Redactor(patterns)


def configured_redactor() -> Redactor:
    """The redactor of the configuration this process runs with: the directory every entry
    point loads when it is given none (UICI_CONFIG_DIR, else the shipped configuration)."""
    from infrastructure.configuration.loader import resolve_config_dir

    directory = resolve_config_dir(None)
    try:
        digest = hashlib.sha256((directory / "agents.yml").read_bytes()).hexdigest()
    except OSError:
        digest = "missing"
    return _configured(str(directory), digest)


@functools.lru_cache(maxsize=16)
def _configured(directory: str, digest: str) -> Redactor:
    """agents.yml `redaction` of `directory`, read and validated on its own: a problem
    elsewhere in the configuration is the loader's to report, not a reason to redact less."""
    from infrastructure.configuration.models import RedactionSettings
    from infrastructure.configuration.problems import ConfigError, ConfigProblem
    from infrastructure.configuration.yaml_source import (
        interpolate_environment,
        load_yaml_document,
    )

    path = Path(directory) / "agents.yml"
    document, problems = load_yaml_document(path)
    if document is None:
        raise ConfigError(problems)
    interpolate_environment(document, os.environ)
    section = document.data.get("redaction") if isinstance(document.data, dict) else None
    if section is None:
        raise ConfigError(
            [
                ConfigProblem(
                    file=path,
                    line=None,
                    key="redaction",
                    message="missing required key",
                    expected="the redaction patterns; copy them from the shipped agents.yml",
                )
            ]
        )
    return Redactor.from_settings(RedactionSettings.model_validate(section))


def redact_result(result: M, redactor: Redactor | None = None) -> M:
    """An operation's result (or any model) with its output, data, error and command redacted:
    what an API route returns when it answers with live command output."""
    return (redactor or configured_redactor()).model(result)


class RedactorHolder:
    """For parts built from a path alone (the event log, the audit trail, the store, a log
    filter, an executor): the redactor given at construction, else the one of the process's
    configuration, looked up on first use. Subclasses set `_redactor` in __init__."""

    _redactor: Redactor | None = None

    @property
    def redactor(self) -> Redactor:
        if self._redactor is None:
            self._redactor = configured_redactor()
        return self._redactor

    @redactor.setter
    def redactor(self, redactor: Redactor) -> None:
        self._redactor = redactor
