"""Golden tests: real-shaped usage objects of each provider convention, priced exactly."""

from __future__ import annotations

from datetime import UTC

import pytest

from thrifty.catalog import ModelPrice
from thrifty.cost import call_cost, price_tokens
from thrifty.types import Usage

GPT4O = ModelPrice(input=2.50, output=10.00, cached_input=1.25, batch_input=1.25, batch_output=5.00)
DEEPSEEK = ModelPrice(input=0.27, output=1.10, cached_input=0.07)
REASONER = ModelPrice(input=0.55, output=2.19, cached_input=0.14)


def test_openai_cached_tokens_are_inside_prompt_tokens() -> None:
    raw = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    u = Usage.from_openai(raw)
    assert (u.prompt_tokens, u.cached_tokens, u.uncached_prompt_tokens) == (2006, 1920, 86)
    # 86 uncached at $2.50/M + 1920 cached at $1.25/M + 300 output at $10/M
    expected = (86 * 2.50 + 1920 * 1.25 + 300 * 10.00) / 1e6
    assert call_cost(u, GPT4O).usd == pytest.approx(expected, rel=1e-12)
    assert call_cost(u, GPT4O).source == "computed"


def test_deepseek_cache_hit_and_miss_fields() -> None:
    raw = {
        "prompt_tokens": 1500,
        "completion_tokens": 200,
        "total_tokens": 1700,
        "prompt_cache_hit_tokens": 1024,
        "prompt_cache_miss_tokens": 476,
    }
    u = Usage.from_openai(raw)
    assert u.cached_tokens == 1024 and u.uncached_prompt_tokens == 476
    assert call_cost(u, DEEPSEEK).usd == pytest.approx((476 * 0.27 + 1024 * 0.07 + 200 * 1.10) / 1e6)


def test_reasoning_tokens_bill_as_output_and_are_not_double_counted() -> None:
    # DeepSeek reasoner / OpenAI o-series: reasoning is included in completion_tokens.
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 900,
        "completion_tokens_details": {"reasoning_tokens": 800},
    }
    u = Usage.from_openai(raw)
    assert u.completion_tokens == 900 and u.reasoning_tokens == 800
    assert call_cost(u, REASONER).usd == pytest.approx((100 * 0.55 + 900 * 2.19) / 1e6)


def test_reasoning_reported_apart_is_added_to_output() -> None:
    # A provider that reports reasoning outside completion_tokens must still pay for it.
    u = Usage.from_openai({"prompt_tokens": 10, "completion_tokens": 50, "completion_tokens_details": {"reasoning_tokens": 400}})
    assert u.completion_tokens == 450


def test_anthropic_style_usage_adds_cache_reads_back() -> None:
    raw = {"input_tokens": 50, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 80}
    u = Usage.from_openai(raw)
    assert (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.uncached_prompt_tokens) == (1250, 1000, 200, 50)
    price = ModelPrice(input=3.0, output=15.0, cached_input=0.30, cache_write=3.75)
    assert call_cost(u, price).usd == pytest.approx((50 * 3 + 1000 * 0.30 + 200 * 3.75 + 80 * 15) / 1e6)


def test_provider_reported_cost_wins() -> None:
    u = Usage.from_openai({"prompt_tokens": 10, "completion_tokens": 10, "cost": 0.00042})
    cost = call_cost(u, GPT4O)
    assert cost.usd == 0.00042 and cost.source == "provider"


def test_unknown_price_is_unknown_not_an_error() -> None:
    cost = call_cost(Usage(prompt_tokens=10, completion_tokens=10), None)
    assert cost.usd is None and cost.source == "unknown"


def test_batch_prices_and_default_half_price() -> None:
    u = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert price_tokens(u, GPT4O, batch=True) == pytest.approx(1.25 + 5.00)
    assert price_tokens(u, DEEPSEEK, batch=True) == pytest.approx((0.27 + 1.10) / 2)


def test_garbage_usage_fields_are_ignored() -> None:
    u = Usage.from_openai({"prompt_tokens": "many", "completion_tokens": -3, "cost": True})
    assert (u.prompt_tokens, u.completion_tokens, u.cost) == (0, 0, None)


def test_a_price_that_changes_with_the_hour_is_read_at_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSeek charges twice as much in its peak hours (genai-prices: 01-04 and 06-10 UTC). The
    catalog read one figure at start-up, so a gateway started at a peak hour priced every later
    call at the peak rate, and one started off-peak under-counted the peak calls by half."""
    from datetime import datetime

    from thrifty import cost
    from thrifty.catalog import lookup_genai_price

    price = lookup_genai_price("deepseek-flash", "deepseek")
    assert price is not None and price.genai_ref == ("deepseek-flash", "deepseek")
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    day = datetime.now(UTC).date()
    monkeypatch.setattr(cost, "now", lambda: datetime(day.year, day.month, day.day, 2, 0, tzinfo=UTC))
    peak = call_cost(usage, price)
    monkeypatch.setattr(cost, "now", lambda: datetime(day.year, day.month, day.day, 14, 0, tzinfo=UTC))
    off_peak = call_cost(usage, price)
    assert peak.source == off_peak.source == "computed"
    assert peak.usd == pytest.approx(2 * off_peak.usd)  # type: ignore[operator]
    # A flat price is not asked per call.
    flat = lookup_genai_price("gpt-4o", None)
    assert flat is not None and flat.genai_ref is None
