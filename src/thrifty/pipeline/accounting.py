"""Totals for a finished request: what it spent, what the baseline model would have spent, and
how far its cascade escalated.

An escalation is moving past a planned level to a later one because the earlier level's answer
was rejected or its call failed. ``escalations(ctx)`` is the number of levels moved past before
the level whose answer was served: for a tier cascade the served tier's index (cheap tier
served: 0; cheap rejected or failed, next tier served: 1; third tier: 2); for an agreement or
state-table cascade the cheap models are one level (their answers are a vote, so serving any
of them is 0) and the strong/fallback model is the next (1 when it serves after cheap calls,
0 when the table sends the request to it first); a single model is 0. A failed request keeps
the level it had reached. The ledger's ``escalations`` column, the dashboard and the
``thrifty_escalations`` metric all read this one number.
"""

from __future__ import annotations

from thrifty.catalog import Catalog
from thrifty.cost import price_tokens
from thrifty.pipeline.context import Attempt, RequestContext

# Where policies record the escalation level on the request context.
_ESCALATIONS = "cascade.escalations"


def set_escalations(ctx: RequestContext, levels: int) -> None:
    """Record that the request has moved past ``levels`` planned levels (see the module doc)."""
    ctx.scratch[_ESCALATIONS] = levels


def escalations(ctx: RequestContext) -> int:
    """The levels the request moved past before the one that served it (0 without a cascade)."""
    return int(ctx.scratch.get(_ESCALATIONS, 0))


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
