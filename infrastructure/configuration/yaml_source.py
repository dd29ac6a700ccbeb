"""Line-aware YAML loading and `${VAR}` interpolation.

PyYAML's `safe_load` drops positions, but every configuration error must name its
file and line. So each file is composed into a node tree once, from which we take
both the plain data (through the safe constructor) and a map from key path to line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infrastructure.configuration.problems import ConfigProblem

KeyPath = tuple[str | int, ...]

# `${NAME}` (required) and `${NAME:-default}` (default may be empty). `$${` escapes.
# libyaml when available (about 4x faster); both keep line marks on nodes.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class YamlDocument:
    """One configuration file: its data and where each key stands in it."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # key paths whose final value came from an environment variable
    from_environment: set[KeyPath] = field(default_factory=set)

    def line_of(self, key_path: KeyPath) -> int | None:
        """The line of the longest prefix of key_path that exists in the file."""
        for end in range(len(key_path), -1, -1):
            line = self.lines.get(tuple(key_path[:end]))
            if line is not None:
                return line
        return None


def load_yaml_document(path: Path) -> tuple[YamlDocument | None, list[ConfigProblem]]:
    """Read and parse one file. On a syntax error return no document and the located problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [
            ConfigProblem(
                file=path,
                line=None,
                key="",
                message="file is missing",
                expected=f"a YAML file at {path}; copy it from the shipped infrastructure/config/",
            )
        ]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [
            ConfigProblem(
                file=path,
                line=None,
                key="",
                message=f"cannot be read: {exc}",
                expected="a readable UTF-8 text file",
            )
        ]

    loader = _SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(path=path, data=None), []
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or str(exc)
        return None, [
            ConfigProblem(
                file=path,
                line=line,
                key="",
                message=f"malformed YAML{column}: {what}",
                expected="valid YAML; check indentation, quotes and colons near this line",
            )
        ]
    except yaml.YAMLError as exc:
        return None, [
            ConfigProblem(
                file=path,
                line=None,
                key="",
                message=f"malformed YAML: {exc}",
                expected="valid YAML",
            )
        ]
    finally:
        loader.dispose()

    document = YamlDocument(path=path, data=data)
    problems: list[ConfigProblem] = []
    _index_positions(node, (), document, problems)
    return document, problems


def _index_positions(
    node: yaml.Node, key_path: KeyPath, document: YamlDocument, problems: list[ConfigProblem]
) -> None:
    document.lines.setdefault(key_path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.tag.endswith(":bool") and not getattr(key_node, "style", None):
                # YAML 1.1 reads on/off/yes/no as booleans, even as keys.
                problems.append(
                    ConfigProblem(
                        file=document.path,
                        line=line,
                        key=format_key_path((*key_path, key)),
                        message=f"key {key!r} is read by YAML as a boolean",
                        expected=f"quote it: '{key}'",
                    )
                )
            if key in seen:
                # PyYAML silently keeps the last duplicate; a typo'd copy would hide a setting.
                problems.append(
                    ConfigProblem(
                        file=document.path,
                        line=line,
                        key=format_key_path((*key_path, key)),
                        message=f"duplicate key (first defined on line {seen[key]})",
                        expected="each key once per mapping",
                    )
                )
            seen[key] = line
            child = (*key_path, key)
            document.lines[child] = line
            _index_positions(value_node, child, document, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_positions(item, (*key_path, index), document, problems)


def interpolate_environment(
    document: YamlDocument, environ: Mapping[str, str] | None = None
) -> list[ConfigProblem]:
    """Replace `${VAR}` and `${VAR:-default}` in every string value, in place.

    Only values are interpolated, never keys. An unset required variable is a problem
    naming the variable and how to set it.
    """
    env = os.environ if environ is None else environ
    problems: list[ConfigProblem] = []

    def substitute(value: str, key_path: KeyPath) -> str:
        used_environment = False

        def replace(match: re.Match[str]) -> str:
            nonlocal used_environment
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            if name in env:
                used_environment = True
                return env[name]
            if default is not None:
                return default
            problems.append(
                ConfigProblem(
                    file=document.path,
                    line=document.line_of(key_path),
                    key=format_key_path(key_path),
                    message=f"environment variable {name} is not set",
                    expected=f"export {name}=... or write ${{{name}:-default}} in the file",
                )
            )
            return ""

        result = _ENV_REFERENCE.sub(replace, value)
        if used_environment:
            document.from_environment.add(key_path)
        return result

    def walk(value: Any, key_path: KeyPath) -> Any:
        if isinstance(value, str):
            return substitute(value, key_path) if "$" in value else value
        if isinstance(value, dict):
            return {key: walk(item, (*key_path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, (*key_path, index)) for index, item in enumerate(value)]
        return value

    document.data = walk(document.data, ())
    return problems


def format_key_path(key_path: KeyPath) -> str:
    """`("environments", "local-docker", "policy")` -> `environments.local-docker.policy`;
    list indexes as `steps[2]`."""
    text = ""
    for part in key_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
