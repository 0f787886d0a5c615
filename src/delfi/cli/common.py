"""Shared pieces of the command line: exit codes, consoles, error printing, logging set-up."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterable

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
    """Log to stderr through Rich and show Python warnings as one yellow line each (no source
    lines, no file paths of delfi's code); only the command line calls this."""
    import warnings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr_console(), show_path=False)],
        force=True,
    )
    warnings.showwarning = show_warning_line


def show_warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the command line: ``warning: <message>`` in yellow on stderr."""
    text = str(message)
    if verbose_warnings():
        text = f"{text} ({category.__name__} at {filename}:{lineno})"
    stderr_console().print(f"[yellow]warning: {escape(text)}[/yellow]", soft_wrap=True, highlight=False)


def verbose_warnings() -> bool:
    """Whether warnings name their category and origin too (``--verbose`` sets DEBUG logging)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


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
        last = i == len(header) - 1
        table.add_column(name, style="red" if last else None, overflow="fold")
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
    check_device(device)
    try:
        config = resolve_config(preset, settings)
        model = create(preset, device=device, **config_to_dict(config))
        return model, getattr(model, "config", config)  # the model's: a checkpoint may set its architecture
    except (WeightsError, CheckpointError, ConfigError) as exc:
        raise fail(str(exc)) from None


def check_device(device: str) -> None:
    """Exit 2 unless ``device`` names a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise fail(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cpu":
        return
    if parsed.type not in ("cuda", "mps", "xpu"):
        raise fail(f"--device {device}: delfi runs on cpu, cuda, mps or xpu devices")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"--device {device}: this PyTorch build or machine has no CUDA GPU; use --device cpu")
    try:
        torch.empty(1, device=parsed)
    except (RuntimeError, AssertionError, AttributeError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise fail(f"--device {device}: not usable here ({reason})") from None


# --- outputs: never overwrite an input, never write into a place that cannot hold the output -------


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (existing: same inode; else same resolved path)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_output_among_inputs(out: Path | None, inputs: Iterable[Path | str | None], option: str = "--out") -> None:
    """Exit 2 (nothing done) when the output ``out`` is one of the command's ``inputs``.

    Paths are compared as files (same inode when both exist, else the same resolved path), so
    ``feats.h5``, ``./feats.h5`` and a link to it are one file.
    """
    if out is None:
        return
    out = Path(out)
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        if _same_path(out, given):
            raise fail(f"{option} {out} is also an input of this command ({given}): choose another output path")


def prepare_output_file(path: Path, option: str = "--out") -> Path:
    """Check that ``path`` can be written as a file: not a folder; its parent folder is created.

    Exit 2 with a message naming the path when it cannot (a folder, a parent that is a file).
    """
    path = Path(path)
    if path.is_dir():
        raise fail(f"{option} {path} is a folder: give a file path, e.g. {path / 'out'}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise fail(f"{option} {path}: {parent} is not a folder") from None
    except OSError as exc:
        raise fail(f"{option} {path}: cannot create folder {parent}: {exc.strerror or exc}") from None
    return path


# --- failures: counted on screen, listed in full in a file ----------------------------------------

FAILURES_SHOWN = 10


def report_failures(
    console: Console,
    title: str,
    header: list[str],
    rows: list[tuple[str, ...]],
    list_file: Path | None = None,
    shown: int = FAILURES_SHOWN,
) -> Path | None:
    """Print a short failures table (the first ``shown`` rows and a count) and, when there are more
    rows than that and ``list_file`` is given, write all of them there (see `write_failure_list`).

    Returns the path written, or None.
    """
    if not rows:
        return None
    console.print(failures_table(f"{title} ({len(rows)})", header, rows[:shown]))
    if len(rows) <= shown:
        return None
    written = write_failure_list(list_file, header, rows) if list_file is not None else None
    where = f": all {len(rows)} in {written}" if written is not None else ""
    console.print(f"... and {len(rows) - shown} more{where}", highlight=False, soft_wrap=True)
    return written


FAILURE_LIST_MARK = "# delfi failures: "
"""The first line of every failure list starts so: only such a file is ever replaced."""


def write_failure_list(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> Path | None:
    """Write ``rows`` tab-separated, after a ``# delfi failures: <header>`` line, atomically.

    An existing file is replaced only when it is an earlier failure list (its first line); a file
    delfi did not make, or a folder that cannot be written, gets a warning and no list (None).
    """
    path = Path(path)
    if path.exists() and not _is_failure_list(path):
        stderr_console().print(f"[yellow]warning: {escape(str(path))} exists and is not a delfi failure list: "
                               f"the full list was not written[/yellow]", soft_wrap=True, highlight=False)
        return None
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    clean = (lambda s: str(s).replace("\t", " ").replace("\n", " "))
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(FAILURE_LIST_MARK + "\t".join(header) + "\n")
            for row in rows:
                fh.write("\t".join(clean(v) for v in row) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        stderr_console().print(f"[yellow]warning: the full list could not be written to {escape(str(path))} "
                               f"({escape(exc.strerror or str(exc))})[/yellow]", soft_wrap=True, highlight=False)
        return None
    return path


def _is_failure_list(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.readline().startswith(FAILURE_LIST_MARK.encode())
    except OSError:
        return False


def failure_list_path(out: Path) -> Path:
    """Where a command writing ``out`` lists all its failures: ``<out>.failures.tsv``."""
    out = Path(out)
    if not out.name or out.name == "..":  # "." or "..": name the folder itself
        out = out.resolve()
    return out.with_name(f"{out.name}.failures.tsv")
