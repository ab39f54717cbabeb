"""``thrifty ledger import-spill`` and ``thrifty ledger reconcile``, and the config loading every
command that opens the ledger database of a config shares (``keys``, ``report``, ``ledger``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from thrifty.config import Config
    from thrifty.server.reconcile import Tally

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(value: str, flag: str = "--min-age") -> float:
    """``60s``, ``5m``, ``1h``, ``2d`` or plain seconds, as seconds; anything else a usage error."""
    from thrifty.errors import UsageError

    found = _AGE.fullmatch(value.strip().lower())
    if found is None:
        raise UsageError(f"{flag}: expected like 60s, 5m, 1h or 2d, got {value!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


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
    group = typer.Typer(help="Ledger maintenance: write spilled rows back, settle background responses.",
                        no_args_is_help=True)
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

    @group.command("reconcile")
    def reconcile_cmd(
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty config naming the ledger."),
        min_age: str = typer.Option("60s", "--min-age", help="Only background responses created at least this long "
                                    "ago: 60s, 5m, 1h, 2d or plain seconds."),
    ) -> None:
        """Settle background responses nobody retrieved: ask their provider, write the real usage over the estimate."""
        import asyncio

        from thrifty.errors import ConfigError
        from thrifty.server.reconcile import summary_lines

        age = parse_age(min_age)
        cfg = load_ledger_config(config)
        if not cfg.ledger.enabled:
            raise ConfigError(f"ledger.enabled is false in {config}: there is no ledger to reconcile")
        tally = asyncio.run(_reconcile(cfg, age))
        for line in summary_lines(tally):
            typer.echo(line)
        if tally.failed:
            raise typer.Exit(1)


async def _reconcile(cfg: Config, min_age_s: float) -> Tally:
    """One pass of the gateway's own reconciler, with a gateway built from ``cfg`` but serving
    nothing: its providers, retry policies, prices, ledger writer, budgets and /metrics code are
    what a retrieve would use (the metrics of this process go nowhere; the ledger and a shared
    budget store are what count). Closed on the loop its connections were opened on."""
    from thrifty.cli.config_cmd import tool_gateway
    from thrifty.errors import StorageError
    from thrifty.server.reconcile import Reconciler
    from thrifty.server.response_resources import ResponseResources

    gateway = tool_gateway(cfg)  # capture off: a server on this config holds the file
    try:
        reconciler = Reconciler(ResponseResources(gateway, gateway.ops.responses), min_age_s=min_age_s)
        tally = await reconciler.run_once()
        # Said, so a run right after the creates does not print four zeros with no reason. From
        # the pass's own window end: no entry is counted both listed and not due. A database that
        # fails now leaves the count at 0 rather than losing the pass's figures.
        try:
            tally.not_due = await gateway.ops.responses.pending_since(tally.window_end)
        except StorageError as exc:
            typer.echo(f"warning: pending background responses not counted: {exc.message}", err=True)
        return tally
    finally:
        await gateway.aclose()

