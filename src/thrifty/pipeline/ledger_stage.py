"""Stage: record every finished request (and all its attempts) in the ledger.

It wraps the rest of the pipeline, so it sees successes, failures and streams alike: a stream
is recorded when its last chunk has gone (or when it breaks, as failed; or when its reader leaves,
before its first chunk included, as ClientDisconnected at what it cost so far). Finalizers registered
by other stages run first, so the row reflects everything they settled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from thrifty.errors import ThriftyError
from thrifty.ledger.records import AttemptRow, RequestRow, rows_from_context
from thrifty.pipeline.context import Handler, RequestContext
from thrifty.streaming import close_below

log = logging.getLogger("thrifty.pipeline")

Sink = Callable[[RequestRow, list[AttemptRow]], None]


class LedgerStage:
    def __init__(self, sink: Sink | None, observers: list[Callable[[RequestContext], None]] | None = None) -> None:
        self.sink = sink
        # Observers see every finished request (metrics, budgets) without owning the ledger.
        # Keep the caller's list itself (even empty): gateway.observers may be appended to later.
        self.observers = observers if observers is not None else []

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None:
        first: dict[str, Any] | None = None
        try:
            await call_next(ctx)
            if ctx.chunks is not None:
                # Read now, so every stage's stream under this one has started: a generator that
                # never started runs no cleanup however it ends (closed, or collected with a client
                # that left), and the provider call it priced went unpriced. The chunk is in hand
                # already (the caller fetches it before it returns the stream): nothing waits here.
                first = await anext(ctx.chunks, None)
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
            ctx.chunks = RecordedStream(ctx, ctx.chunks, self._record, first)
        else:
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
            # Not contextlib.suppress: this runs per observer per request, and a try costs nothing.
            try:  # noqa: SIM105
                obs(ctx)
            except Exception:  # an observer (metrics, budgets) must never fail the request
                pass


class RecordedStream:
    """A request's stream, recorded once when it ends: read to the end, broken, or closed by its
    reader, before its first chunk included.

    Why a class, not an async generator: a generator closed before its first chunk never runs
    its ``finally``, and a stream its client left before reading (between the handler's return
    and the response) went unrecorded, although its provider call was made and paid: the
    pipeline fetches the first chunk before it returns the stream (ModelCaller.stream and the
    passthrough endpoints retry until then). ``first``: that chunk, read by LedgerStage already.
    """

    def __init__(self, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]],
                 record: Callable[[RequestContext], Awaitable[None]], first: dict[str, Any] | None = None) -> None:
        self._ctx = ctx
        self._chunks = chunks
        self._record: Callable[[RequestContext], Awaitable[None]] | None = record
        self._first = first  # read from ``chunks`` already (LedgerStage), not yet passed on

    def __aiter__(self) -> RecordedStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._record is None:  # closed: nothing more comes, as from a closed generator
            raise StopAsyncIteration
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._end(completed=True)
            raise
        except ThriftyError as exc:
            self._ctx.status, self._ctx.error_type, self._ctx.error = "error", type(exc).__name__, exc.message
            await self._end()
            raise
        except BaseException:  # its reader cancelled (a client that left), or a fault: the stages below ended
            await self._end()
            raise

    async def aclose(self) -> None:
        """Its reader stopped early (or never started): the stream below is ended, then recorded."""
        if self._record is not None:
            await self._end(unwind=True)

    async def _end(self, *, completed: bool = False, unwind: bool = False) -> None:
        record, self._record = self._record, None
        if record is None:  # recorded already: exactly one row per request
            return
        # Shielded: a stream served by Starlette runs in an anyio task group, and anyio re-delivers
        # a cancellation at every await inside a cancelled scope (uvicorn cancelling the requests
        # left at its shutdown bound, a client that left). The finalizers' awaits (a budget settle
        # on Redis) were cancelled in turn, and the row was never written though the call was paid.
        with anyio.CancelScope(shield=True):
            try:
                if unwind:  # every stage under it ends in order, the provider call priced first
                    await close_below(self._chunks)
            finally:
                if not completed and self._ctx.status == "ok":
                    self._ctx.status, self._ctx.error_type, self._ctx.error = (
                        "error", "ClientDisconnected", "stream not completed")
                await record(self._ctx)


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
