"""Grafana's own LogQL grammar, from Python: parse queries with `@grafana/lezer-logql`.

The package is pinned in tests/logql/package.json and package-lock.json and installed into
tests/logql/node_modules (git-ignored) by tests/infra/ensure_logql.sh, which `check` runs
when the package is missing. The lezer parser never throws: a syntax problem is an error node
in the tree, which tests/logql/check.mjs reports with its offsets. Syntax only: Loki's
semantic rules (a matcher that does not match "", unwrap) are not checked here.

Tests using `check` are skipped, saying why, only when Node.js is not installed at all; a
failing install or checker fails them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

LOGQL_DIR = Path(__file__).resolve().parent / "logql"
CHECKER = LOGQL_DIR / "check.mjs"
ENSURE = Path(__file__).resolve().parent / "infra" / "ensure_logql.sh"
PACKAGE = LOGQL_DIR / "node_modules" / "@grafana" / "lezer-logql" / "package.json"
_install_lock = threading.Lock()


def available() -> bool:
    """Whether Node.js is installed (npm packages are installed on demand)."""
    return shutil.which("node") is not None


def installed_version() -> str:
    """The installed @grafana/lezer-logql version ('' when not installed)."""
    if not PACKAGE.is_file():
        return ""
    return str(json.loads(PACKAGE.read_text()).get("version", ""))


def ensure_installed() -> None:
    """Run tests/infra/ensure_logql.sh when the package is missing; fail with its output."""
    with _install_lock:
        if PACKAGE.is_file():
            return
        done = subprocess.run(
            ["bash", str(ENSURE)], capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0 or not PACKAGE.is_file():
            pytest.fail(
                f"{ENSURE.name} could not install @grafana/lezer-logql:\n"
                f"{done.stdout}{done.stderr}",
                pytrace=False,
            )


def check(queries: list[str]) -> list[dict[str, Any]]:
    """One result per query, in order: {"query", "ok", "errors": [{"from", "to"}]}.

    pytest.skip when Node.js is not installed; pytest.fail when the checker cannot run."""
    if not available():
        pytest.skip("node is not installed: the LogQL grammar check needs Node.js >= 20 and npm")
    ensure_installed()
    done = subprocess.run(
        ["node", str(CHECKER)],
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        cwd=LOGQL_DIR,
        timeout=120,
        check=False,
    )
    if done.returncode not in (0, 1):
        pytest.fail(f"node {CHECKER.name} failed ({done.returncode}): {done.stderr}", pytrace=False)
    # "\n" only: str.splitlines() would also split inside a query at U+2028, which JSON
    # leaves unescaped.
    results = [json.loads(line) for line in done.stdout.split("\n") if line.strip()]
    if [r["query"] for r in results] != queries:
        pytest.fail(f"{CHECKER.name} answered for other queries than asked: {done.stdout[:500]}")
    if (done.returncode == 1) != any(not r["ok"] for r in results):
        pytest.fail(f"{CHECKER.name}'s exit code {done.returncode} disagrees with its results")
    return results
