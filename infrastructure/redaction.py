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
