"""Accounting exactness: provider usage conventions, usage the provider left out, and the report's
arithmetic on a real ledger (each case here was wrong before the accounting audit)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.rows import att, req
from thrifty.catalog import Catalog, ModelInfo, ModelPrice, lookup_genai_price, resolve_price
from thrifty.cost import call_cost
from thrifty.errors import RequestTimeoutError
from thrifty.gateway import Gateway
from thrifty.ledger.report import batch_savings, spend_report
from thrifty.ledger.store import SQLiteStore
from thrifty.providers.function import FunctionProvider, InProcessProvider, chat_response
from thrifty.types import ChatRequest, Usage

PRICE = ModelPrice(input=1.0, output=2.0, cached_input=0.1)


# -- provider usage conventions (Usage.from_openai) ----------------------------------------------


def test_xai_reasoning_outside_completion_is_billed_even_when_smaller() -> None:
    # xAI: total_tokens = prompt + completion + reasoning; completion_tokens is the answer only.
    u = Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1800,
                           "completion_tokens_details": {"reasoning_tokens": 300}})
    assert (u.completion_tokens, u.reasoning_tokens) == (800, 300)
    assert call_cost(u, PRICE).usd == pytest.approx((1000 * 1.0 + 800 * 2.0) / 1e6)


def test_openai_reasoning_inside_completion_is_not_added_twice() -> None:
    u = Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                           "completion_tokens_details": {"reasoning_tokens": 300}})
    assert u.completion_tokens == 500


def test_moonshot_top_level_cached_tokens_bill_at_the_cached_rate() -> None:
    u = Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
                           "cached_tokens": 900})
    assert (u.cached_tokens, u.uncached_prompt_tokens) == (900, 100)
    assert call_cost(u, PRICE).usd == pytest.approx((100 * 1.0 + 900 * 0.1 + 100 * 2.0) / 1e6)


def test_openrouter_cache_write_tokens_are_read() -> None:
    u = Usage.from_openai({"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196,
                           "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100}})
    assert (u.cache_write_tokens, u.uncached_prompt_tokens) == (100, 94)
    price = ModelPrice(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    assert call_cost(u, price).usd == pytest.approx((94 * 3.0 + 100 * 3.75 + 2 * 15.0) / 1e6)


def test_openrouter_byok_cost_adds_the_providers_own_charge() -> None:
    # With the user's own provider key, usage.cost is only OpenRouter's fee.
    base = {"prompt_tokens": 194, "completion_tokens": 2, "cost": 0.00095,
            "cost_details": {"upstream_inference_cost": 0.019}}
    assert Usage.from_openai({**base, "is_byok": True}).cost == pytest.approx(0.00095 + 0.019)
    assert Usage.from_openai({**base, "is_byok": False}).cost == pytest.approx(0.00095)


def test_responses_style_usage_keeps_cached_tokens_inside_input() -> None:
    u = Usage.from_openai({"input_tokens": 1000, "output_tokens": 50, "total_tokens": 1050,
                           "input_tokens_details": {"cached_tokens": 800}})
    assert (u.prompt_tokens, u.cached_tokens, u.uncached_prompt_tokens) == (1000, 800, 200)


def test_price_tiered_by_prompt_size_is_billed_at_the_tier_of_the_call() -> None:
    # gemini-2.5-pro in genai-prices: $1.25 / $10 per M up to 200k prompt tokens, $2.50 / $15 above.
    price = resolve_price("gemini-2.5-pro", "gemini-2.5-pro", None)
    assert price is not None and price.input == pytest.approx(1.25)
    assert call_cost(Usage(prompt_tokens=300_000, completion_tokens=1000), price).usd == pytest.approx(
        (300_000 * 2.50 + 1000 * 15.0) / 1e6)
    assert call_cost(Usage(prompt_tokens=1000, completion_tokens=1000), price).usd == pytest.approx(
        (1000 * 1.25 + 1000 * 10.0) / 1e6)
    # A configured price is flat: it applies at every size.
    flat = resolve_price("gemini-2.5-pro", "gemini-2.5-pro", {"input": 1.0, "output": 2.0})
    assert flat is not None and call_cost(Usage(prompt_tokens=300_000), flat).usd == pytest.approx(0.3)


def test_genai_prices_lookup_knows_cache_write_prices() -> None:
    price = lookup_genai_price("claude-3-5-sonnet-20241022")
    assert price is not None and price.cache_write == pytest.approx(3.75)


# -- usage the provider left out: counted offline, flagged estimated, never a silent $0 ---------------


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}},
        "models": {"cheap": {"provider": "p", "price": {"input": 1.0, "output": 2.0}},
                   "big": {"provider": "p", "price": {"input": 10.0, "output": 40.0}}},
        "baseline": "big",
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }


def _attempts(gw: Gateway) -> list[tuple[Any, ...]]:
    gw.flush()
    assert gw.config.ledger.path
    return SQLiteStore(gw.config.ledger.path).query(
        "SELECT prompt_tokens, completion_tokens, cost_usd, cost_source FROM attempts")


MSGS = [{"role": "user", "content": "Summarise the plot of Hamlet in two sentences, please."}]


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},  # nulls
    {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},  # zeros
])
async def test_null_or_zero_usage_is_counted_offline_not_free(tmp_path: Path, usage: dict[str, Any]) -> None:
    gw = Gateway.from_config(_config(tmp_path), providers={"p": FunctionProvider(
        lambda b: chat_response(b["model"], "Hamlet avenges his father and everyone dies.", usage))})
    await gw.chat(model="cheap", messages=MSGS)
    (pt, ct, cost, source), = _attempts(gw)
    assert pt > 0 and ct > 0 and source == "estimated"
    assert cost == pytest.approx((pt * 1.0 + ct * 2.0) / 1e6)
    await gw.aclose()


async def test_ollama_zero_prompt_tokens_on_its_cache_hit_is_counted(tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path), providers={"p": FunctionProvider(
        lambda b: chat_response(b["model"], "ok", {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}))})
    await gw.chat(model="cheap", messages=MSGS)
    (pt, ct, _, source), = _attempts(gw)
    assert pt > 0 and ct == 7 and source == "estimated"
    await gw.aclose()


async def test_tool_call_answer_without_usage_counts_its_arguments(tmp_path: Path) -> None:
    def fn(body: dict[str, Any]) -> dict[str, Any]:
        r = chat_response(body["model"], "")
        r.pop("usage")
        r["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]}
        return r

    gw = Gateway.from_config(_config(tmp_path), providers={"p": FunctionProvider(fn)})
    await gw.chat(model="cheap", messages=MSGS)
    (_, ct, _, source), = _attempts(gw)
    assert ct > 5 and source == "estimated"
    await gw.aclose()


class MoonshotStream(InProcessProvider):
    """Moonshot streams its usage inside the last choice, not at the chunk's top level."""

    name = "moonshot"

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": {
            "prompt_tokens": 1336, "completion_tokens": 31, "total_tokens": 1367, "cached_tokens": 1280}}]}


