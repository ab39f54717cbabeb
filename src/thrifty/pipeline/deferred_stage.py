"""Stage: requests marked deferrable are answered through the provider's Batch API.

Sits right before the cascade stage, present only when ``batching.deferred.enabled``. A request
is deferrable when its body says ``"thrifty": {"deferrable": true}`` or it carries the header
``x-thrifty-deferrable: 1`` (the body's value wins when both are given). Its single planned model
gets it through the gateway's ``Collector`` (batching/collector.py): the request waits for its
batch, and the answer is priced at the batch price (``ctx.batch``, strategy ``batch``).

- A streaming deferrable request is refused (400): a batch answer arrives whole, nothing to stream.
- The route's ``max_cost_usd`` is checked before submitting, at the batch price (400
  ``route_budget_exceeded`` when even that does not fit, as for a normal call).
- A cascade plan is not deferred (its tiers depend on each other's answers): served normally,
  with ``x-thrifty-batch: skipped-cascade``.
- A batch line that fails, expires or goes missing is served by a normal call (normal price;
  the failed batch try stays in the ledger as an error attempt): ``x-thrifty-batch: fallback``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from thrifty.batching.deferred import settle_answer
from thrifty.catalog import Catalog
from thrifty.errors import InvalidRequestError, StorageError, UpstreamError
from thrifty.pipeline.context import Attempt, Handler, RequestContext
from thrifty.pipeline.routed_params import adapted
from thrifty.routing.policies import BudgetGuard

if TYPE_CHECKING:
    from thrifty.batching.collector import Collector
    from thrifty.gateway import Gateway

HEADER = "x-thrifty-deferrable"
RESULT_HEADER = "x-thrifty-batch"
_TRUE = frozenset({"1", "true", "yes", "on"})


def is_deferrable(ctx: RequestContext) -> bool:
    option = ctx.request.options.get("deferrable")
    if option is not None:
        if not isinstance(option, bool):
            raise InvalidRequestError("'thrifty.deferrable' must be a boolean.", param="thrifty.deferrable")
        return option
    return ctx.headers.get(HEADER, "").strip().lower() in _TRUE


class DeferredStage:
    def __init__(self, collector: Collector, catalog: Catalog) -> None:
        self.collector = collector
        self.catalog = catalog

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        if not is_deferrable(ctx):
            await call_next(ctx)
            return
        if ctx.request.stream:
            raise InvalidRequestError(
                "A deferrable request cannot stream: its answer comes from a provider batch, whole and "
                "possibly hours later. Send it with stream: false, or without thrifty.deferrable.",
                param="stream")
        plan = ctx.plan
        assert plan is not None, "the route stage runs before the deferred stage"
        if plan.is_cascade:
            ctx.response_headers[RESULT_HEADER] = "skipped-cascade"
            await call_next(ctx)
            return
        info = self.catalog.get(plan.tiers[0].model)
        if info is None:  # the caller reports unknown models; let it
            await call_next(ctx)
            return
        # The route's budget holds here too, at the batch price the call will be billed at.
        BudgetGuard(self.catalog, plan.max_cost_usd, plan.route, batch=True).require(ctx, info.name)
        started, t0 = time.time(), time.perf_counter()
        try:
            # Fitted as a direct call is (routed_params): an ``auto`` request's model is thrifty's choice.
            body = adapted(self.catalog, ctx.request, info).to_body(info.upstream_model, stream=False)
            answer = await self.collector.submit(ctx.request_id, info, body)
        except (UpstreamError, StorageError) as exc:
            ctx.attempts.append(Attempt(model=info.name, provider=info.provider, started=started,
                                        latency_ms=(time.perf_counter() - t0) * 1000, status="error",
                                        error=exc.message, tier=info.tier, batch=True))
            ctx.response_headers[RESULT_HEADER] = "fallback"
            await call_next(ctx)  # a normal call at the normal price: never dropped
            return
        # Dated and priced when the provider answered, as the runner's and adopted jobs' answers
        # are: the report re-prices a batch call's normal price (its saving) at its attempt's time.
        settle_answer(ctx, self.catalog, info.name, info.provider, answer.usage, answer.cost, answer.answered,
                      latency_ms=(time.perf_counter() - t0) * 1000)
        ctx.response = answer.response
        ctx.response_headers[RESULT_HEADER] = "batch"
        if answer.batch_id:
            ctx.response_headers["x-thrifty-batch-id"] = answer.batch_id
        # Answered: the cascade stage (the next and last) must not call the model again.


def build_deferred_stage(gateway: Gateway) -> DeferredStage | None:
    """The stage when ``batching.deferred.enabled``; None otherwise (deferrable is then ignored)."""
    if not gateway.config.batching.deferred.enabled:
        return None
    from thrifty.batching.collector import Collector

    return DeferredStage(Collector(gateway, gateway.config.batching.deferred), gateway.catalog)
