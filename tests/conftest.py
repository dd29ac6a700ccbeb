"""Shared fixtures: configuration directories copied into a temporary place per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHIPPED_CONFIG = REPO_ROOT / "infrastructure" / "config"
TEST_CONFIG = DATA / "config"


@pytest.fixture
def test_config_dir(tmp_path: Path) -> Path:
    """A writable copy of the small test configuration (tests/data/config)."""
    target = tmp_path / "config"
    shutil.copytree(TEST_CONFIG, target)
    return target


@pytest.fixture
def shipped_config_dir(tmp_path: Path) -> Path:
    """A writable copy of the configuration UICI ships with."""
    target = tmp_path / "shipped"
    shutil.copytree(SHIPPED_CONFIG, target)
    return target


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests choose their configuration explicitly; a developer's UICI_CONFIG_DIR must not leak in.
    monkeypatch.delenv("UICI_CONFIG_DIR", raising=False)
