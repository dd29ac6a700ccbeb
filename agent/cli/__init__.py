"""The `uici` command."""

from agent.cli.main import app, main

__all__ = ["app", "main"]
