"""The last line of defence of the command line: no traceback ever reaches a user.

Every command reports the failures it expects (bad images, bad entries, bad options) itself. Anything
that still escapes a command is caught here: the user sees one line naming the error and the path of
a crash report holding the traceback (``$DELFI_HOME/logs/crash-<time>-<pid>.txt``), and the exit code
is `EXIT_INTERNAL`. Ctrl-C ends with exit 130 and a short message. ``DELFI_TRACEBACK=1`` lets the
exception propagate unchanged (for debugging delfi itself).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from delfi.cli.common import stderr_console

EXIT_INTERNAL = 3  # an unexpected error inside delfi (a bug): reported with a crash file
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def crash_report_dir() -> Path:
    """Where crash reports go: ``$DELFI_HOME/logs`` (default ``~/.cache/delfi/logs``)."""
    home = os.environ.get("DELFI_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "delfi")
    return Path(home) / "logs"


def write_crash_report(exc: BaseException, argv: list[str] | None = None) -> Path | None:
    """Write the traceback of ``exc`` (and the command line) to a new file; None if that fails."""
    from delfi import __version__

    folder = crash_report_dir()
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(f"delfi {__version__}\ncommand: {' '.join(argv or [])}\n\n")
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + " ..."


class GuardedGroup(TyperGroup):
    """A Typer group whose invocation turns unexpected exceptions into a message and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (Exit, Abort, TyperException):
            raise
        except KeyboardInterrupt:
            stderr_console().print("[yellow]interrupted[/yellow]", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - this is the one place that catches everything
            if os.environ.get("DELFI_TRACEBACK"):
                raise
            import sys

            report = write_crash_report(exc, sys.argv)
            where = f"; the traceback is in {report}" if report else ""
            _print_unexpected(exc, where)
            raise typer.Exit(EXIT_INTERNAL) from None


def _print_unexpected(exc: BaseException, where: str) -> None:
    from rich.markup import escape

    stderr_console().print(
        f"[red]delfi: unexpected error ({type(exc).__name__}): {escape(_describe(exc))}{escape(where)}. "
        f"This is a bug in delfi, not in your input: please report it with that file.[/red]",
        highlight=False, soft_wrap=True,
    )
