"""Stage: enforce a virtual key's budget and rate limits around the rest of the pipeline.

Before the request runs, its cost is estimated (prompt tokens counted offline + max_tokens, or
``auth.default_completion_tokens``, priced at the requested model, or at the baseline model for
``auto``/routes since the plan is not known yet) and reserved atomically with the rate-limit
counters (see ratelimit.py). When the request is completely finished (after a stream's last
chunk, or on failure) the reservation is settled with what it really spent (``ctx.cost_usd``).
A refused request raises RateLimitError/BudgetExceededError: an OpenAI-style 429.

A request settled at an estimate whose real cost comes later (a background response) is
corrected once the ledger holds that cost (``correct``): only on a counter seeded before the
correction began. A counter seeded since (the first request of the key on a restarted instance,
or after Redis lost the counter) read the amended ledger: adding the difference again counted
it twice. So each counter keeps when its seed began: ``seeded_at`` in the Redis hash (which
covers the seeds of every instance), beside the counter in memory (ratelimit.py).
"""

from __future__ import annotations

import logging
import time

from thrifty.catalog import Catalog
from thrifty.cost import estimate_cost
from thrifty.errors import ServiceUnavailableError
from thrifty.ops.keys import KeyStore
from thrifty.ops.ratelimit import Limiter, Ticket, period_of
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.tokens import count_messages
from thrifty.types import ChatRequest

log = logging.getLogger("thrifty.ops")


class BudgetStage:
    def __init__(self, keys: KeyStore, limiter: Limiter, catalog: Catalog, default_completion_tokens: int = 512) -> None:
        self.keys = keys
        self.limiter = limiter
        self.catalog = catalog
        self.default_completion_tokens = default_completion_tokens

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        key = await self.keys.aget(ctx.key_id) if ctx.key_id else None
        if key is None or (key.budget_usd is None and key.rpm is None and key.tpm is None):
            await call_next(ctx)
            return
        est_tokens, est_cost = self.estimate(ctx.request)
        ticket = await self.limiter.admit(key, est_cost, est_tokens, time.time())
        ctx.scratch["budget_ticket"] = ticket

        async def settle(done: RequestContext) -> None:
            await self.settle(done, ticket)

        # The ledger stage runs finalizers exactly once, when the request has completely ended
        # (success, failure, or the last chunk of a stream), so the reservation is always released.
        ctx.finalizers.append(settle)
        await call_next(ctx)

    def estimate(self, request: ChatRequest) -> tuple[int, float]:
        """(tokens, USD) to reserve for ``request`` before it runs."""
        info = self.catalog.get(request.model) or self.catalog.baseline
        # The model's own tokenizer and image rule (gpt-4o-mini counts an image's tokens 33x).
        prompt = count_messages(request.messages, request.params.get("tools"),
                                model=info.upstream_model if info else None)
        completion = (request.output_limit() or self.default_completion_tokens) * request.choices()
        cost = estimate_cost(prompt, completion, info.price if info else None)
        return prompt + completion, cost or 0.0

    async def settle(self, ctx: RequestContext, ticket: Ticket) -> None:
        cost = ctx.cost_usd if ctx.cost_usd is not None else ctx.spent_usd()
        if cost is None:
            cost = ticket.est_cost  # an unknown price: count what we reserved rather than nothing
        tokens = sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in ctx.attempts)
        try:
            await self.limiter.settle(ticket, cost, tokens)
        except ServiceUnavailableError:
            # The budget store went away while the request ran (its outage is logged once, by
            # the limiter). Not the request's failure, nor a bug: one line, no traceback per
            # request in flight. Its reservation stays until the period ends (conservative, like
            # a crashed process's); its cost is in the ledger, which reseeds a lost counter.
            log.info("request %s: its budget reservation was not settled: the budget store is unavailable",
                     ctx.request_id)

    async def correct(self, key_id: str, created: float, delta_usd: float) -> None:
        """Move ``delta_usd`` onto what key ``key_id`` spent in the period of ``created``: a
        request settled at an estimate whose real cost came later (a background response),
        called once the ledger holds that cost. A period this instance holds no counter for is
        left alone, and so is a counter seeded since the correction began: either is seeded
        from the ledger, which holds the real cost by then (module docstring)."""
        begun = time.time()  # first, before anything awaits: the ledger was amended before it
        key = await self.keys.aget(key_id)
        if key is None or key.budget_usd is None or not delta_usd:
            return
        await self.limiter.correct(key_id, period_of(key.period, created).id, delta_usd, begun)
