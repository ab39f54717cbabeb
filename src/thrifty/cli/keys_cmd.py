"""``thrifty keys create|list|revoke``: virtual API keys, in the ledger database of a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from thrifty.config import Config
    from thrifty.ledger.store import SQLStore
    from thrifty.ops.keys import KeyStore


def _keystore(config: Path, routes: list[str] | None = None) -> tuple[KeyStore, SQLStore]:
    """The key store of ``config``'s ledger; ``routes`` (the --routes patterns) are checked
    against the config first, before the database is opened or created."""
    from thrifty.cli.ledger_cmd import load_ledger_config
    from thrifty.ledger.store import open_store
    from thrifty.ops.keys import KeyStore

    # Warns about unset variables; refuses a ${VAR} ledger.dsn left empty (no stray SQLite keys).
    cfg = load_ledger_config(config)
    if routes:
        _check_routes(routes, cfg, config)
    store = open_store(cfg.resolve_path(cfg.ledger.path), cfg.ledger.dsn)
    return KeyStore(store, salt=cfg.auth.key_salt), store


def _check_routes(patterns: list[str], cfg: Config, config: Path) -> None:
    """Every --routes pattern must match a name a request can use on this config (the check
    POST /admin/keys applies too: thrifty.ops.key_routes)."""
    from thrifty.errors import InvalidRequestError, UsageError
    from thrifty.ops.key_routes import check_route_patterns, request_names

    try:
        check_route_patterns(patterns, request_names(cfg), str(config))
    except InvalidRequestError as exc:
        raise UsageError(f"--routes: {exc.message}") from None


def _route_list(flag: str | None) -> list[str]:
    """``--routes a,b`` as a list (empty: any route). A flag with no name in it (``--routes ","``)
    is refused: it would silently make a key allowed everywhere, the opposite of what
    restricting the key asked for (as ``batch run --labels`` refuses one)."""
    from thrifty.cli.checks import comma_list

    if flag is None:
        return []
    return comma_list(flag, "--routes", "model or route", "auto,route:support-*,cheap; or omit the flag: any route")


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="Virtual API keys: budgets, rate limits, allowed routes.", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def create(
        name: str = typer.Option(..., "--name", help="Who or what the key is for."),
        budget_usd: float | None = typer.Option(None, "--budget-usd", help="Spend limit per period, USD."),
        period: str = typer.Option("month", "--period", help="Budget period: day or month (UTC)."),
        rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute."),
        tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute (prompt + completion)."),
        routes: str | None = typer.Option(None, "--routes",
                                          help="Comma-separated models/routes the key may use (globs; default any)."),
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty config naming the ledger database."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Create a key and print it: this is the only time it is shown."""
        from thrifty.cli.checks import finite_float, int_at_least
        from thrifty.errors import UsageError
        from thrifty.ops.keys import MAX_LIMIT, PERIODS

        # Flags first, named as the user typed them, before the ledger database is opened or created.
        finite_float(budget_usd, "--budget-usd", 0.0, low_open=True)
        int_at_least(rpm, "--rpm", 1, MAX_LIMIT)
        int_at_least(tpm, "--tpm", 1, MAX_LIMIT)
        if period not in PERIODS:
            raise UsageError(f"--period: expected day or month, got {period!r}")
        if not name.strip():
            raise UsageError("--name: expected a non-empty name")
        route_list = _route_list(routes)
        store_keys, store = _keystore(config, route_list)
        try:
            key, secret = store_keys.create(name, budget_usd=budget_usd, period=period, rpm=rpm, tpm=tpm,
                                            routes=route_list)
        finally:
            store.close()
        if json_out:
            typer.echo(json.dumps({**key.public(), "key": secret}))
            return
        typer.echo(secret)
        typer.echo(f"created {key.key_id} ({key.name}); the key above is shown only once: store it now.", err=True)

    @keys.command("list")
    def list_keys(
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty config naming the ledger database."),
        all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List keys (ids, names, limits; never the keys themselves)."""
        store_keys, store = _keystore(config)
        try:
            found = store_keys.list(include_revoked=all_keys)
            revoked = not found and not all_keys and bool(store_keys.list(include_revoked=True))
        finally:
            store.close()
        if json_out:
            typer.echo(json.dumps([k.public() for k in found], indent=2))
            return
        if not found:
            what = " other than revoked ones (--all lists them)" if revoked else ""
            typer.echo(f"no keys yet{what}: create one with `thrifty keys create --config {config} --name NAME`")
            return
        typer.echo(f"{'key id':<18} {'name':<20} {'prefix':<9} {'budget':>12} {'rpm':>6} {'tpm':>8}  routes  state")
        for k in found:
            budget = f"${k.budget_usd:g}/{k.period}" if k.budget_usd is not None else "-"
            typer.echo(f"{k.key_id:<18} {k.name[:20]:<20} {k.key_prefix:<9} {budget:>12} {k.rpm or '-':>6} "
                       f"{k.tpm or '-':>8}  {','.join(k.routes) or '*'}  {'active' if k.active else 'revoked'}")

    @keys.command("revoke")
    def revoke(
        key_id: str = typer.Argument(..., help="The key id (key_...), as `thrifty keys list` shows it."),
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="The thrifty config naming the ledger database."),
    ) -> None:
        """Revoke a key: gateways refuse it within auth.key_cache_ttl_s seconds."""
        import time

        store_keys, store = _keystore(config)
        try:
            before = store_keys.get(key_id)
            if before is not None and before.revoked_at is not None:
                # Idempotent (exit 0), but not reported as if it had just happened.
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before.revoked_at))
                typer.echo(f"{before.key_id} ({before.name}) was already revoked at {when}")
                return
            key = store_keys.revoke(key_id)
        finally:
            store.close()
        typer.echo(f"revoked {key.key_id} ({key.name})")
