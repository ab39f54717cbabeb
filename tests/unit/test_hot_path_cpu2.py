"""Hot-path rewrites that must keep their old behaviour exactly.

The request deadline (pipeline/deadline.py) keeps asyncio.timeout's rules with a bare timer:
these are the cases the deadline's own tests do not reach (two cancellations at once, a
cancellation the pipeline swallowed). ``Usage.from_openai`` reads counts through plain helpers
now: malformed details objects still read as nothing. The ledger stage calls its observers in a
plain try now: one that fails still fails nothing. Ledger rows are built positionally: each
field still gets its own value.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from thrifty.errors import RequestTimeoutError
from thrifty.ledger.records import rows_from_context
from thrifty.pipeline.accounting import set_escalations
from thrifty.pipeline.context import Attempt, RequestContext
from thrifty.pipeline.deadline import DeadlineStage
from thrifty.pipeline.ledger_stage import LedgerStage
from thrifty.types import ChatRequest, Usage


def _ctx() -> RequestContext:
    return RequestContext(request=ChatRequest.from_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}))


def _cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def test_a_cancellation_from_elsewhere_goes_on_when_the_deadline_also_passed() -> None:
    async def inner(ctx: RequestContext) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:  # the deadline's; the client leaves at that moment too
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            raise

    run = asyncio.create_task(DeadlineStage(0.01)(_ctx(), inner))
    with pytest.raises(asyncio.CancelledError):
        await run
    assert run.cancelled()


async def test_a_deadline_cancellation_the_pipeline_swallowed_is_taken_back() -> None:
    swallowed: list[bool] = []

    async def inner(ctx: RequestContext) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            swallowed.append(True)

    await DeadlineStage(0.01)(_ctx(), inner)
    assert swallowed == [True]
    assert _cancelling() == 0
    await asyncio.sleep(0)  # and nothing is left to cancel the caller later


async def test_a_timeout_error_after_the_deadline_passed_is_the_deadline() -> None:
    async def inner(ctx: RequestContext) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise TimeoutError("a library's own timeout, raised while cancelled") from None

    with pytest.raises(RequestTimeoutError, match="request_timeout_s"):
        await DeadlineStage(0.01)(_ctx(), inner)
    assert _cancelling() == 0


async def test_a_request_that_finished_in_time_leaves_no_timer_behind() -> None:
    async def quick(ctx: RequestContext) -> None:
        await asyncio.sleep(0)

    await DeadlineStage(0.05)(_ctx(), quick)
    await asyncio.sleep(0.1)  # past where the deadline would have been: not cancelled
    assert _cancelling() == 0


async def test_a_failing_observer_fails_neither_the_request_nor_the_observers_after_it() -> None:
    rows: list[Any] = []
    seen: list[str] = []

    def broken(ctx: RequestContext) -> None:
        raise RuntimeError("observer bug")

    async def answer(ctx: RequestContext) -> None:
        ctx.response = {"choices": []}

    ctx = _ctx()
    await LedgerStage(lambda req, attempts: rows.append(req), [broken, lambda c: seen.append(c.request_id)])(
        ctx, answer)
    assert ctx.status == "ok" and len(rows) == 1 and seen == [ctx.request_id]


def test_every_ledger_field_gets_its_own_value() -> None:
    """rows_from_context builds its rows positionally: a value in the wrong place would land in
    another column. Every value here is distinct, so any swap shows."""
    ctx = RequestContext(request=ChatRequest.from_body(
        {"model": "asked", "stream": True, "messages": [{"role": "user", "content": "x"}]}))
    ctx.request_id, ctx.wall_started, ctx.key_id, ctx.tenant = "req_1", 123.0, "key", "tenant"
    ctx.task, ctx.route, ctx.served_model, ctx.served_tier, ctx.strategy = "faq", "r", "served", "cheap", "cascade"
    ctx.usage = Usage(11, 12, 13, 14, 15)
    ctx.cost_usd, ctx.baseline_cost_usd, ctx.cache_status, ctx.cache_saved_usd = 0.5, 0.75, "miss", 0.25
    ctx.compression_saved_tokens, ctx.compression_saved_usd = 7, 0.125
    ctx.status, ctx.error_type, ctx.error, ctx.batch, ctx.served_service_tier = "error", "E", "boom", True, "flex"
    set_escalations(ctx, 2)
    ctx.attempts.append(Attempt(
        model="m1", provider="p1", started=99.0, latency_ms=3.5, usage=Usage(21, 22, 23, 24, 25), cost_usd=0.05,
        cost_source="computed", status="error", error="bad", tier="t1", purpose="judge", score=0.9,
        score_reason="why", accepted=False, batch=True, service_tier="priority"))
    req, (att,) = rows_from_context(ctx)
    fields = vars(req)
    assert fields.pop("latency_ms") > 0
    assert fields == {
        "request_id": "req_1", "ts": 123.0, "key_id": "key", "tenant": "tenant", "task": "faq", "route": "r",
        "requested_model": "asked", "served_model": "served", "tier": "cheap", "strategy": "cascade",
        "prompt_tokens": 11, "cached_tokens": 13, "completion_tokens": 12, "reasoning_tokens": 15,
        "cost_usd": 0.5, "baseline_cost_usd": 0.75, "cache_status": "miss", "cache_saved_usd": 0.25,
        "compression_saved_tokens": 7, "compression_saved_usd": 0.125, "n_attempts": 1, "escalations": 2,
        "status": "error", "error_type": "E", "error": "boom", "stream": True, "batch": True,
        "cache_write_tokens": 14, "service_tier": "flex",
    }
    assert vars(att) == {
        "request_id": "req_1", "seq": 0, "ts": 99.0, "model": "m1", "provider": "p1", "tier": "t1",
        "purpose": "judge", "prompt_tokens": 21, "cached_tokens": 23, "completion_tokens": 22,
        "reasoning_tokens": 25, "cost_usd": 0.05, "cost_source": "computed", "latency_ms": 3.5, "status": "error",
        "error": "bad", "score": 0.9, "score_reason": "why", "accepted": False, "batch": True,
        "cache_write_tokens": 24, "service_tier": "priority",
    }


@pytest.mark.parametrize("details", [None, [], "x", 3, {"cached_tokens": True}, {"cached_tokens": -4}])
def test_malformed_usage_details_read_as_nothing(details: Any) -> None:
    raw = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
           "prompt_tokens_details": details, "completion_tokens_details": details}
    usage = Usage.from_openai(raw)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens,
            usage.audio_prompt_tokens, usage.cached_audio_tokens) == (10, 5, 0, 0, 0, 0)


def test_usage_details_are_read_through_every_convention() -> None:
    raw = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
           "prompt_tokens_details": {"cached_tokens": 30.0, "audio_tokens": 20,
                                     "cached_tokens_details": {"audio_tokens": 5}},
           "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 8}}
    assert Usage.from_openai(raw) == Usage(100, 40, 30, 0, 10, None, 20, 5, 8)
    anthropic = {"input_tokens": 50, "output_tokens": 7, "cache_read_input_tokens": 20,
                 "cache_creation_input_tokens": 10}
    assert Usage.from_openai(anthropic) == Usage(80, 7, 20, 10, 0, None, 0, 0, 0)
