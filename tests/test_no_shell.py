"""Static guarantees: UICI code never uses a shell, eval/exec, or unsafe YAML loading."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CODE_DIRS = ("infrastructure", "agent", "flows", "tasks")
SOURCES = sorted(p for d in CODE_DIRS for p in (REPO_ROOT / d).rglob("*.py"))


def violations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = (
            function.id
            if isinstance(function, ast.Name)
            else f"{ast.unparse(function.value)}.{function.attr}"
            if isinstance(function, ast.Attribute)
            else ""
        )
        if name in {"eval", "exec", "os.system", "os.popen", "yaml.load", "yaml.unsafe_load"}:
            found.append(f"line {node.lineno}: {name}()")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"line {node.lineno}: {name}(shell=...)")
    return found


def test_there_is_code_to_check() -> None:
    assert len(SOURCES) >= 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_shell_eval_or_unsafe_yaml(path: Path) -> None:
    assert violations(ast.parse(path.read_text(), str(path))) == []


def test_the_checker_finds_what_it_looks_for() -> None:
    sample = (
        "import os, subprocess, yaml\neval('1')\nos.system('x')\n"
        "subprocess.run('x', shell=True)\nyaml.load(s)\n"
    )
    assert len(violations(ast.parse(sample))) == 4


def test_infrastructure_imports_no_prefect() -> None:
    for path in (REPO_ROOT / "infrastructure").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "prefect" or n.startswith("prefect.") for n in names), path
