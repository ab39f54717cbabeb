"""The pipeline, in order. This is the one place that says what happens to a request.

    ledger( deadline -> budget -> normalize -> compress -> cache -> route -> deferred -> cascade )

The list itself is built in ``Gateway._build_stages``. The ledger stage is first because it
wraps everything after it: it records the request once the rest has finished (or failed, or
finished streaming); the deadline stage bounds everything inside it by
``server.request_timeout_s``. Stages a config does not use (budget, compress, cache, deferred) are
simply absent from the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from thrifty.pipeline.context import Handler, RequestContext


class Stage(Protocol):
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> None: ...


async def _end(ctx: RequestContext) -> None:
    """After the last stage: nothing left to do."""


def compose(stages: Sequence[Stage]) -> Handler:
    """One handler that runs ``stages`` in order, each deciding when to call the next."""
    handler: Handler = _end
    for stage in reversed(stages):
        handler = _bind(stage, handler)
    return handler


def _bind(stage: Stage, nxt: Handler) -> Handler:
    async def run(ctx: RequestContext) -> None:
        await stage(ctx, nxt)

    run.__qualname__ = f"{type(stage).__name__}.run"
    return run


def describe(stages: Sequence[Any]) -> str:
    return " -> ".join(type(s).__name__.removesuffix("Stage").lower() for s in stages)
