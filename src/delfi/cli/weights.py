"""``delfi weights``: list the known model weights, download them, and show where they are cached.

Exit codes: 0 ok, 1 a download or lookup failed, 2 usage error (e.g. an unknown weights name).
Machine-readable results (paths) go to stdout; notices, progress and errors go to stderr.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from delfi.models import weights as w

app = typer.Typer(help="Known model weights: list and download.", no_args_is_help=True)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _stderr() -> Console:
    # Made per call: the streams may be swapped (tests, redirection) after import.
    return Console(stderr=True)


def _error(message: str) -> None:
    _stderr().print(f"[red]{escape(message)}[/red]", soft_wrap=True, highlight=False)


def _info_or_exit(name: str) -> w.WeightsInfo:
    try:
        return w.get_weights_info(name)
    except w.UnknownWeightsError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None


@app.command("list")
def list_command() -> None:
    """List the known weights, their licences and checksums, whether each is cached (or embedded in
    delfi), and for the weights delfi trained itself the command that trained them."""
    console = Console()
    if not console.is_terminal and console.width < 200:
        # Piped output: do not squeeze the full sha256 into 80 columns.
        console = Console(width=200)
    table = Table(title=f"Known weights (cache: {w.weights_dir()})", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("preset", no_wrap=True)
    table.add_column("licence")
    table.add_column("source", no_wrap=True)
    table.add_column("sha256", no_wrap=True, overflow="fold")
    table.add_column("cached", no_wrap=True)
    for info in w.list_weights():
        present = w.cached_path(info).is_file()
        cached = "[green]embedded[/green]" if info.embedded and present else "[green]yes[/green]" if present else "no"
        table.add_row(
            escape(info.name),
            escape(info.preset or "-"),  # "" = a backbone that no preset loads directly
            escape(info.licence),
            escape(info.source),
            escape(info.sha256_text),  # "<8+ hex digits>… (prefix)" when only a prefix is known
            cached,
        )
    console.print(table)
    for info in w.list_weights():
        if info.recipe:
            default = " (the default)" if info.name == w.DEFAULT_WEIGHTS else ""
            console.print(f"[bold]{escape(info.name)}[/bold]{default}: {escape(info.description)}; "
                          f"trained by: [cyan]{escape(info.recipe)}[/cyan]", soft_wrap=True, highlight=False)


@app.command("download")
def download_command(
    name: str = typer.Argument(..., help="A known weights name (see `delfi weights list`)."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is cached."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not show a progress bar."),
) -> None:
    """Download known weights into the cache (verifying their sha256) and print the cached path.

    Set DELFI_WEIGHTS_MIRROR to fetch `<mirror>/<filename>` instead of the official URL.
    """
    info = _info_or_exit(name)
    try:
        path = w.download_weights(info, force=force, progress=not no_progress, console=_stderr())
    except w.WeightsError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(str(path))


@app.command("path")
def path_command(
    name: str = typer.Argument(..., help="A known weights name (see `delfi weights list`)."),
) -> None:
    """Print the cached file of known weights; fail (exit 1) with instructions if it is absent."""
    info = _info_or_exit(name)
    path = w.cached_path(info)
    if not path.is_file():
        _error(str(w.WeightsNotFoundError.for_weights(info)))
        raise typer.Exit(EXIT_FAILED)
    typer.echo(str(path))
