"""Each provider's documented ``usage`` shape, sent through a real gateway on 127.0.0.1 by the real
``openai`` client, lands in the ledger at the cost a hand calculation gives.

The mock upstream speaks only the OpenAI and DeepSeek conventions (and ``usage.cost``, and no
usage at all), so the other shapes come from a scripted upstream that answers each model with
its provider's usage object, streamed or not (Gemini's OpenAI-compatible endpoint puts a running
usage in every chunk).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from thrifty.batching.deferred import run_deferred
from thrifty.gateway import Gateway
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import run_in_thread

# USD per million tokens; cache writes cost more than input (Anthropic's 1.25x), reads less.
PRICE = {"input": 1.0, "output": 10.0, "cached_input": 0.1, "cache_write": 1.25}
M = 1_000_000

# Gemini's OpenAI-compatible endpoint, a thinking model: completion_tokens is the visible answer
# only, total_tokens also counts the thoughts, and nothing names them
# (https://discuss.ai.google.dev/t/endpoint-https-generativelanguage-googleapis-com-v1beta-openai-chat-completions-is-not-compliant-with-api-specs/127400:
# {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}).
GEMINI = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 103}
SHAPES: dict[str, dict[str, Any]] = {
    "gemini-thinking": GEMINI,
    # The same with an implicit cache hit (prompt_tokens_details.cached_tokens, inside prompt_tokens).
    "gemini-cached": {"prompt_tokens": 2000, "completion_tokens": 10, "total_tokens": 2110,
                      "prompt_tokens_details": {"cached_tokens": 1500}},
    # OpenRouter on Claude (openrouter.ai/docs/use-cases/usage-accounting): cache reads and writes
    # inside prompt_tokens; here without usage.cost, so thrifty prices it.
    "openrouter-claude": {"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196,
                          "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 100,
                                                    "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}},
    # OpenAI chat, a reasoning model with a cache hit: all inside the totals.
    "openai-o": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                 "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    # DeepSeek: hit + miss == prompt_tokens, reasoning inside completion_tokens.
    "deepseek": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                 "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36,
                 "completion_tokens_details": {"reasoning_tokens": 30}},
    # Together / Fireworks / vLLM / Ollama: plain counts.
    "plain": {"prompt_tokens": 26, "completion_tokens": 298, "total_tokens": 324},
    # OpenAI audio (gpt-4o-audio-preview): audio inside the totals, at its own rates.
    "openai-audio": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 600},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 400}},
}
AUDIO_PRICE = {**PRICE, "input_audio": 40.0, "output_audio": 80.0}
# (uncached input, cached, cache writes, output) each shape bills, by hand.
BILLED: dict[str, tuple[int, int, int, int]] = {
    "gemini-thinking": (9, 0, 0, 103 - 9),
    "gemini-cached": (500, 1500, 0, 110),
    "openrouter-claude": (44, 50, 100, 2),
    "openai-o": (86, 1920, 0, 300),
    "deepseek": (36, 64, 0, 50),
    "plain": (26, 0, 0, 298),
    "openai-audio": (1000, 0, 0, 500),
}


def hand_cost(shape: str) -> float:
    fresh, cached, written, out = BILLED[shape]
    if shape == "openai-audio":  # 400 text + 600 audio in, 100 text + 400 audio out
        return (400 * 1.0 + 600 * 40.0 + 100 * 10.0 + 400 * 80.0) / M
    return (fresh * PRICE["input"] + cached * PRICE["cached_input"] + written * PRICE["cache_write"]
            + out * PRICE["output"]) / M


def _completion(model: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": SHAPES[model]}


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = body["model"]
    if not body.get("stream"):
        return JSONResponse(_completion(model))

    async def events() -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        usage = SHAPES[model]
        for i, word in enumerate(["H", "i"]):
            chunk: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": {"content": word},
                                                          "finish_reason": "stop" if i else None}]}
            if model.startswith("gemini"):  # a running usage on every chunk, no usage-only chunk
                chunk["usage"] = {**usage, "completion_tokens": usage["completion_tokens"] - (1 - i)}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        if not model.startswith("gemini"):
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    scripted = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    mock_cfg = MockConfig.from_dict({"models": {
        "mock-deepseek": {"usage_convention": "deepseek", "reasoning_tokens": 40, "output_tokens": [20, 20]},
        "mock-quiet": {"usage_convention": "none", "output_tokens": [20, 20]},
        # OpenRouter: usage.cost, the provider's own figure, wins over any computation.
        "mock-router": {"price": {"input": 3.0, "output": 7.0, "cached_input": 0.5}, "output_tokens": [20, 20]},
        # The Responses API: input_tokens_details.cached_tokens and output_tokens_details.reasoning_tokens.
        "mock-resp": {"prompt_cache": True, "reasoning_tokens": 50, "output_tokens": [20, 20]},
    }})
    with run_in_thread(scripted) as up, run_in_thread(create_mock(mock_cfg)) as mock:
        models: dict[str, Any] = {name: {"provider": "s", "price": PRICE} for name in SHAPES}
        models["openai-audio"]["price"] = AUDIO_PRICE
        models.update({name: {"provider": "m", "price": PRICE} for name in MOCKED})
        gw = Gateway.from_config({
            "providers": {"s": {"base_url": up.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0},
                          "m": {"base_url": mock.url + "/v1", "api_key": "sk-test-0000", "max_retries": 0}},
            "models": models,
            "cache": {"enabled": False},
            "ledger": {"path": str(Path(tmp_path_factory.mktemp("shapes")) / "ledger.db")},
        })
        with run_in_thread(gw.app()) as server:
            yield gw, openai.OpenAI(base_url=server.url + "/v1", api_key="sk-client-0000", max_retries=0, timeout=30)
        gw.close()


MOCKED = ("mock-deepseek", "mock-quiet", "mock-router", "mock-resp")


def _last_attempt(gw: Gateway, model: str) -> dict[str, Any]:
    gw.flush()
    assert gw.config.ledger.path
    with sqlite3.connect(gw.config.ledger.path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM attempts WHERE model = ? ORDER BY ts DESC, seq DESC LIMIT 1",
                         (model,)).fetchone()
    assert row is not None
    return dict(row)


def _ask(client: openai.OpenAI, model: str, stream: bool) -> None:
    msgs: Any = [{"role": "user", "content": "Say hi"}]
    if stream:
        for _ in client.chat.completions.create(model=model, messages=msgs, stream=True):
            pass
    else:
        client.chat.completions.create(model=model, messages=msgs)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_usage_shape_is_priced_as_billed(gateway: tuple[Gateway, openai.OpenAI], shape: str,
                                             stream: bool) -> None:
    gw, client = gateway
    _ask(client, shape, stream)
    row = _last_attempt(gw, shape)
    fresh, cached, written, out = BILLED[shape]
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == \
        (fresh + cached + written, cached, out)
    assert row["cost_source"] == "computed"
    assert row["cost_usd"] == pytest.approx(hand_cost(shape), rel=1e-9)


def test_gemini_thoughts_are_reasoning_tokens(gateway: tuple[Gateway, openai.OpenAI]) -> None:
    """The tokens total_tokens counts beyond prompt and completion are the hidden thoughts: billed as
    output and shown as reasoning, not dropped (they were priced as free: $0.000019 for $0.000949)."""
    gw, client = gateway
    _ask(client, "gemini-thinking", False)
    row = _last_attempt(gw, "gemini-thinking")
    assert row["reasoning_tokens"] == 103 - 9 - 1
    assert row["cost_usd"] == pytest.approx((9 * 1.0 + 94 * 10.0) / M)


def test_mock_deepseek_convention(gateway: tuple[Gateway, openai.OpenAI]) -> None:
    gw, client = gateway
    reply = client.chat.completions.create(model="mock-deepseek", messages=[{"role": "user", "content": "Say hi"}])
    assert reply.usage is not None
    row = _last_attempt(gw, "mock-deepseek")
    p, c = reply.usage.prompt_tokens, reply.usage.completion_tokens
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (p, c, 40)
    assert row["cost_source"] == "computed"
    assert row["cost_usd"] == pytest.approx((p * PRICE["input"] + c * PRICE["output"]) / M)


def test_stream_without_usage_is_counted_and_estimated(gateway: tuple[Gateway, openai.OpenAI]) -> None:
    gw, client = gateway
    _ask(client, "mock-quiet", True)
    row = _last_attempt(gw, "mock-quiet")
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["cost_source"] == "estimated"
    assert row["cost_usd"] == pytest.approx(
        (row["prompt_tokens"] * PRICE["input"] + row["completion_tokens"] * PRICE["output"]) / M)


@pytest.mark.parametrize("stream", [False, True])
def test_provider_reported_cost_wins(gateway: tuple[Gateway, openai.OpenAI], stream: bool) -> None:
    gw, client = gateway
    _ask(client, "mock-router", stream)
    row = _last_attempt(gw, "mock-router")
    p, c = row["prompt_tokens"], row["completion_tokens"]
    assert row["cost_source"] == "provider"
    assert row["cost_usd"] == pytest.approx((p * 3.0 + c * 7.0) / M, rel=1e-6)


def test_responses_api_usage(gateway: tuple[Gateway, openai.OpenAI]) -> None:
    gw, client = gateway
    text = " ".join(f"word{i}" for i in range(1500))
    client.responses.create(model="mock-resp", input=text)
    reply = client.responses.create(model="mock-resp", input=text)  # the same prefix: cached
    usage = reply.usage
    assert usage is not None and usage.input_tokens_details.cached_tokens >= 1024
    row = _last_attempt(gw, "mock-resp")
    cached = usage.input_tokens_details.cached_tokens
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == \
        (usage.input_tokens, cached, usage.output_tokens, 50)
    assert row["cost_source"] == "computed"
    assert row["cost_usd"] == pytest.approx(
        ((usage.input_tokens - cached) * 1.0 + cached * 0.1 + usage.output_tokens * 10.0) / M)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def with_cache_usage(app: ASGI) -> ASGI:
    """The mock, whose Batch API answers report cache reads and writes (OpenRouter's fields, inside
    prompt_tokens): half of each prompt read from the cache, a quarter written to it."""

    async def wrapped(scope: Scope, receive: Callable[[], Awaitable[Message]],
                      send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/content"):
            await app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    lines = [_cached_line(line) for line in b"".join(chunks).decode().splitlines() if line]
                    body = ("\n".join(lines) + "\n").encode()
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})

        await app(scope, receive, keep)

    return wrapped


def _cached_line(line: str) -> str:
    row = json.loads(line)
    usage = ((row.get("response") or {}).get("body") or {}).get("usage")
    if isinstance(usage, dict):
        p = usage["prompt_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": p // 2, "cache_write_tokens": p // 4}
    return json.dumps(row)


async def test_batch_discount_applies_to_cache_reads_and_writes(tmp_path: Path) -> None:
    """A Batch API answer's cache reads and writes pay half their price, as its input and output
    do: reads were charged at the batch input price (here 0.5, for 0.05) and writes, which
    cost more than input, capped at it (0.5, for 0.625)."""
    rules = [{"pattern": ".", "answer": "positive"}]
    mock = create_mock(MockConfig.from_dict({"models": {"claude": {"answers": rules}}}))
    with run_in_thread(with_cache_usage(mock)) as up:
        gw = Gateway.from_config({
            "providers": {"m": {"base_url": up.url + "/v1", "api_key": "sk-test-upstream-1234"}},
            "models": {"claude": {"provider": "m", "price": {"input": 1.0, "output": 4.0, "cached_input": 0.1,
                                                               "cache_write": 1.25}}},
            "ledger": {"path": str(tmp_path / "ledger.db")},
            "batching": {"deferred": {"poll_interval_s": 0.05}},
        })
        try:
            items = [{"id": f"r{i}", "input": f"it works #{i} " + "and more " * i} for i in range(3)]
            job, _ = await run_deferred(gw, items, task="Classify the sentiment.", model="claude",
                                        labels=["positive", "negative"], interval=0.05)
        finally:
            await gw.aclose()
    assert job.status == "finished"
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT cost_usd, cost_source, prompt_tokens, cached_tokens, completion_tokens"
                          " FROM attempts WHERE batch").fetchall()
    assert len(rows) == 3
    for cost, source, prompt, cached, completion in rows:
        written = prompt // 4
        assert source == "computed" and cached == prompt // 2 and cached > 0 and written > 0
        fresh = prompt - cached - written
        assert cost == pytest.approx((fresh * 0.5 + cached * 0.05 + written * 0.625 + completion * 2.0) / M)
