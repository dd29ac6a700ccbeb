"""Recognising secret-bearing keys, shared by the configuration and the executors."""

from __future__ import annotations

import re

REDACTED = "**********"

# `api_key`, `token`, `auth_token`, `DB_PASSWORD`, `llm.api_key`... but not `max_tokens`.
_SECRET_KEY = re.compile(
    r"(?:^|[_.\-])(?:api_?key|key_passphrase|token|password|passwd|pwd|secret|credentials?|"
    r"passphrase|private_?key|access_?key)$",
    re.IGNORECASE,
)


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
