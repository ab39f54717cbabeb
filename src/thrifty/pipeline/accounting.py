"""Totals for a finished request: what it spent and what the baseline model would have spent."""

from __future__ import annotations

from thrifty.catalog import Catalog
from thrifty.cost import price_tokens
from thrifty.pipeline.context import Attempt, RequestContext


def settle(ctx: RequestContext, catalog: Catalog, served: Attempt | None) -> None:
    """Fill ``ctx``'s served model, usage, total cost and baseline cost.

    The request's cost is every attempt it made (failed tries that billed, rejected cascade
    answers, judges). The baseline is the baseline model pricing the served answer's tokens:
    "had we sent this to the premium model". Unknown prices leave None, never an error.
    """
    if served is not None:
        ctx.served_model = served.model
        ctx.served_tier = served.tier
        ctx.usage = served.usage
    ctx.cost_usd = ctx.spent_usd()
    baseline = catalog.baseline
    if ctx.baseline_cost_usd is None and baseline is not None and served is not None:
        ctx.baseline_cost_usd = price_tokens(served.usage, baseline.price)
