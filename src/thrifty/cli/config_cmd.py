"""``thrifty config check``: validate a config file and print precise errors."""

from __future__ import annotations

from pathlib import Path

import typer

from thrifty.config import load_config, missing_env_vars, read_raw


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect and validate configuration files.", no_args_is_help=True)

    @group.command("check")
    def check(file: Path = typer.Argument(..., help="The YAML config file.")) -> None:
        """Validate FILE: every problem is printed as `key.path: what is wrong`."""
        cfg = load_config(file)
        raw, _ = read_raw(file)
        for var in missing_env_vars(raw):
            typer.echo(f"warning: environment variable {var} is not set (used as an empty string)", err=True)
        catalog = cfg.build_catalog()
        unpriced = [m.name for m in catalog if m.price is None]
        for name in unpriced:
            typer.echo(f"warning: models.{name}: no known price; its cost will be recorded as unknown", err=True)
        base = catalog.baseline.name if catalog.baseline else "(none)"
        typer.echo(f"{file}: ok — {len(cfg.providers)} provider(s), {len(catalog)} model(s), baseline {base}")

    app.add_typer(group, name="config")
