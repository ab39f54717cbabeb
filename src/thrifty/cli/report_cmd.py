"""``thrifty report``: requests, spend, baseline spend and savings from the ledger."""

from __future__ import annotations

from pathlib import Path

import typer

from thrifty.errors import InvalidRequestError, UsageError


def parse_when(value: str | None, flag: str) -> float | None:
    """``parse_since`` for the flag ``flag`` (--since, --until, --older-than), as a usage error."""
    from thrifty.ledger.report import parse_since

    try:
        return parse_since(value, flag=flag)
    except InvalidRequestError as exc:
        raise UsageError(exc.message) from None


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        config: Path = typer.Option(..., "--config", "-c", envvar="THRIFTY_CONFIG", help="Config file naming the ledger to read."),
        since: str | None = typer.Option(None, help="Only requests since: 7d, 24h, 30m or an ISO date."),
        until: str | None = typer.Option(None, help="Only requests before: an ISO date (or 7d: seven days ago)."),
        by: str | None = typer.Option(None, help="Group by model, task, tier, key, day, strategy, route or service_tier."),
        format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
    ) -> None:
        """Spend report: requests, spend, what the baseline would have cost, and savings."""
        from thrifty.cli.ledger_cmd import load_ledger_config
        from thrifty.cli.report_render import render
        from thrifty.ledger.report import BatchSavings, spend_report
        from thrifty.ledger.store import open_store

        if format not in ("table", "json", "csv"):
            raise InvalidRequestError(f"--format must be table, json or csv, got {format!r}")
        # Parsed before the ledger is opened, each error naming its own flag.
        start, end = parse_when(since, "--since"), parse_when(until, "--until")
        if start is not None and end is not None and start >= end:
            # An empty window would print an empty report, as if nothing had been served.
            raise UsageError(f"--since {since} is not before --until {until}: no time is left to report on")
        # Warns about unset variables; refuses a ${VAR} ledger.dsn left empty (not some SQLite file).
        cfg = load_ledger_config(config)
        path = cfg.resolve_path(cfg.ledger.path)
        if not cfg.ledger.dsn and not Path(path).exists():
            raise InvalidRequestError(f"no ledger at {path} yet: serve some requests first")
        catalog = cfg.build_catalog()
        store = open_store(path, cfg.ledger.dsn)
        try:
            # Each row carries its provider-batch figures (the table's "provider batches" line),
            # so JSON and CSV have them too.
            rows = spend_report(store, by, start, end, catalog)
            # A grouped table ends with the whole window's line, as people read a table; JSON
            # and CSV keep one schema of groups (a script sums them, or runs without --by).
            total = spend_report(store, None, start, end) if by and format == "table" and len(rows) > 1 else []
        finally:
            store.close()
        # The table's line: the rows' own figures summed (the groups add up to the window's).
        batch = BatchSavings(sum(r.provider_batch_calls for r in rows), sum(r.provider_batch_spend_usd for r in rows),
                             sum(r.provider_batch_normal_usd for r in rows)) if format == "table" else None
        text = render(rows, format, by or "scope", total=total[0] if total else None)
        typer.echo(text, nl=not text.endswith("\n"))  # a CSV ends with its own newline: no blank line
        if batch is not None and batch.requests:
            from thrifty.cost import usd_text

            typer.echo(f"provider batches: {batch.requests} calls, ${usd_text(batch.spend_usd)} spent, "
                       f"${usd_text(batch.full_price_usd)} at normal prices, ${usd_text(batch.saved_usd)} saved")