async def test_moonshot_stream_usage_in_the_choice_is_exact(tmp_path: Path) -> None:
    gw = Gateway.from_config(_config(tmp_path), providers={"p": MoonshotStream()})
    ctx = await gw.handle(ChatRequest.from_body({"model": "cheap", "messages": MSGS, "stream": True}))
    assert ctx.chunks is not None
    async for _ in ctx.chunks:
        pass
    assert _attempts(gw) == [(1336, 31, pytest.approx((56 * 1.0 + 1280 * 1.0 + 31 * 2.0) / 1e6), "computed")]
    await gw.aclose()


async def test_call_cancelled_in_flight_by_the_deadline_is_recorded_at_its_prompt(tmp_path: Path) -> None:
    async def never(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(30)
        raise AssertionError("the deadline cancels this call")

    cfg = {**_config(tmp_path), "server": {"request_timeout_s": 0.2}}
    gw = Gateway.from_config(cfg, providers={"p": FunctionProvider(never)})
    with pytest.raises(RequestTimeoutError):
        await gw.chat(model="cheap", messages=MSGS)
    (pt, ct, cost, source), = _attempts(gw)
    assert pt > 0 and ct == 0 and source == "estimated" and cost == pytest.approx(pt * 1.0 / 1e6)
    (n, req_cost), = SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT n_attempts, cost_usd FROM requests")
    assert n == 1 and req_cost == pytest.approx(cost)
    await gw.aclose()


# -- the report's arithmetic ------------------------------------------------------------------------


def _store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "l.db"))


