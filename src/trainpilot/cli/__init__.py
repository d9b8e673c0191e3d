"""The `trainpilot` command."""

from trainpilot.cli.commands import main

__all__ = ["main"]
