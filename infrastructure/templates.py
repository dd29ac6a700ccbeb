"""argv templates of command_translations.yml: `{name}` placeholders, `{{` and `}}` for braces.

Only bare names are allowed (no attribute access, indexing or format specs as in
str.format), so a template can never reach into objects, and a value always fills
exactly one argv element.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"\{\{|\}\}|\{([a-z_][a-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """The names a template refers to, in order."""
    return [m.group(1) for m in _TOKEN.finditer(template) if m.group(1)]


def render(template: str, value_of: Callable[[str], str]) -> str:
    def replace(match: re.Match[str]) -> str:
        piece = match.group(0)
        if piece == "{{":
            return "{"
        if piece == "}}":
            return "}"
        return value_of(match.group(1))

    return _TOKEN.sub(replace, template)
