"""The ``delfi`` command line: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from delfi import __version__
from delfi.cli import colmap as colmap_cli
from delfi.cli import demo as demo_cli
from delfi.cli import eval as eval_cli
from delfi.cli import extract as extract_cli
from delfi.cli import interop as interop_cli
from delfi.cli import match as match_cli
from delfi.cli import pairs as pairs_cli
from delfi.cli import pca as pca_cli
from delfi.cli import presets as presets_cli
from delfi.cli import report as report_cli
from delfi.cli import retrieve as retrieve_cli
from delfi.cli import train as train_cli
from delfi.cli import viz as viz_cli
from delfi.cli import weights as weights_cli
from delfi.cli.common import configure_logging
from delfi.cli.guard import GuardedGroup

app = typer.Typer(
    name="delfi",
    cls=GuardedGroup,
    help="Learned local and global image features: extract, match, retrieve, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(weights_cli.app, name="weights")
app.command("extract")(extract_cli.extract)
app.command("presets")(presets_cli.presets)
app.command("demo")(demo_cli.demo)
app.command("match")(match_cli.match)
app.command("sfm")(colmap_cli.sfm)
app.add_typer(pairs_cli.app, name="pairs")
app.add_typer(viz_cli.app, name="viz")
app.add_typer(eval_cli.app, name="eval")
app.add_typer(pca_cli.app, name="pca")
app.add_typer(retrieve_cli.index_app, name="index")
app.command("search")(retrieve_cli.search_command)
app.command("rerank")(retrieve_cli.rerank_command)
app.command("report")(report_cli.report)
app.add_typer(train_cli.app, name="train")
app.add_typer(interop_cli.export_app, name="export")
app.add_typer(interop_cli.import_app, name="import")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"delfi {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """delfi: learned image features, from pixels to benchmarks."""
    from delfi.runtime import limit_heap_fragmentation

    configure_logging(verbose)
    limit_heap_fragmentation()


def main() -> None:
    """Console-script entry point."""
    app()
