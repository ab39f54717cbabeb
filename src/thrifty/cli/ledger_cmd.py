"""``thrifty ledger import-spill``, and the config loading every command that opens the ledger
database of a config shares (``keys``, ``report``, ``ledger``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from thrifty.config import Config

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def load_ledger_config(config: Path) -> Config:
    """``config`` loaded for a command that opens its ledger database.

    Warns once per unset environment variable, as ``config check`` does, and refuses (one line,
    exit 2) a ``ledger.dsn`` written as ``${VAR}`` that comes out empty: without the DSN the
    command would silently create or read a local SQLite ledger, so a key created there would
    never reach the gateways, and a report would describe some other ledger."""
    from thrifty.cli.config_cmd import unset_env_warnings
    from thrifty.config import load_config, read_raw
    from thrifty.errors import ConfigError
    from thrifty.redact import mask_credentials

    cfg = load_config(config)
    raw, _ = read_raw(config)
    for line in unset_env_warnings(raw):
        typer.echo(f"warning: {line}", err=True)
    ledger = raw.get("ledger")
    written = ledger.get("dsn") if isinstance(ledger, dict) else None
    if cfg.ledger.enabled and isinstance(written, str) and "${" in written and cfg.ledger.dsn is None:
        names = ", ".join(dict.fromkeys(_REF.findall(written))) or "its variable"
        raise ConfigError(f"ledger.dsn of {config} is {mask_credentials(written.strip())} but {names} is unset or empty: refusing to "
                          f"use the local SQLite ledger {cfg.resolve_path(cfg.ledger.path)} instead (gateways "
                          "using the DSN would never see it); set the variable, or remove ledger.dsn to mean SQLite")
    return cfg


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Ledger maintenance: write spilled rows back.", no_args_is_help=True)
    app.add_typer(group, name="ledger")

    @group.command("import-spill")
    def import_spill_cmd(
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty config naming the ledger."),
        file: Path | None = typer.Option(None, "--file", help="The spill file (default: the one the config's "
                                         "gateways write: <ledger.path>.failed.jsonl, or "
                                         "thrifty-ledger.failed.jsonl in base_dir with ledger.dsn)."),
    ) -> None:
        """Write rows spilled while the ledger was unreachable back into it (safe to repeat)."""
        from thrifty.errors import ConfigError, UsageError
        from thrifty.ledger.spill import import_spill, spill_path
        from thrifty.ledger.store import open_store

        cfg = load_ledger_config(config)
        if not cfg.ledger.enabled:
            raise ConfigError(f"ledger.enabled is false in {config}: there is no ledger to import into")
        path = str(file) if file is not None else spill_path(cfg)
        if file is not None and not file.is_file():
            raise UsageError(f"--file: {file} does not exist or is not a file")
        store = open_store(cfg.resolve_path(cfg.ledger.path), cfg.ledger.dsn, check=True)
        try:
            result = import_spill(store, path)
        finally:
            store.close()
        if result.kept_as is None:
            typer.echo(f"nothing to import: {path} is empty or absent")
            return
        typer.echo(f"imported {result.requests} request rows ({result.attempts} attempt rows) from {path}: "
                   f"{result.new} new, {result.requests - result.new} already in the ledger (not counted twice)")
        typer.echo(f"{path} emptied; its lines are kept in {result.kept_as}")
