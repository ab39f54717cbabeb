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
it twice. ``SeedLog`` remembers when this process began each seed; the Redis counter keeps its
own (``seeded_at``), which covers the seeds of every instance.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol, runtime_checkable

from thrifty.catalog import Catalog
from thrifty.cost import estimate_cost
from thrifty.ops.keys import KeyStore
from thrifty.ops.ratelimit import Limiter, Seed, Ticket, period_of
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.tokens import count_messages
from thrifty.types import ChatRequest

log = logging.getLogger("thrifty.ops")
# Seeds older than this are forgotten once SeedLog holds many: a correction follows the
# amendment it corrects within moments, so only a seed that began since then matters.
SEED_MEMORY_S = 3600.0


@runtime_checkable
class Corrector(Protocol):
    """A limiter whose counters remember when they were seeded (the Redis one)."""

    async def correct(self, key_id: str, period_id: str, delta_usd: float, begun: float) -> None: ...


class SeedLog:
    """When this process last began reading each (key, period start)'s spend from the ledger."""

    def __init__(self) -> None:
        self._began: dict[tuple[str, float], float] = {}

    def wrap(self, seed: Seed) -> Seed:
        """``seed``, noting when each read begins (before it: what the ledger held then is in it)."""

        async def noted(key_id: str, since: float) -> float:
            now = time.time()
            if len(self._began) >= 4096:
                self._began = {k: t for k, t in self._began.items() if t > now - SEED_MEMORY_S}
            self._began[(key_id, since)] = now
            return await seed(key_id, since)

        return noted

    def began_since(self, key_id: str, since: float, moment: float) -> bool:
        """Whether a seed of ``key_id``'s period starting at ``since`` began at ``moment`` or later."""
        began = self._began.get((key_id, since))
        return began is not None and began >= moment


class BudgetStage:
    def __init__(self, keys: KeyStore, limiter: Limiter, catalog: Catalog, default_completion_tokens: int = 512,
                 seeds: SeedLog | None = None) -> None:
        self.keys = keys
        self.limiter = limiter
        self.catalog = catalog
        self.default_completion_tokens = default_completion_tokens
        self.seeds = seeds or SeedLog()  # the one wrapping the limiter's seed (ops/wiring.py)

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
        prompt = count_messages(request.messages, request.params.get("tools"))
        completion = (request.output_limit() or self.default_completion_tokens) * request.choices()
        info = self.catalog.get(request.model) or self.catalog.baseline
        cost = estimate_cost(prompt, completion, info.price if info else None)
        return prompt + completion, cost or 0.0

    async def settle(self, ctx: RequestContext, ticket: Ticket) -> None:
        cost = ctx.cost_usd if ctx.cost_usd is not None else ctx.spent_usd()
        if cost is None:
            cost = ticket.est_cost  # an unknown price: count what we reserved rather than nothing
        tokens = sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in ctx.attempts)
        await self.limiter.settle(ticket, cost, tokens)

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
        period = period_of(key.period, created)
        if isinstance(self.limiter, Corrector):
            await self.limiter.correct(key_id, period.id, delta_usd, begun)
            return
        if self.seeds.began_since(key_id, period.start, begun):
            return
        # A ticket that reserved nothing: settling it adds the difference and frees nothing.
        await self.limiter.settle(Ticket(key_id, period.id, 0, 0.0, 0, True, False), delta_usd, 0)
