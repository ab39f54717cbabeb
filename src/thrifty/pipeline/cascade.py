"""Stage: carry out the plan — call, score, escalate — and settle the request's cost.

- One tier: call it (streaming straight through when the client streams), unless the plan's
  ``max_cost_usd`` is smaller than the call's estimate (then the request is refused, unsent).
- A plan with a ``policy`` (an agreement cascade, a tier cascade from the router) runs it.
- Several tiers without a policy (a custom router's plan): run as the router's ``TierCascade``
  (routing/policies.py), the one tier-cascade implementation: score each answer, accept the
  first that clears its tier's threshold, the last tier always; a failed intermediate tier
  escalates; the budget guard is checked before every call.
Streaming through a cascade buffers: the cheap answer must be scored before any of it is
released, so the accepted answer is streamed after the decision (docs/routing.md measures it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from thrifty.catalog import Catalog
from thrifty.pipeline.accounting import settle
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Attempt, Handler, Plan, RequestContext
from thrifty.routing.policies import BudgetGuard, TierCascade
from thrifty.streaming import close_below, iterate, response_to_chunks


class Policy(Protocol):
    """A custom way to produce an answer from several calls (agreement cascades, votes...)."""

    async def run(self, ctx: RequestContext, caller: ModelCaller) -> tuple[dict[str, Any], Attempt]:
        ...


class CascadeStage:
    def __init__(self, caller: ModelCaller, catalog: Catalog) -> None:
        self.caller = caller
        self.catalog = catalog

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        plan = ctx.plan
        assert plan is not None, "the route stage runs before the cascade stage"
        guard = BudgetGuard(self.catalog, plan.max_cost_usd, plan.route)
        policy = plan.policy if plan.policy is not None else self._tier_policy(plan, guard)
        if policy is not None:
            # Set before the policy runs, so a request whose cascade fails is recorded as one.
            ctx.strategy = "cascade"
            response, served = await policy.run(ctx, self.caller)
            self._finish(ctx, response, served)
        else:
            ctx.strategy = self._single_strategy(ctx, plan)
            model = plan.tiers[0].model
            guard.require(ctx, model)
            if ctx.request.stream:
                chunks, attempt = await self.caller.stream(ctx, model)
                ctx.chunks = self._settle_after(ctx, chunks, attempt)
                ctx.served_model = attempt.model
                ctx.served_tier = attempt.tier
            else:
                response, attempt = await self.caller.complete(ctx, model)
                self._finish(ctx, response, attempt)
        await call_next(ctx)

    @staticmethod
    def _tier_policy(plan: Plan, guard: BudgetGuard) -> Policy | None:
        """A multi-tier plan without a policy (custom routers) runs as a ``TierCascade``."""
        if len(plan.tiers) < 2:
            return None
        return TierCascade([(t.model, t.threshold) for t in plan.tiers], plan.scorer, guard)

    def _single_strategy(self, ctx: RequestContext, plan: Plan) -> str:
        if ctx.request.model == plan.tiers[0].model or self.catalog.get(ctx.request.model) is not None:
            return "passthrough"
        return "routing"

    def _finish(self, ctx: RequestContext, response: dict[str, Any], served: Attempt) -> None:
        settle(ctx, self.catalog, served)
        if ctx.request.stream:
            # Buffered answer (cascade/policy): release it as a stream now that it is accepted.
            ctx.chunks = iterate(response_to_chunks(response))
        else:
            ctx.response = response

    async def _settle_after(
        self, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]], attempt: Attempt
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await close_below(chunks)  # the call under it priced first (its reader may have left)
            settle(ctx, self.catalog, attempt)
