"""``thrifty estimate``: what a monthly workload costs on each model, against the baseline."""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from pathlib import Path

import typer

from thrifty.cli.checks import comma_list, dumps, finite_float
from thrifty.cli.report_render import dollars
from thrifty.errors import InvalidRequestError, UsageError

# Shown when neither --models nor a --config names the models: the seed hierarchy of `init`.
DEFAULT_MODELS = "qwen3-8b,deepseek-v4-flash,qwen3-32b,deepseek-reasoner,gpt-4o"


def _one_workload_source(workloads: Path | None, requests: float | None, input_tokens: float,
                         output_tokens: float | None) -> None:
    """The workload comes from ``--workloads`` or from the flags, not both: the file's volumes
    replace the flags', so flags given beside it would be ignored without a word."""
    if workloads is None:
        return
    given = [flag for flag, used in (("--requests-per-month", requests is not None),
                                     ("--input-tokens", input_tokens != 0),
                                     ("--output-tokens", output_tokens is not None)) if used]
    if given:
        raise UsageError(f"--workloads: give the volumes in the file or as {', '.join(given)}, not both "
                         "(each workload in the file has its own)")


def register(app: typer.Typer) -> None:
    @app.command("estimate")
    def estimate_cmd(
        models: str | None = typer.Option(
            None, "--models", "-m",
            help="Comma-separated model names (catalog names or any model genai-prices knows; default: the "
                 f"--config's models, else {DEFAULT_MODELS}).",
        ),
        requests: float = typer.Option(None, "--requests-per-month", "-n", help="Requests a month."),
        input_tokens: float = typer.Option(0, "--input-tokens", help="Average input tokens per request."),
        output_tokens: float = typer.Option(None, "--output-tokens", help="Average output tokens per request."),
        baseline: str | None = typer.Option(
            None, help="Model to compare against (default: the --config's baseline, else the priciest)."),
        workloads: Path | None = typer.Option(None, "--workloads", help="YAML list of workloads instead of flags."),
        config: Path | None = typer.Option(None, "--config", "-c", help="Use this config's models and prices."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Monthly cost per model for a workload, and the savings against the baseline."""
        from thrifty.config import load_config
        from thrifty.estimate import Workload, check_workload, estimate, load_workloads, price_of

        # Checked first (nan would print as NaN in the JSON, 1e400 as inf/nan in the table).
        finite_float(requests, "--requests-per-month", 0)
        finite_float(input_tokens, "--input-tokens", 0)
        finite_float(output_tokens, "--output-tokens", 0)
        _one_workload_source(workloads, requests, input_tokens, output_tokens)
        cfg = load_config(config) if config else None
        catalog = cfg.build_catalog() if cfg is not None else None
        if models is not None:
            # Refused when empty: else "none of the models has a known price", or an empty table.
            names = comma_list(models, "--models", "model", "a,b,c")
        elif cfg is not None and cfg.models:
            names = list(cfg.models)  # the models the config serves, not the built-in list
        else:
            names = DEFAULT_MODELS.split(",")
        if baseline is None and cfg is not None and cfg.baseline is not None:
            baseline = cfg.baseline
            flag = f"baseline of {config}"
        else:
            flag = "--baseline"
        if baseline is not None and price_of(baseline, catalog) is None:
            # Every saving is measured against it: an unpriced baseline would print "unknown"
            # for every row instead of saying why.
            where = "no price in the config or the price tables" if cfg is not None else \
                "no known price (give its price in a --config)"
            raise UsageError(f"{flag} {baseline!r}: {where}")
        if workloads:
            wl = load_workloads(workloads)
        else:
            if requests is None or output_tokens is None:
                raise InvalidRequestError("give --requests-per-month and --output-tokens, or --workloads FILE")
            wl = [Workload("workload", requests, input_tokens, output_tokens)]
        for w in wl:
            check_workload(w)
        all_models = sorted({*names, *(m for w in wl for m in w.models)})
        if baseline is None:
            priced = [(p.output, m) for m in all_models if (p := price_of(m, catalog)) is not None]
            if not priced:
                raise InvalidRequestError("none of the models has a known price; give prices in a --config")
            baseline = max(priced)[1]
        rows = estimate(wl, names, baseline, catalog)
        if json_out:
            # Strict JSON: a figure that still overflows (huge prices x volume) is null, never NaN.
            typer.echo(dumps({"baseline": baseline, "rows": [asdict(r) for r in rows]}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Monthly cost (baseline: {baseline})")
        for col in ("workload", "model", "monthly $", "saved $", "saved %"):
            table.add_column(col, justify="left" if col in ("workload", "model") else "right")

        for r in rows:
            pct = ("unknown" if r.saved_pct is None else f"{r.saved_pct:.1f}" if math.isfinite(r.saved_pct)
                   else "overflow")
            table.add_row(r.workload, r.model, dollars(r.monthly_usd), dollars(r.saved_usd), pct)
        console = Console(file=io.StringIO(), width=110)
        console.print(table)
        typer.echo(console.file.getvalue())  # type: ignore[attr-defined]
