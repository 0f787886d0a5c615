"""``delfi export`` / ``delfi import``: delfi's stores to and from other tools' files (COLMAP, hloc)."""

from __future__ import annotations

import typer

from delfi.cli import colmap as colmap_cli
from delfi.cli import hloc as hloc_cli

export_app = typer.Typer(help="Write delfi's feature and match stores in other tools' formats (COLMAP, hloc).",
                         no_args_is_help=True)
import_app = typer.Typer(help="Read other tools' feature and match files into delfi stores (hloc).",
                         no_args_is_help=True)

export_app.command("hloc")(hloc_cli.export_hloc)
import_app.command("hloc")(hloc_cli.import_hloc)
export_app.command("colmap")(colmap_cli.export_colmap)
