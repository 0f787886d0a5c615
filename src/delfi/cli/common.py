"""Shared pieces of the command line: exit codes, consoles, error printing, logging set-up."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

EXIT_OK = 0
EXIT_FAILED = 1  # some items failed (reported), the rest was done
EXIT_USAGE = 2  # bad arguments or config: nothing was done


def stderr_console() -> Console:
    """A console on stderr, made per call so redirected streams (tests) are honoured."""
    return Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``message`` in red on stderr and return the Exit to raise."""
    stderr_console().print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def configure_logging(verbose: bool) -> None:
    """Log to stderr through Rich; only the command line calls this."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr_console(), show_path=False)],
        force=True,
    )
