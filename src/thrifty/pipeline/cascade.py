"""Stage: carry out the plan — call, score, escalate — and settle the request's cost.

- One tier: call it (streaming straight through when the client streams).
- Several tiers: call each in order, score the answer, accept the first whose score clears
  its tier's threshold; the last tier's answer is always accepted. An intermediate tier that
  fails after its retries escalates instead of failing the request.
- A plan with a ``policy`` (e.g. an agreement cascade) runs that policy instead.
Streaming through a cascade buffers: the cheap answer must be scored before any of it is
released, so the accepted answer is streamed after the decision (docs/routing.md measures it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from thrifty.catalog import Catalog
from thrifty.cost import estimate_cost
from thrifty.errors import UpstreamError
from thrifty.pipeline.accounting import settle
from thrifty.pipeline.caller import ModelCaller
from thrifty.pipeline.context import Attempt, Handler, Plan, RequestContext
from thrifty.streaming import iterate, response_to_chunks
from thrifty.tokens import count_messages
from thrifty.types import response_text


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
        if plan.policy is not None:
            response, served = await plan.policy.run(ctx, self.caller)
            ctx.strategy = "cascade"
            self._finish(ctx, response, served)
        elif len(plan.tiers) == 1:
            ctx.strategy = self._single_strategy(ctx, plan)
            if ctx.request.stream:
                chunks, attempt = await self.caller.stream(ctx, plan.tiers[0].model)
                ctx.chunks = self._settle_after(ctx, chunks, attempt)
                ctx.served_model = attempt.model
                ctx.served_tier = attempt.tier
            else:
                response, attempt = await self.caller.complete(ctx, plan.tiers[0].model)
                self._finish(ctx, response, attempt)
        else:
            ctx.strategy = "cascade"
            response, served = await self.run_tiers(ctx, plan)
            self._finish(ctx, response, served)
        await call_next(ctx)

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
            settle(ctx, self.catalog, attempt)

    async def run_tiers(self, ctx: RequestContext, plan: Plan) -> tuple[dict[str, Any], Attempt]:
        """Try tiers cheapest first; accept the first answer whose score clears its threshold."""
        best: tuple[dict[str, Any], Attempt] | None = None
        last_error: UpstreamError | None = None
        prompt_tokens = count_messages(ctx.request.messages)
        for i, tier in enumerate(plan.tiers):
            is_last = i == len(plan.tiers) - 1
            if best is not None and plan.max_cost_usd is not None and self._would_overspend(ctx, plan, tier.model,
                                                                                            prompt_tokens):
                best[1].score_reason = (best[1].score_reason or "") + "; budget guard: kept this answer"
                best[1].accepted = True
                return best
            try:
                response, attempt = await self.caller.complete(ctx, tier.model)
            except UpstreamError as exc:
                last_error = exc
                if is_last and best is None:
                    raise
                continue
            if is_last or plan.scorer is None or tier.threshold is None:
                attempt.accepted = True
                return response, attempt
            score = await plan.scorer.score(ctx.request, response)
            attempt.score, attempt.score_reason = score.value, score.reason
            if score.value >= tier.threshold:
                attempt.accepted = True
                return response, attempt
            attempt.accepted = False
            best = (response, attempt)
        if best is not None:
            # Every later tier failed: serve the best answer we got rather than an error.
            best[1].accepted = True
            return best
        assert last_error is not None
        raise last_error

    def _would_overspend(self, ctx: RequestContext, plan: Plan, model: str, prompt_tokens: int) -> bool:
        info = self.catalog.get(model)
        spent = ctx.spent_usd() or 0.0
        completion_guess = max((a.usage.completion_tokens for a in ctx.attempts), default=256)
        est = estimate_cost(prompt_tokens, completion_guess, info.price if info else None)
        return est is not None and plan.max_cost_usd is not None and spent + est > plan.max_cost_usd


def answer_text(response: dict[str, Any]) -> str:
    return response_text(response)
