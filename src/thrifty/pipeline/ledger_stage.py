"""Stage: record every finished request (and all its attempts) in the ledger.

It wraps the rest of the pipeline, so it sees successes, failures and streams alike: a stream
is recorded when its last chunk has gone (or when it breaks, as failed). Finalizers registered
by other stages run first, so the row reflects everything they settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from thrifty.errors import ThriftyError
from thrifty.ledger.records import AttemptRow, RequestRow, rows_from_context
from thrifty.pipeline.context import Handler, RequestContext

log = logging.getLogger("thrifty.pipeline")

Sink = Callable[[RequestRow, list[AttemptRow]], None]


class LedgerStage:
    def __init__(self, sink: Sink | None, observers: list[Callable[[RequestContext], None]] | None = None) -> None:
        self.sink = sink
        # Observers see every finished request (metrics, budgets) without owning the ledger.
        # Keep the caller's list itself (even empty): gateway.observers may be appended to later.
        self.observers = observers if observers is not None else []

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        try:
            await call_next(ctx)
        except ThriftyError as exc:
            ctx.status, ctx.error_type, ctx.error = "error", type(exc).__name__, exc.message
            await self._record(ctx)
            raise
        except Exception as exc:
            ctx.status, ctx.error_type, ctx.error = "error", type(exc).__name__, "internal error"
            await self._record(ctx)
            raise
        except asyncio.CancelledError:
            # The server cancels a request whose client left before the response started
            # (server/app.py); the calls already made were paid, so the row is still written.
            ctx.status, ctx.error_type, ctx.error = "error", "ClientDisconnected", "client left before the response"
            await self._record(ctx)
            raise
        if ctx.chunks is not None:
            ctx.chunks = self._record_after(ctx, ctx.chunks)
        else:
            await self._record(ctx)

    async def _record_after(self, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        completed = False
        try:
            async for chunk in chunks:
                yield chunk
            completed = True
        except ThriftyError as exc:
            ctx.status, ctx.error_type, ctx.error = "error", type(exc).__name__, exc.message
            raise
        finally:
            if not completed and ctx.status == "ok":
                ctx.status, ctx.error_type, ctx.error = "error", "ClientDisconnected", "stream not completed"
            await self._record(ctx)

    async def _record(self, ctx: RequestContext) -> None:
        for fin in ctx.finalizers:
            try:
                await fin(ctx)
            except Exception:  # a finalizer must never lose the ledger row
                log.exception("request %s: finalizer failed", ctx.request_id)
        ctx.finalizers.clear()
        if ctx.status != "ok":  # cancelled, timed out or failed mid-answer: see the helper
            _usage_of_the_answer_in_progress(ctx)
        if ctx.cost_usd is None:
            ctx.cost_usd = ctx.spent_usd()
        if self.sink is not None:
            req, attempts = rows_from_context(ctx)
            self.sink(req, attempts)
        for obs in self.observers:
            with contextlib.suppress(Exception):
                obs(ctx)


def _usage_of_the_answer_in_progress(ctx: RequestContext) -> None:
    """A request that ended before its answer began (the client left, the deadline passed) has
    no served usage, yet its last answer call was charged (the prompt, counted offline): the request's row takes that call's tokens, as a
    stream left midway takes the partial usage of the answer it was sending, so its tokens and its
    cost agree."""
    if ctx.usage.prompt_tokens or ctx.usage.completion_tokens:
        return
    for attempt in reversed(ctx.attempts):
        if attempt.purpose == "answer" and (attempt.usage.prompt_tokens or attempt.usage.completion_tokens):
            ctx.usage = attempt.usage
            return
