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
from typing import Any

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
        # asyncio.timeout's rules with a bare timer: its Timeout object (a context manager of two
        # coroutines and a state machine) cost about 2.5% of the gateway's CPU per request.
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("DeadlineStage must run inside a task")
        expiry = _Expiry(task)
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + self.seconds, expiry.fire)
        try:
            await call_next(ctx)
        except BaseException as exc:
            timer.cancel()
            if expiry.ended(exc):
                raise RequestTimeoutError(
                    f"The request did not finish within server.request_timeout_s = {self.seconds:g}s "
                    "(all retries, fallbacks and cascade tiers included)."
                ) from None
            raise
        timer.cancel()
        expiry.ended(None)  # a deadline cancellation the pipeline swallowed is taken back all the same


class _Expiry:
    """What ``asyncio.timeout`` does when its deadline passes, and how it tells its own
    cancellation from another one (its ``Timeout._on_timeout`` and ``__aexit__``)."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()  # cancellations already asked before the deadline
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def ended(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` (None: none) ended the request because the deadline passed: the
        deadline's own cancellation, unless the task was cancelled from elsewhere too (a client
        that left, a shutdown: that cancellation goes on), or a TimeoutError raised after it
        fired. A TimeoutError before then is the pipeline's own, kept as it is."""
        if not self.fired:
            return False
        ours = self.task.uncancel() <= self.cancelling and type(exc) is asyncio.CancelledError
        return ours or isinstance(exc, TimeoutError)
