"""``delfi presets``: the shipped presets, their model family and what each reproduces."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from delfi.cli.common import fail


def presets(name: str = typer.Argument(None, help="Show one preset's fully resolved config.")) -> None:
    """List the presets (or print one resolved config as YAML)."""
    from omegaconf import OmegaConf

    from delfi.config import ConfigError, config_to_dict, preset_names, preset_path
    from delfi.models import resolve_config

    if name:
        try:
            config = resolve_config(name)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        typer.echo(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(config))), nl=False)
        return
    table = Table(title="delfi presets", title_justify="left")
    table.add_column("preset", style="bold", no_wrap=True)
    table.add_column("model")
    table.add_column("weights")
    table.add_column("what it reproduces")
    for preset in preset_names():
        path = preset_path(preset)
        lines = path.read_text().splitlines()
        about = " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))
        config = resolve_config(preset)
        table.add_row(preset, config.model, str(config.weights), about)
    Console().print(table)
