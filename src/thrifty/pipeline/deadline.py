"""Stage: one deadline for the whole request (``server.request_timeout_s``).

Each provider call has its own timeout (``providers.*.timeout_s``), but a request may make
several: retries, fallbacks, cascade tiers, a judge, a compression call. Without an overall
deadline a client could wait many times the provider timeout. The stage sits right inside the
ledger stage, so a request that runs out of time is still recorded (as a ``RequestTimeoutError``
with whatever its finished calls cost). For a stream the deadline covers everything up to the
first chunk; after that each chunk is bounded by the provider's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from thrifty.errors import RequestTimeoutError
from thrifty.pipeline.context import Handler, RequestContext


class DeadlineStage:
    """``exempt(ctx)`` true: no deadline (a deferrable request waits for its Batch API job,
    which providers promise within 24 h, not within an HTTP timeout)."""

    def __init__(self, seconds: float, exempt: Callable[[RequestContext], bool] | None = None) -> None:
        self.seconds = seconds
        self.exempt = exempt

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        if self.exempt is not None and self.exempt(ctx):
            await call_next(ctx)
            return
        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                await call_next(ctx)
        except TimeoutError:
            if not deadline.expired():
                raise  # a TimeoutError from inside the pipeline, not this deadline: keep it as it is
            raise RequestTimeoutError(
                f"The request did not finish within server.request_timeout_s = {self.seconds:g}s "
                "(all retries, fallbacks and cascade tiers included)."
            ) from None
