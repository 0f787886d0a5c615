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


class ProgressBar:
    """A Rich progress bar with items/s and ETA; `advance(label, status)` after each item."""

    def __init__(self, total: int | None, description: str, unit: str = "img") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.unit, self.done = unit, 0
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=stderr_console(),
        )
        self.task = self.progress.add_task(description, total=total, rate="")

    def __enter__(self) -> "ProgressBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance(self, label: str, status: str) -> None:
        if status == "done":
            self.done += 1
        elapsed = self.progress.tasks[0].elapsed or 0.0
        rate = f"{self.done / elapsed:.2f} {self.unit}/s" if elapsed > 0 and self.done else ""
        self.progress.update(self.task, advance=1, rate=rate, description=f"{status}: {label[-40:]}")


def summary_table(title: str, rows: list[tuple[str, str]]):
    """A two-column key / value Rich table."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table


def failures_table(title: str, header: list[str], rows: list[tuple[str, ...]]):
    """A table of failed items with their reasons (last column in red)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, style="red" if i == len(header) - 1 else None)
    for row in rows:
        table.add_row(*row)
    return table


def split_overrides(words: list | None) -> tuple[list, list[str]]:
    """Separate trailing ``key=value`` words from positional arguments."""
    words = list(words or [])
    return [w for w in words if "=" not in str(w)], [str(w) for w in words if "=" in str(w)]


def load_model(preset: str, weights: str | None, settings: list[str], device: str = "cpu"):
    """Resolve a preset with overrides and build its model: (model, config); usage errors exit 2."""
    from delfi.config import ConfigError, config_to_dict
    from delfi.models import create, resolve_config
    from delfi.models.checkpoints import CheckpointError
    from delfi.models.weights import WeightsError

    settings = list(settings) + ([f"weights={weights}"] if weights is not None else [])
    try:
        config = resolve_config(preset, settings)
        return create(preset, device=device, **config_to_dict(config)), config
    except (WeightsError, CheckpointError, ConfigError) as exc:
        raise fail(str(exc)) from None
