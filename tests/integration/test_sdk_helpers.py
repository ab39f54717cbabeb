"""The openai SDK's higher-level helpers through a gateway on 127.0.0.1 in front of the mock
upstream: ``chat.completions.parse`` with nested Pydantic models (response format and
``pydantic_function_tool``), ``responses.parse(text_format=...)``, and the
``chat.completions.stream`` helper left midway by its reader with the cache on, and a custom
tool call (GPT-5's free-form ``{"type": "custom"}`` tools) stored from a stream.

Real servers on loopback (the gateway, the mock upstream, a scripted upstream streaming a custom
tool call as OpenAI does) and the real ``openai`` client.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fixtures.served import reset, sent, serving
from thrifty.mock.app import create_app as create_mock
from thrifty.mock.behaviour import MockConfig
from thrifty.mock.server import RunningServer, run_in_thread


class City(BaseModel):
    name: str
    population: int


class Report(BaseModel):
    """What an app's ``.parse`` asks for: pydantic writes ``City`` once under ``$defs`` and
    refers to it with ``$ref`` from both fields."""

    city: City
    nearby: list[City]
    note: str | None


# Slow enough that a reader leaving after a few events leaves while the gateway waits on the provider.
SLOW = {"models": {"slow": {"output_tokens": [40, 40], "stream_chunk_words": 1, "faults": {"chunk_delay_ms": 150}}}}


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with run_in_thread(create_mock(MockConfig.from_dict(SLOW))) as server:
        yield server


def config(tmp_path: Path, upstream: RunningServer, **extra: Any) -> dict[str, Any]:
    return {"providers": {"up": {"base_url": upstream.url + "/v1", "max_retries": 0}},
            "models": {m: {"provider": "up", "price": {"input": 1.0, "output": 2.0}} for m in ("cheap", "slow")},
            "ledger": {"path": str(tmp_path / "ledger.db")}, **extra}


def test_parse_fills_nested_models_in_the_answer_and_in_tool_arguments(tmp_path: Path, mock: RunningServer) -> None:
    # The mock answered a `$ref` (every nested pydantic model) with a string, so `.parse` of any
    # app with a nested model raised a ValidationError where a provider honouring the schema answers.
    with serving(config(tmp_path, mock)) as (_, client):
        reply = client.chat.completions.parse(model="cheap", response_format=Report,
                                              messages=[{"role": "user", "content": "Report on Paris"}])
        parsed = reply.choices[0].message.parsed
        assert isinstance(parsed, Report) and isinstance(parsed.city, City) and isinstance(parsed.nearby[0], City)
        assert reply.choices[0].finish_reason == "stop" and reply.usage is not None

        called = client.chat.completions.parse(model="cheap", tools=[openai.pydantic_function_tool(Report)],
                                               messages=[{"role": "user", "content": "Call Report for Paris"}])
        (call,) = called.choices[0].message.tool_calls or []
        assert isinstance(call.function.parsed_arguments, Report)
        assert isinstance(call.function.parsed_arguments.city, City)
        assert called.choices[0].finish_reason == "tool_calls"


def test_responses_parse_gets_the_json_its_text_format_asks_for(tmp_path: Path, mock: RunningServer) -> None:
    # The mock ignored `text.format` and answered prose: `responses.parse` raised on invalid JSON.
    with serving(config(tmp_path, mock)) as (_, client):
        reply = client.responses.parse(model="cheap", input="Report on Paris", text_format=Report)
        assert isinstance(reply.output_parsed, Report) and isinstance(reply.output_parsed.city, City)
        assert reply.usage is not None and reply.usage.output_tokens > 0
        with client.responses.stream(model="cheap", input="Report on Lyon", text_format=Report) as stream:
            kinds = {event.type for event in stream}
            final = stream.get_final_response()
        assert "response.completed" in kinds and isinstance(final.output_parsed, Report)


def test_a_stream_left_midway_does_not_hold_the_next_identical_request(tmp_path: Path, mock: RunningServer) -> None:
    # A reader leaving a `.stream()` while the gateway waited on the provider cancelled the cache
    # stage's clean-up (it awaited inside the cancelled request): its single-flight entry and the
    # store's lock stayed taken, so the same question asked again waited `lock_timeout_s` (30 s
    # by default) before anything was sent upstream.
    cache = {"path": str(tmp_path / "cache.db"), "lock_timeout_s": 8}
    messages: Any = [{"role": "user", "content": "Describe the weather in Oslo"}]
    with serving(config(tmp_path, mock, cache=cache)) as (_, client):
        reset(mock)
        for attempt in range(3):  # each time with a new question: a left stream stores nothing
            ask = [{"role": "user", "content": f"{messages[0]['content']} ({attempt})"}]
            with client.chat.completions.stream(model="slow", messages=ask, temperature=0) as stream:
                for seen, _ in enumerate(stream):
                    if seen >= 3:
                        break
            started = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(model="slow", messages=ask, temperature=0)
            assert time.monotonic() - started < 4, "the next identical request waited for the left stream"
            assert raw.headers["x-thrifty-cache"] == "miss"
            assert raw.parse().choices[0].finish_reason == "stop"
        assert len(sent(mock, "slow")) == 6


def test_allowed_tools_reach_the_provider_and_are_honoured(tmp_path: Path, mock: RunningServer) -> None:
    # The mock read `{"type": "allowed_tools"}` as a named function without a name and forced a
    # call to the first tool, even in "auto" mode and to a tool outside the allowed list.
    class GetTime(BaseModel):
        tz: str

    tools = [openai.pydantic_function_tool(City), openai.pydantic_function_tool(GetTime)]

    def allowed(mode: str) -> Any:
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [
            {"type": "function", "function": {"name": "GetTime"}}]}}

    with serving(config(tmp_path, mock)) as (_, client):
        reset(mock)
        chatty = client.chat.completions.parse(model="cheap", tools=tools, tool_choice=allowed("auto"),
                                               messages=[{"role": "user", "content": "Say hello"}])
        assert chatty.choices[0].finish_reason == "stop" and not chatty.choices[0].message.tool_calls
        forced = client.chat.completions.parse(model="cheap", tools=tools, tool_choice=allowed("required"),
                                               messages=[{"role": "user", "content": "Say hello"}])
        (call,) = forced.choices[0].message.tool_calls or []
        assert call.function.name == "GetTime" and isinstance(call.function.parsed_arguments, GetTime)
        assert [body["tool_choice"] for body in sent(mock, "cheap")] == [allowed("auto"), allowed("required")]


# ---------------------------------------------------------------- a custom tool call

CUSTOM_TOOL = {"type": "custom", "custom": {"name": "code_exec", "description": "Runs Python code"}}
CUSTOM_CALL = {"id": "call_c1", "type": "custom", "custom": {"name": "code_exec", "input": "print(1 + 1)"}}


async def _custom_chat(request: Request) -> Response:
    """Always calls ``code_exec``; a stream sends the call's input in pieces, as OpenAI does."""
    body = await request.json()
    usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
    head = {"id": "chatcmpl-c", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        return JSONResponse({**head, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [CUSTOM_CALL]},
             "finish_reason": "tool_calls"}]})
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": None}, None),
        ({"tool_calls": [{"index": 0, "id": "call_c1", "type": "custom", "custom": {"name": "code_exec", "input": ""}}]},
         None),
        ({"tool_calls": [{"index": 0, "custom": {"input": "print(1 "}}]}, None),
        ({"tool_calls": [{"index": 0, "custom": {"input": "+ 1)"}}]}, None),
        ({}, "tool_calls")]
    chunks = [{**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": f}]}
              for d, f in deltas]
    chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def test_a_custom_tool_call_stored_from_a_stream_is_served_whole(tmp_path: Path) -> None:
    # The cache rebuilt every streamed tool call as a function call: the custom call stored from
    # a stream came back from the cache as {"type": "function", "function": {"name": ""}}, its
    # input gone, to the next request offering the same custom tool.
    upstream = Starlette(routes=[Route("/v1/chat/completions", _custom_chat, methods=["POST"])])
    cache = {"path": str(tmp_path / "cache.db"), "cache_tool_calls": True}
    ask: Any = [{"role": "user", "content": "Run some code"}]
    with run_in_thread(upstream) as scripted, serving(config(tmp_path, scripted, cache=cache)) as (_, client):
        streamed = list(client.chat.completions.create(model="cheap", messages=ask, tools=[CUSTOM_TOOL],  # type: ignore[list-item]
                                                       temperature=0, stream=True))
        assert streamed[-1].usage is None  # the client did not ask for it
        for stream in (False, True):
            raw = client.chat.completions.with_raw_response.create(model="cheap", messages=ask, tools=[CUSTOM_TOOL],  # type: ignore[list-item]
                                                                   temperature=0, stream=stream)
            assert raw.headers["x-thrifty-cache"] == "hit"
            if stream:
                deltas = [d for c in raw.parse() for ch in c.choices for d in ch.delta.tool_calls or []]
                assert [(d.type, d.custom) for d in deltas] == [("custom", CUSTOM_CALL["custom"])]
                continue
            message = raw.parse().choices[0].message
            (call,) = message.tool_calls or []
            assert call.type == "custom" and call.id == "call_c1"
            assert (call.custom.name, call.custom.input) == ("code_exec", "print(1 + 1)")
            assert raw.parse().choices[0].finish_reason == "tool_calls"
