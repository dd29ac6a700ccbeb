"""The `uici` command."""

from agent.cli import evaluate as _evaluate  # noqa: F401  (registers eval and diagnose)
from agent.cli.main import app, main

__all__ = ["app", "main"]