def test_report_saving_holds_compression_and_strategies_add_up(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([
        req(1, "a", 0.1, 1.0, strategy="routing", compression_saved_usd=0.05),
        req(2, "a", 0.0, 1.0, strategy="cache", cache_status="hit", cache_saved_usd=0.1),
        req(3, "b", 1.5, 1.0, strategy="cascade"),
        req(4, "b", 0.2, 1.0, strategy="cascade", status="error", error_type="UpstreamError"),
    ], [att(1)])
    total, = spend_report(store)
    # (1.0 - 0.1) + (1.0 - 0) + (1.0 - 1.5) - 0.2: the failed request's spend is a loss; the
    # baseline priced request 1's prompt before compression, so its 0.05 is inside its 0.9
    assert total.saved_usd == pytest.approx(1.2)
    assert total.saved_usd <= total.baseline_usd
    by = spend_report(store, "strategy")
    assert sum(r.saved_usd for r in by) == pytest.approx(total.saved_usd)
    assert sum(r.spend_usd for r in by) == pytest.approx(total.spend_usd)


def test_the_migration_keeps_an_old_rows_saving_and_bounds_it_by_its_baseline(tmp_path: Path) -> None:
    """Rows written before 006_baseline_before_compression priced the compressed prompt and had
    compression's saving added on top (here 0.9 + 0.05 of a 0.3 baseline read 316%)."""
    store = _store(tmp_path)
    store.write([
        req(1, "a", 0.05, 0.3, compression_saved_usd=0.9),
        req(2, "a", 0.1, 1.0),
        req(3, "a", 0.2, None, status="error", error_type="UpstreamError", compression_saved_usd=0.1),  # type: ignore[arg-type]
    ], [att(1)])
    # As a ledger from before the migration: it has not run yet when the rows are there.
    store.execute("DELETE FROM _thrifty_migrations WHERE name = '006_baseline_before_compression'")
    store.close()
    old = _store(tmp_path)
    assert old.query("SELECT request_id, baseline_cost_usd FROM requests ORDER BY request_id") == [
        ("r1", pytest.approx(1.2)), ("r2", 1.0), ("r3", None)]
    row1, = spend_report(old, "model")
    assert row1.saved_usd == pytest.approx(1.15 + 0.9 - 0.2)  # r1 as before (0.3 - 0.05 + 0.9), r2, r3's loss
    assert row1.saved_usd <= row1.baseline_usd


def test_report_claims_no_saving_for_a_request_of_unknown_cost(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write([
        req(1, "a", 0.1, 1.0),
        req(2, "unpriced", None, 1.0),  # type: ignore[arg-type]  # a model without a price
        req(3, "a", 0.0, None, strategy="cache", cache_status="hit", cache_saved_usd=0.3),  # type: ignore[arg-type]
    ], [att(1), dataclasses.replace(att(2), cost_usd=None, cost_source="unknown"),
        dataclasses.replace(att(1), seq=1, cost_source="estimated")])
    total, = spend_report(store)
    assert total.saved_usd == pytest.approx(0.9 + 0.3)
    assert (total.unpriced_requests, total.estimated_requests) == (2, 1)


def test_batch_savings_honour_until(tmp_path: Path) -> None:
    store = _store(tmp_path)
    old, new = time.time() - 10 * 86400, time.time()
    rows = [dataclasses.replace(att(i), ts=ts, model="m", cost_usd=0.5, batch=True) for i, ts in ((1, old), (2, new))]
    store.write([req(1, "m", 0.5, 1.0, ts=old, batch=True), req(2, "m", 0.5, 1.0, ts=new, batch=True)], rows)
    catalog = Catalog([ModelInfo("m", "p", "m", ModelPrice(input=1e4, output=1e4))])
    assert batch_savings(store, catalog, until=new - 86400).requests == 1
    assert batch_savings(store, catalog).requests == 2
