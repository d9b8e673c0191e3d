"""The `trainpilot` command."""

from trainpilot.cli.main import main

__all__ = ["main"]
