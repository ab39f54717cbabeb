"""Audio tokens: read from OpenAI's usage shapes and priced at the audio rates, not as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from thrifty.catalog import ModelPrice, lookup_genai_price, resolve_price
from thrifty.config import PriceConfig
from thrifty.cost import call_cost, price_tokens
from thrifty.gateway import Gateway
from thrifty.ledger.store import SQLiteStore
from thrifty.pipeline.accounting import priced_usage
from thrifty.providers.function import FunctionProvider, chat_response
from thrifty.types import ChatRequest, Usage

# gpt-realtime's list prices per million tokens (text 4/16, cached text 0.4, audio 32/64, cached audio 0.4).
REALTIME = ModelPrice(input=4.0, output=16.0, cached_input=0.4, input_audio=32.0, output_audio=64.0,
                      cached_audio_input=0.4)
# An audio model whose audio rates are not known (genai-prices lists none for gpt-4o-audio-preview).
NO_AUDIO_RATE = ModelPrice(input=2.5, output=10.0)

# A chat completion of gpt-4o-audio-preview: audio question in, spoken answer out.
CHAT_AUDIO_USAGE = {
    "prompt_tokens": 150,
    "completion_tokens": 300,
    "total_tokens": 450,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 120, "text_tokens": 30, "image_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 250, "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0, "text_tokens": 50},
}


def test_chat_completions_audio_counts_are_read() -> None:
    u = Usage.from_openai(CHAT_AUDIO_USAGE)
    assert (u.prompt_tokens, u.audio_prompt_tokens, u.cached_audio_tokens) == (150, 120, 0)
    assert (u.completion_tokens, u.audio_completion_tokens) == (300, 250)


def test_realtime_usage_with_cached_audio_is_read() -> None:
    raw = {
        "total_tokens": 1300, "input_tokens": 1000, "output_tokens": 300,
        "input_token_details": {"text_tokens": 200, "audio_tokens": 800, "image_tokens": 0, "cached_tokens": 640,
                                "cached_tokens_details": {"text_tokens": 128, "audio_tokens": 512, "image_tokens": 0}},
        "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
    }
    u = Usage.from_openai(raw)
    assert (u.prompt_tokens, u.cached_tokens, u.audio_prompt_tokens, u.cached_audio_tokens) == (1000, 640, 800, 512)
    assert (u.completion_tokens, u.audio_completion_tokens) == (300, 240)
    # 72 uncached text, 128 cached text, 288 uncached audio, 512 cached audio; 60 text out, 240 audio out.
    expected = (72 * 4.0 + 128 * 0.4 + 288 * 32.0 + 512 * 0.4 + 60 * 16.0 + 240 * 64.0) / 1e6
    cost = call_cost(u, REALTIME)
    assert cost.usd == pytest.approx(expected, rel=1e-12) and cost.source == "computed"


def test_audio_is_priced_at_audio_rates() -> None:
    u = Usage.from_openai(CHAT_AUDIO_USAGE)
    expected = (30 * 4.0 + 120 * 32.0 + 50 * 16.0 + 250 * 64.0) / 1e6
    assert call_cost(u, REALTIME).usd == pytest.approx(expected, rel=1e-12)
    # Priced as text (as before) the call came to under a third of that.
    assert price_tokens(Usage(prompt_tokens=150, completion_tokens=300), REALTIME) < expected / 3


def test_cached_tokens_beyond_the_text_part_are_audio() -> None:
    # Chat completions do not split cached tokens by modality; more cached than text means audio.
    u = Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 10,
                           "prompt_tokens_details": {"cached_tokens": 900, "audio_tokens": 800}})
    assert (u.cached_tokens, u.cached_audio_tokens, u.uncached_prompt_tokens) == (900, 700, 100)
    expected = (200 * 0.4 + 700 * 0.4 + 100 * 32.0 + 10 * 16.0) / 1e6
    assert price_tokens(u, REALTIME) == pytest.approx(expected, rel=1e-12)


def test_audio_counts_never_exceed_their_totals() -> None:
    u = Usage.from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                           "prompt_tokens_details": {"audio_tokens": 50, "cached_tokens": 8,
                                                     "cached_tokens_details": {"audio_tokens": 40}},
                           "completion_tokens_details": {"audio_tokens": 9}})
    assert (u.audio_prompt_tokens, u.cached_audio_tokens, u.audio_completion_tokens) == (10, 8, 5)
    assert price_tokens(u, REALTIME) == pytest.approx((8 * 0.4 + 2 * 32.0 + 5 * 64.0) / 1e6, rel=1e-12)


def test_unknown_audio_rate_prices_as_text_and_says_estimated() -> None:
    u = Usage.from_openai(CHAT_AUDIO_USAGE)
    cost = call_cost(u, NO_AUDIO_RATE)
    assert cost.usd == pytest.approx((150 * 2.5 + 300 * 10.0) / 1e6, rel=1e-12)
    assert cost.source == "estimated"
    # Text-only usage at the same price stays computed.
    assert call_cost(Usage(prompt_tokens=150, completion_tokens=300), NO_AUDIO_RATE).source == "computed"
    # The provider's own figure still wins.
    assert call_cost(Usage.from_openai({**CHAT_AUDIO_USAGE, "cost": 0.02}), NO_AUDIO_RATE).source == "provider"


def test_cached_audio_without_its_rate_pays_the_audio_input_rate() -> None:
    # As for text: an unknown cache discount is no discount, and the cost stays computed.
    price = ModelPrice(input=2.5, output=10.0, input_audio=32.0, output_audio=64.0)
    u = Usage(prompt_tokens=100, cached_tokens=60, audio_prompt_tokens=100, cached_audio_tokens=60)
    cost = call_cost(u, price)
    assert cost.usd == pytest.approx(100 * 32.0 / 1e6, rel=1e-12) and cost.source == "computed"


def test_batch_halves_audio_rates_too() -> None:
    u = Usage.from_openai(CHAT_AUDIO_USAGE)
    assert price_tokens(u, REALTIME, batch=True) == pytest.approx(price_tokens(u, REALTIME) / 2, rel=1e-12)


def test_usage_sum_and_openai_shape_keep_audio() -> None:
    u = Usage.from_openai(CHAT_AUDIO_USAGE)
    total = u + u
    assert (total.audio_prompt_tokens, total.audio_completion_tokens) == (240, 500)
    again = Usage.from_openai(u.to_openai())
    assert again == u
    # Text-only usage keeps the shape it had.
    assert "audio_tokens" not in Usage(prompt_tokens=3).to_openai()["prompt_tokens_details"]


def test_genai_prices_audio_rates_match_its_own_calculation() -> None:
    price = lookup_genai_price("gpt-realtime")
    assert price is not None and price.input_audio is not None and price.output_audio is not None
    assert price.input_audio > price.input and price.output_audio > price.output
    u = Usage(prompt_tokens=1000, completion_tokens=300, cached_tokens=640, audio_prompt_tokens=800,
              cached_audio_tokens=512, audio_completion_tokens=240)
    reference = calc_price(GenaiUsage(input_tokens=1000, cache_read_tokens=640, input_audio_tokens=800,
                                      cache_audio_read_tokens=512, output_tokens=300, output_audio_tokens=240),
                           model_ref="gpt-realtime")
    assert price_tokens(u, price) == pytest.approx(float(reference.total_price), rel=1e-9)


def test_a_model_without_listed_audio_rates_has_none() -> None:
    price = lookup_genai_price("gpt-4o")
    assert price is not None
    assert (price.input_audio, price.output_audio, price.cached_audio_input) == (None, None, None)


def test_tiered_prices_pass_audio_to_genai_prices() -> None:
    # A price kept as a genai-prices reference is priced by the library with the audio counts.
    ref = ModelPrice(input=0.0, output=0.0, genai_ref=("gpt-realtime", None))
    u = Usage(prompt_tokens=500, completion_tokens=100, audio_prompt_tokens=400, audio_completion_tokens=80)
    reference = calc_price(GenaiUsage(input_tokens=500, input_audio_tokens=400, output_tokens=100,
                                      output_audio_tokens=80), model_ref="gpt-realtime")
    assert price_tokens(u, ref) == pytest.approx(float(reference.total_price), rel=1e-9)


def test_configured_audio_rates_override_and_flatten() -> None:
    fields = PriceConfig(input_audio=40, output_audio=80).model_dump(exclude_none=True)
    price = resolve_price("gpt-4o-audio-preview", "gpt-4o-audio-preview", fields)
    assert price is not None and (price.input_audio, price.output_audio) == (40, 80)
    tiered = ModelPrice(input=1.0, output=2.0, genai_ref=("gemini-2.5-pro", None))
    assert tiered.with_overrides({"input_audio": 3.0}).genai_ref is None


def test_priced_usage_marks_unknown_audio_rate_estimated() -> None:
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    usage, cost = priced_usage(CHAT_AUDIO_USAGE, request, {"choices": []}, NO_AUDIO_RATE)
    assert usage.audio_completion_tokens == 250 and cost.source == "estimated"


async def test_gateway_ledger_records_the_audio_priced_cost(tmp_path: Path) -> None:
    def fn(body: dict[str, Any]) -> dict[str, Any]:
        return chat_response(body["model"], "(spoken answer)", CHAT_AUDIO_USAGE)

    config = {
        "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"voice": {"provider": "p", "upstream_model": "gpt-realtime",
                             "price": {"input": 4.0, "output": 16.0, "cached_input": 0.4, "input_audio": 32.0,
                                       "output_audio": 64.0, "cached_audio_input": 0.4}}},
        "ledger": {"path": str(tmp_path / "ledger.db")},
    }
    gw = Gateway.from_config(config, providers={"p": FunctionProvider(fn)})
    try:
        await gw.chat(model="voice", messages=[{"role": "user", "content": "hi"}])
        gw.flush()
        rows = SQLiteStore(str(tmp_path / "ledger.db")).query("SELECT cost_usd, cost_source FROM attempts")
    finally:
        await gw.aclose()
    expected = (30 * 4.0 + 120 * 32.0 + 50 * 16.0 + 250 * 64.0) / 1e6
    assert len(rows) == 1
    assert rows[0][0] == pytest.approx(expected, rel=1e-12) and rows[0][1] == "computed"
